//! Removing images and rendered trees without pulling one from under a pod.
//!
//! A pod uses a tree from the moment `prepare` renders it until the pod directory
//! is deleted: prepared pods run later from it, and exited pods keep their rootfs
//! (the overlay's lower directory) until `rkt gc` sweeps them. Pods record each
//! app's tree in `appsinfo/<app>/treeStoreID`, and the image in the pod manifest.
//!
//! Preparing holds the store's trees lock shared from rendering a tree until its
//! ID is recorded; removal holds it exclusive while it reads every pod's records
//! and deletes. So the records removal reads are every use there is — rkt's
//! prepare lock, with the same rule.
//!
//! `rkt image rm` removes the image (index record and blob) and those of its
//! trees no pod uses; a tree a pod uses stays, so the pod stays runnable, until
//! `rkt image gc` finds no pod left that uses it. That is rkt's behaviour: its
//! `image rm` never touched the tree store at all.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::pod::layout;
use crate::pod::{PodError, PodsDir};
use crate::schema::{ImageId, PodManifest};
use crate::store::{ImageInfo, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImageGcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pod(#[from] PodError),
    /// A pod's records could not be read: what it uses is unknown, so nothing is
    /// removed.
    #[error("pod {uuid}: cannot tell which images it uses: {source}")]
    PodUnreadable {
        uuid: uuid::Uuid,
        #[source]
        source: io::Error,
    },
}

/// What the pods on disk use, in any state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InUse {
    pub trees: HashSet<String>,
    pub images: HashSet<ImageId>,
}

