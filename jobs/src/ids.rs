//! Typed ids at the seams between crates: a user's id cannot be passed
//! where a job's is meant, and neither is re-parsed from text on the way.
//! Both serialize as the bare UUID, so payloads and API bodies keep their
//! shape.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                $name(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(s.parse()?))
            }
        }
    };
}

id!(
    /// An account: the owner of jobs, generations and images.
    UserId
);

id!(
    /// A purchase of credits: opened at checkout, paid by the merchant's
    /// signed notification. Random (v4), since checkout links carry it.
    OrderId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_is_the_bare_uuid_on_the_wire() {
        let id = UserId(Uuid::now_v7());
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{}\"", id.0));
        assert_eq!(serde_json::from_str::<UserId>(&json).expect("parse"), id);
        assert_eq!(id.to_string().parse::<UserId>().expect("parse"), id);
    }
}
