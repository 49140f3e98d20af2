//! The tree store: an image rendered with its dependencies, once, reused by every run.
//!
//! A tree is named by the ordered list of images it is made of, so a new version of a
//! dependency yields a new tree and never a stale one. It is built in `cas/tmp/`,
//! given its completion record, synced, and renamed into `cas/tree/<id>/`: a tree
//! that can be seen is complete. Renders of the same tree serialise on a per-tree
//! flock; whoever comes second finds the tree done and reuses it.

use std::collections::HashSet;
use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha512};

use super::layout::{self, Scratch, lock_file};
use super::{ImageInfo, IoContext, RenderedTree, Store, StoreError, VerifyReport, extract, index, resolve};
use crate::schema::{Dependency, ImageId, ImageManifest};

const COMPLETE: &str = "complete";
const ROOTFS: &str = "rootfs";
const TREE_PREFIX: &str = "deps-sha512-";
/// Deeper than any real image; bounds the recursion on hostile manifests.
const MAX_DEPTH: usize = 64;

/// Written into a tree as the last step before it is published.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TreeRecord {
    /// The images applied, in order (deepest dependency first, the image last).
    images: Vec<ImageId>,
    rendered_at: SystemTime,
}

pub(super) fn render(store: &Store, id: &ImageId) -> Result<RenderedTree, StoreError> {
    let layers = layers(store, id)?;
    let tree_id = tree_id_of(layers.iter().map(|l| &l.id));
    let dir = store.tree_root().join(&tree_id);
    let tree = RenderedTree {
        rootfs: dir.join(ROOTFS),
        tree_id,
    };
    if is_complete(&dir) {
        return Ok(tree);
    }
    store.ensure_dirs(&[store.tmp_dir(), store.tree_root(), store.tree_lock_dir()])?;
    let _lock = lock_file(&store.tree_lock_dir().join(&tree.tree_id))?;
    if !is_complete(&dir) {
        build(store, &layers, &tree.tree_id, &dir)?;
    }
    Ok(tree)
}

pub(super) fn rootfs(store: &Store, tree_id: &str) -> Result<PathBuf, StoreError> {
    let well_formed = tree_id
        .strip_prefix(TREE_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    let dir = store.tree_root().join(tree_id);
    if well_formed && is_complete(&dir) {
        Ok(dir.join(ROOTFS))
    } else {
        Err(StoreError::TreeNotFound(tree_id.to_string()))
    }
}

/// The one check a second render pays for.
fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).exists()
}

fn tree_id_of<'a>(ids: impl Iterator<Item = &'a ImageId>) -> String {
    let mut hasher = Sha512::new();
    for id in ids {
        hasher.update(id.as_str().as_bytes());
        hasher.update(b"\n");
    }
    let hex = hex::encode(hasher.finalize());
    format!("{TREE_PREFIX}{}", &hex[..64])
}

/// Extracts every layer into a private directory, applies the whitelist, and
/// publishes the result. The caller holds the tree's lock.
fn build(store: &Store, layers: &[Layer], tree_id: &str, dir: &Path) -> Result<(), StoreError> {
    if std::fs::symlink_metadata(dir).is_ok() {
        // A tree directory without its completion record is not ours to reuse.
        discard(store, dir)?;
    }
    let scratch = Scratch::new(store, &format!("render-{tree_id}"));
    let rootfs = scratch.path().join(ROOTFS);
    std::fs::create_dir(scratch.path()).ctx(|| format!("create {}", scratch.path().display()))?;
    std::fs::create_dir(&rootfs).ctx(|| format!("create {}", rootfs.display()))?;
    let root = crate::fsutil::open_dir(&rootfs).ctx(|| format!("open {}", rootfs.display()))?;
    for layer in layers {
        let blob = store.blob_path(layout::key(&layer.id)?);
        let file = std::fs::File::open(&blob).ctx(|| format!("open {} ({})", blob.display(), layer.id))?;
        extract::unpack(BufReader::with_capacity(256 << 10, file), root.as_fd())?;
    }
    if let Some(top) = layers.last() {
        super::whitelist::prune(&rootfs, root.as_fd(), &top.manifest.path_whitelist)?;
    }
    // One syncfs instead of an fsync per file: the rename below must not become
    // durable before the files it publishes.
    nix::unistd::syncfs(&root).ctx(|| format!("sync {}", rootfs.display()))?;
    drop(root);
    let record = TreeRecord {
        images: layers.iter().map(|l| l.id.clone()).collect(),
        rendered_at: SystemTime::now(),
    };
    let bytes =
        serde_json::to_vec_pretty(&record).map_err(|e| StoreError::io("encode tree record", e.into()))?;
    let record_path = scratch.path().join(COMPLETE);
    crate::fsutil::atomic_write(&record_path, &bytes).ctx(|| format!("write {}", record_path.display()))?;
    std::fs::rename(scratch.path(), dir).ctx(|| format!("publish {}", dir.display()))?;
    scratch.keep();
    let root_dir = store.tree_root();
    crate::fsutil::fsync_dir(&root_dir).ctx(|| format!("fsync {}", root_dir.display()))?;
    tracing::debug!(tree_id, layers = layers.len(), "rendered tree");
    Ok(())
}

/// Moves a tree out of sight first, then deletes it, so no reader ever sees a
/// half-deleted tree under its name.
fn discard(store: &Store, dir: &Path) -> Result<(), StoreError> {
    store.ensure_dirs(&[store.tmp_dir()])?;
    let doomed = Scratch::new(store, "discard");
    std::fs::rename(dir, doomed.path()).ctx(|| format!("move aside {}", dir.display()))?;
    let parent = store.tree_root();
    crate::fsutil::fsync_dir(&parent).ctx(|| format!("fsync {}", parent.display()))?;
    crate::fsutil::remove_tree(doomed.path()).ctx(|| format!("remove {}", doomed.path().display()))
}

