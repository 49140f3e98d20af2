//! What the store remembers about images fetched from URLs: per URL, the image it
//! yielded, its ETag and its Cache-Control max-age, so `--pull-policy=update` asks
//! the server only when the cached answer is stale and downloads only when the
//! image changed.
//!
//! ```text
//! cas/remote/<sha256 of the URL>.json       RemoteRecord
//! ```
//!
//! Records are replaced atomically; a reader sees the old or the new one. A record
//! whose image was removed from the store is simply stale: the next fetch replaces it.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{IoContext, Store, StoreError, cas, decompress};
use crate::schema::{ImageId, ImageManifest};

/// One URL's cached answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteRecord {
    pub url: String,
    pub id: ImageId,
    /// The server's ETag, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// Cache-Control max-age in seconds: until then the record is fresh and the
    /// server is not asked at all.
    pub max_age: Option<u64>,
    /// When the image was last downloaded or confirmed unchanged (304).
    pub checked_at: SystemTime,
}

impl RemoteRecord {
    /// Whether the server's cache lifetime for this answer has not run out yet.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        let Some(max_age) = self.max_age else {
            return false;
        };
        now.duration_since(self.checked_at)
            .is_ok_and(|age| age < Duration::from_secs(max_age))
    }
}

impl Store {
    fn remote_dir(&self) -> PathBuf {
        self.dir.join("remote")
    }

    fn remote_path(&self, url: &str) -> PathBuf {
        self.remote_dir()
            .join(format!("{}.json", hex::encode(Sha256::digest(url.as_bytes()))))
    }

    /// The record for `url`, if one was written and its image is still in the store.
    pub fn remote(&self, url: &str) -> Result<Option<RemoteRecord>, StoreError> {
        let path = self.remote_path(url);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
        };
        // A record we cannot parse is treated as absent: it only ever saves a download.
        let Ok(record) = serde_json::from_slice::<RemoteRecord>(&bytes) else {
            tracing::warn!(path = %path.display(), "ignoring unreadable remote record");
            return Ok(None);
        };
        if record.url != url {
            return Ok(None);
        }
        match self.info(&record.id) {
            Ok(_) => Ok(Some(record)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remembers (or replaces) what `record.url` yielded.
    pub fn set_remote(&self, record: &RemoteRecord) -> Result<(), StoreError> {
        self.ensure_dirs(&[self.remote_dir()])?;
        let path = self.remote_path(&record.url);
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| StoreError::io(format!("encode {}", path.display()), e.into()))?;
        crate::fsutil::atomic_write(&path, &bytes).ctx(|| format!("write {}", path.display()))
    }

    /// A directory on the store's filesystem for downloads in progress (so a finished
    /// download can be imported or renamed without a copy across filesystems).
    /// Whatever a crashed process leaves here is garbage.
    pub fn download_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.tmp_dir();
        self.ensure_dirs(std::slice::from_ref(&dir))?;
        Ok(dir)
    }
}

/// Reads an ACI (plain or compressed) only as far as its `manifest` entry and
/// returns it, without storing anything: lets a finder learn the image's name (which
/// decides the keys that may sign it) before the image enters the store.
pub fn read_manifest(archive: &mut dyn Read) -> Result<ImageManifest, StoreError> {
    let corrupt = |e: std::io::Error| StoreError::Corrupt(e.to_string());
    let stream = decompress::uncompressed(archive).map_err(corrupt)?;
    let mut tar = tar::Archive::new(stream);
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path_bytes();
        let mut name: &[u8] = &path;
        while let Some(rest) = name.strip_prefix(b"./") {
            name = rest;
        }
        if name != b"manifest" {
            continue;
        }
        if entry.size() > cas::MANIFEST_MAX {
            return Err(StoreError::InvalidManifest("larger than the size limit".into()));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        return ImageManifest::from_json(&bytes).map_err(|e| StoreError::InvalidManifest(e.to_string()));
    }
    Err(StoreError::InvalidManifest(
        "missing: the archive has no `manifest` entry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_max_age() {
        let now = SystemTime::now();
        let mut record = RemoteRecord {
            url: "http://x/y.aci".into(),
            id: ImageId::from_sha512_hex(&"a".repeat(128)),
            etag: None,
            max_age: Some(60),
            checked_at: now - Duration::from_secs(30),
        };
        assert!(record.is_fresh(now));
        record.checked_at = now - Duration::from_secs(61);
        assert!(!record.is_fresh(now));
        record.max_age = None;
        assert!(!record.is_fresh(now));
    }

    #[test]
    fn record_round_trips_and_needs_its_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let record = RemoteRecord {
            url: "http://x/y.aci".into(),
            id: ImageId::from_sha512_hex(&"a".repeat(128)),
            etag: Some("\"v1\"".into()),
            max_age: None,
            checked_at: SystemTime::now(),
        };
        store.set_remote(&record).expect("write");
        // The image is not in the store, so the record is stale and not returned.
        assert_eq!(store.remote(&record.url).expect("read"), None);
        assert_eq!(store.remote("http://other").expect("read"), None);
    }
}
