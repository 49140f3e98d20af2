//! Building ACIs (well-formed and hostile) for the store's tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tar::{EntryType, Header};

use super::Store;

pub(super) const MTIME: u64 = 1_500_000_000;

pub(super) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// An image manifest; `extra` fields (dependencies, pathWhitelist, ...) are merged in.
pub(super) fn manifest(name: &str, labels: &[(&str, &str)], extra: Value) -> Vec<u8> {
    let labels: Vec<Value> = labels
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    let mut m = json!({
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": labels,
    });
    if let (Some(obj), Value::Object(more)) = (m.as_object_mut(), extra) {
        obj.extend(more);
    }
    serde_json::to_vec(&m).expect("encode manifest")
}

pub(super) struct Aci {
    b: tar::Builder<Vec<u8>>,
}

impl Aci {
    /// An archive with `manifest` and a `rootfs/` directory.
    pub(super) fn new(manifest: &[u8]) -> Self {
        Self::bare().manifest(manifest).dir("rootfs", 0o755)
    }

    /// An archive with nothing in it yet.
    pub(super) fn bare() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        Self { b }
    }

    pub(super) fn manifest(self, manifest: &[u8]) -> Self {
        self.entry("manifest", EntryType::Regular, 0o644, manifest)
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn entry(mut self, path: &str, kind: EntryType, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(kind, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("append");
        self
    }

    /// A PAX record of extended attributes for the entry appended next.
    pub(super) fn xattrs(mut self, xattrs: &[(&str, &[u8])]) -> Self {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), *value))
            .collect();
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("append pax");
        self
    }

    pub(super) fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(path, EntryType::Directory, mode, b"")
    }

    pub(super) fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path, EntryType::Regular, 0o644, data)
    }

    pub(super) fn file_owned(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, data).expect("append");
        self
    }

    pub(super) fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).expect("append symlink");
        self
    }

    pub(super) fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).expect("append hardlink");
        self
    }

    pub(super) fn fifo(self, path: &str) -> Self {
        self.entry(path, EntryType::Fifo, 0o640, b"")
    }

    pub(super) fn device(mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, 0o600, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.b.append_data(&mut h, path, &b""[..]).expect("append device");
        self
    }

    /// An entry whose name (and link name) bytes are put in the header verbatim,
    /// bypassing the tar crate's refusal to write `..` or absolute names.
    pub(super) fn raw(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.b.append(&h, data).expect("append raw");
        self
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub(super) fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).expect("bzip2");
    e.finish().expect("bzip2")
}

pub(super) fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).expect("xz");
    e.finish().expect("xz")
}

/// A minimal image `name` (with a version label) holding one file.
pub(super) fn simple(name: &str, version: &str, file: &str, contents: &[u8]) -> Vec<u8> {
    Aci::new(&manifest(name, &[("version", version)], json!({})))
        .file(&format!("rootfs/{file}"), contents)
        .finish()
}

pub(super) fn import(store: &Store, aci: &[u8]) -> crate::schema::ImageId {
    store.import(&mut &aci[..], "test").expect("import")
}

/// Every file and directory below `dir` (relative paths, sorted); empty if missing.
pub(super) fn walk(dir: &Path) -> Vec<PathBuf> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            out.push(path.strip_prefix(base).expect("prefix").to_path_buf());
            if path.symlink_metadata().expect("lstat").is_dir() {
                go(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// What an import left in the store's blob, index and temp directories.
pub(super) fn residue(store: &Store) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for sub in ["blob", "index", "tmp", "tree"] {
        all.extend(
            walk(&store.dir().join(sub))
                .into_iter()
                .filter(|p| !store.dir().join(sub).join(p).is_dir())
                .map(|p| PathBuf::from(sub).join(p)),
        );
    }
    all
}
