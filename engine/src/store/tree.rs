//! The tree store: an image rendered with its dependencies, once, reused by every run.
//!
//! A tree is named by the ordered list of images it is made of, so a new version of a
//! dependency yields a new tree and never a stale one. It is built in `cas/tmp/`,
//! given its completion record, synced, and renamed into `cas/tree/<id>/`: a tree
//! that can be seen is complete. Renders of the same tree serialise on a per-tree
//! flock; whoever comes second finds the tree done and reuses it.

use std::collections::HashSet;
use std::io::{self, BufReader};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha512};

use super::boot;
use super::layout::{self, Scratch, lock_file};
use super::{
    ImageInfo, IoContext, RenderedTree, Store, StoreError, TreeInfo, VerifyReport, extract, index, resolve,
    treehash,
};
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
    /// `treehash::digest` of the rootfs as published. Absent in trees rendered by
    /// versions that did not record it, or that recorded the digest with directory
    /// mtimes (as `hash`): those are checked against their images rendered again.
    #[serde(default, rename = "contentHash", skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    /// Bytes of file content in the rootfs.
    #[serde(default)]
    size: u64,
    /// The boot (`/proc/sys/kernel/random/boot_id`) a tree was published in when its
    /// files were not synced first (see `publish_pending`); absent when they were.
    /// In any later boot such a tree may have lost data in a crash, so it counts as
    /// not rendered and is built again from its images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsynced_boot: Option<String>,
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
    let dir = store.tree_root().join(tree_id);
    if layout::is_name_with_hash(TREE_PREFIX, tree_id) && is_complete(&dir) {
        Ok(dir.join(ROOTFS))
    } else {
        Err(StoreError::TreeNotFound(tree_id.to_string()))
    }
}

/// The one check a second render pays for: one small read (two for a tree
/// published unsynced in this boot).
fn is_complete(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join(COMPLETE)) else {
        return false;
    };
    match serde_json::from_slice::<TreeRecord>(&bytes) {
        Ok(TreeRecord {
            unsynced_boot: Some(boot),
            ..
        }) => boot::current().as_deref() == Some(boot.as_str()),
        // A record that does not parse still marks a finished tree (as before
        // records carried anything): `verify` reports it.
        _ => true,
    }
}

/// Names what a render puts in a tree besides the images' files; a change to
/// it gives every image a new tree instead of reusing one rendered the old way.
const RENDER_FORMAT: &[u8] = b"mount-points-1\n";

/// Formats of trees that older rkt-rs versions rendered, which may still be on
/// disk (a pod prepared before an upgrade uses its tree): `verify` checks them
/// against their recorded digest but cannot render them again.
const EARLIER_RENDER_FORMATS: [&[u8]; 1] = [b""];

fn tree_id_of<'a>(ids: impl Iterator<Item = &'a ImageId>) -> String {
    tree_id_in_format(RENDER_FORMAT, ids)
}

fn tree_id_in_format<'a>(format: &[u8], ids: impl Iterator<Item = &'a ImageId>) -> String {
    let mut hasher = Sha512::new();
    hasher.update(format);
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
    let PendingTree { scratch, root } = extract_layers(store, layers, tree_id)?;
    let rootfs = scratch.path().join(ROOTFS);
    // Read back once, at build time only: runs that reuse the tree never hash.
    // One syncfs instead of an fsync per file: the rename below must not become
    // durable before the files it publishes. The digest only reads, so the two
    // run side by side (the sync waits on the disk, the digest on the CPU).
    let (digest, synced) = std::thread::scope(|scope| {
        let sync = std::thread::Builder::new().spawn_scoped(scope, || nix::unistd::syncfs(&root));
        let digest = treehash::digest(&rootfs);
        let synced = match sync {
            Ok(thread) => thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(_) => nix::unistd::syncfs(&root),
        };
        (digest, synced)
    });
    let digest = digest.ctx(|| format!("hash {}", rootfs.display()))?;
    synced.ctx(|| format!("sync {}", rootfs.display()))?;
    drop(root);
    let record = TreeRecord {
        images: layers.iter().map(|l| l.id.clone()).collect(),
        rendered_at: SystemTime::now(),
        hash: Some(digest.hash),
        size: digest.size,
        unsynced_boot: None,
    };
    publish(store, scratch, &record, dir)?;
    tracing::debug!(tree_id, layers = layers.len(), "rendered tree");
    Ok(())
}

