//! The image index: one small file per image beside its cached manifest, so
//! listing is a readdir, lookups by ID are one read, and a run never opens a blob.
//!
//! The record (`<key>.json`) is the commit point: it is written last on import and
//! removed first on removal, so an image whose record exists has its blob and
//! manifest. The last use is kept apart, as the mtime of `<key>.used`, so that
//! marking an image used is one timestamp update that needs no lock and cannot
//! damage the record.

use std::io;
use std::time::SystemTime;

use super::layout;
use super::{ImageInfo, IoContext, Store, StoreError};
use crate::fsutil::{atomic_write, fsync_dir};
use crate::schema::{ImageId, ImageManifest};

const RECORD: &str = ".json";
const MANIFEST: &str = ".manifest";
const USED: &str = ".used";
/// Names the boot in which the image's blob was published without an fsync; absent
/// once the blob is known durable (see `cas::durable_blob`).
const UNSYNCED: &str = ".unsynced";

/// Writes the manifest and the record of a freshly published image. The caller
/// holds the store lock. Re-importing an image refreshes its record (import time and
/// origin), as rkt does, so "newest import wins" follows what the user last fetched.
pub(super) fn write_record(
    store: &Store,
    id: &ImageId,
    manifest: &ImageManifest,
    manifest_bytes: &[u8],
    size: u64,
    origin: &str,
) -> Result<(), StoreError> {
    let key = layout::key(id)?;
    let now = SystemTime::now();
    let info = ImageInfo {
        id: id.clone(),
        name: manifest.name.clone(),
        labels: manifest.labels.clone(),
        imported_at: now,
        last_used: now,
        size,
        origin: origin.to_string(),
    };
    let record = serde_json::to_vec_pretty(&info)
        .map_err(|e| StoreError::io(format!("encode index record of {id}"), io::Error::other(e)))?;
    let manifest_path = store.index_path(key, MANIFEST);
    atomic_write(&manifest_path, manifest_bytes).ctx(|| format!("write {}", manifest_path.display()))?;
    crate::failpoint::failpoint("fetch.manifest-written");
    let record_path = store.index_path(key, RECORD);
    atomic_write(&record_path, &record).ctx(|| format!("write {}", record_path.display()))?;
    stamp_used(store, key, now)
}

/// Removes an image's index files, record first. The caller holds the store lock.
pub(super) fn remove_record(store: &Store, key: &str) -> Result<(), StoreError> {
    for suffix in [RECORD, MANIFEST, USED, UNSYNCED] {
        let path = store.index_path(key, suffix);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io(format!("remove {}", path.display()), e));
            }
            _ => {}
        }
    }
    let dir = store.index_dir();
    fsync_dir(&dir).ctx(|| format!("fsync {}", dir.display()))
}

pub(super) fn info(store: &Store, id: &ImageId) -> Result<ImageInfo, StoreError> {
    let info = info_by_key(store, layout::key(id)?)?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    // The file is named by the store key; a longer ID given must match in full.
    if info.id.as_str().starts_with(id.as_str()) {
        Ok(info)
    } else {
        Err(StoreError::NotFound(id.to_string()))
    }
}

/// The record stored under `key`, or None if there is none.
pub(super) fn info_by_key(store: &Store, key: &str) -> Result<Option<ImageInfo>, StoreError> {
    let path = store.index_path(key, RECORD);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let mut info: ImageInfo = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::io(format!("read {}", path.display()), io::Error::other(e)))?;
    if let Ok(used) = std::fs::metadata(store.index_path(key, USED)).and_then(|m| m.modified()) {
        info.last_used = info.last_used.max(used);
    }
    Ok(Some(info))
}

/// Records, durably, that the blob under `key` is about to be published unsynced in
/// `boot`. Written before the blob's rename, so no record can name such a blob
/// without it. The caller holds the store lock.
pub(super) fn mark_unsynced(store: &Store, key: &str, boot: &str) -> Result<(), StoreError> {
    let path = store.index_path(key, UNSYNCED);
    atomic_write(&path, boot.as_bytes()).ctx(|| format!("write {}", path.display()))
}

