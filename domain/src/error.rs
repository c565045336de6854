//! The one error a domain constructor returns: which field was wrong and why.

use serde::Serialize;

/// Invalid input, naming the field so an API can report it back verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `arms[1].weight`.
    pub field: String,
    /// Human-readable reason.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Free text (a title, a description, a name) must not hold U+0000:
    /// PostgreSQL's `text` and `jsonb` cannot store it, so it would fail the
    /// write instead of being refused here with the field named.
    pub fn check_storable(field: impl Into<String>, text: &str) -> Result<(), Self> {
        if text.contains('\0') {
            return Err(Self::new(
                field,
                "must not contain the NUL character (U+0000)",
            ));
        }
        Ok(())
    }

    /// Prefix the field with a parent path, so nested validation reports `arms[2].key`.
    pub fn within(mut self, parent: impl AsRef<str>) -> Self {
        self.field = format!("{}.{}", parent.as_ref(), self.field);
        self
    }
}
