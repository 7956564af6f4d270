#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: expected postgres://… or sqlite:…")]
    UnsupportedUrl(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("job {0} not found")]
    NotFound(uuid::Uuid),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
