//! Image IDs: `sha512-` and the 128 lowercase hex digits of the uncompressed ACI's digest.

use super::error::{SchemaError, string_newtype};

/// An image ID: `sha512-` followed by 128 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

const PREFIX: &str = "sha512-";
const HEX_LEN: usize = 128;
const STORE_KEY_HEX_LEN: usize = 64;

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ImageId {
    /// Wraps a digest the caller computed itself (the store's hasher), so it is not
    /// re-validated in release builds.
    pub fn from_sha512_hex(hex: &str) -> Self {
        debug_assert!(
            hex.len() == HEX_LEN && is_lower_hex(hex),
            "not a sha512 hex digest: {hex:?}"
        );
        Self(format!("{PREFIX}{hex}"))
    }

    /// Strict parse of a full image ID; short forms go through [`ImageId::is_prefix_like`].
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let Some(hex) = s.strip_prefix(PREFIX) else {
            return Err(SchemaError::invalid(
                "",
                format!("{s:?} is not an image ID (must start with \"sha512-\")"),
            ));
        };
        if hex.len() != HEX_LEN || !is_lower_hex(hex) {
            return Err(SchemaError::invalid(
                "",
                format!(
                    "{s:?} is not an image ID (\"sha512-\" and {HEX_LEN} lowercase hex digits, got {} characters)",
                    hex.len()
                ),
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest's hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// rkt's store key: `sha512-` and the first 64 hex digits.
    pub fn store_key(&self) -> &str {
        let end = PREFIX.len() + STORE_KEY_HEX_LEN;
        &self.0[..end.min(self.0.len())]
    }

    /// Whether `s` looks like a (possibly shortened) image ID the store could resolve:
    /// `sha512-` and 1 to 128 lowercase hex digits.
    pub fn is_prefix_like(s: &str) -> bool {
        s.strip_prefix(PREFIX)
            .is_some_and(|hex| (1..=HEX_LEN).contains(&hex.len()) && is_lower_hex(hex))
    }

    /// Whether this ID starts with the (short) ID `prefix`.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        Self::is_prefix_like(prefix) && self.0.starts_with(prefix)
    }
}

string_newtype!(ImageId, ImageId::parse);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex128() -> String {
        "0123456789abcdef".repeat(8)
    }

    #[test]
    fn schema_image_id_parse_strict() {
        let id = ImageId::parse(&format!("sha512-{}", hex128())).expect("valid");
        assert_eq!(id.hex(), hex128());
        assert_eq!(id.store_key().len(), "sha512-".len() + 64);
        assert_eq!(ImageId::from_sha512_hex(&hex128()), id);

        for bad in [
            String::new(),
            hex128(),
            format!("sha256-{}", hex128()),
            format!("sha512-{}", &hex128()[..64]),
            format!("sha512-{}0", hex128()),
            format!("sha512-{}", hex128().to_uppercase()),
            format!("sha512-{}g", &hex128()[..127]),
        ] {
            assert!(ImageId::parse(&bad).is_err(), "{bad}");
        }
        let msg = ImageId::parse("sha512-abc").expect_err("short").to_string();
        assert!(msg.contains("128 lowercase hex digits, got 3"), "{msg}");
    }

    #[test]
    fn schema_image_id_prefix_like() {
        assert!(ImageId::is_prefix_like("sha512-a"));
        assert!(ImageId::is_prefix_like(&format!("sha512-{}", hex128())));
        assert!(!ImageId::is_prefix_like("sha512-"));
        assert!(!ImageId::is_prefix_like(&format!("sha512-{}0", hex128())));
        assert!(!ImageId::is_prefix_like("sha512-ABC"));
        assert!(!ImageId::is_prefix_like("abc"));
        let id = ImageId::from_sha512_hex(&hex128());
        assert!(id.matches_prefix("sha512-0123"));
        assert!(!id.matches_prefix("sha512-1"));
    }

    #[test]
    fn schema_image_id_serde() {
        let json = format!("\"sha512-{}\"", hex128());
        let id: ImageId = serde_json::from_str(&json).expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("ser"), json);
        assert!(serde_json::from_str::<ImageId>("\"sha512-...\"").is_err());
    }
}
