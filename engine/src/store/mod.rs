//! The image store under `$dir/cas`: a content-addressed blob store of image
//! archives, an index of what is in it, and a tree store of rendered root
//! filesystems that every run of the same image (with the same dependencies) reuses.
//!
//! Every file the store keeps is published by a rename, so a reader (another `rkt`
//! process included) sees an image or a tree either completely or not at all; the
//! store lock is only taken around those short publish steps, never while hashing
//! or extracting. `layout.rs` lists what lives where.

mod cas;
mod copy;
mod decompress;
mod dirfd;
mod extract;
mod filecache;
mod index;
mod layers;
mod layout;
mod remote;
mod resolve;
mod tree;
mod whitelist;
mod xattr;

#[cfg(test)]
mod testutil;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::schema::{ACIdentifier, ImageId, ImageManifest, Label};

pub use copy::copy_tree;
pub use remote::{RemoteRecord, read_manifest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image {0} not found in the store")]
    NotFound(String),
    #[error("image reference {reference:?} is ambiguous: matches {matches}")]
    Ambiguous { reference: String, matches: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The archive is not a readable tar (bad compression stream, truncated, bad header).
    #[error("corrupt image archive: {0}")]
    Corrupt(String),
    /// The archive's `manifest` is missing, too large or does not parse.
    #[error("manifest: {0}")]
    InvalidManifest(String),
    /// An archive entry that would write outside the rootfs or is otherwise refused.
    #[error("unsafe archive entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    /// The dependencies of `image` cannot be assembled (missing, cycle, too deep).
    #[error("image {image}: {reason}")]
    Dependency { image: String, reason: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("tree {0} is not in the tree store")]
    TreeNotFound(String),
}

impl StoreError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attaches "what we were doing, to which path" to an I/O error.
trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(context(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(context(), e.into()))
    }
}

/// What the index knows about one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub id: ImageId,
    pub name: ACIdentifier,
    pub labels: Vec<Label>,
    pub imported_at: SystemTime,
    pub last_used: SystemTime,
    /// Size of the stored (uncompressed) archive in bytes.
    pub size: u64,
    /// Where it came from: a file path or URL, as given.
    pub origin: String,
}

/// A rendered root filesystem in the tree store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedTree {
    pub tree_id: String,
    pub rootfs: PathBuf,
}

/// What `Store::verify` found: how much it checked and every inconsistency, one
/// line each, naming the image, blob or tree concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub images_checked: usize,
    pub trees_checked: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            dir: data_dir.join("cas"),
        })
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Streams an ACI (plain, gzip, bzip2 or xz) into the store while hashing it.
    pub fn import(&self, archive: &mut dyn Read, origin: &str) -> Result<ImageId, StoreError> {
        cas::import(self, archive, origin)
    }
    /// Imports a file, or returns the ID recorded for it when the file is unchanged
    /// since it was last imported (same device, inode, size and mtime): no hashing.
    pub fn import_file(&self, path: &Path) -> Result<ImageId, StoreError> {
        filecache::import_file(self, path)
    }
    pub fn manifest(&self, id: &ImageId) -> Result<ImageManifest, StoreError> {
        index::manifest(self, id)
    }
    pub fn info(&self, id: &ImageId) -> Result<ImageInfo, StoreError> {
        index::info(self, id)
    }
    /// Full ID, unambiguous ID prefix (`sha512-abc...`), or `name[:version]`.
    pub fn resolve(&self, reference: &str) -> Result<ImageId, StoreError> {
        resolve::resolve(self, reference)
    }
    /// The newest image with this name whose labels include all of `labels`.
    pub fn find_by_name(&self, name: &ACIdentifier, labels: &[Label]) -> Result<Option<ImageId>, StoreError> {
        Ok(resolve::newest_matching(&self.list()?, name, labels).map(|info| info.id.clone()))
    }
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        index::list(self)
    }
    /// Renders the image with its dependencies (and pathWhitelist) once; later calls
    /// return the same tree without touching the archive.
    pub fn render(&self, id: &ImageId) -> Result<RenderedTree, StoreError> {
        tree::render(self, id)
    }
    /// The rootfs of an already-rendered tree, by the tree ID a pod recorded.
    pub fn tree_rootfs(&self, tree_id: &str) -> Result<PathBuf, StoreError> {
        tree::rootfs(self, tree_id)
    }
    /// Records that the image was just used (for `rkt image gc`); best-effort and
    /// cheap: one timestamp update, no lock, no rewrite of the index record.
    pub fn touch(&self, id: &ImageId) -> Result<(), StoreError> {
        index::touch(self, id)
    }
    /// Removes an image: its index record, manifest, blob, and every rendered tree
    /// built from it.
    pub fn remove(&self, id: &ImageId) -> Result<(), StoreError> {
        cas::remove(self, id)?;
        tree::remove_trees_of(self, id)
    }
    /// Writes the stored (uncompressed) archive; returns the number of bytes written.
    pub fn export(&self, id: &ImageId, out: &mut dyn Write) -> Result<u64, StoreError> {
        cas::export(self, id, out)
    }
    /// Re-hashes every blob against its ID and checks every tree's completion record.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        cas::verify(self, &mut report)?;
        tree::verify(self, &mut report)?;
        Ok(report)
    }
}
