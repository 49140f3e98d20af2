//! AC Name (app, volume, port names) and AC Identifier (image names, label and isolator
//! names).
//!
//! Validity is what appc's reference code enforced: only the allowed characters, and an
//! alphanumeric at both ends. The spec's regular expression would also forbid two
//! separators in a row, but the spec's own examples (`example.com/~user/app_v1`) and
//! the images built with appc's tools rely on them being allowed.

use super::error::{SchemaError, string_newtype};

/// An appc AC Name: lowercase alphanumerics and `-`, starting and ending alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ACName(String);

/// An appc AC Identifier (image names): AC Name characters plus `._~/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ACIdentifier(String);

const NAME_SEPARATORS: &[u8] = b"-";
const IDENTIFIER_SEPARATORS: &[u8] = b"-._~/";

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Allowed characters only, alphanumeric at both ends.
fn check_grammar(s: &str, what: &str, separators: &[u8], allowed: &str) -> Result<(), SchemaError> {
    if s.is_empty() {
        return Err(SchemaError::invalid("", format!("{what} must not be empty")));
    }
    let bytes = s.as_bytes();
    if bytes.iter().any(|b| !is_alnum(*b) && !separators.contains(b)) {
        return Err(SchemaError::invalid(
            "",
            format!("{s:?} is not a valid {what} ({allowed} only)"),
        ));
    }
    let edges_ok = bytes.first().is_some_and(|b| is_alnum(*b)) && bytes.last().is_some_and(|b| is_alnum(*b));
    if !edges_ok {
        return Err(SchemaError::invalid(
            "",
            format!("{s:?} is not a valid {what} (must start and end with a lowercase letter or digit)"),
        ));
    }
    Ok(())
}

/// Lowercases, turns each run of unusable characters into one `fallback` separator and
/// trims separators off the edges. Valid names come back unchanged; anything else comes
/// back valid whenever something alphanumeric is left.
fn sanitize(s: &str, what: &str, separators: &[u8], fallback: u8) -> Result<String, SchemaError> {
    let is_sep = |c: char| u8::try_from(c).is_ok_and(|b| separators.contains(&b));
    let mut out = String::with_capacity(s.len());
    let mut skipped = false;
    for c in s.chars().map(|c| c.to_ascii_lowercase()) {
        let usable = c.is_ascii_lowercase() || c.is_ascii_digit() || is_sep(c);
        if !usable {
            skipped = true;
            continue;
        }
        // One fallback per run, and none where a real separator already divides.
        if skipped && !out.is_empty() && !out.ends_with(is_sep) && !is_sep(c) {
            out.push(char::from(fallback));
        }
        skipped = false;
        out.push(c);
    }
    let out = out.trim_matches(is_sep).to_string();
    if out.is_empty() {
        return Err(SchemaError::invalid(
            "",
            format!("{s:?} has no characters usable in an {what}"),
        ));
    }
    Ok(out)
}