/// The boot the blob under `key` was published unsynced in; None when it is durable.
pub(super) fn unsynced_boot(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    let path = store.index_path(key, UNSYNCED);
    match std::fs::read_to_string(&path) {
        Ok(boot) => Ok(Some(boot.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

/// Forgets that the blob under `key` was unsynced, once it has been synced. The
/// caller holds the store lock.
pub(super) fn mark_synced(store: &Store, key: &str) -> Result<(), StoreError> {
    let path = store.index_path(key, UNSYNCED);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("remove {}", path.display()), e)),
        Ok(()) => {}
    }
    let dir = store.index_dir();
    fsync_dir(&dir).ctx(|| format!("fsync {}", dir.display()))
}

/// Whether the image is in the index: a single stat.
pub(super) fn has_image(store: &Store, id: &ImageId) -> bool {
    layout::key(id).is_ok_and(|key| store.index_path(key, RECORD).exists())
}

/// The manifest exactly as the archive carried it.
pub(super) fn manifest_bytes(store: &Store, id: &ImageId) -> Result<Vec<u8>, StoreError> {
    let path = store.index_path(layout::key(id)?, MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(id.to_string())),
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

pub(super) fn manifest(store: &Store, id: &ImageId) -> Result<ImageManifest, StoreError> {
    let bytes = manifest_bytes(store, id)?;
    ImageManifest::from_json(&bytes).map_err(|e| StoreError::InvalidManifest(format!("{id}: {e}")))
}

/// The store keys of every indexed image, from the directory listing alone.
pub(super) fn keys(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(layout::entries(&store.index_dir())?
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(RECORD).map(str::to_string))
        .collect())
}

pub(super) fn has_record(store: &Store, key: &str) -> bool {
    store.index_path(key, RECORD).exists()
}

/// Keys of index files (manifest, use stamp) whose record is missing.
pub(super) fn keys_without_record(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut keys: Vec<String> = layout::entries(&store.index_dir())?
        .into_iter()
        .filter_map(|(name, _)| {
            let key = name
                .strip_suffix(MANIFEST)
                .or_else(|| name.strip_suffix(USED))
                .or_else(|| name.strip_suffix(UNSYNCED))?;
            (!has_record(store, key)).then(|| key.to_string())
        })
        .collect();
    keys.dedup();
    Ok(keys)
}

/// Every indexed image, oldest import first.
pub(super) fn list(store: &Store) -> Result<Vec<ImageInfo>, StoreError> {
    let mut images = Vec::new();
    for key in keys(store)? {
        match info_by_key(store, &key) {
            Ok(Some(info)) => images.push(info),
            // Removed between the readdir and the read.
            Ok(None) => {}
            Err(e) => tracing::warn!(key, error = %e, "skipping unreadable index record"),
        }
    }
    images.sort_by(|a, b| a.imported_at.cmp(&b.imported_at).then_with(|| a.id.cmp(&b.id)));
    Ok(images)
}

pub(super) fn touch(store: &Store, id: &ImageId) -> Result<(), StoreError> {
    let key = layout::key(id)?;
    if !store.index_path(key, RECORD).exists() {
        return Err(StoreError::NotFound(id.to_string()));
    }
    stamp_used(store, key, SystemTime::now())
}

fn stamp_used(store: &Store, key: &str, when: SystemTime) -> Result<(), StoreError> {
    let path = store.index_path(key, USED);
    std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|f| f.set_modified(when))
        .ctx(|| format!("update {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::{self, simple};

    #[test]
    fn info_and_manifest_come_from_the_index_alone() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        // No blob read: remove it and the index still answers.
        std::fs::remove_file(store.blob_path(layout::key(&id).expect("key"))).expect("rm blob");
        let info = store.info(&id).expect("info");
        assert_eq!(info.id, id);
        assert_eq!(info.labels.len(), 1);
        assert_eq!(
            store.manifest(&id).expect("manifest").name.as_str(),
            "example.com/app"
        );
    }

    #[test]
    fn touch_moves_last_used_only() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let before = store.info(&id).expect("info");
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.touch(&id).expect("touch");
        let after = store.info(&id).expect("info");
        assert!(after.last_used > before.last_used);
        assert_eq!(after.imported_at, before.imported_at);
        assert_eq!(store.list().expect("list")[0].last_used, after.last_used);
    }

    #[test]
    fn unknown_or_malformed_ids_are_not_found() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let mut other = id.as_str().to_string();
        other.replace_range(100..101, if &other[100..101] == "0" { "1" } else { "0" });
        let other = ImageId::parse(&other).expect("parse");
        assert!(
            matches!(store.info(&other), Err(StoreError::NotFound(_))),
            "same key, other ID"
        );
        // Malformed IDs (path tricks included) cannot even be constructed.
        for bad in ["sha512-../../../etc/passwd", "sha512-", "md5-00", ""] {
            assert!(ImageId::parse(bad).is_err(), "the schema refuses {bad:?}");
        }
        assert!(store.list().expect("list").len() == 1);
    }

    #[test]
    fn an_empty_store_lists_nothing_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.list().expect("list").is_empty());
        assert!(matches!(
            store.resolve("example.com/app"),
            Err(StoreError::NotFound(_))
        ));
        assert!(!store.dir().exists());
    }
}
