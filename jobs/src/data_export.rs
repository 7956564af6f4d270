use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Job, UserId};

/// A portable copy of an account's data, the owner's right: one ZIP in
/// private object storage, under [`DataExport::object_key`], streamed there
/// entry by entry. The account owns the job (so `GET /v1/jobs/{id}` and
/// `GET /v1/me/exports/{id}` show it to them alone); the payload names the
/// user anyway, so the handler never trusts a missing owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataExport {
    pub user: UserId,
}

impl DataExport {
    /// The folder of every account's exports.
    pub const FOLDERS: &'static str = "exports/";

    /// Where every export of `user` lives: account deletion removes the
    /// folder, retention removes each file `retention.export_days` after it
    /// was written.
    pub fn folder(user: UserId) -> String {
        format!("exports/{}/", user.0)
    }

    /// The ZIP of the export job `job_id`.
    pub fn object_key(user: UserId, job_id: uuid::Uuid) -> String {
        format!("{}{job_id}.zip", DataExport::folder(user))
    }
}

impl Job for DataExport {
    type Result = DataExportResult;
    const KIND: &'static str = "data_export";
    const QUEUE: &'static str = "exports";
    const MAX_ATTEMPTS: u32 = 5;
    // An account with many images takes a while; each attempt starts over.
    const TIMEOUT: Duration = Duration::from_secs(3600);
}

/// What an export wrote. The link is not here: it is signed when the
/// export is read (`GET /v1/me/exports/{id}`), never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataExportResult {
    /// The ZIP's object key.
    pub object_key: String,
    /// The ZIP's size in bytes.
    pub bytes: u64,
    /// Entries per file of the ZIP (`generations.json`: 3, `images`: 3, …),
    /// as the manifest has them.
    pub counts: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_in_the_users_folder() {
        let user = UserId(uuid::Uuid::nil());
        let job = uuid::Uuid::from_u128(7);
        let key = DataExport::object_key(user, job);
        assert!(key.starts_with(&DataExport::folder(user)));
        assert!(key.ends_with(".zip"));
    }
}
