//! Turning what a user typed (`sha512-1e2f`, `example.com/app:1.0`) into an image ID.

use super::{ImageInfo, Store, StoreError, index};
use crate::schema::{ACIdentifier, ImageId, Label};

const ID_PREFIX: &str = "sha512-";
const KEY_HEX: usize = 64;
const FULL_HEX: usize = 128;

pub(super) fn resolve(store: &Store, reference: &str) -> Result<ImageId, StoreError> {
    match reference.strip_prefix(ID_PREFIX) {
        Some(hex) => resolve_id(store, reference, hex),
        None => resolve_name(store, reference),
    }
}

fn resolve_id(store: &Store, reference: &str, hex: &str) -> Result<ImageId, StoreError> {
    if hex.is_empty() || hex.len() > FULL_HEX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::InvalidReference {
            reference: reference.to_string(),
            reason: format!("an image ID is {ID_PREFIX} followed by 1 to {FULL_HEX} hex digits"),
        });
    }
    let wanted = format!("{ID_PREFIX}{}", hex.to_ascii_lowercase());
    let not_found = || StoreError::NotFound(reference.to_string());
    if hex.len() >= KEY_HEX {
        // Long enough to name the record's file directly: one read, no listing.
        let key = &wanted[..ID_PREFIX.len() + KEY_HEX];
        return match index::info_by_key(store, key)? {
            Some(info) if info.id.as_str().starts_with(&wanted) => Ok(info.id),
            _ => Err(not_found()),
        };
    }
    let matches: Vec<String> = index::keys(store)?
        .into_iter()
        .filter(|key| key.starts_with(&wanted))
        .collect();
    let mut found = Vec::new();
    for key in &matches {
        if let Some(info) = index::info_by_key(store, key)? {
            found.push(info.id);
        }
    }
    match found.len() {
        0 => Err(not_found()),
        1 => Ok(found.remove(0)),
        _ => Err(StoreError::Ambiguous {
            reference: reference.to_string(),
            matches: found.iter().map(ImageId::as_str).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// `name` or `name:version`, version being the `version` label. AC identifiers have
/// no `:`, so the first one separates the version.
fn resolve_name(store: &Store, reference: &str) -> Result<ImageId, StoreError> {
    let invalid = |reason: String| StoreError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    let (name, version) = match reference.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (reference, None),
    };
    if name.is_empty() {
        return Err(invalid("empty image name".into()));
    }
    if version == Some("") {
        return Err(invalid("empty version after `:`".into()));
    }
    let name = ACIdentifier::new(name).map_err(|e| invalid(e.to_string()))?;
    let mut labels = Vec::new();
    if let Some(version) = version {
        labels.push(Label {
            name: ACIdentifier::new("version").map_err(|e| invalid(e.to_string()))?,
            value: version.to_string(),
        });
    }
    let images = index::list(store)?;
    newest_matching(&images, &name, &labels)
        // `:latest` means the newest when no image carries that literal version.
        .or_else(|| (version == Some("latest")).then(|| newest_matching(&images, &name, &[]))?)
        .map(|info| info.id.clone())
        .ok_or_else(|| StoreError::NotFound(reference.to_string()))
}

/// The newest-imported image named `name` whose labels include every one of
/// `labels` (appc dependency matching: a label not asked for matches any value).
pub(super) fn newest_matching<'a>(
    images: &'a [ImageInfo],
    name: &ACIdentifier,
    labels: &[Label],
) -> Option<&'a ImageInfo> {
    images
        .iter()
        .filter(|info| &info.name == name && labels.iter().all(|l| info.labels.contains(l)))
        .max_by(|a, b| a.imported_at.cmp(&b.imported_at).then_with(|| a.id.cmp(&b.id)))
}
