//! Turning what a user typed into an image ID, as rkt does: a full image ID, an
//! unambiguous prefix of one (`sha512-1e2f`), or a label query, the image name
//! with an optional version and more labels
//! (`example.com/app:1.0,arch=amd64,os=linux`), matching the newest import.

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
        count => Err(StoreError::Ambiguous {
            reference: reference.to_string(),
            count,
            matches: found.iter().map(ImageId::as_str).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// `name[:version][,label=value...]`, version being the `version` label. AC
/// identifiers have no `:` or `,`, so the first `:` separates the version and each
/// `,` a label.
fn resolve_name(store: &Store, reference: &str) -> Result<ImageId, StoreError> {
    let (name, labels, version) = parse_query(reference)?;
    let images = index::list(store)?;
    newest_matching(&images, &name, &labels)
        // `:latest` means the newest when no image carries that literal version.
        .or_else(|| {
            (version.as_deref() == Some("latest")).then(|| {
                let others: Vec<Label> = labels
                    .iter()
                    .filter(|l| l.name.as_str() != "version")
                    .cloned()
                    .collect();
                newest_matching(&images, &name, &others)
            })?
        })
        .map(|info| info.id.clone())
        .ok_or_else(|| StoreError::NotFound(reference.to_string()))
}

/// The name, every label asked for (the version included), and the version.
fn parse_query(reference: &str) -> Result<(ACIdentifier, Vec<Label>, Option<String>), StoreError> {
    let invalid = |reason: String| StoreError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    let mut parts = reference.split(',');
    let head = parts.next().unwrap_or_default();
    let (name, version) = match head.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (head, None),
    };
    if name.is_empty() {
        return Err(invalid("empty image name".into()));
    }
    if version == Some("") {
        return Err(invalid("empty version after `:`".into()));
    }
    let name = ACIdentifier::new(name).map_err(|e| invalid(e.to_string()))?;
    let mut labels: Vec<Label> = Vec::new();
    let mut add = |label: &str, value: &str| -> Result<(), StoreError> {
        let label = ACIdentifier::new(label).map_err(|e| invalid(format!("label {label:?}: {e}")))?;
        if labels.iter().any(|l| l.name == label) {
            return Err(invalid(format!("label {label} given twice")));
        }
        labels.push(Label {
            name: label,
            value: value.to_string(),
        });
        Ok(())
    };
    if let Some(version) = version {
        add("version", version)?;
    }
    for part in parts {
        let Some((label, value)) = part.split_once('=') else {
            return Err(invalid(format!("{part:?} is not label=value")));
        };
        add(label, value)?;
    }
    Ok((name, labels, version.map(str::to_string)))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::testutil::{self, Aci, manifest, simple};

    #[test]
    fn full_id_and_prefixes_resolve() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let full = id.as_str();
        assert_eq!(store.resolve(full).expect("full"), id);
        assert_eq!(store.resolve(&full[..7 + 64]).expect("store key"), id);
        assert_eq!(store.resolve(&full[..7 + 70]).expect("long prefix"), id);
        assert_eq!(store.resolve(&full[..7 + 12]).expect("prefix"), id);
        assert_eq!(store.resolve(&full[..8]).expect("one hex digit"), id);
        assert_eq!(
            store
                .resolve(&full[..20].to_ascii_uppercase().replace("SHA512", "sha512"))
                .expect("upper"),
            id
        );
        let mut wrong = full.to_string();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(wrong.len() - 1.., last);
        assert!(matches!(store.resolve(&wrong), Err(StoreError::NotFound(_))));
        for bad in ["sha512-", "sha512-xyz", &format!("{full}0")] {
            assert!(
                matches!(store.resolve(bad), Err(StoreError::InvalidReference { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_matches() {
        let (_dir, store) = testutil::store();
        // 17 images: two of them must share their first hex digit.
        let ids: Vec<ImageId> = (0..17)
            .map(|i| testutil::import(&store, &simple("example.com/app", &i.to_string(), "f", b"x")))
            .collect();
        let first = |id: &ImageId| id.as_str()[..8].to_string();
        let prefix = ids
            .iter()
            .map(first)
            .find(|p| ids.iter().filter(|id| first(id) == *p).count() > 1)
            .expect("pigeonhole");
        match store.resolve(&prefix) {
            Err(StoreError::Ambiguous {
                reference,
                count,
                matches,
            }) => {
                assert_eq!(reference, prefix);
                assert_eq!(count, ids.iter().filter(|id| first(id) == prefix).count());
                for id in ids.iter().filter(|id| first(id) == prefix) {
                    assert!(matches.contains(id.as_str()), "{matches}");
                }
            }
            other => panic!("expected Ambiguous, got {other:?}"),
        }
    }

    #[test]
    fn names_resolve_to_the_newest_matching_import() {
        let (_dir, store) = testutil::store();
        let v1 = testutil::import(&store, &simple("example.com/app", "1.0", "f", b"1"));
        let v2 = testutil::import(&store, &simple("example.com/app", "2.0", "f", b"2"));
        let latest = testutil::import(&store, &simple("example.com/app", "latest", "f", b"3"));
        let other = testutil::import(&store, &simple("example.com/other", "1.0", "f", b"4"));
        assert_eq!(store.resolve("example.com/app:1.0").expect("v1"), v1);
        assert_eq!(store.resolve("example.com/app:2.0").expect("v2"), v2);
        assert_eq!(
            store.resolve("example.com/app:latest").expect("latest label"),
            latest
        );
        assert_eq!(store.resolve("example.com/app").expect("newest"), latest);
        assert_eq!(
            store.resolve("example.com/other:latest").expect("newest other"),
            other
        );
        // Re-importing v1 makes it the newest import.
        testutil::import(&store, &simple("example.com/app", "1.0", "f", b"1"));
        assert_eq!(store.resolve("example.com/app").expect("newest"), v1);
        assert!(matches!(
            store.resolve("example.com/app:3.0"),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.resolve("example.com/none"),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.resolve(":1.0"),
            Err(StoreError::InvalidReference { .. })
        ));
        assert!(matches!(
            store.resolve("example.com/app:"),
            Err(StoreError::InvalidReference { .. })
        ));
    }

    #[test]
    fn label_queries_resolve_like_rkt() {
        let (_dir, store) = testutil::store();
        let m = |arch: &str, v: &str| {
            Aci::new(&manifest(
                "example.com/app",
                &[("version", v), ("arch", arch)],
                json!({}),
            ))
            .finish()
        };
        let amd = testutil::import(&store, &m("amd64", "1"));
        let arm = testutil::import(&store, &m("aarch64", "1"));
        let arm2 = testutil::import(&store, &m("aarch64", "2"));
        assert_eq!(store.resolve("example.com/app,arch=amd64").expect("amd"), amd);
        assert_eq!(
            store.resolve("example.com/app:1,arch=aarch64").expect("arm 1"),
            arm
        );
        assert_eq!(store.resolve("example.com/app,version=1").expect("newest 1"), arm);
        assert_eq!(
            store.resolve("example.com/app,arch=aarch64").expect("newest arm"),
            arm2
        );
        assert_eq!(
            store
                .resolve("example.com/app:latest,arch=amd64")
                .expect("latest amd"),
            amd
        );
        assert!(matches!(
            store.resolve("example.com/app,arch=s390x"),
            Err(StoreError::NotFound(_))
        ));
        for bad in [
            "example.com/app,arch",
            "example.com/app:1,version=1",
            "example.com/app,arch=a,arch=b",
            "example.com/app,Bad_Label=x",
        ] {
            assert!(
                matches!(store.resolve(bad), Err(StoreError::InvalidReference { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn find_by_name_needs_every_label() {
        let (_dir, store) = testutil::store();
        let m = |arch: &str, v: &str| {
            Aci::new(&manifest(
                "example.com/app",
                &[("version", v), ("arch", arch)],
                json!({}),
            ))
            .finish()
        };
        let amd = testutil::import(&store, &m("amd64", "1"));
        let arm = testutil::import(&store, &m("aarch64", "1"));
        let name = ACIdentifier::new("example.com/app").expect("name");
        let label = |n: &str, v: &str| Label {
            name: ACIdentifier::new(n).expect("label"),
            value: v.into(),
        };
        assert_eq!(store.find_by_name(&name, &[]).expect("any"), Some(arm.clone()));
        assert_eq!(
            store.find_by_name(&name, &[label("arch", "amd64")]).expect("amd"),
            Some(amd)
        );
        assert_eq!(
            store
                .find_by_name(&name, &[label("arch", "aarch64"), label("version", "1")])
                .expect("arm"),
            Some(arm)
        );
        assert_eq!(
            store
                .find_by_name(&name, &[label("arch", "s390x")])
                .expect("none"),
            None
        );
        assert_eq!(
            store.find_by_name(&name, &[label("os", "linux")]).expect("none"),
            None
        );
    }
}