/// One image of a tree, with its manifest.
struct Layer {
    id: ImageId,
    manifest: ImageManifest,
}

/// The images that make up `id`'s tree, in the order they are applied: each image's
/// dependencies (in the order listed, each after its own dependencies) before the
/// image, so later layers overwrite earlier ones and the image itself goes on top.
/// An image reached twice (a shared base) is applied once, at its first place.
fn layers(store: &Store, id: &ImageId) -> Result<Vec<Layer>, StoreError> {
    let manifest = store.manifest(id)?;
    let mut walk = DepWalk {
        store,
        images: None,
        path: Vec::new(),
        done: HashSet::new(),
        out: Vec::new(),
    };
    walk.visit(id.clone(), manifest)?;
    Ok(walk.out)
}

struct DepWalk<'s> {
    store: &'s Store,
    /// The index, read once and only if some dependency is named without an ID.
    images: Option<Vec<ImageInfo>>,
    /// The chain from the image being rendered down to the current one, for cycles.
    path: Vec<(ImageId, String)>,
    done: HashSet<ImageId>,
    out: Vec<Layer>,
}

impl DepWalk<'_> {
    fn visit(&mut self, id: ImageId, manifest: ImageManifest) -> Result<(), StoreError> {
        let name = manifest.name.to_string();
        if self.path.len() >= MAX_DEPTH {
            return Err(StoreError::Dependency {
                image: name,
                reason: format!("dependencies nest deeper than {MAX_DEPTH} levels"),
            });
        }
        self.path.push((id.clone(), name.clone()));
        for dep in &manifest.dependencies {
            let dep_id = self.find(&name, dep)?;
            if let Some(start) = self.path.iter().position(|(on_path, _)| *on_path == dep_id) {
                let mut chain: Vec<&str> = self.path[start..].iter().map(|(_, n)| n.as_str()).collect();
                chain.push(dep.image_name.as_str());
                return Err(StoreError::Dependency {
                    image: name,
                    reason: format!("dependency cycle: {}", chain.join(" -> ")),
                });
            }
            if self.done.contains(&dep_id) {
                continue;
            }
            let dep_manifest = self.store.manifest(&dep_id)?;
            self.visit(dep_id, dep_manifest)?;
        }
        self.path.pop();
        self.done.insert(id.clone());
        self.out.push(Layer { id, manifest });
        Ok(())
    }

    fn find(&mut self, image: &str, dep: &Dependency) -> Result<ImageId, StoreError> {
        let missing = |what: String| StoreError::Dependency {
            image: image.to_string(),
            reason: format!("dependency {what} is not in the store"),
        };
        if let Some(want) = &dep.image_id {
            return match index::info(self.store, want) {
                Ok(info) => Ok(info.id),
                Err(StoreError::NotFound(_)) => Err(missing(format!("{} ({want})", dep.image_name))),
                Err(e) => Err(e),
            };
        }
        if self.images.is_none() {
            self.images = Some(index::list(self.store)?);
        }
        let images = self.images.as_deref().unwrap_or_default();
        match resolve::newest_matching(images, &dep.image_name, &dep.labels) {
            Some(info) => Ok(info.id.clone()),
            None => {
                let labels: Vec<String> = dep
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                let what = if labels.is_empty() {
                    dep.image_name.to_string()
                } else {
                    format!("{} ({})", dep.image_name, labels.join(","))
                };
                Err(missing(what))
            }
        }
    }
}

fn read_record(dir: &Path) -> io::Result<TreeRecord> {
    let bytes = std::fs::read(dir.join(COMPLETE))?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

/// Tree directories, by name.
fn tree_dirs(store: &Store) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let root = store.tree_root();
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("list {}", root.display()), e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", root.display()))?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(TREE_PREFIX)
        {
            dirs.push((name.to_string(), entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Deletes every tree that `id` is part of.
pub(super) fn remove_trees_of(store: &Store, id: &ImageId) -> Result<(), StoreError> {
    for (tree_id, dir) in tree_dirs(store)? {
        let Ok(record) = read_record(&dir) else { continue };
        if !record.images.contains(id) {
            continue;
        }
        store.ensure_dirs(&[store.tree_lock_dir()])?;
        let _lock = lock_file(&store.tree_lock_dir().join(&tree_id))?;
        if std::fs::symlink_metadata(&dir).is_ok() {
            discard(store, &dir)?;
        }
    }
    Ok(())
}

pub(super) fn verify(store: &Store, report: &mut VerifyReport) -> Result<(), StoreError> {
    for (tree_id, dir) in tree_dirs(store)? {
        report.trees_checked += 1;
        let record = match read_record(&dir) {
            Ok(record) => record,
            Err(e) => {
                report
                    .problems
                    .push(format!("tree {tree_id}: completion record: {e}"));
                continue;
            }
        };
        if tree_id_of(record.images.iter()) != tree_id {
            report
                .problems
                .push(format!("tree {tree_id}: completion record names other images"));
        }
        if !dir.join(ROOTFS).is_dir() {
            report.problems.push(format!("tree {tree_id}: rootfs missing"));
        }
        for image in &record.images {
            if !index::has_image(store, image) {
                report
                    .problems
                    .push(format!("tree {tree_id}: image {image} is no longer in the store"));
            }
        }
    }
    Ok(())
}
