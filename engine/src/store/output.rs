//! Writing an image out of the store for a user: `rkt image export` to a file,
//! `extract` and `render` to a directory.
//!
//! Each output is built beside its destination under a dot-name and renamed into
//! place, so the destination is never seen half-written and a failure leaves
//! nothing behind. Without `overwrite` the final rename refuses to replace
//! anything (RENAME_NOREPLACE), even something created meanwhile. Archive content
//! goes through `extract::unpack`, which never writes outside its root.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use super::{IoContext, Store, StoreError, extract, index};
use crate::schema::ImageId;

/// What `extract_to`/`render_to` put into the destination directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirContent {
    /// `manifest` and `rootfs/`, like the archive.
    Image,
    /// The root filesystem alone, as the destination directory itself.
    RootfsOnly,
}

/// A sibling of the destination that is deleted when dropped unless published.
struct Staging {
    path: PathBuf,
    published: bool,
}

impl Staging {
    fn beside(dest: &Path) -> Result<Self, StoreError> {
        let name = dest.file_name().ok_or_else(|| {
            StoreError::io(
                format!("write {}", dest.display()),
                io::Error::new(io::ErrorKind::InvalidInput, "the destination has no file name"),
            )
        })?;
        let parent = parent_of(dest);
        std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        let mut staged = format!(".{}", name.to_string_lossy());
        staged.push_str(&format!(
            ".rkt-{}-{}",
            std::process::id(),
            crate::fsutil::unique_suffix()
        ));
        Ok(Staging {
            path: parent.join(staged),
            published: false,
        })
    }