impl ACName {
    pub fn new(s: &str) -> Result<Self, SchemaError> {
        check_grammar(s, "AC Name", NAME_SEPARATORS, "lowercase letters, digits, -")?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lossy conversion for names derived from user input or image names
    /// (`"My_App 2"` -> `my-app-2`); fails only when nothing alphanumeric is left.
    pub fn sanitize(s: &str) -> Result<Self, SchemaError> {
        Ok(Self(sanitize(s, "AC Name", NAME_SEPARATORS, b'-')?))
    }

    /// True when `s` is a valid AC Name.
    pub fn is_valid(s: &str) -> bool {
        Self::new(s).is_ok()
    }
}

impl ACIdentifier {
    pub fn new(s: &str) -> Result<Self, SchemaError> {
        check_grammar(
            s,
            "AC Identifier",
            IDENTIFIER_SEPARATORS,
            "lowercase letters, digits, -._~/",
        )?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lossy conversion (`"Example.com/My App"` -> `example.com/my-app`); fails only when
    /// nothing alphanumeric is left.
    pub fn sanitize(s: &str) -> Result<Self, SchemaError> {
        Ok(Self(sanitize(s, "AC Identifier", IDENTIFIER_SEPARATORS, b'-')?))
    }

    /// For the crate's own constant names, which tests check against the grammar.
    pub(crate) fn from_static(s: &'static str) -> Self {
        debug_assert!(Self::is_valid(s), "{s:?}");
        Self(s.to_string())
    }

    /// True when `s` is a valid AC Identifier.
    pub fn is_valid(s: &str) -> bool {
        Self::new(s).is_ok()
    }

    /// The app name rkt gives an image when `--name` is not used: the last path
    /// component, sanitized (`example.com/busybox` -> `busybox`, `x.org/my_app` -> `my-app`).
    pub fn default_app_name(&self) -> ACName {
        let last = self.0.rsplit('/').next().unwrap_or(&self.0);
        ACName::sanitize(last)
            .or_else(|_| ACName::sanitize(&self.0))
            // Unreachable: an identifier ends in an alphanumeric, so its last component
            // always has one. A fixed name beats a panic on a broken invariant.
            .unwrap_or_else(|_| ACName("app".to_string()))
    }
}

impl From<ACName> for ACIdentifier {
    /// Every AC Name is also an AC Identifier.
    fn from(n: ACName) -> Self {
        ACIdentifier(n.0)
    }
}

string_newtype!(ACName, ACName::new);
string_newtype!(ACIdentifier, ACIdentifier::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_acname_accepts_spec_examples() {
        for ok in [
            "database",
            "product-database",
            "product-database-release",
            "a",
            "0",
            "a-1-b",
        ] {
            assert!(ACName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn schema_acname_rejects_bad_chars_and_edges() {
        for bad in ["", "Foo", "a_b", "a.b", "-a", "a-", "a b", "é"] {
            assert!(ACName::new(bad).is_err(), "{bad}");
        }
        let msg = ACName::new("Foo").expect_err("upper").to_string();
        assert_eq!(
            msg,
            r#""Foo" is not a valid AC Name (lowercase letters, digits, - only)"#
        );
        let msg = ACName::new("").expect_err("empty").to_string();
        assert_eq!(msg, "AC Name must not be empty");
        assert!(
            ACName::new("-a")
                .expect_err("edge")
                .to_string()
                .contains("start and end")
        );
        assert!(
            ACName::new("a--b").is_ok(),
            "appc's code allows doubled separators"
        );
    }

    #[test]
    fn schema_acidentifier_accepts_spec_examples() {
        for ok in [
            "database",
            "example.com/database",
            "example.com/~user/app_v1",
            "sub-domain.example.com/org/product/release",
        ] {
            assert!(ACIdentifier::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn schema_acidentifier_rejects_invalid() {
        for bad in ["", "Os", "a:b", "/a", "a/", "~a", "example.com/a b", "a\u{0}b"] {
            assert!(ACIdentifier::new(bad).is_err(), "{bad}");
        }
        let msg = ACIdentifier::new("Os").expect_err("upper").to_string();
        assert_eq!(
            msg,
            r#""Os" is not a valid AC Identifier (lowercase letters, digits, -._~/ only)"#
        );
    }

    #[test]
    fn schema_acname_sanitize() {
        let s = |x: &str| ACName::sanitize(x).map(|n| n.to_string());
        assert_eq!(s("busybox").ok().as_deref(), Some("busybox"));
        assert_eq!(s("My_App 2").ok().as_deref(), Some("my-app-2"));
        assert_eq!(s("--Hello..World--").ok().as_deref(), Some("hello-world"));
        assert_eq!(s("a.b/c").ok().as_deref(), Some("a-b-c"));
        assert!(s("___").is_err());
        assert!(s("").is_err());
    }

    #[test]
    fn schema_acidentifier_sanitize() {
        let s = |x: &str| ACIdentifier::sanitize(x).map(|n| n.to_string());
        assert_eq!(
            s("Example.com/My App").ok().as_deref(),
            Some("example.com/my-app")
        );
        assert_eq!(s("a//b").ok().as_deref(), Some("a//b"), "valid input is kept");
        assert_eq!(s("a :/b").ok().as_deref(), Some("a/b"));
        assert_eq!(s("/x/").ok().as_deref(), Some("x"));
        assert!(s("::").is_err());
    }

    #[test]
    fn schema_default_app_name_is_sanitized_last_component() {
        let app = |x: &str| {
            ACIdentifier::new(x)
                .expect("valid")
                .default_app_name()
                .to_string()
        };
        assert_eq!(app("example.com/busybox"), "busybox");
        assert_eq!(app("coreos.com/etcd"), "etcd");
        assert_eq!(app("example.com/my_app.v2"), "my-app-v2");
        assert_eq!(app("etcd"), "etcd");
    }

    #[test]
    fn schema_names_serde_validates() {
        let ok: ACName = serde_json::from_str(r#""web""#).expect("valid");
        assert_eq!(ok, "web");
        assert!(serde_json::from_str::<ACName>(r#""Web""#).is_err());
        assert!(serde_json::from_str::<ACIdentifier>(r#""a b""#).is_err());
        assert_eq!(serde_json::to_string(&ok).expect("ser"), r#""web""#);
    }
}
