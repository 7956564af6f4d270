use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{Locale, UserId};
use uuid::Uuid;

use super::{SqliteStore, credits::grant_in, now_ms};
use crate::codec::{Id, Time};
use crate::{
    StoreError,
    accounts::{
        Accounts, CodeCheck, CodeRecord, Contacts, Identifier, LiveSession, LoginRecord,
        MAX_CODE_TRIES, NewCode, NewUser, Profile, StoredContacts, UserCreated,
    },
    credits::{REFERRAL_REASON, SIGNUP_REASON, VerificationGrants, referrer_reason},
    rows::{PROFILE_COLUMNS, ProfileRow},
};

#[async_trait]
impl Accounts for SqliteStore {
    async fn create_user_sealed(
        &self,
        user: NewUser,
        sealed: String,
    ) -> Result<UserCreated, StoreError> {
        let referred_by: Option<String> = match &user.referred_by_code {
            Some(code) => match sqlx::query_scalar("SELECT id FROM users WHERE referral_code = ?")
                .bind(code)
                .fetch_optional(&self.reader)
                .await?
            {
                Some(id) => Some(id),
                None => return Ok(UserCreated::UnknownReferral),
            },
            None => None,
        };
        let id = Uuid::now_v7();
        let (email, phone) = user.identifier.columns();
        let (email_sealed, phone_sealed) = if email.is_some() {
            (Some(&sealed), None)
        } else {
            (None, Some(&sealed))
        };
        let inserted = sqlx::query(
            "INSERT INTO users (id, email_index, phone_index, password_hash, birth_date,
                                referral_code, referred_by, created_at, email_sealed, phone_sealed,
                                locale)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(email)
        .bind(phone)
        .bind(&user.password_hash)
        .bind(user.birth_date.to_string())
        .bind(&user.referral_code)
        .bind(referred_by)
        .bind(now_ms())
        .bind(email_sealed)
        .bind(phone_sealed)
        .bind(user.locale.as_str())
        .execute(&self.writer)
        .await;
        match inserted {
            Ok(_) => Ok(UserCreated::Created(UserId(id))),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(UserCreated::Taken),
            Err(e) => Err(e.into()),
        }
    }