    /// Renames the staged output to `dest`; with `overwrite`, whatever was there is
    /// moved aside first and deleted after.
    fn publish(mut self, dest: &Path, overwrite: bool) -> Result<(), StoreError> {
        let exists = std::fs::symlink_metadata(dest).is_ok();
        if exists && !overwrite {
            return Err(StoreError::Exists(dest.display().to_string()));
        }
        let aside = if exists {
            let aside = Staging::beside(dest)?;
            std::fs::rename(dest, &aside.path).ctx(|| format!("move aside {}", dest.display()))?;
            Some(aside)
        } else {
            None
        };
        match renameat2(
            AT_FDCWD,
            &self.path,
            AT_FDCWD,
            dest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(StoreError::Exists(dest.display().to_string())),
            Err(e) => return Err(StoreError::io(format!("write {}", dest.display()), e.into())),
        }
        self.published = true;
        let parent = parent_of(dest);
        crate::fsutil::fsync_dir(parent).ctx(|| format!("fsync {}", parent.display()))?;
        // `aside` is deleted as it drops: the old content, never crossing a mount.
        drop(aside);
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let result = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => crate::fsutil::remove_tree(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary output");
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses destinations that replacing would be a disaster for: `/`, and a
/// directory with something mounted below it (replacing it would delete through,
/// or unmount, what the user mounted there).
fn check_replaceable(dest: &Path, overwrite: bool) -> Result<(), StoreError> {
    let refuse = |reason: &str| {
        StoreError::io(
            format!("write {}", dest.display()),
            io::Error::new(io::ErrorKind::InvalidInput, reason.to_string()),
        )
    };
    let Ok(meta) = std::fs::symlink_metadata(dest) else {
        return Ok(());
    };
    if !overwrite {
        return Err(StoreError::Exists(dest.display().to_string()));
    }
    let canonical = std::fs::canonicalize(dest).unwrap_or_else(|_| dest.to_path_buf());
    if canonical == Path::new("/") {
        return Err(refuse("refusing to replace the root directory"));
    }
    if meta.is_dir() {
        let mounts = crate::fsutil::mounts_under(&canonical).ctx(|| "read mountinfo".to_string())?;
        if !mounts.is_empty() {
            return Err(refuse("something is mounted there; refusing to replace it"));
        }
    }
    Ok(())
}

/// The stored (uncompressed) archive, written to `dest`: the very bytes imported,
/// decompressed.
pub(super) fn export_to(
    store: &Store,
    id: &ImageId,
    dest: &Path,
    overwrite: bool,
) -> Result<u64, StoreError> {
    check_replaceable(dest, overwrite)?;
    let staging = Staging::beside(dest)?;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&staging.path)
        .ctx(|| format!("create {}", staging.path.display()))?;
    let written = super::cas::export(store, id, &mut file)?;
    file.flush().ctx(|| format!("write {}", staging.path.display()))?;
    file.sync_all()
        .ctx(|| format!("fsync {}", staging.path.display()))?;
    drop(file);
    staging.publish(dest, overwrite)?;
    Ok(written)
}

/// The image alone (no dependencies), unpacked from its archive.
pub(super) fn extract_to(
    store: &Store,
    id: &ImageId,
    dest: &Path,
    content: DirContent,
    overwrite: bool,
) -> Result<(), StoreError> {
    check_replaceable(dest, overwrite)?;
    let info = index::info(store, id)?;
    let blob = super::cas::durable_blob(store, &info.id)?;
    let staging = Staging::beside(dest)?;
    let rootfs = make_staging_dir(store, id, &staging, content)?;
    let root = crate::fsutil::open_dir(&rootfs).ctx(|| format!("open {}", rootfs.display()))?;
    let file = File::open(&blob).ctx(|| format!("open {} ({})", blob.display(), info.id))?;
    super::touch_on_read(store, &info.id);
    extract::unpack(BufReader::with_capacity(256 << 10, file), root.as_fd())?;
    nix::unistd::syncfs(&root).ctx(|| format!("sync {}", rootfs.display()))?;
    drop(root);
    finish_staging_dir(&staging, content)?;
    staging.publish(dest, overwrite)
}

/// The image as its apps see it: rendered with its dependencies (through the tree
/// store, which keeps the tree for later runs) and copied out.
pub(super) fn render_to(
    store: &Store,
    id: &ImageId,
    dest: &Path,
    content: DirContent,
    overwrite: bool,
) -> Result<(), StoreError> {
    check_replaceable(dest, overwrite)?;
    // Until the copy is done, image gc must not remove the tree being copied.
    let _using_tree = store.lock_trees_shared()?;
    let tree = store.render(id)?;
    let staging = Staging::beside(dest)?;
    let rootfs = make_staging_dir(store, id, &staging, content)?;
    super::copy_tree(&tree.rootfs, &rootfs).ctx(|| format!("copy the tree of {id}"))?;
    let root = crate::fsutil::open_dir(&rootfs).ctx(|| format!("open {}", rootfs.display()))?;
    nix::unistd::syncfs(&root).ctx(|| format!("sync {}", rootfs.display()))?;
    drop(root);
    finish_staging_dir(&staging, content)?;
    staging.publish(dest, overwrite)
}

/// Opens the filled directory up as rkt makes it (the rootfs keeps the image's mode).
fn finish_staging_dir(staging: &Staging, content: DirContent) -> Result<(), StoreError> {
    if content == DirContent::Image {
        std::fs::set_permissions(&staging.path, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", staging.path.display()))?;
    }
    Ok(())
}

/// Creates the staging directory (owner-only while it fills: an image may carry
/// setuid programs) and, for `DirContent::Image`, its `manifest`; returns where
/// the rootfs goes.
fn make_staging_dir(
    store: &Store,
    id: &ImageId,
    staging: &Staging,
    content: DirContent,
) -> Result<PathBuf, StoreError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging.path)
        .ctx(|| format!("create {}", staging.path.display()))?;
    match content {
        DirContent::RootfsOnly => Ok(staging.path.clone()),
        DirContent::Image => {
            let manifest = index::manifest_bytes(store, id)?;
            let path = staging.path.join("manifest");
            std::fs::write(&path, manifest).ctx(|| format!("write {}", path.display()))?;
            let rootfs = staging.path.join("rootfs");
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&rootfs)
                .ctx(|| format!("create {}", rootfs.display()))?;
            Ok(rootfs)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::testutil::{self, Aci, manifest, simple};

    /// Names in `dir` other than `keep`: what an operation left behind.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn export_writes_the_uncompressed_archive_and_replaces_only_when_asked() {
        let (dir, store) = testutil::store();
        let plain = simple("example.com/app", "1", "f", b"x");
        let id = store
            .import(&mut &testutil::gzip(&plain)[..], "t")
            .expect("import");
        let out = dir.path().join("out").join("app.aci");
        assert_eq!(
            store.export_to(&id, &out, false).expect("export"),
            plain.len() as u64
        );
        assert_eq!(std::fs::read(&out).expect("read"), plain);
        std::fs::write(&out, b"mine").expect("write");
        let err = store.export_to(&id, &out, false).expect_err("exists");
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(&out).expect("read"), b"mine");
        store.export_to(&id, &out, true).expect("overwrite");
        assert_eq!(std::fs::read(&out).expect("read"), plain);
        assert_eq!(
            others(out.parent().expect("parent"), &["app.aci"]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn reading_an_archive_counts_as_a_use() {
        let (dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let before = store.info(&id).expect("info").last_used;
        store
            .export_to(&id, &dir.path().join("a.aci"), false)
            .expect("export");
        assert!(store.info(&id).expect("info").last_used > before);
    }

    #[test]
    fn extract_writes_the_image_alone_and_render_applies_dependencies() {
        let (dir, store) = testutil::store();
        testutil::import(&store, &simple("example.com/base", "1", "base-file", b"b"));
        let app_manifest = manifest(
            "example.com/app",
            &[],
            json!({ "dependencies": [{ "imageName": "example.com/base" }] }),
        );
        let app = testutil::import(
            &store,
            &Aci::new(&app_manifest).file("rootfs/app-file", b"a").finish(),
        );
        let out = dir.path().join("x");
        store
            .extract_to(&app, &out, DirContent::Image, false)
            .expect("extract");
        assert_eq!(
            std::fs::read(out.join("manifest")).expect("manifest"),
            app_manifest
        );
        assert!(out.join("rootfs/app-file").exists());
        assert!(
            !out.join("rootfs/base-file").exists(),
            "extract is the image alone"
        );

        let err = store
            .extract_to(&app, &out, DirContent::RootfsOnly, false)
            .expect_err("exists");
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        store
            .extract_to(&app, &out, DirContent::RootfsOnly, true)
            .expect("overwrite");
        assert!(out.join("app-file").exists() && !out.join("manifest").exists());

        let rendered = dir.path().join("r");
        store
            .render_to(&app, &rendered, DirContent::Image, false)
            .expect("render");
        assert!(rendered.join("rootfs/app-file").exists());
        assert!(rendered.join("rootfs/base-file").exists(), "with its dependency");
        store
            .render_to(&app, &rendered, DirContent::RootfsOnly, true)
            .expect("render");
        assert!(rendered.join("base-file").exists() && !rendered.join("rootfs").exists());
        assert_eq!(others(dir.path(), &["x", "r", "cas"]), Vec::<String>::new());
    }

    #[test]
    fn a_refused_extraction_leaves_nothing_and_writes_nothing_outside() {
        let (dir, store) = testutil::store();
        let id = testutil::import(
            &store,
            &Aci::new(&manifest("example.com/evil", &[], json!({})))
                .file("rootfs/ok", b"x")
                .raw(b"rootfs/../../escape", tar::EntryType::Regular, b"", b"x")
                .finish(),
        );
        let out = dir.path().join("sub").join("out");
        let err = store
            .extract_to(&id, &out, DirContent::Image, false)
            .expect_err("refused");
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        assert!(!out.exists());
        assert_eq!(others(&dir.path().join("sub"), &[]), Vec::<String>::new());
        assert!(!dir.path().join("escape").exists());
        assert!(!dir.path().join("sub").join("escape").exists());
    }

    #[test]
    fn the_root_directory_is_never_replaced() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let err = store
            .extract_to(&id, Path::new("/"), DirContent::RootfsOnly, true)
            .expect_err("refused");
        assert!(
            err.to_string().contains("root directory") || err.to_string().contains("file name"),
            "{err}"
        );
    }
}
