use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use kiln_jobs::{Locale, UserId};
use uuid::Uuid;

use crate::{StoreError, credits::VerificationGrants};

/// How a person signs in: an email address or a phone number (E.164),
/// already normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    Email(String),
    Phone(String),
}

impl Identifier {
    /// The address itself, whichever kind it is.
    pub fn as_str(&self) -> &str {
        match self {
            Identifier::Email(a) | Identifier::Phone(a) => a,
        }
    }

    /// The identifier two nullable columns hold (email first), if any.
    pub(crate) fn from_columns(email: Option<String>, phone: Option<String>) -> Option<Identifier> {
        email
            .map(Identifier::Email)
            .or(phone.map(Identifier::Phone))
    }

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
    /// The language notices go out in.
    pub locale: Locale,
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
    /// The language notices to them go out in.
    pub locale: Locale,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts")
            .field("email", &self.email.as_ref().map(|_| "<set>"))
            .field("phone", &self.phone.as_ref().map(|_| "<set>"))
            .field("locale", &self.locale)
            .finish()
    }
}

/// An account as its owner sees it (`GET /v1/me`). `Debug` leaves the
/// contact details out.
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: UserId,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub birth_date: NaiveDate,
    pub referral_code: String,
    pub operator: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub restricted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub locale: Locale,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("id", &self.id)
            .field("restricted_at", &self.restricted_at)
            .finish_non_exhaustive()
    }
}

/// What login needs to check a password.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_id: UserId,
    pub password_hash: String,
    /// The account proved it holds its email or phone (`verified_at` set).
    pub verified: bool,
}

/// Wrong guesses a verification code survives: after the fifth it is dead,
/// even if the right code comes next.
pub const MAX_CODE_TRIES: u32 = 5;

/// A verification code to keep: only its keyed hash, never the code.
#[derive(Clone)]
pub struct NewCode {
    /// Random; the code itself is derived from it under the server's key
    /// when it is sent (`CodeKey::code`).
    pub id: Uuid,
    pub user_id: UserId,
    /// `CodeKey::code_hash` of the code.
    pub code_hash: String,
    pub expires_at: DateTime<Utc>,
    /// For a code that confirms a new address: the address, which only
    /// verifying the code moves into the account.
    pub contact: Option<Identifier>,
}

/// The hash is left out: it is as good as the code to whoever has the key.
impl std::fmt::Debug for NewCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCode")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored verification code, without its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeRecord {
    pub id: Uuid,
    /// Wrong guesses so far.
    pub tries: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    /// The new address the code confirms, if it confirms one: where it is
    /// sent.
    pub contact: Option<Identifier>,
}

/// Says whether a new address is pending, never which.
impl std::fmt::Debug for CodeRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRecord")
            .field("id", &self.id)
            .field("tries", &self.tries)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("contact", &self.contact.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl CodeRecord {
    /// Whether the code would still be accepted at `now`: unused, not
    /// expired, fewer than [`MAX_CODE_TRIES`] wrong guesses.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.used_at.is_none() && self.expires_at > now && self.tries < MAX_CODE_TRIES
    }
}

/// What became of one guess at a user's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right: the code is used up and the account is verified.
    Verified,
    /// Wrong: one try spent; this many are left (0: the code is dead).
    Wrong { tries_left: u32 },
    /// The user has no code that could be right: none issued, used,
    /// expired, or out of tries.
    NoLiveCode,
    /// Right, but the new address it confirms went to another account
    /// meanwhile: nothing changed, the code is spent.
    AddressTaken,
}

/// A session that may be used: whose it is and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSession {
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
}

/// An account's addresses as the database keeps them (see
/// [`Pii`](crate::Pii)): blind indexes and sealed text. Both sealed
/// columns empty means a row from before sealing, whose index columns
/// still hold the plain addresses.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredContacts {
    pub user_id: UserId,
    pub email_index: Option<String>,
    pub phone_index: Option<String>,
    pub email_sealed: Option<String>,
    pub phone_sealed: Option<String>,
}

