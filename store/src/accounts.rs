use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use kiln_jobs::UserId;

use crate::StoreError;

/// How a person signs in: an email address or a phone number (E.164),
/// already normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    Email(String),
    Phone(String),
}

impl Identifier {
    /// The `(email, phone)` columns: one set, the other NULL.
    pub(crate) fn columns(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Identifier::Email(e) => (Some(e.as_str()), None),
            Identifier::Phone(p) => (None, Some(p.as_str())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub identifier: Identifier,
    /// bcrypt hash; the password itself never reaches the store.
    pub password_hash: String,
    pub birth_date: NaiveDate,
    /// This account's own code, to share.
    pub referral_code: String,
    /// The code the person signed up with, if any.
    pub referred_by_code: Option<String>,
}

/// What became of a sign-up: domain outcomes, not storage failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCreated {
    Created(UserId),
    /// The email or phone belongs to an account already.
    Taken,
    /// The referral code matches no one; nothing was stored.
    UnknownReferral,
}

impl UserCreated {
    /// The new account's id, if one was made.
    pub fn id(self) -> Option<UserId> {
        match self {
            UserCreated::Created(id) => Some(id),
            UserCreated::Taken | UserCreated::UnknownReferral => None,
        }
    }
}

/// A user's email and phone, as registered. `Debug` shows only which are
/// present, so a logged value never leaks them.
#[derive(Clone, PartialEq, Eq)]
pub struct Contacts {
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts")
            .field("email", &self.email.as_ref().map(|_| "<set>"))
            .field("phone", &self.phone.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What login needs to check a password.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_id: UserId,
    pub password_hash: String,
}

/// A session that may be used: whose it is and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSession {
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
}

/// Accounts and their sessions.
#[async_trait]
pub trait Accounts: Send + Sync {
    async fn create_user(&self, user: NewUser) -> Result<UserCreated, StoreError>;
    /// Where to reach a user who is not deleted; `None` otherwise.
    async fn contacts(&self, user_id: UserId) -> Result<Option<Contacts>, StoreError>;
    async fn login_record(&self, id: &Identifier) -> Result<Option<LoginRecord>, StoreError>;
    /// Stores a session under the SHA-256 of its bearer token.
    async fn create_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A live session: not expired, not revoked, account not deleted. The
    /// API asks [`Store::session_user`](crate::Store::session_user), which
    /// remembers the answer.
    async fn find_session(&self, token_hash: &str) -> Result<Option<LiveSession>, StoreError>;
    /// Revokes a session. Call [`Store::revoke_session`](crate::Store::revoke_session),
    /// which also forgets it in every process.
    async fn revoke_session_row(&self, token_hash: &str) -> Result<bool, StoreError>;
}