    async fn sealed_contacts(&self, user_id: UserId) -> Result<Option<Contacts>, StoreError> {
        let row: Option<(Option<String>, Option<String>, String)> = sqlx::query_as(
            "SELECT email_sealed, phone_sealed, locale FROM users WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(user_id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|(email, phone, tag)| {
            Ok(Contacts {
                email,
                phone,
                locale: crate::rows::locale(&tag)?,
            })
        })
        .transpose()
    }

    async fn login_record_blind(&self, id: &Identifier) -> Result<Option<LoginRecord>, StoreError> {
        let (email, phone) = id.columns();
        let row: Option<(Id, String, bool)> = sqlx::query_as(
            "SELECT id, password_hash, verified_at IS NOT NULL FROM users
             WHERE deleted_at IS NULL AND (email_index = ? OR phone_index = ?)",
        )
        .bind(email)
        .bind(phone)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(id, password_hash, verified)| LoginRecord {
            user_id: UserId(id.0),
            password_hash,
            verified,
        }))
    }

    async fn referral_code(&self, user_id: UserId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT referral_code FROM users WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(user_id.to_string())
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn create_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(token_hash)
        .bind(user_id.to_string())
        .bind(now_ms())
        .bind(expires_at.timestamp_millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn find_session(&self, token_hash: &str) -> Result<Option<LiveSession>, StoreError> {
        let row: Option<(Id, Time)> = sqlx::query_as(
            "SELECT s.user_id, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?
               AND u.deleted_at IS NULL",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(id, expires_at)| LiveSession {
            user_id: UserId(id.0),
            expires_at: expires_at.0,
        }))
    }

    async fn revoke_session_row(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(token_hash)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn issue_code_sealed(
        &self,
        code: NewCode,
        contact_sealed: Option<String>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM verification_codes WHERE user_id = ?")
            .bind(code.user_id.to_string())
            .execute(&mut *tx)
            .await?;
        let (new_email, new_phone) = code
            .contact
            .as_ref()
            .map_or((None, None), Identifier::columns);
        sqlx::query(
            "INSERT INTO verification_codes
                 (id, user_id, code_hash, created_at, expires_at, new_email_index,
                  new_phone_index, new_contact_sealed)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(code.id.to_string())
        .bind(code.user_id.to_string())
        .bind(&code.code_hash)
        .bind(now_ms())
        .bind(code.expires_at.timestamp_millis())
        .bind(new_email)
        .bind(new_phone)
        .bind(contact_sealed)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sealed_codes(&self, user_id: UserId) -> Result<Vec<CodeRecord>, StoreError> {
        type CodeRow = (
            Id,
            i64,
            Time,
            Time,
            Option<Time>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<CodeRow> = sqlx::query_as(
            "SELECT id, tries, created_at, expires_at, used_at,
                    CASE WHEN new_email_index IS NOT NULL THEN new_contact_sealed END,
                    CASE WHEN new_phone_index IS NOT NULL THEN new_contact_sealed END
             FROM verification_codes WHERE user_id = ? ORDER BY created_at DESC, id DESC",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, tries, created_at, expires_at, used_at, email, phone)| CodeRecord {
                    id: id.0,
                    tries: tries.clamp(0, i64::from(u32::MAX)) as u32,
                    created_at: created_at.0,
                    expires_at: expires_at.0,
                    used_at: used_at.map(|t| t.0),
                    contact: Identifier::from_columns(email, phone),
                },
            )
            .collect())
    }

    async fn set_operator_blind(
        &self,
        id: &Identifier,
        operator: bool,
    ) -> Result<Option<UserId>, StoreError> {
        let (email, phone) = id.columns();
        let user: Option<Id> = sqlx::query_scalar(
            "UPDATE users SET operator = ?3
             WHERE deleted_at IS NULL AND (email_index = ?1 OR phone_index = ?2) RETURNING id",
        )
        .bind(email)
        .bind(phone)
        .bind(operator)
        .fetch_optional(&self.writer)
        .await?;
        Ok(user.map(|id| UserId(id.0)))
    }

    async fn is_operator(&self, user_id: UserId) -> Result<bool, StoreError> {
        let operator: Option<bool> =
            sqlx::query_scalar("SELECT operator FROM users WHERE id = ? AND deleted_at IS NULL")
                .bind(user_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
        Ok(operator.unwrap_or(false))
    }

    async fn sealed_profile(&self, user_id: UserId) -> Result<Option<Profile>, StoreError> {
        let sql =
            format!("SELECT {PROFILE_COLUMNS} FROM users WHERE id = ? AND deleted_at IS NULL");
        let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.map(Profile::try_from).transpose()
    }

    async fn set_restricted(&self, user_id: UserId, restricted: bool) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE users SET restricted_at = CASE WHEN ?2 THEN ?3 END
             WHERE id = ?1 AND deleted_at IS NULL AND (restricted_at IS NOT NULL) <> ?2",
        )
        .bind(user_id.to_string())
        .bind(restricted)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn set_webhook_secret_sealed(
        &self,
        user_id: UserId,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE users SET webhook_secret_sealed = ?2 WHERE id = ?1 AND deleted_at IS NULL",
        )
        .bind(Id(user_id.0))
        .bind(sealed)
        .execute(&self.writer)
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn webhook_secret_sealed(&self, user_id: UserId) -> Result<Option<String>, StoreError> {
        let sealed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT webhook_secret_sealed FROM users WHERE id = ?1 AND deleted_at IS NULL",
        )
        .bind(Id(user_id.0))
        .fetch_optional(&self.reader)
        .await?;
        Ok(sealed.flatten())
    }

    async fn set_locale(&self, user_id: UserId, locale: Locale) -> Result<bool, StoreError> {
        let changed =
            sqlx::query("UPDATE users SET locale = ?2 WHERE id = ?1 AND deleted_at IS NULL")
                .bind(Id(user_id.0))
                .bind(locale.as_str())
                .execute(&self.writer)
                .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn is_restricted(&self, user_id: UserId) -> Result<bool, StoreError> {
        let restricted: Option<bool> = sqlx::query_scalar(
            "SELECT restricted_at IS NOT NULL FROM users WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(user_id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        Ok(restricted.unwrap_or(false))
    }

    async fn check_code(
        &self,
        user_id: UserId,
        code_hash: &str,
        grants: VerificationGrants,
    ) -> Result<CodeCheck, StoreError> {
        // One writer connection and one transaction: no other guess runs
        // between the check and its record.
        let now = now_ms();
        let user = user_id.to_string();
        let mut tx = self.writer.begin().await?;
        let used: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "UPDATE verification_codes SET used_at = ?
             WHERE user_id = ? AND code_hash = ? AND used_at IS NULL
               AND expires_at > ? AND tries < ?
             RETURNING new_email_index, new_phone_index, new_contact_sealed",
        )
        .bind(now)
        .bind(&user)
        .bind(code_hash)
        .bind(now)
        .bind(MAX_CODE_TRIES)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((contact, sealed)) = used.clone().and_then(|(email, phone, sealed)| {
            Identifier::from_columns(email, phone).map(|c| (c, sealed))
        }) {
            // The new address replaces the old, unless another account took
            // it since the code was sent.
            let (email, phone) = contact.columns();
            let mut moved = sqlx::Acquire::begin(&mut *tx).await?;
            let set = sqlx::query(
                "UPDATE users SET
                     email_index = coalesce(?1, email_index),
                     email_sealed = CASE WHEN ?1 IS NULL THEN email_sealed ELSE ?3 END,
                     phone_index = coalesce(?2, phone_index),
                     phone_sealed = CASE WHEN ?2 IS NULL THEN phone_sealed ELSE ?3 END
                 WHERE id = ?4",
            )
            .bind(email)
            .bind(phone)
            .bind(sealed)
            .bind(&user)
            .execute(&mut *moved)
            .await;
            match set {
                Ok(_) => moved.commit().await?,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    moved.rollback().await?;
                    tx.commit().await?;
                    return Ok(CodeCheck::AddressTaken);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let outcome = if used.is_some() {
            // Only the first verification grants.
            let first: Option<Option<Id>> = sqlx::query_scalar(
                "UPDATE users SET verified_at = ? WHERE id = ? AND verified_at IS NULL
                 RETURNING referred_by",
            )
            .bind(now)
            .bind(&user)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(referred_by) = first {
                grant_in(&mut tx, user_id, grants.signup, SIGNUP_REASON).await?;
                if let Some(referrer) = referred_by {
                    grant_in(&mut tx, user_id, grants.referral_bonus, REFERRAL_REASON).await?;
                    grant_in(
                        &mut tx,
                        UserId(referrer.0),
                        grants.referral_bonus,
                        &referrer_reason(user_id),
                    )
                    .await?;
                }
            }
            CodeCheck::Verified
        } else {
            let tries: Option<i64> = sqlx::query_scalar(
                "UPDATE verification_codes SET tries = tries + 1
                 WHERE user_id = ? AND used_at IS NULL AND expires_at > ? AND tries < ?
                 RETURNING tries",
            )
            .bind(&user)
            .bind(now)
            .bind(MAX_CODE_TRIES)
            .fetch_optional(&mut *tx)
            .await?;
            match tries {
                Some(tries) => CodeCheck::Wrong {
                    tries_left: MAX_CODE_TRIES
                        .saturating_sub(tries.clamp(0, i64::from(MAX_CODE_TRIES)) as u32),
                },
                None => CodeCheck::NoLiveCode,
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn stored_contacts(
        &self,
        after: Option<UserId>,
        limit: u32,
        only_unsealed: bool,
    ) -> Result<Vec<StoredContacts>, StoreError> {
        type Row = (
            Id,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, email_index, phone_index, email_sealed, phone_sealed FROM users
             WHERE id > coalesce(?1, '')
               AND (NOT ?3 OR (email_sealed IS NULL AND phone_sealed IS NULL))
             ORDER BY id LIMIT ?2",
        )
        .bind(after.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .bind(only_unsealed)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, email_index, phone_index, email_sealed, phone_sealed)| StoredContacts {
                    user_id: UserId(id.0),
                    email_index,
                    phone_index,
                    email_sealed,
                    phone_sealed,
                },
            )
            .collect())
    }

    async fn account_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.reader)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn reseal_contacts(&self, c: &StoredContacts) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE users SET email_index = ?, phone_index = ?, email_sealed = ?, phone_sealed = ?
             WHERE id = ?",
        )
        .bind(&c.email_index)
        .bind(&c.phone_index)
        .bind(&c.email_sealed)
        .bind(&c.phone_sealed)
        .bind(c.user_id.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn pii_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO pii_keys (singleton, fingerprint) VALUES (1, ?) ON CONFLICT DO NOTHING",
        )
        .bind(fingerprint)
        .execute(&self.writer)
        .await?;
        Ok(sqlx::query_scalar("SELECT fingerprint FROM pii_keys")
            .fetch_one(&self.writer)
            .await?)
    }
}
