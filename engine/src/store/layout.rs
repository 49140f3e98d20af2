//! Where everything lives under `$dir/cas`, and the locks that guard it.
//!
//! ```text
//! cas/lock                                  flock: publishing or removing an image
//! cas/prepare.lock                          flock: shared while a tree is rendered and
//!                                           recorded by a pod (or copied out),
//!                                           exclusive while trees are removed
//! cas/tmp/                                  imports and renders in progress (same
//!                                           filesystem, so publishing is a rename)
//! cas/blob/sha512/<2 hex>/<store key>       the uncompressed ACI tar
//! cas/index/<store key>.json                ImageInfo (the commit point of an import)
//! cas/index/<store key>.manifest            the manifest bytes, as in the archive
//! cas/index/<store key>.used                its mtime is the image's last use
//! cas/index/<store key>.unsynced            the boot its blob was stored unsynced in
//! cas/files/<32 hex>.json                   import_file: file identity -> image ID
//! cas/tree/<tree id>/{rootfs/,complete}     a rendered tree and its completion record
//! cas/locks/<tree id>                       flock: rendering that tree
//! ```
//!
//! Names starting with `.` in these directories are `fsutil::atomic_write` temp
//! files and are never listed.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{IoContext, Store, StoreError};
use crate::schema::ImageId;

impl Store {
    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    pub(super) fn blob_root(&self) -> PathBuf {
        self.dir.join("blob").join("sha512")
    }
    /// Takes a key checked by `key()`.
    pub(super) fn blob_path(&self, key: &str) -> PathBuf {
        // Fan out by the first two hex digits, as rkt does, to keep directories small.
        let fanout = key.get(7..9).unwrap_or("00");
        self.blob_root().join(fanout).join(key)
    }
    pub(super) fn index_dir(&self) -> PathBuf {
        self.dir.join("index")
    }
    /// `index/<store key><suffix>`: the record (`.json`), manifest or use stamp.
    pub(super) fn index_path(&self, key: &str, suffix: &str) -> PathBuf {
        self.index_dir().join(format!("{key}{suffix}"))
    }
    pub(super) fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }
    pub(super) fn tree_root(&self) -> PathBuf {
        self.dir.join("tree")
    }
    pub(super) fn tree_lock_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    /// Creates `dirs` (and `cas/` itself) if missing. Write paths call this instead of
    /// `open`, so listing an empty or read-only data dir never needs to write.
    pub(super) fn ensure_dirs(&self, dirs: &[PathBuf]) -> Result<(), StoreError> {
        for dir in dirs {
            std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        }
        Ok(())
    }

    /// Serialises writers that publish or remove images: held for a few renames,
    /// never while hashing. Released when the returned file is dropped.
    pub(super) fn lock_store(&self) -> Result<File, StoreError> {
        self.ensure_dirs(std::slice::from_ref(&self.dir))?;
        lock_file(&self.dir.join("lock"))
    }
}

/// Held while trees are in use by someone who has not yet recorded that use where
/// tree removal looks (a pod's `treeStoreID`), or while trees are removed; see
/// `Store::lock_trees_shared`. Released when dropped.
#[derive(Debug)]
pub struct TreesLock {
    _file: File,
}

impl Store {
    /// Shared: trees may be rendered and used, none removed. One open and one flock.
    pub fn lock_trees_shared(&self) -> Result<TreesLock, StoreError> {
        self.lock_trees(false)
    }
    /// Exclusive: no one is between rendering a tree and recording its use, so the
    /// recorded uses are all there are. Held by `rkt image rm` and `rkt image gc`.
    pub fn lock_trees_exclusive(&self) -> Result<TreesLock, StoreError> {
        self.lock_trees(true)
    }
    fn lock_trees(&self, exclusive: bool) -> Result<TreesLock, StoreError> {
        let path = self.dir.join("prepare.lock");
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ensure_dirs(std::slice::from_ref(&self.dir))?;
                open()
            }
            other => other,
        }
        .ctx(|| format!("open lock {}", path.display()))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .ctx(|| format!("lock {}", path.display()))?;
        Ok(TreesLock { _file: file })
    }
}

/// Opens (creating) `path` and takes an exclusive flock on it; the lock lives as long
/// as the returned file, and dies with the process if it crashes.
pub(super) fn lock_file(path: &Path) -> Result<File, StoreError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("open lock {}", path.display()))?;
    file.lock().ctx(|| format!("lock {}", path.display()))?;
    Ok(file)
}

/// Creates `dir` if missing and, when it was created, makes its entry durable, so a
/// blob or tree renamed into it later does not vanish with its parent in a crash.
pub(super) fn create_durable_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                crate::fsutil::fsync_dir(parent).ctx(|| format!("fsync {}", parent.display()))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io(format!("create {}", dir.display()), e)),
    }
}

/// The store key of `id` (`sha512-` + 64 hex digits), checked, because it becomes a
/// file name: an ID read from a pod record or typed by a user must not be able to
/// name anything but an entry of the store.
pub(super) fn key(id: &ImageId) -> Result<&str, StoreError> {
    let key = id.store_key();
    if is_name_with_hash("sha512-", key) {
        Ok(key)
    } else {
        Err(StoreError::NotFound(id.to_string()))
    }
}

/// `prefix` followed by 64 lowercase hex digits: the shape of every name the store
/// derives from a hash (store keys, tree IDs).
pub(super) fn is_name_with_hash(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The entries of a store directory as (name, path), sorted, without the dot-named
/// temp files of `fsutil::atomic_write`; empty when the directory does not exist yet.
pub(super) fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in listing {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        // Every name the store writes is ASCII; anything else is not ours.
        if let Ok(name) = entry.file_name().into_string()
            && !name.starts_with('.')
        {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A path under `cas/tmp/` that is deleted (file or whole tree) when dropped, unless
/// it was published with `keep`. Errors and panics thus leave no residue behind.
pub(super) struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub(super) fn new(store: &Store, what: &str) -> Self {
        let name = format!("{what}-{}-{}", std::process::id(), crate::fsutil::unique_suffix());
        Self {
            path: store.tmp_dir().join(name),
            keep: false,
        }
    }
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
    /// The path has been renamed into place: nothing is left to clean up.
    pub(super) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let result = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => crate::fsutil::remove_tree(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove store temp entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testutil;

    #[test]
    fn the_trees_lock_is_shared_by_users_and_exclusive_for_removal() {
        let (_dir, store) = testutil::store();
        let first = store.lock_trees_shared().expect("shared");
        let second = store.lock_trees_shared().expect("shared again");
        let path = store.dir().join("prepare.lock");
        let probe = std::fs::File::open(&path).expect("open");
        assert!(probe.try_lock().is_err(), "exclusive while shared is held");
        drop((first, second));
        let exclusive = store.lock_trees_exclusive().expect("exclusive");
        assert!(probe.try_lock_shared().is_err(), "shared while exclusive is held");
        drop(exclusive);
        assert!(probe.try_lock().is_ok());
    }
}
