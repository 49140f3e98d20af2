//! The image store under `$dir/cas`: a content-addressed blob store of image
//! archives, an index of what is in it, and a tree store of rendered root
//! filesystems that every run of the same image (with the same dependencies) reuses.
//!
//! Every file the store keeps is published by a rename, so a reader (another `rkt`
//! process included) sees an image or a tree either completely or not at all; the
//! store lock is only taken around those short publish steps, never while hashing
//! or extracting. `layout.rs` lists what lives where.

mod boot;
mod cas;
mod copy;
mod decompress;
mod dirfd;
mod extract;
mod filecache;
mod hashthread;
mod index;
mod layers;
mod layout;
mod output;
mod remote;
mod resolve;
mod sweep;
mod tree;
mod treehash;
mod whitelist;
mod xattr;

#[cfg(test)]
mod testutil;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::schema::{ACIdentifier, ImageId, ImageManifest, Label};

pub use copy::copy_tree;
pub use layout::TreesLock;
pub use output::DirContent;
pub use remote::{RemoteRecord, read_manifest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image {0} not found in the store")]
    NotFound(String),
    #[error(
        "image reference {reference:?} is ambiguous: it matches {count} images ({matches}); give more of the ID"
    )]
    Ambiguous {
        reference: String,
        count: usize,
        matches: String,
    },
    #[error("{0} exists (try --overwrite)")]
    Exists(String),
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
    /// The uncompressed archive outgrows the size limit or the store's free space
    /// (a decompression bomb, or a disk about to fill up).
    #[error("image too large: {0}")]
    TooLarge(String),
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

/// rkt's "last used": stamped whenever an image's archive is read (a first render,
/// extract, export), not on runs that reuse a rendered tree, which read no archive.
/// A failure (a read-only store) only makes `image gc` see the image as older.
fn touch_on_read(store: &Store, id: &ImageId) {
    if let Err(e) = index::touch(store, id) {
        tracing::debug!(%id, error = %e, "could not record the image's use");
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

/// A rendered tree as the tree store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeInfo {
    pub tree_id: String,
    /// The images applied, deepest dependency first, the image itself last; empty
    /// when the tree's record cannot be read.
    pub images: Vec<ImageId>,
    /// Bytes of file content in its rootfs.
    pub size: u64,
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
    /// See `rendering_on_import`.
    render_on_import: bool,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            dir: data_dir.join("cas"),
            render_on_import: false,
        })
    }
    /// The same store, whose imports also render the image's tree from the same
    /// read of the archive (for an image without dependencies), so that a run of
    /// a new image reads, hashes and writes its data once. For callers that are
    /// about to render it (run, prepare); a plain fetch keeps only the archive.
    pub fn rendering_on_import(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            render_on_import: true,
        }
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
    /// Full ID, unambiguous ID prefix (`sha512-abc...`), or a label query:
    /// `name[:version][,label=value...]`.
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
    /// Removes an image's index record, manifest and blob. Its rendered trees stay:
    /// pods may use them (see `crate::image_gc`, which decides which trees go).
    pub fn remove(&self, id: &ImageId) -> Result<(), StoreError> {
        cas::remove(self, id)
    }
    /// Every rendered tree.
    pub fn trees(&self) -> Result<Vec<TreeInfo>, StoreError> {
        tree::list(self)
    }
    /// Deletes a rendered tree. The caller holds `lock_trees_exclusive` and knows
    /// no pod uses it.
    pub fn remove_tree(&self, tree_id: &str) -> Result<(), StoreError> {
        tree::remove(self, tree_id)
    }
    /// Writes the stored (uncompressed) archive; returns the number of bytes written.
    pub fn export(&self, id: &ImageId, out: &mut dyn Write) -> Result<u64, StoreError> {
        cas::export(self, id, out)
    }
    /// Removes blobs and index files a killed import or removal left without their
    /// record (invisible to every command otherwise); returns their store keys.
    pub fn remove_orphans(&self) -> Result<Vec<String>, StoreError> {
        cas::remove_orphans(self)
    }
    /// Deletes the temp files and directories of `rkt` processes that died (killed
    /// mid-import or mid-render); returns how many it removed.
    pub fn remove_abandoned_temps(&self) -> Result<usize, StoreError> {
        sweep::remove_abandoned(self)
    }
    /// Writes the stored archive to the file `dest` (temp file, fsync, rename).
    pub fn export_to(&self, id: &ImageId, dest: &Path, overwrite: bool) -> Result<u64, StoreError> {
        output::export_to(self, id, dest, overwrite)
    }
    /// Unpacks the image (without its dependencies) into the directory `dest`.
    pub fn extract_to(
        &self,
        id: &ImageId,
        dest: &Path,
        content: DirContent,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        output::extract_to(self, id, dest, content, overwrite)
    }
    /// Copies the image's rendered tree (dependencies applied) into `dest`.
    pub fn render_to(
        &self,
        id: &ImageId,
        dest: &Path,
        content: DirContent,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        output::render_to(self, id, dest, content, overwrite)
    }
    /// Re-hashes every blob against its ID and every tree against the hash recorded
    /// when it was rendered.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        cas::verify(self, &mut report, None)?;
        tree::verify(self, &mut report, None)?;
        Ok(report)
    }
    /// `verify` restricted to these images' blobs and the trees made with them.
    pub fn verify_images(&self, ids: &[ImageId]) -> Result<VerifyReport, StoreError> {
        let only: std::collections::HashSet<ImageId> = ids.iter().cloned().collect();
        let mut report = VerifyReport::default();
        cas::verify(self, &mut report, Some(&only))?;
        tree::verify(self, &mut report, Some(&only))?;
        Ok(report)
    }
}