/// Gives the finished tree in `scratch` its completion record and renames it to
/// `dir`. The caller holds the tree's lock, and `dir` does not exist.
fn publish(store: &Store, scratch: Scratch, record: &TreeRecord, dir: &Path) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec_pretty(record).map_err(|e| StoreError::io("encode tree record", e.into()))?;
    let record_path = scratch.path().join(COMPLETE);
    crate::fsutil::atomic_write(&record_path, &bytes).ctx(|| format!("write {}", record_path.display()))?;
    crate::failpoint::failpoint("render.tree-built");
    std::fs::rename(scratch.path(), dir).ctx(|| format!("publish {}", dir.display()))?;
    scratch.keep();
    crate::failpoint::failpoint("render.tree-published");
    let root_dir = store.tree_root();
    crate::fsutil::fsync_dir(&root_dir).ctx(|| format!("fsync {}", root_dir.display()))
}

/// A tree being filled in `cas/tmp/`: deleted when dropped unless published.
pub(super) struct PendingTree {
    scratch: Scratch,
    /// Its rootfs directory.
    root: OwnedFd,
}

impl PendingTree {
    /// An empty, owner-only tree directory in `cas/tmp/`.
    pub(super) fn new(store: &Store, what: &str) -> Result<Self, StoreError> {
        store.ensure_dirs(&[store.tmp_dir()])?;
        let scratch = Scratch::new(store, &format!("render-{what}"));
        let rootfs = scratch.path().join(ROOTFS);
        // Owner-only, from creation in tmp/ to its published name: an image may carry
        // setuid-root programs and world-writable directories, which no other host
        // user may reach (run as root, or plant files under a tree pods use).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(scratch.path())
            .ctx(|| format!("create {}", scratch.path().display()))?;
        std::fs::create_dir(&rootfs).ctx(|| format!("create {}", rootfs.display()))?;
        let root = crate::fsutil::open_dir(&rootfs).ctx(|| format!("open {}", rootfs.display()))?;
        Ok(Self { scratch, root })
    }

    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Every layer extracted in order, and the top image's whitelist applied.
fn extract_layers(store: &Store, layers: &[Layer], what: &str) -> Result<PendingTree, StoreError> {
    let pending = PendingTree::new(store, what)?;
    for layer in layers {
        let blob = super::cas::durable_blob(store, &layer.id)?;
        let file = std::fs::File::open(&blob).ctx(|| format!("open {} ({})", blob.display(), layer.id))?;
        super::touch_on_read(store, &layer.id);
        extract::unpack(BufReader::with_capacity(256 << 10, file), pending.root())?;
    }
    if let Some(top) = layers.last() {
        let rootfs = pending.scratch.path().join(ROOTFS);
        super::whitelist::prune(&rootfs, pending.root(), &top.manifest.path_whitelist)?;
    }
    add_mount_points(&pending)?;
    Ok(pending)
}

/// The directories stage1s mount over, where the image has no entry of that
/// name (an image's own file, link or directory stays as it is).
fn add_mount_points(pending: &PendingTree) -> Result<(), StoreError> {
    use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
    for (name, mode) in crate::pod::protocol::APP_MOUNT_POINTS {
        let what = || format!("create /{name} in {}", pending.scratch.path().display());
        let mode = Mode::from_bits_truncate(mode);
        match nix::sys::stat::mkdirat(pending.root(), name, mode) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(io::Error::from(e)).ctx(what),
        }
        // mkdir's mode passes through the umask; /tmp's sticky bit must not.
        fchmodat(pending.root(), name, mode, FchmodatFlags::FollowSymlink)
            .map_err(io::Error::from)
            .ctx(what)?;
    }
    Ok(())
}