/// Accounts and their sessions, as the engines store them. Addresses cross
/// this trait only sealed or blind (`*_sealed`, `*_blind`): the
/// [`Store`](crate::Store) seals and opens them, under its keys, in
/// methods of the plain names (`create_user`, `login_record`, `contacts`,
/// `profile`, `codes`, `issue_code`, `set_operator`).
#[async_trait]
pub trait Accounts: Send + Sync {
    /// `user.identifier` is the blind index; `sealed` the sealed address.
    async fn create_user_sealed(
        &self,
        user: NewUser,
        sealed: String,
    ) -> Result<UserCreated, StoreError>;
    /// A user's addresses, sealed; `None` once deleted.
    async fn sealed_contacts(&self, user_id: UserId) -> Result<Option<Contacts>, StoreError>;
    /// By blind index.
    async fn login_record_blind(&self, id: &Identifier) -> Result<Option<LoginRecord>, StoreError>;
    /// The account's own referral code, to share; `None` once deleted.
    async fn referral_code(&self, user_id: UserId) -> Result<Option<String>, StoreError>;
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

    /// Keeps a new verification code for its user, in place of any earlier
    /// one (a user has at most one code that can be right). `code.contact`
    /// is the blind index of the new address, `contact_sealed` its text.
    async fn issue_code_sealed(
        &self,
        code: NewCode,
        contact_sealed: Option<String>,
    ) -> Result<(), StoreError>;
    /// Grants (`true`) or revokes the operator role of the account with
    /// this blind index; `None` when there is none (or it is deleted).
    async fn set_operator_blind(
        &self,
        id: &Identifier,
        operator: bool,
    ) -> Result<Option<UserId>, StoreError>;
    /// Whether the account holds the operator role.
    async fn is_operator(&self, user_id: UserId) -> Result<bool, StoreError>;
    /// The account, its email and phone sealed; `None` once deleted.
    async fn sealed_profile(&self, user_id: UserId) -> Result<Option<Profile>, StoreError>;
    /// Restricts the account (no new jobs) or lifts it: false when it was
    /// already so (or is deleted).
    async fn set_restricted(&self, user_id: UserId, restricted: bool) -> Result<bool, StoreError>;
    async fn is_restricted(&self, user_id: UserId) -> Result<bool, StoreError>;
    /// Keeps the account's webhook signing secret, sealed (in place of any
    /// earlier one): false when the account is deleted.
    async fn set_webhook_secret_sealed(
        &self,
        user_id: UserId,
        sealed: &str,
    ) -> Result<bool, StoreError>;
    /// The account's webhook signing secret, sealed; None when it has none.
    async fn webhook_secret_sealed(&self, user_id: UserId) -> Result<Option<String>, StoreError>;
    /// Sets the language notices go out in: false when the account is
    /// deleted.
    async fn set_locale(&self, user_id: UserId, locale: Locale) -> Result<bool, StoreError>;

    /// The user's stored codes, newest first, their new addresses sealed.
    async fn sealed_codes(&self, user_id: UserId) -> Result<Vec<CodeRecord>, StoreError>;
    /// One guess at the user's live code, checked and recorded atomically:
    /// a right guess uses the code up and marks the account verified (the
    /// first time, with `grants` in the same transaction); a wrong one
    /// spends a try. Two guesses at once never both succeed, and never
    /// spend more than [`MAX_CODE_TRIES`] tries.
    async fn check_code(
        &self,
        user_id: UserId,
        code_hash: &str,
        grants: VerificationGrants,
    ) -> Result<CodeCheck, StoreError>;

    /// Up to `limit` accounts after `after` (by id), with their addresses as
    /// stored, to reseal; with `only_unsealed`, only those from before
    /// sealing (none, on a database that never had any, in one query).
    async fn stored_contacts(
        &self,
        after: Option<UserId>,
        limit: u32,
        only_unsealed: bool,
    ) -> Result<Vec<StoredContacts>, StoreError>;
    /// How many accounts there are (deleted ones too).
    async fn account_count(&self) -> Result<u64, StoreError>;
    /// Writes an account's addresses resealed (indexes and sealed text).
    async fn reseal_contacts(&self, contacts: &StoredContacts) -> Result<(), StoreError>;
    /// Keeps `fingerprint` as the database's, unless it has one: the one
    /// it has.
    async fn pii_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError>;
}
