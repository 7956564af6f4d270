use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{Locale, UserId};
use uuid::Uuid;

use super::{PgStore, credits::grant_on};
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
impl Accounts for PgStore {
    async fn create_user_sealed(
        &self,
        user: NewUser,
        sealed: String,
    ) -> Result<UserCreated, StoreError> {
        let referred_by: Option<Uuid> = match &user.referred_by_code {
            Some(code) => match sqlx::query_scalar("SELECT id FROM users WHERE referral_code = $1")
                .bind(code)
                .fetch_optional(&self.pool)
                .await?
            {
                Some(id) => Some(id),
                None => return Ok(UserCreated::UnknownReferral),
            },
            None => None,
        };
        let id = Uuid::now_v7();
        let (email, phone) = user.identifier.columns();
        let is_email = email.is_some();
        let inserted = sqlx::query(
            "INSERT INTO users (id, email_index, phone_index, password_hash, birth_date,
                                referral_code, referred_by, email_sealed, phone_sealed, locale)
             VALUES ($1, $2, $3, $4, $5, $6, $7,
                     CASE WHEN $8 THEN $9 END, CASE WHEN $8 THEN NULL ELSE $9 END, $10)",
        )
        .bind(id)
        .bind(email)
        .bind(phone)
        .bind(&user.password_hash)
        .bind(user.birth_date)
        .bind(&user.referral_code)
        .bind(referred_by)
        .bind(is_email)
        .bind(&sealed)
        .bind(user.locale.as_str())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(UserCreated::Created(UserId(id))),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(UserCreated::Taken),
            Err(e) => Err(e.into()),
        }
    }

    async fn sealed_contacts(&self, user_id: UserId) -> Result<Option<Contacts>, StoreError> {
        let row: Option<(Option<String>, Option<String>, String)> = sqlx::query_as(
            "SELECT email_sealed, phone_sealed, locale FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id.0)
        .fetch_optional(&self.pool)
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
        let row: Option<(Uuid, String, bool)> = sqlx::query_as(
            "SELECT id, password_hash, verified_at IS NOT NULL FROM users
             WHERE deleted_at IS NULL AND (email_index = $1 OR phone_index = $2)",
        )
        .bind(email)
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(user_id, password_hash, verified)| LoginRecord {
            user_id: UserId(user_id),
            password_hash,
            verified,
        }))
    }

    async fn referral_code(&self, user_id: UserId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT referral_code FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn create_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user_id.0)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn find_session(&self, token_hash: &str) -> Result<Option<LiveSession>, StoreError> {
        let row: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT s.user_id, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
               AND u.deleted_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, expires_at)| LiveSession {
            user_id: UserId(id),
            expires_at,
        }))
    }

    async fn revoke_session_row(&self, token_hash: &str) -> Result<bool, StoreError> {
        // Every process forgets the session when this commits: the
        // notification goes out with the write itself, not after it, so no
        // crash between the two can leave a revoked token remembered.
        let revoked: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 UPDATE sessions SET revoked_at = now()
                 WHERE token_hash = $1 AND revoked_at IS NULL
                 RETURNING token_hash)
             SELECT count(pg_notify($2, token_hash)) FROM gone",
        )
        .bind(token_hash)
        .bind(super::SESSION_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        Ok(revoked == 1)
    }

    async fn issue_code_sealed(
        &self,
        code: NewCode,
        contact_sealed: Option<String>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM verification_codes WHERE user_id = $1")
            .bind(code.user_id.0)
            .execute(&mut *tx)
            .await?;
        let (new_email, new_phone) = code
            .contact
            .as_ref()
            .map_or((None, None), Identifier::columns);
        sqlx::query(
            "INSERT INTO verification_codes
                 (id, user_id, code_hash, expires_at, new_email_index, new_phone_index,
                  new_contact_sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(code.id)
        .bind(code.user_id.0)
        .bind(&code.code_hash)
        .bind(code.expires_at)
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
            Uuid,
            i32,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<CodeRow> = sqlx::query_as(
            "SELECT id, tries, created_at, expires_at, used_at,
                    CASE WHEN new_email_index IS NOT NULL THEN new_contact_sealed END,
                    CASE WHEN new_phone_index IS NOT NULL THEN new_contact_sealed END
             FROM verification_codes WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(user_id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, tries, created_at, expires_at, used_at, email, phone)| CodeRecord {
                    id,
                    tries: tries.max(0) as u32,
                    created_at,
                    expires_at,
                    used_at,
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
        let user: Option<Uuid> = sqlx::query_scalar(
            "UPDATE users SET operator = $3
             WHERE deleted_at IS NULL AND (email_index = $1 OR phone_index = $2) RETURNING id",
        )
        .bind(email)
        .bind(phone)
        .bind(operator)
        .fetch_optional(&self.pool)
        .await?;
        Ok(user.map(UserId))
    }

    async fn is_operator(&self, user_id: UserId) -> Result<bool, StoreError> {
        let operator: Option<bool> =
            sqlx::query_scalar("SELECT operator FROM users WHERE id = $1 AND deleted_at IS NULL")
                .bind(user_id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(operator.unwrap_or(false))
    }

    async fn sealed_profile(&self, user_id: UserId) -> Result<Option<Profile>, StoreError> {
        let sql =
            format!("SELECT {PROFILE_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL");
        let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Profile::try_from).transpose()
    }

    async fn set_restricted(&self, user_id: UserId, restricted: bool) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE users SET restricted_at = CASE WHEN $2 THEN now() END
             WHERE id = $1 AND deleted_at IS NULL AND (restricted_at IS NOT NULL) <> $2",
        )
        .bind(user_id.0)
        .bind(restricted)
        .execute(&self.pool)
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn set_webhook_secret_sealed(
        &self,
        user_id: UserId,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE users SET webhook_secret_sealed = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id.0)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn webhook_secret_sealed(&self, user_id: UserId) -> Result<Option<String>, StoreError> {
        let sealed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT webhook_secret_sealed FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(sealed.flatten())
    }

    async fn set_locale(&self, user_id: UserId, locale: Locale) -> Result<bool, StoreError> {
        let changed =
            sqlx::query("UPDATE users SET locale = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(user_id.0)
                .bind(locale.as_str())
                .execute(&self.pool)
                .await?;
        Ok(changed.rows_affected() == 1)
    }

    async fn is_restricted(&self, user_id: UserId) -> Result<bool, StoreError> {
        let restricted: Option<bool> = sqlx::query_scalar(
            "SELECT restricted_at IS NOT NULL FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(restricted.unwrap_or(false))
    }

    async fn check_code(
        &self,
        user_id: UserId,
        code_hash: &str,
        grants: VerificationGrants,
    ) -> Result<CodeCheck, StoreError> {
        // Each statement re-checks the row after taking its lock, so of two
        // guesses at once one uses the code and the other finds it used.
        let mut tx = self.pool.begin().await?;
        let used: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "UPDATE verification_codes SET used_at = now()
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL
               AND expires_at > now() AND tries < $3
             RETURNING new_email_index, new_phone_index, new_contact_sealed",
        )
        .bind(user_id.0)
        .bind(code_hash)
        .bind(MAX_CODE_TRIES as i32)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((new_email, new_phone, sealed)) = used {
            if let Some(contact) = Identifier::from_columns(new_email, new_phone) {
                // The new address replaces the old, unless another account
                // took it since the code was sent.
                let (email, phone) = contact.columns();
                let mut moved = sqlx::Acquire::begin(&mut *tx).await?;
                let set = sqlx::query(
                    "UPDATE users SET
                         email_index = coalesce($2, email_index),
                         email_sealed = CASE WHEN $2 IS NULL THEN email_sealed ELSE $4 END,
                         phone_index = coalesce($3, phone_index),
                         phone_sealed = CASE WHEN $3 IS NULL THEN phone_sealed ELSE $4 END
                     WHERE id = $1",
                )
                .bind(user_id.0)
                .bind(email)
                .bind(phone)
                .bind(sealed)
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
            // Only the first verification grants (a later code, say for a
            // new address, finds `verified_at` set).
            let first: Option<Option<Uuid>> = sqlx::query_scalar(
                "UPDATE users SET verified_at = now() WHERE id = $1 AND verified_at IS NULL
                 RETURNING referred_by",
            )
            .bind(user_id.0)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(referred_by) = first {
                grant_on(&mut tx, user_id, grants.signup, SIGNUP_REASON).await?;
                if let Some(referrer) = referred_by {
                    grant_on(&mut tx, user_id, grants.referral_bonus, REFERRAL_REASON).await?;
                    grant_on(
                        &mut tx,
                        UserId(referrer),
                        grants.referral_bonus,
                        &referrer_reason(user_id),
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            return Ok(CodeCheck::Verified);
        }
        tx.rollback().await?;
        let tries: Option<i32> = sqlx::query_scalar(
            "UPDATE verification_codes SET tries = tries + 1
             WHERE user_id = $1 AND used_at IS NULL AND expires_at > now() AND tries < $2
             RETURNING tries",
        )
        .bind(user_id.0)
        .bind(MAX_CODE_TRIES as i32)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match tries {
            Some(tries) => CodeCheck::Wrong {
                tries_left: MAX_CODE_TRIES.saturating_sub(tries.max(0) as u32),
            },
            None => CodeCheck::NoLiveCode,
        })
    }

    async fn stored_contacts(
        &self,
        after: Option<UserId>,
        limit: u32,
        only_unsealed: bool,
    ) -> Result<Vec<StoredContacts>, StoreError> {
        type Row = (
            Uuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, email_index, phone_index, email_sealed, phone_sealed FROM users
             WHERE id > coalesce($1, '00000000-0000-0000-0000-000000000000'::uuid)
               AND (NOT $3 OR (email_sealed IS NULL AND phone_sealed IS NULL))
             ORDER BY id LIMIT $2",
        )
        .bind(after.map(|u| u.0))
        .bind(i64::from(limit))
        .bind(only_unsealed)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, email_index, phone_index, email_sealed, phone_sealed)| StoredContacts {
                    user_id: UserId(id),
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
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn reseal_contacts(&self, c: &StoredContacts) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE users SET email_index = $2, phone_index = $3, email_sealed = $4, phone_sealed = $5
             WHERE id = $1",
        )
        .bind(c.user_id.0)
        .bind(&c.email_index)
        .bind(&c.phone_index)
        .bind(&c.email_sealed)
        .bind(&c.phone_sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pii_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO pii_keys (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT fingerprint FROM pii_keys")
            .fetch_one(&self.pool)
            .await?)
    }
}