/// Publishes a tree that an import extracted while it stored the archive, as the
/// tree of `id`, an image without dependencies (the import checked): whitelist
/// applied, recorded, renamed into place. Another render that got there first
/// wins and this copy is dropped.
///
/// Nothing here re-reads the files: the tree is published without a digest
/// (`verify` renders the image again to check it), and without syncing its files.
/// Syncing 200 MB that the stored, fsynced archive can reproduce cost the first
/// run more than extracting it; the record names this boot instead, so after a
/// crash the tree counts as unrendered and is built again (`is_complete`). Where
/// the boot cannot be told, the tree is synced as `build` does.
pub(super) fn publish_pending(
    store: &Store,
    pending: PendingTree,
    id: &ImageId,
    manifest: &ImageManifest,
) -> Result<(), StoreError> {
    let rootfs = pending.scratch.path().join(ROOTFS);
    super::whitelist::prune(&rootfs, pending.root(), &manifest.path_whitelist)?;
    add_mount_points(&pending)?;
    let PendingTree { scratch, root } = pending;
    let unsynced_boot = boot::current();
    if unsynced_boot.is_none() {
        nix::unistd::syncfs(&root).ctx(|| format!("sync {}", rootfs.display()))?;
    }
    drop(root);
    let size = treehash::content_size(&rootfs).ctx(|| format!("size of {}", rootfs.display()))?;
    let tree_id = tree_id_of(std::iter::once(id));
    let dir = store.tree_root().join(&tree_id);
    store.ensure_dirs(&[store.tree_root(), store.tree_lock_dir()])?;
    let _lock = lock_file(&store.tree_lock_dir().join(&tree_id))?;
    if is_complete(&dir) {
        return Ok(());
    }
    if std::fs::symlink_metadata(&dir).is_ok() {
        discard(store, &dir)?;
    }
    let record = TreeRecord {
        images: vec![id.clone()],
        rendered_at: SystemTime::now(),
        hash: None,
        size,
        unsynced_boot,
    };
    publish(store, scratch, &record, &dir)?;
    tracing::debug!(tree_id, "rendered tree while importing");
    Ok(())
}

