//! The schema's one error type, and how field paths survive a trip through serde.
//!
//! Validation runs inside `Deserialize`, so a bad value nested anywhere in a manifest is
//! caught. serde only carries a message string back out, though; the field path of a
//! struct-level check (`exec[0]`) would be lost or mangled. Each check that fails inside
//! serde therefore also parks its structured error in a thread-local, and
//! [`from_json`] joins it with the path serde_path_to_error tracked to that struct.

use std::cell::RefCell;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `field` is a path relative to the value that was parsed (`apps[0].mounts[1].volume`);
    /// it is empty when the failing value stands alone (e.g. `ACName::new`).
    #[error("{}", display_invalid(.field, .reason))]
    Invalid { field: String, reason: String },
}

fn display_invalid(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_string()
    } else {
        format!("{field}: {reason}")
    }
}

impl SchemaError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SchemaError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The offending field's path, if this is a validation error.
    pub fn field(&self) -> Option<&str> {
        match self {
            SchemaError::Invalid { field, .. } => Some(field),
            SchemaError::Json(_) => None,
        }
    }

    /// Puts `prefix` in front of the field path (`app` + `exec[0]` = `app.exec[0]`).
    pub fn at(self, prefix: &str) -> Self {
        match self {
            SchemaError::Invalid { field, reason } => SchemaError::Invalid {
                field: join_path(prefix, &field),
                reason,
            },
            other => other,
        }
    }
}

/// Joins two field paths; an index segment attaches without a dot.
pub(crate) fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() || prefix == "." {
        return field.to_string();
    }
    if field.is_empty() {
        return prefix.to_string();
    }
    if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

thread_local! {
    /// The last validation error handed to serde on this thread: (rendered message, field, reason).
    static PENDING: RefCell<Option<(String, String, String)>> = const { RefCell::new(None) };
}

/// Converts a validation failure into a serde error, keeping the structured form aside.
pub(crate) fn to_de_error<E: serde::de::Error>(err: SchemaError) -> E {
    let msg = err.to_string();
    if let SchemaError::Invalid { field, reason } = err {
        PENDING.with(|p| *p.borrow_mut() = Some((msg.clone(), field, reason)));
    }
    E::custom(msg)
}

/// Parses and validates any schema type, naming the offending field on error.
///
/// Syntax errors come back as [`SchemaError::Json`] (with line and column); type and
/// validation errors as [`SchemaError::Invalid`] with the field path.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SchemaError> {
    // Going through Value first separates syntax errors (which want line/column) from
    // shape errors (which want a path, and whose messages then carry no position suffix).
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    from_value(value)
}

/// Like [`from_json`] for an already parsed JSON value.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, SchemaError> {
    PENDING.with(|p| p.borrow_mut().take());
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let msg = err.inner().to_string();
            let pending = PENDING.with(|p| p.borrow_mut().take());
            Err(match pending {
                Some((pending_msg, field, reason)) if pending_msg == msg => {
                    SchemaError::invalid(join_path(&path, &field), reason)
                }
                _ => match missing_field(&msg) {
                    Some(name) => SchemaError::invalid(join_path(&path, name), "is required"),
                    None => SchemaError::invalid(root_or(&path), msg),
                },
            })
        }
    }
}

/// serde's wording for a missing field is stable; lifting the field into the path keeps
/// every message in the one `path: reason` shape.
fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.strip_suffix('`')
}

fn root_or(path: &str) -> String {
    if path == "." {
        "(document)".to_string()
    } else {
        path.to_string()
    }
}

/// Implements Serialize/Deserialize for a struct derived with `#[serde(remote = "Self")]`,
/// running `$check` (own-level invariants, field paths relative to the struct) after the
/// derived deserializer has built the value.
macro_rules! validated_serde {
    ($ty:ty, $check:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <$ty>::deserialize(deserializer)?;
                let check: fn(&$ty) -> Result<(), $crate::schema::SchemaError> = $check;
                check(&value).map_err($crate::schema::error::to_de_error)?;
                Ok(value)
            }
        }
    };
}
pub(crate) use validated_serde;

/// Implements Display, AsRef, FromStr, TryFrom and serde for a validated string newtype
/// whose constructor is `$ctor(&str) -> Result<Self, SchemaError>`.
macro_rules! string_newtype {
    ($ty:ident, $ctor:path) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::schema::SchemaError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ctor(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $crate::schema::SchemaError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $ctor(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::schema::SchemaError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $ctor(&s)
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(deserializer)?;
                $ctor(&s).map_err($crate::schema::error::to_de_error)
            }
        }
    };
}
pub(crate) use string_newtype;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_join_path_rules() {
        assert_eq!(join_path("app", "exec[0]"), "app.exec[0]");
        assert_eq!(join_path("labels", "[1].name"), "labels[1].name");
        assert_eq!(join_path(".", "acKind"), "acKind");
        assert_eq!(join_path("apps[0]", ""), "apps[0]");
    }

    #[test]
    fn schema_invalid_display_without_field_is_just_the_reason() {
        assert_eq!(SchemaError::invalid("", "bad").to_string(), "bad");
        assert_eq!(SchemaError::invalid("x", "bad").to_string(), "x: bad");
        assert_eq!(SchemaError::invalid("x", "bad").at("a").to_string(), "a.x: bad");
    }

    #[test]
    fn schema_syntax_error_is_json_variant() {
        let err = from_json::<serde_json::Value>(b"{\"a\": ").expect_err("truncated");
        assert!(matches!(err, SchemaError::Json(_)), "{err}");
    }
}