/// Reads every pod's tree IDs and image IDs. Call it under
/// `Store::lock_trees_exclusive`, or the answer may be stale at once.
pub fn in_use(pods: &PodsDir) -> Result<InUse, ImageGcError> {
    let mut used = InUse::default();
    for info in pods.list()? {
        // A pod moves between state directories (and may be deleted) while we
        // read it: follow it a few times; gone is fine, it uses nothing any more.
        let mut path = info.path.clone();
        let mut attempts = 0;
        loop {
            match read_pod_uses(&path, &mut used) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 8 => {
                    attempts += 1;
                    match pods.info(&info.uuid) {
                        Ok(now) if now.path != path => path = now.path,
                        // Still there: the file itself is what is missing.
                        Ok(_) => break,
                        Err(PodError::NotFound(_)) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(source) => {
                    return Err(ImageGcError::PodUnreadable {
                        uuid: info.uuid,
                        source,
                    });
                }
            }
        }
    }
    Ok(used)
}

/// Adds what the pod at `dir` uses. A pod without a manifest or appsinfo yet (an
/// embryo, or early in prepare) has recorded nothing: the trees lock covers it.
fn read_pod_uses(dir: &Path, used: &mut InUse) -> io::Result<()> {
    std::fs::symlink_metadata(dir)?;
    match std::fs::read(layout::manifest(dir)) {
        Ok(bytes) => {
            // An unparsable manifest still leaves the tree IDs below to protect.
            if let Ok(manifest) = PodManifest::from_json(&bytes) {
                used.images
                    .extend(manifest.apps.iter().map(|a| a.image.id.clone()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let appsinfo = dir.join("appsinfo");
    let apps = match std::fs::read_dir(&appsinfo) {
        Ok(apps) => apps,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Distinguish "no apps yet" from "the pod moved away".
            std::fs::symlink_metadata(dir)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for app in apps {
        let app = app?;
        let Some(name) = app.file_name().to_str().map(str::to_string) else {
            continue;
        };
        match std::fs::read_to_string(layout::app_tree_id(dir, &name)) {
            Ok(id) => {
                used.trees.insert(id.trim().to_string());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::symlink_metadata(dir).map(|_| ())?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One image `remove_images` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub id: ImageId,
    pub name: String,
    /// Trees of this image deleted with it.
    pub trees_removed: Vec<String>,
    /// Trees of this image kept because a pod uses them.
    pub trees_kept: Vec<String>,
}

/// Removes each image (already resolved) and every tree made with it that no pod
/// uses. One result per image, in order; a failure does not stop the others.
pub fn remove_images(
    store: &Store,
    pods: &PodsDir,
    ids: &[ImageId],
) -> Result<Vec<Result<Removed, StoreError>>, ImageGcError> {
    let _no_prepares = store.lock_trees_exclusive()?;
    let used = in_use(pods)?;
    let trees = store.trees()?;
    let mut results = Vec::new();
    for id in ids {
        results.push(remove_one(store, &used, &trees, id));
    }
    Ok(results)
}

fn remove_one(
    store: &Store,
    used: &InUse,
    trees: &[crate::store::TreeInfo],
    id: &ImageId,
) -> Result<Removed, StoreError> {
    let info = store.info(id)?;
    store.remove(id)?;
    crate::failpoint::failpoint("image-rm.blob-removed");
    let mut removed = Removed {
        id: info.id.clone(),
        name: info.name.to_string(),
        trees_removed: Vec::new(),
        trees_kept: Vec::new(),
    };
    for tree in trees.iter().filter(|t| t.images.contains(id)) {
        if used.trees.contains(&tree.tree_id) {
            removed.trees_kept.push(tree.tree_id.clone());
        } else {
            store.remove_tree(&tree.tree_id)?;
            removed.trees_removed.push(tree.tree_id.clone());
        }
    }
    Ok(removed)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageGcReport {
    pub trees_removed: Vec<String>,
    /// (image, name) removed.
    pub images_removed: Vec<(ImageId, String)>,
    /// Store keys of blobs or index files a killed `rkt` left without a record.
    pub orphans_removed: Vec<String>,
    /// One line per tree or image that could not be removed; the rest were.
    pub errors: Vec<String>,
}

/// `rkt image gc`: every tree no pod uses, then every image not used within
/// `grace_period` that no pod uses.
pub fn collect(store: &Store, pods: &PodsDir, grace_period: Duration) -> Result<ImageGcReport, ImageGcError> {
    let mut report = ImageGcReport::default();
    let _no_prepares = store.lock_trees_exclusive()?;
    let used = in_use(pods)?;
    for tree in store.trees()? {
        if used.trees.contains(&tree.tree_id) {
            continue;
        }
        match store.remove_tree(&tree.tree_id) {
            Ok(()) => report.trees_removed.push(tree.tree_id),
            Err(e) => report.errors.push(format!("tree {}: {e}", tree.tree_id)),
        }
        crate::failpoint::failpoint("image-gc.swept-tree");
    }
    let now = SystemTime::now();
    let expired =
        |info: &ImageInfo| now.duration_since(info.last_used).unwrap_or(Duration::ZERO) > grace_period;
    for info in store.list()? {
        if !expired(&info) || used.images.contains(&info.id) {
            continue;
        }
        match store.remove(&info.id) {
            Ok(()) => report
                .images_removed
                .push((info.id.clone(), info.name.to_string())),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => report.errors.push(format!("image {}: {e}", info.id)),
        }
        crate::failpoint::failpoint("image-gc.swept-image");
    }
    match store.remove_orphans() {
        Ok(keys) => report.orphans_removed = keys,
        Err(e) => report.errors.push(format!("orphaned blobs: {e}")),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aci(name: &str) -> Vec<u8> {
        let manifest = format!(r#"{{"acKind":"ImageManifest","acVersion":"0.8.11","name":"{name}"}}"#);
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], kind: tar::EntryType| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_mtime(1_500_000_000);
            h.set_uid(0);
            h.set_gid(0);
            tar.append_data(&mut h, path, data).expect("append");
        };
        add("manifest", manifest.as_bytes(), tar::EntryType::Regular);
        add("rootfs", b"", tar::EntryType::Directory);
        add("rootfs/file", name.as_bytes(), tar::EntryType::Regular);
        tar.into_inner().expect("tar")
    }

    /// A pod in `prepare/` that records `tree` for its app and `image` in its manifest.
    fn pod_using(pods: &PodsDir, image: &ImageId, tree: &str) -> crate::pod::Pod<crate::pod::Preparing> {
        let pod = pods.create().expect("create").prepare().expect("prepare");
        let dir = pod.path().to_path_buf();
        std::fs::create_dir_all(layout::appsinfo(&dir, "app")).expect("appsinfo");
        std::fs::write(layout::app_tree_id(&dir, "app"), tree).expect("tree id");
        let manifest = format!(
            r#"{{"acKind":"PodManifest","acVersion":"0.8.11","apps":[{{"name":"app","image":{{"id":"{image}"}}}}]}}"#
        );
        std::fs::write(layout::manifest(&dir), manifest).expect("manifest");
        pod
    }

    #[test]
    fn rm_and_gc_never_take_what_a_pod_uses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let pods = PodsDir::open(dir.path()).expect("pods");
        let used = store
            .import(&mut &aci("example.com/used")[..], "t")
            .expect("import");
        let unused = store
            .import(&mut &aci("example.com/unused")[..], "t")
            .expect("import");
        let used_tree = store.render(&used).expect("render");
        let unused_tree = store.render(&unused).expect("render");
        let pod = pod_using(&pods, &used, &used_tree.tree_id);

        let found = in_use(&pods).expect("in use");
        assert!(found.trees.contains(&used_tree.tree_id) && found.images.contains(&used));
        assert_eq!((found.trees.len(), found.images.len()), (1, 1));

        // gc with no grace: the unused tree and image go, what the pod uses stays.
        let report = collect(&store, &pods, Duration::ZERO).expect("gc");
        assert_eq!(report.trees_removed, vec![unused_tree.tree_id.clone()]);
        assert_eq!(report.images_removed.len(), 1);
        assert_eq!(report.images_removed[0].0, unused);
        assert!(used_tree.rootfs.join("file").exists());
        assert!(store.info(&used).is_ok());

        // rm takes the image but keeps the tree the pod runs from.
        let results = remove_images(&store, &pods, std::slice::from_ref(&used)).expect("rm");
        let removed = results.into_iter().next().expect("one").expect("removed");
        assert_eq!(removed.trees_kept, vec![used_tree.tree_id.clone()]);
        assert!(removed.trees_removed.is_empty());
        assert!(store.info(&used).is_err());
        assert!(used_tree.rootfs.join("file").exists());
        assert!(
            collect(&store, &pods, Duration::ZERO)
                .expect("gc")
                .trees_removed
                .is_empty()
        );

        // Once the pod is gone, so is its tree.
        pod.abort().expect("abort").destroy().expect("destroy");
        let report = collect(&store, &pods, Duration::ZERO).expect("gc");
        assert_eq!(report.trees_removed, vec![used_tree.tree_id]);
        assert!(store.trees().expect("trees").is_empty());
    }

    #[test]
    fn images_within_the_grace_period_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let pods = PodsDir::open(dir.path()).expect("pods");
        let id = store
            .import(&mut &aci("example.com/fresh")[..], "t")
            .expect("import");
        let report = collect(&store, &pods, Duration::from_secs(3600)).expect("gc");
        assert!(report.images_removed.is_empty());
        assert!(store.info(&id).is_ok());
    }
}
