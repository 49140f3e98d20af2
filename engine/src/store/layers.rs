//! Docker/OCI images: their layers are kept by digest, so an image sharing layers
//! with one fetched before downloads only the layers that are new; an image is made
//! by applying its layers in order (whiteouts honoured, through the same safe
//! extraction as ACIs) and storing the result as an ordinary ACI.
//!
//! ```text
//! cas/layers/sha256/<64 hex>        a layer blob as the registry sent it (compressed)
//! ```
//!
//! A layer blob is written to a temp file while its sha256 is computed and renamed
//! into place only when the digest matches: a tampered or truncated blob never
//! lands, and concurrent fetches of one layer each rename a complete copy.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout::{Scratch, create_durable_dir};
use super::{IoContext, Store, StoreError, cas, decompress, extract};
use crate::schema::{ImageId, ImageManifest};

impl Store {
    fn layer_root(&self) -> PathBuf {
        self.dir.join("layers").join("sha256")
    }

    /// `sha256:<64 hex>` -> where that layer is (or would be) kept.
    fn layer_file(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| StoreError::InvalidReference {
                reference: digest.to_string(),
                reason: "a layer digest is sha256: followed by 64 lowercase hex digits".into(),
            })?;
        Ok(self.layer_root().join(hex))
    }

    /// The stored layer with this digest, if there is one.
    pub fn layer(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        let path = self.layer_file(digest)?;
        Ok(path.is_file().then_some(path))
    }

    /// Stores a layer blob read from `blob`, checking it against `digest`.
    pub fn put_layer(&self, digest: &str, blob: &mut dyn Read) -> Result<PathBuf, StoreError> {
        let path = self.layer_file(digest)?;
        self.ensure_dirs(&[self.tmp_dir()])?;
        let scratch = Scratch::new(self, "layer");
        let shown = scratch.path().display().to_string();
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(scratch.path())
            .ctx(|| format!("create {shown}"))?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match blob.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Corrupt(format!("layer {digest}: {e}"))),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).ctx(|| format!("write {shown}"))?;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            return Err(StoreError::Corrupt(format!(
                "layer {digest}: the content's digest is {got}"
            )));
        }
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io(format!("write {shown}"), e.into_error()))?;
        file.sync_all().ctx(|| format!("fsync {shown}"))?;
        let root = self.layer_root();
        self.ensure_dirs(&[self.dir.join("layers")])?;
        create_durable_dir(&root)?;
        std::fs::rename(scratch.path(), &path).ctx(|| format!("store layer {}", path.display()))?;
        scratch.keep();
        crate::fsutil::fsync_dir(&root).ctx(|| format!("fsync {}", root.display()))?;
        Ok(path)
    }

    /// Applies the stored layers `digests` in order and imports the result, with
    /// `manifest`, as an ACI. Nothing but the finished image is left behind.
    pub fn import_layers(
        &self,
        manifest: &ImageManifest,
        digests: &[String],
        origin: &str,
    ) -> Result<ImageId, StoreError> {
        self.ensure_dirs(&[self.tmp_dir()])?;
        let work = Scratch::new(self, "layers");
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).ctx(|| format!("create {}", rootfs.display()))?;
        let root = crate::fsutil::open_dir(&rootfs).ctx(|| format!("open {}", rootfs.display()))?;
        let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        for digest in digests {
            let path = self
                .layer(digest)?
                .ok_or_else(|| StoreError::NotFound(format!("layer {digest}")))?;
            let mut file = BufReader::with_capacity(
                256 << 10,
                File::open(&path).ctx(|| format!("open {}", path.display()))?,
            );
            let stream = decompress::uncompressed(&mut file)
                .map_err(|e| StoreError::Corrupt(format!("layer {digest}: {e}")))?;
            extract::unpack_layer(stream, root.as_fd()).map_err(|e| match e {
                StoreError::Corrupt(why) => StoreError::Corrupt(format!("layer {digest}: {why}")),
                other => other,
            })?;
        }
        settle_dir_times(&rootfs, started)?;
        let aci = work.path().join("image.aci");
        write_aci(manifest, &rootfs, &aci)?;
        let mut file = BufReader::with_capacity(
            256 << 10,
            File::open(&aci).ctx(|| format!("open {}", aci.display()))?,
        );
        cas::import(self, &mut file, origin)
    }
}

/// Directories no layer listed (implicit parents, the root) carry the time of this
/// import; they get the epoch instead, so the same layers always make the same
/// image ID (concurrent or repeated fetches agree).
fn settle_dir_times(root: &Path, since: std::time::SystemTime) -> Result<(), StoreError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            // file_type() does not follow symlinks: only real directories are walked.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
        let meta = std::fs::symlink_metadata(&dir).ctx(|| format!("stat {}", dir.display()))?;
        if meta.modified().is_ok_and(|m| m >= since) {
            let epoch = TimeSpec::new(0, 0);
            utimensat(
                nix::fcntl::AT_FDCWD,
                &dir,
                &epoch,
                &epoch,
                UtimensatFlags::NoFollowSymlink,
            )
            .ctx(|| format!("set times of {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Tars `manifest` and the directory `rootfs` into `out`: entries in sorted order
/// (the same tree always gives the same bytes), symlinks kept as symlinks, files
/// with several links stored once and then as hard links.
fn write_aci(manifest: &ImageManifest, rootfs: &Path, out: &Path) -> Result<(), StoreError> {
    let shown = out.display().to_string();
    let file = File::create(out).ctx(|| format!("create {shown}"))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(256 << 10, file));
    let bytes =
        serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::InvalidManifest(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    tar.append_data(&mut header, "manifest", bytes.as_slice())
        .ctx(|| format!("write {shown}"))?;
    let mut linked = std::collections::HashMap::new();
    append_tree(&mut tar, rootfs, Path::new("rootfs"), &mut linked).ctx(|| format!("write {shown}"))?;
    tar.into_inner()
        .ctx(|| format!("write {shown}"))?
        .into_inner()
        .map_err(|e| StoreError::io(format!("write {shown}"), e.into_error()))?;
    Ok(())
}

/// Appends `dir` (as `name`) and everything below it. `linked` maps (device, inode)
/// of multiply-linked files to the name they were first stored under.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    linked: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    tar.append_data(&mut header, name, io::empty())?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let entry_name = name.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            append_tree(tar, &path, &entry_name, linked)?;
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if kind.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &entry_name, std::fs::read_link(&path)?)?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = linked.get(&key) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    tar.append_link(&mut header, &entry_name, first)?;
                    continue;
                }
                linked.insert(key, entry_name.clone());
            }
            tar.append_data(&mut header, &entry_name, File::open(&path)?)?;
        } else if kind.is_fifo() {
            header.set_entry_type(tar::EntryType::Fifo);
            header.set_size(0);
            tar.append_data(&mut header, &entry_name, io::empty())?;
        }
        // Sockets and device nodes are never extracted into a rootfs; nothing to keep.
    }
    Ok(())
}
