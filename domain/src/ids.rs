//! Identifier newtypes that parse once and cannot hold an invalid value.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ValidationError;

const MAX_KEY_LEN: usize = 64;
const MAX_USER_ID_LEN: usize = 128;

fn check_key(field: &str, value: &str, max_len: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_len} characters"),
        ));
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ValidationError::new(
            field,
            "must be printable ASCII without whitespace",
        ));
    }
    Ok(())
}

macro_rules! string_key {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parse, naming the default field in the error.
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                Self::parse_field($field, value)
            }

            /// Parse, naming `field` in the error (for nested input).
            pub fn parse_field(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_key(field, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_key!(
    /// A user as the front-end knows them; hashed for assignment, so kept verbatim.
    UserId, "user_id", MAX_USER_ID_LEN
);
string_key!(
    /// Stable key of an experiment (`home`, `detail-page`), used in URLs and hashing.
    ExperimentKey, "experiment", MAX_KEY_LEN
);
string_key!(
    /// Key of an arm within one experiment (`control`, `als`).
    ArmKey, "arm", MAX_KEY_LEN
);
string_key!(
    /// Key of a recommendation algorithm (`popularity`, `item_knn`, `als`).
    AlgorithmKey, "algorithm", MAX_KEY_LEN
);

/// A movie in the catalog; positive so that 0 can never be mistaken for "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct MovieId(i64);

impl MovieId {
    pub fn parse(value: i64) -> Result<Self, ValidationError> {
        Self::parse_field("movie_id", value)
    }

    pub fn parse_field(field: &str, value: i64) -> Result<Self, ValidationError> {
        if value <= 0 {
            return Err(ValidationError::new(field, "must be a positive integer"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for MovieId {
    type Error = ValidationError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<MovieId> for i64 {
    fn from(value: MovieId) -> Self {
        value.0
    }
}

impl fmt::Display for MovieId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The unique id a producer gives an event; the whole pipeline dedups on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| ValidationError::new("event_id", "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for EventId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies one served recommendation list, so later clicks can be attributed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(Uuid);

impl RequestId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for RequestId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reject_empty_whitespace_and_non_ascii() {
        assert!(ExperimentKey::parse("home").is_ok());
        assert_eq!(ExperimentKey::parse("").unwrap_err().field, "experiment");
        assert!(ArmKey::parse("a b").is_err());
        assert!(ArmKey::parse("ü").is_err());
        assert!(UserId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn movie_ids_are_positive() {
        assert!(MovieId::parse(1).is_ok());
        assert!(MovieId::parse(0).is_err());
        assert!(serde_json::from_str::<MovieId>("-3").is_err());
    }

    #[test]
    fn keys_validate_on_deserialize() {
        assert!(serde_json::from_str::<UserId>("\"u 1\"").is_err());
        assert_eq!(
            serde_json::from_str::<UserId>("\"u1\"").unwrap().as_str(),
            "u1"
        );
    }
}
