//! `rkt run ./app.aci` twice must not hash the archive twice: a small record per
//! imported file remembers its identity (device, inode, size, mtime, ctime) and the
//! ID it produced. An unchanged file is answered from the record with two stats.
//!
//! ctime is kept beside mtime because mtime can be set back by anyone who can write
//! the file (`touch -r`, `cp -p`); ctime cannot.

use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha512};

use super::{IoContext, Store, StoreError, index};
use crate::schema::ImageId;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(meta: &Metadata) -> Self {
        let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FileRecord {
    /// The canonical path, for humans and as a check against key collisions.
    path: String,
    identity: Identity,
    id: ImageId,
}

pub(super) fn import_file(store: &Store, path: &Path) -> Result<ImageId, StoreError> {
    let canonical = std::fs::canonicalize(path).ctx(|| format!("open {}", path.display()))?;
    let shown = canonical.to_string_lossy().into_owned();
    let meta = std::fs::metadata(&canonical).ctx(|| format!("stat {shown}"))?;
    if !meta.is_file() {
        return Err(StoreError::io(
            format!("import {shown}"),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let record_path = store
        .files_dir()
        .join(format!("{}.json", path_key(canonical.as_os_str().as_bytes())));
    if let Some(record) = read_record(&record_path)
        && record.path == shown
        && record.identity == Identity::of(&meta)
        && index::has_image(store, &record.id)
    {
        return Ok(record.id);
    }

    let mut file = File::open(&canonical).ctx(|| format!("open {shown}"))?;
    // The identity of what is actually read: if the file changes while it is being
    // imported, its mtime moves past the recorded one and the next call re-imports.
    let identity = Identity::of(&file.metadata().ctx(|| format!("stat {shown}"))?);
    let id = store.import(&mut file, &shown)?;
    let record = FileRecord {
        path: shown,
        identity,
        id: id.clone(),
    };
    // The image is stored; failing to remember the file only costs a re-hash later.
    if let Err(e) = write_record(store, &record_path, &record) {
        tracing::warn!(path = %record.path, error = %e, "could not record imported file");
    }
    Ok(id)
}

/// File name for a path of any length: a hash of its bytes.
fn path_key(path: &[u8]) -> String {
    let digest = Sha512::digest(path);
    hex::encode(&digest[..16])
}

fn read_record(path: &Path) -> Option<FileRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(store: &Store, path: &Path, record: &FileRecord) -> Result<(), StoreError> {
    store.ensure_dirs(&[store.files_dir()])?;
    let bytes = serde_json::to_vec(record).map_err(|e| StoreError::io("encode file record", e.into()))?;
    crate::fsutil::atomic_write(path, &bytes).ctx(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cas::HASHED;
    use crate::store::testutil::{self, simple};

    fn hashed() -> usize {
        HASHED.with(|n| n.get())
    }

    #[test]
    fn an_unchanged_file_is_not_hashed_again() {
        let (dir, store) = testutil::store();
        let path = dir.path().join("app.aci");
        std::fs::write(&path, testutil::gzip(&simple("example.com/app", "1", "f", b"x"))).expect("write");
        let start = hashed();
        let id = store.import_file(&path).expect("first import");
        assert_eq!(hashed(), start + 1);
        assert_eq!(store.info(&id).expect("info").origin, path.to_string_lossy());

        // Fast path, also through another spelling of the same path.
        let other_spelling = dir.path().join(".").join("app.aci");
        assert_eq!(store.import_file(&path).expect("again"), id);
        assert_eq!(store.import_file(&other_spelling).expect("again"), id);
        assert_eq!(hashed(), start + 1, "no re-hash of an unchanged file");

        // A changed file is imported again.
        std::fs::write(&path, simple("example.com/app", "2", "f", b"y")).expect("rewrite");
        let id2 = store.import_file(&path).expect("changed");
        assert_ne!(id2, id);
        assert_eq!(hashed(), start + 2);
        assert_eq!(store.import_file(&path).expect("again"), id2);
        assert_eq!(hashed(), start + 2);

        // So is one whose image was removed from the store.
        store.remove(&id2).expect("remove");
        assert_eq!(store.import_file(&path).expect("re-import"), id2);
        assert_eq!(hashed(), start + 3);
    }

    #[test]
    fn a_file_restored_with_its_old_mtime_is_still_noticed() {
        let (dir, store) = testutil::store();
        let path = dir.path().join("app.aci");
        std::fs::write(&path, simple("example.com/app", "1", "f", b"x")).expect("write");
        let id = store.import_file(&path).expect("import");
        let mtime = std::fs::metadata(&path).expect("stat").modified().expect("mtime");
        // Same size, same inode, mtime put back: only ctime tells.
        std::fs::write(&path, simple("example.com/app", "1", "f", b"z")).expect("rewrite");
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        assert_ne!(store.import_file(&path).expect("import"), id);
    }

    #[test]
    fn directories_and_missing_files_are_errors() {
        let (dir, store) = testutil::store();
        let err = store.import_file(dir.path()).expect_err("dir");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = store
            .import_file(&dir.path().join("nope.aci"))
            .expect_err("missing");
        assert!(err.to_string().contains("nope.aci"), "{err}");
    }
}