/// The digest the tree of `images` has when rendered afresh from their archives,
/// for checking a tree published without one; None when an image is gone.
fn digest_rendered_again(
    store: &Store,
    images: &[ImageId],
) -> Result<Option<treehash::TreeDigest>, StoreError> {
    let mut layers = Vec::with_capacity(images.len());
    for id in images {
        match store.manifest(id) {
            Ok(manifest) => layers.push(Layer {
                id: id.clone(),
                manifest,
            }),
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let pending = extract_layers(store, &layers, "verify")?;
    let rootfs = pending.scratch.path().join(ROOTFS);
    treehash::digest(&rootfs)
        .map(Some)
        .ctx(|| format!("hash {}", rootfs.display()))
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
    let mut dirs = layout::entries(&store.tree_root())?;
    dirs.retain(|(name, _)| name.starts_with(TREE_PREFIX));
    Ok(dirs)
}

/// Every complete tree, by ID. A tree without a readable record (a crash, or damage)
/// is listed with no images, so gc still sees it.
pub(super) fn list(store: &Store) -> Result<Vec<TreeInfo>, StoreError> {
    let mut trees = Vec::new();
    for (tree_id, dir) in tree_dirs(store)? {
        let (images, size) = match read_record(&dir) {
            Ok(record) => (record.images, record.size),
            // Removed between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound && std::fs::symlink_metadata(&dir).is_err() => {
                continue;
            }
            Err(_) => (Vec::new(), 0),
        };
        trees.push(TreeInfo {
            tree_id,
            images,
            size,
        });
    }
    Ok(trees)
}

/// Deletes one tree under its render lock, so it is never pulled from under a
/// render of the same tree; a tree already gone is not an error. Whether anyone
/// still uses it is the caller's question (see `Store::lock_trees_exclusive`).
pub(super) fn remove(store: &Store, tree_id: &str) -> Result<(), StoreError> {
    if !layout::is_name_with_hash(TREE_PREFIX, tree_id) {
        return Err(StoreError::TreeNotFound(tree_id.to_string()));
    }
    let dir = store.tree_root().join(tree_id);
    if std::fs::symlink_metadata(&dir).is_err() {
        return Ok(());
    }
    store.ensure_dirs(&[store.tree_lock_dir()])?;
    // The lock file stays: deleting it could let two renders of this tree lock
    // two different files.
    let _lock = lock_file(&store.tree_lock_dir().join(tree_id))?;
    if std::fs::symlink_metadata(&dir).is_ok() {
        discard(store, &dir)?;
    }
    Ok(())
}

/// Checks every tree (or, with `only`, every tree made with one of those images):
/// its record matches its name, its images are still stored, and its content
/// still hashes to what was recorded when it was built.
pub(super) fn verify(
    store: &Store,
    report: &mut VerifyReport,
    only: Option<&HashSet<ImageId>>,
) -> Result<(), StoreError> {
    for (tree_id, dir) in tree_dirs(store)? {
        let record = match read_record(&dir) {
            Ok(record) => record,
            Err(_) if std::fs::symlink_metadata(&dir).is_err() => continue,
            Err(e) => {
                if only.is_none() {
                    report.trees_checked += 1;
                    report
                        .problems
                        .push(format!("tree {tree_id}: completion record: {e}"));
                }
                continue;
            }
        };
        if only.is_some_and(|only| !record.images.iter().any(|i| only.contains(i))) {
            continue;
        }
        report.trees_checked += 1;
        let earlier_format = EARLIER_RENDER_FORMATS
            .iter()
            .any(|format| tree_id_in_format(format, record.images.iter()) == tree_id);
        if tree_id_of(record.images.iter()) != tree_id && !earlier_format {
            report
                .problems
                .push(format!("tree {tree_id}: completion record names other images"));
        }
        let rootfs = dir.join(ROOTFS);
        let digest = treehash::digest(&rootfs);
        if digest.is_err() && std::fs::symlink_metadata(&dir).is_err() {
            // Removed by image gc while we read it: not damage.
            report.trees_checked -= 1;
            continue;
        }
        let want = match &record.hash {
            Some(hash) => Some(hash.clone()),
            // Rendered the way an older version did: today's render differs.
            None if earlier_format => {
                report.trees_checked -= 1;
                continue;
            }
            // Published by an import without a digest: the images, rendered again,
            // say what it must hash to (while they are still stored).
            None => match digest_rendered_again(store, &record.images) {
                Ok(again) => again.map(|d| d.hash),
                Err(e) => {
                    report
                        .problems
                        .push(format!("tree {tree_id}: cannot render its images again: {e}"));
                    continue;
                }
            },
        };
        match (&want, digest) {
            (_, Err(e)) if e.kind() == io::ErrorKind::NotFound && !rootfs.is_dir() => {
                report.problems.push(format!("tree {tree_id}: rootfs missing"))
            }
            (_, Err(e)) => report
                .problems
                .push(format!("tree {tree_id}: cannot read the rootfs: {e}")),
            (Some(want), Ok(got)) if *want != got.hash => report.problems.push(format!(
                "tree {tree_id}: content changed since it was rendered (hashes to {}, recorded {want})",
                got.hash
            )),
            _ => {}
        }
        // An image removed while a pod still uses its tree is normal (`rkt image
        // rm` keeps such trees), so the images need not be in the store any more.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::testutil::{self, Aci, manifest, residue};

    fn dep(name: &str) -> serde_json::Value {
        json!({ "imageName": name })
    }

    fn read(tree: &RenderedTree, path: &str) -> String {
        std::fs::read_to_string(tree.rootfs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn dependencies_go_below_in_order_and_the_image_on_top() {
        let (_dir, store) = testutil::store();
        let base = Aci::new(&manifest("example.com/base", &[("version", "1")], json!({})))
            .file("rootfs/etc/x", b"base")
            .file("rootfs/etc/shared", b"base")
            .file("rootfs/base-only", b"b")
            .finish();
        let extra = Aci::new(&manifest(
            "example.com/extra",
            &[],
            json!({ "dependencies": [dep("example.com/base")] }),
        ))
        .file("rootfs/etc/shared", b"extra")
        .finish();
        let tools = Aci::new(&manifest("example.com/tools", &[], json!({})))
            .file("rootfs/etc/shared", b"tools")
            .file("rootfs/etc/x", b"tools")
            .finish();
        let app = Aci::new(&manifest(
            "example.com/app",
            &[],
            json!({ "dependencies": [dep("example.com/tools"), dep("example.com/extra"), dep("example.com/base")] }),
        ))
        .file("rootfs/etc/x", b"app")
        .finish();
        let base_id = testutil::import(&store, &base);
        let extra_id = testutil::import(&store, &extra);
        let tools_id = testutil::import(&store, &tools);
        let app_id = testutil::import(&store, &app);
        let tree = store.render(&app_id).expect("render");
        assert_eq!(read(&tree, "etc/x"), "app", "the image wins");
        assert_eq!(
            read(&tree, "etc/shared"),
            "extra",
            "a later dependency wins over an earlier one"
        );
        assert_eq!(read(&tree, "base-only"), "b");
        let record = read_record(tree.rootfs.parent().expect("tree dir")).expect("record");
        assert_eq!(
            record.images,
            vec![tools_id, base_id, extra_id, app_id.clone()],
            "base is applied once, before extra which needs it"
        );
        assert_eq!(
            store.tree_rootfs(&tree.tree_id).expect("tree_rootfs"),
            tree.rootfs
        );
    }

    #[test]
    fn dependencies_by_id_and_labels() {
        let (_dir, store) = testutil::store();
        let b1 = testutil::import(&store, &testutil::simple("example.com/base", "1", "v", b"1"));
        let _b2 = testutil::import(&store, &testutil::simple("example.com/base", "2", "v", b"2"));
        let by_id = Aci::new(&manifest(
            "example.com/a",
            &[],
            json!({ "dependencies": [{ "imageName": "example.com/base", "imageID": b1.as_str() }] }),
        ))
        .finish();
        let by_label = Aci::new(&manifest(
            "example.com/b",
            &[],
            json!({ "dependencies": [{ "imageName": "example.com/base",
                                       "labels": [{ "name": "version", "value": "1" }] }] }),
        ))
        .finish();
        let newest = Aci::new(&manifest(
            "example.com/c",
            &[],
            json!({ "dependencies": [dep("example.com/base")] }),
        ))
        .finish();
        for (aci, want) in [(by_id, "1"), (by_label, "1"), (newest, "2")] {
            let id = testutil::import(&store, &aci);
            assert_eq!(read(&store.render(&id).expect("render"), "v"), want);
        }
    }

    /// An image may carry setuid-root programs and world-writable directories; in
    /// the shared tree store they must not be reachable by other host users (who
    /// could run the program as root, or plant files under a tree later pods use),
    /// neither while rendering in `tmp/` nor once published.
    #[test]
    fn a_rendered_tree_is_reachable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = testutil::store();
        let id = testutil::import(
            &store,
            &Aci::new(&manifest("example.com/suid", &[], json!({})))
                .file_owned("rootfs/bin/rootshell", b"#!", 0o4755, 0, 0, 1)
                .dir("rootfs/shared", 0o1777)
                .finish(),
        );
        let tree = store.render(&id).expect("render");
        let tree_dir = tree.rootfs.parent().expect("tree dir");
        let mode = std::fs::metadata(tree_dir).expect("stat").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {mode:o}: other users reach the image's setuid programs",
            tree_dir.display()
        );
    }

    #[test]
    fn a_new_dependency_version_makes_a_new_tree() {
        let (_dir, store) = testutil::store();
        testutil::import(&store, &testutil::simple("example.com/base", "1", "v", b"1"));
        let app = testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/app",
                &[],
                json!({ "dependencies": [dep("example.com/base")] }),
            ))
            .finish(),
        );
        let first = store.render(&app).expect("render");
        testutil::import(&store, &testutil::simple("example.com/base", "2", "v", b"2"));
        let second = store.render(&app).expect("render");
        assert_ne!(first.tree_id, second.tree_id);
        assert_eq!(read(&first, "v"), "1");
        assert_eq!(read(&second, "v"), "2");
    }

    #[test]
    fn path_whitelist_keeps_only_listed_paths_and_their_parents() {
        let (_dir, store) = testutil::store();
        testutil::import(
            &store,
            &Aci::new(&manifest("example.com/base", &[], json!({})))
                .file("rootfs/etc/x", b"base")
                .file("rootfs/etc/passwd", b"root")
                .file("rootfs/usr/bin/tool", b"t")
                .file("rootfs/usr/lib/libc.so", b"c")
                .finish(),
        );
        let app = testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/app",
                &[],
                json!({ "dependencies": [dep("example.com/base")],
                        "pathWhitelist": ["/etc/x", "/usr/bin/", "/app"] }),
            ))
            .dir("rootfs/etc", 0o755)
            .file("rootfs/app", b"app")
            .file("rootfs/junk", b"j")
            .finish(),
        );
        let tree = store.render(&app).expect("render");
        let all: Vec<String> = testutil::walk(&tree.rootfs)
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            all,
            [
                "app", "dev", "etc", "etc/x", "proc", "sys", "tmp", "usr", "usr/bin"
            ],
            "the whitelist, plus the stage1s' mount points"
        );
        let etc = std::fs::metadata(tree.rootfs.join("etc")).expect("stat");
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&etc),
            testutil::MTIME as i64,
            "pruning keeps directory mtimes"
        );
    }

    #[test]
    fn cycles_and_missing_dependencies_are_named() {
        let (_dir, store) = testutil::store();
        let a = testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/a",
                &[],
                json!({ "dependencies": [dep("example.com/b")] }),
            ))
            .finish(),
        );
        let err = store.render(&a).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "image example.com/a: dependency example.com/b is not in the store"
        );
        testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/b",
                &[],
                json!({ "dependencies": [dep("example.com/a")] }),
            ))
            .finish(),
        );
        let err = store.render(&a).expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "image example.com/b: dependency cycle: example.com/a -> example.com/b -> example.com/a"
        );
        let selfish = testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/s",
                &[],
                json!({ "dependencies": [dep("example.com/s")] }),
            ))
            .finish(),
        );
        assert!(
            store
                .render(&selfish)
                .expect_err("self")
                .to_string()
                .contains("cycle")
        );
        let labelled = testutil::import(
            &store,
            &Aci::new(&manifest(
                "example.com/l",
                &[],
                json!({ "dependencies": [{ "imageName": "example.com/a",
                                           "labels": [{ "name": "version", "value": "9" }] }] }),
            ))
            .finish(),
        );
        assert!(
            store
                .render(&labelled)
                .expect_err("no such version")
                .to_string()
                .contains("example.com/a (version=9) is not in the store")
        );
        assert!(!store.tree_root().exists() || testutil::walk(&store.tree_root()).is_empty());
    }

    #[test]
    fn a_second_render_reuses_the_tree_without_the_blob() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &testutil::simple("example.com/app", "1", "f", b"x"));
        let first = store.render(&id).expect("render");
        // Without its blob the image cannot be extracted again: reuse is the only way.
        std::fs::remove_file(store.blob_path(layout::key(&id).expect("key"))).expect("rm blob");
        let rounds = 1000;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            assert_eq!(store.render(&id).expect("render again"), first);
        }
        let each = start.elapsed() / rounds;
        eprintln!("second render: {each:?} per call");
        assert!(each < std::time::Duration::from_millis(5), "{each:?}");
    }

    #[test]
    fn trees_carry_the_mount_points_and_an_images_own_entries_win() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, store) = testutil::store();
        let id = testutil::import(
            &store,
            &Aci::new(&manifest("example.com/app", &[], json!({})))
                .file("rootfs/sys", b"an image's file named sys")
                .dir("rootfs/proc", 0o700)
                .finish(),
        );
        let rootfs = store.render(&id).expect("render").rootfs;
        let mode = |name: &str| std::fs::symlink_metadata(rootfs.join(name)).expect(name).mode();
        assert_eq!(mode("dev") & 0o170777, 0o040755);
        assert_eq!(mode("tmp") & 0o177777, 0o041777, "sticky, whatever the umask");
        assert_eq!(mode("proc") & 0o777, 0o700, "the image's own directory");
        assert_eq!(
            std::fs::read(rootfs.join("sys")).expect("sys"),
            b"an image's file named sys"
        );
    }

    #[test]
    fn concurrent_renders_of_one_tree_share_it() {
        let (_dir, store) = testutil::store();
        let mut aci = Aci::new(&manifest("example.com/app", &[], json!({})));
        for i in 0..200 {
            aci = aci.file(&format!("rootfs/d{}/f{i}", i % 10), &[i as u8; 2000]);
        }
        let id = testutil::import(&store, &aci.finish());
        let trees: Vec<RenderedTree> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| store.render(&id).expect("render")))
                .collect();
            handles.into_iter().map(|h| h.join().expect("join")).collect()
        });
        assert!(trees.windows(2).all(|w| w[0] == w[1]), "{trees:?}");
        assert_eq!(std::fs::read_dir(store.tree_root()).expect("ls").count(), 1);
        assert!(!residue(&store).iter().any(|p| p.starts_with("tmp")));
        assert_eq!(
            testutil::walk(&trees[0].rootfs).len(),
            214,
            "200 files, 10 dirs, 4 mount points"
        );
    }

    #[test]
    fn a_refused_render_leaves_no_tree_and_no_temp() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(
            &store,
            &Aci::new(&manifest("example.com/app", &[], json!({})))
                .file("rootfs/ok", b"x")
                .raw(b"rootfs/../../escape", tar::EntryType::Regular, b"", b"x")
                .finish(),
        );
        let err = store.render(&id).expect_err("refused");
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        let left: Vec<_> = residue(&store)
            .into_iter()
            .filter(|p| p.starts_with("tmp") || p.starts_with("tree"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!store.dir().parent().expect("parent").join("escape").exists());
    }

    #[test]
    fn tree_rootfs_refuses_unknown_and_malformed_ids() {
        let (_dir, store) = testutil::store();
        for bad in [
            "deps-sha512-0000000000000000000000000000000000000000000000000000000000000000",
            "../../etc",
            "",
        ] {
            assert!(
                matches!(store.tree_rootfs(bad), Err(StoreError::TreeNotFound(_))),
                "{bad}"
            );
        }
    }

    /// An image whose tree the import renders in the same pass, with a bit of
    /// everything an extraction handles.
    fn one_pass_image() -> Vec<u8> {
        Aci::new(&manifest(
            "example.com/onepass",
            &[],
            json!({ "pathWhitelist": ["/etc/keep", "/bin/tool", "/bin/sh", "/bin/tool2", "/data/big"] }),
        ))
        .dir("rootfs/etc", 0o755)
        .file("rootfs/etc/keep", b"kept")
        .file("rootfs/etc/drop", b"pruned by the whitelist")
        .file("rootfs/bin/tool", b"#!tool")
        .symlink("rootfs/bin/sh", "/bin/tool")
        .hardlink("rootfs/bin/tool2", "rootfs/bin/tool")
        .file("rootfs/data/big", &[5u8; 300_000])
        .file("rootfs/data/big", b"a later duplicate wins")
        .finish()
    }

    fn record_of(tree: &RenderedTree) -> TreeRecord {
        read_record(tree.rootfs.parent().expect("tree dir")).expect("record")
    }

    #[test]
    fn an_import_for_a_run_renders_the_same_tree_in_the_same_pass() {
        let aci = one_pass_image();
        let (_dir, store) = testutil::store();
        let id = store
            .rendering_on_import()
            .import(&mut &aci[..], "t")
            .expect("import");
        // Without its blob nothing can be extracted again: the tree must be there.
        let blob = store.blob_path(layout::key(&id).expect("key"));
        let kept_blob = std::fs::read(&blob).expect("blob");
        std::fs::remove_file(&blob).expect("rm blob");
        let tree = store.render(&id).expect("rendered by the import");
        std::fs::write(&blob, kept_blob).expect("put blob back");
        let record = record_of(&tree);
        assert_eq!(record.images, vec![id.clone()]);
        assert_eq!(record.hash, None, "nothing was read back");
        assert_eq!(
            record.unsynced_boot,
            boot::current(),
            "synced only with no boot ID"
        );
        assert!(!residue(&store).iter().any(|p| p.starts_with("tmp")));

        // Exactly what the usual render makes of the same archive.
        let (_other_dir, other) = testutil::store();
        let usual = other.render(&testutil::import(&other, &aci)).expect("render");
        assert_eq!(usual.tree_id, tree.tree_id);
        assert_eq!(testutil::walk(&tree.rootfs), testutil::walk(&usual.rootfs));
        let digest = treehash::digest(&tree.rootfs).expect("digest");
        assert_eq!(digest, treehash::digest(&usual.rootfs).expect("digest"));
        assert_eq!(record.size, digest.size);
        assert_eq!(read(&tree, "data/big"), "a later duplicate wins");

        // `verify` checks it against the image rendered again.
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.trees_checked, 1);
        std::fs::write(tree.rootfs.join("etc/keep"), b"tampered").expect("tamper");
        let report = store.verify().expect("verify");
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(report.problems[0].contains("content changed"), "{report:?}");
    }

    /// A tree an older version rendered (no mount points added, ID without the
    /// render format) is not damage: a pod prepared before an upgrade uses it.
    #[test]
    fn verify_accepts_trees_of_an_earlier_render_format() {
        let (_dir, store) = testutil::store();
        let aci = one_pass_image();
        let id = store
            .rendering_on_import()
            .import(&mut &aci[..], "t")
            .expect("import");
        let tree = store.render(&id).expect("render");
        let earlier_id = tree_id_in_format(EARLIER_RENDER_FORMATS[0], std::iter::once(&id));
        let earlier = store.tree_root().join(&earlier_id);
        std::fs::rename(store.tree_root().join(&tree.tree_id), &earlier).expect("rename");
        for (name, _) in crate::pod::protocol::APP_MOUNT_POINTS {
            std::fs::remove_dir(earlier.join(ROOTFS).join(name)).expect("an added mount point");
        }
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");

        // With a recorded digest it is still checked against that.
        let mut record = read_record(&earlier).expect("record");
        record.hash = Some(treehash::digest(&earlier.join(ROOTFS)).expect("digest").hash);
        std::fs::write(earlier.join(COMPLETE), serde_json::to_vec(&record).expect("json")).expect("write");
        assert!(store.verify().expect("verify").is_ok());
        std::fs::write(earlier.join(ROOTFS).join("etc/keep"), b"tampered").expect("tamper");
        let report = store.verify().expect("verify");
        assert!(
            report.problems.len() == 1 && report.problems[0].contains("content changed"),
            "{report:?}"
        );
    }

    #[test]
    fn a_plain_import_renders_nothing() {
        let (_dir, store) = testutil::store();
        testutil::import(&store, &one_pass_image());
        assert!(!store.tree_root().exists() || testutil::walk(&store.tree_root()).is_empty());
    }

    #[test]
    fn a_tree_published_unsynced_in_another_boot_is_rendered_again() {
        let (_dir, store) = testutil::store();
        let id = store
            .rendering_on_import()
            .import(&mut &one_pass_image()[..], "t")
            .expect("import");
        let tree = store.render(&id).expect("render");
        let dir = tree.rootfs.parent().expect("tree dir").to_path_buf();
        let mut record = record_of(&tree);
        if record.unsynced_boot.is_none() {
            eprintln!("a_tree_published_unsynced_in_another_boot_is_rendered_again: skipped: no boot ID");
            return;
        }
        // As if the machine crashed and rebooted after the tree was published.
        record.unsynced_boot = Some("an-earlier-boot".into());
        std::fs::write(dir.join(COMPLETE), serde_json::to_vec(&record).expect("encode")).expect("write");
        std::fs::remove_file(tree.rootfs.join("etc/keep")).expect("lost in the crash");
        assert!(matches!(
            store.tree_rootfs(&tree.tree_id),
            Err(StoreError::TreeNotFound(_))
        ));
        let again = store.render(&id).expect("render again");
        assert_eq!(again, tree);
        assert_eq!(read(&again, "etc/keep"), "kept");
        let record = record_of(&again);
        assert!(
            record.hash.is_some() && record.unsynced_boot.is_none(),
            "built and synced"
        );
    }

    #[test]
    fn hostile_or_dependent_images_are_imported_and_rendered_the_usual_way() {
        let (dir, store) = testutil::store();
        let importing = store.rendering_on_import();
        let escapes = Aci::new(&manifest("example.com/escape", &[], json!({})))
            .file("rootfs/ok", b"x")
            .symlink("rootfs/up", "../../..")
            .raw(b"rootfs/up/escaped", tar::EntryType::Regular, b"", b"x")
            .raw(b"rootfs/../../escape", tar::EntryType::Regular, b"", b"x")
            .finish();
        let id = importing.import(&mut &escapes[..], "t").expect("import");
        let err = store.render(&id).expect_err("refused");
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        let hardlink_out = Aci::new(&manifest("example.com/link", &[], json!({})))
            .raw(b"rootfs/passwd", tar::EntryType::Link, b"../../etc/passwd", b"")
            .finish();
        let id = importing.import(&mut &hardlink_out[..], "t").expect("import");
        assert!(matches!(store.render(&id), Err(StoreError::Unsafe { .. })));
        assert!(!dir.path().join("escape").exists() && !dir.path().join("escaped").exists());
        assert!(!store.dir().join("escaped").exists());
        let left: Vec<_> = residue(&store)
            .into_iter()
            .filter(|p| p.starts_with("tmp") || p.starts_with("tree"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        testutil::import(&store, &testutil::simple("example.com/base", "1", "v", b"base"));
        let app = Aci::new(&manifest(
            "example.com/app",
            &[],
            json!({ "dependencies": [dep("example.com/base")] }),
        ))
        .file("rootfs/app", b"app")
        .finish();
        let app = importing.import(&mut &app[..], "t").expect("import");
        assert!(!store.tree_root().exists() || testutil::walk(&store.tree_root()).is_empty());
        let tree = store.render(&app).expect("render");
        assert_eq!(
            (read(&tree, "v").as_str(), read(&tree, "app").as_str()),
            ("base", "app")
        );
    }
}
