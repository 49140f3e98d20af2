//! The image store under `$dir/cas`: a content-addressed blob store of image
//! archives, an index of what is in it, and a tree store of rendered root
//! filesystems that every run of the same image (with the same dependencies) reuses.
//!
//! SKELETON: signatures are fixed; bodies are being filled in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::schema::{ACIdentifier, ImageId, ImageManifest, Label};

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
    pub fn import(&self, _archive: &mut dyn Read, _origin: &str) -> Result<ImageId, StoreError> {
        unimplemented!("skeleton")
    }
    /// Imports a file, or returns the ID recorded for it when the file is unchanged
    /// since it was last imported (same device, inode, size and mtime): no hashing.
    pub fn import_file(&self, _path: &Path) -> Result<ImageId, StoreError> {
        unimplemented!("skeleton")
    }
    pub fn manifest(&self, _id: &ImageId) -> Result<ImageManifest, StoreError> {
        unimplemented!("skeleton")
    }
    pub fn info(&self, _id: &ImageId) -> Result<ImageInfo, StoreError> {
        unimplemented!("skeleton")
    }
    /// Full ID, unambiguous ID prefix (`sha512-abc...`), or `name[:version]`.
    pub fn resolve(&self, _reference: &str) -> Result<ImageId, StoreError> {
        unimplemented!("skeleton")
    }
    /// The newest image with this name whose labels include all of `labels`.
    pub fn find_by_name(
        &self,
        _name: &ACIdentifier,
        _labels: &[Label],
    ) -> Result<Option<ImageId>, StoreError> {
        unimplemented!("skeleton")
    }
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        unimplemented!("skeleton")
    }
    /// Renders the image with its dependencies (and pathWhitelist) once; later calls
    /// return the same tree without touching the archive.
    pub fn render(&self, _id: &ImageId) -> Result<RenderedTree, StoreError> {
        unimplemented!("skeleton")
    }
    /// The rootfs of an already-rendered tree, by the tree ID a pod recorded.
    pub fn tree_rootfs(&self, _tree_id: &str) -> Result<PathBuf, StoreError> {
        unimplemented!("skeleton")
    }
}

/// Copies a rendered tree (for --no-overlay), keeping modes, owners, times,
/// symlinks and device nodes, never following a symlink.
pub fn copy_tree(_src: &Path, _dst: &Path) -> std::io::Result<()> {
    unimplemented!("skeleton")
}
