//! Column types the two databases store differently, so one row type can
//! be read from either: PostgreSQL has `uuid`, `timestamptz` and `jsonb`;
//! SQLite keeps the same values as text, unix milliseconds and JSON text.
//! Each newtype decodes (and encodes) the native form on each database.

use chrono::{DateTime, Utc};
use sqlx::{
    Decode, Encode, Postgres, Sqlite, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
    sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef},
};
use uuid::Uuid;

use crate::JobState;

/// A UUID column: `uuid` on Postgres, hyphenated text on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id(pub Uuid);

/// A point in time: `timestamptz` on Postgres, unix milliseconds on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time(pub DateTime<Utc>);

/// A JSON document: `jsonb` on Postgres, text on SQLite.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Json(pub serde_json::Value);

impl Json {
    /// The document as `T`; a shape that does not fit is a corrupt row.
    pub fn parse<T: serde::de::DeserializeOwned>(self, what: &str) -> Result<T, crate::StoreError> {
        serde_json::from_value(self.0)
            .map_err(|e| crate::StoreError::Corrupt(format!("{what}: {e}")))
    }
}

// --- Postgres: the native types.

impl Type<Postgres> for Id {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Id {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Id(<Uuid as Decode<Postgres>>::decode(value)?))
    }
}

impl Encode<'_, Postgres> for Id {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Time(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}

impl Encode<'_, Postgres> for Time {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Postgres> for Json {
    fn type_info() -> PgTypeInfo {
        <serde_json::Value as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <serde_json::Value as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Json {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Json(<serde_json::Value as Decode<Postgres>>::decode(
            value,
        )?))
    }
}

impl Encode<'_, Postgres> for Json {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <serde_json::Value as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Postgres> for JobState {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for JobState {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        state(<&str as Decode<Postgres>>::decode(value)?)
    }
}

// --- SQLite: text, integers and JSON text.

impl Type<Sqlite> for Id {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for Id {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Id(text
            .parse()
            .map_err(|_| format!("id {text:?} is not a UUID"))?))
    }
}

impl Encode<'_, Sqlite> for Id {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for Time {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let ms = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_millis(ms)
            .map(Time)
            .ok_or_else(|| format!("time {ms} is out of range").into())
    }
}

impl Encode<'_, Sqlite> for Time {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.0.timestamp_millis(), buf)
    }
}

impl Type<Sqlite> for Json {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for Json {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Json(serde_json::from_str(
            <&str as Decode<Sqlite>>::decode(value)?,
        )?))
    }
}

impl Encode<'_, Sqlite> for Json {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl Type<Sqlite> for JobState {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for JobState {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        state(<&str as Decode<Sqlite>>::decode(value)?)
    }
}

fn state(text: &str) -> Result<JobState, BoxDynError> {
    JobState::parse(text).ok_or_else(|| format!("unknown job state {text:?}").into())
}
