//! Builds small test images: a static busybox with the applets the checks use, a
//! passwd/group with a non-root user, and an appc manifest.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

/// What an image contains and how its app is defined.
#[derive(Debug, Clone)]
pub struct AciSpec {
    pub name: String,
    pub exec: Vec<String>,
    pub user: String,
    pub group: String,
    pub env: Vec<(String, String)>,
    pub working_directory: Option<String>,
    /// (name, path, readOnly)
    pub mount_points: Vec<(String, String, bool)>,
    pub labels: Vec<(String, String)>,
    /// Extra regular files: (path inside rootfs, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Whether the rootfs carries busybox, passwd and group (a layer on top of a
    /// dependency need not).
    pub busybox: bool,
    /// appc dependencies: (image name, labels).
    pub dependencies: Vec<(String, Vec<(String, String)>)>,
    pub path_whitelist: Vec<String>,
    /// Image annotations: (name, value).
    pub annotations: Vec<(String, String)>,
    /// More fields of the manifest's `app` as they are written (eventHandlers,
    /// ports, isolators...).
    pub app_extra: serde_json::Map<String, serde_json::Value>,
    /// Empty directories in the rootfs.
    pub dirs: Vec<String>,
    /// Files copied from the host: (path inside rootfs, host path, mode).
    pub host_files: Vec<(String, PathBuf, u32)>,
}

impl AciSpec {
    pub fn busybox(name: &str) -> Self {
        AciSpec {
            name: name.to_string(),
            exec: vec!["/bin/sh".into(), "-c".into(), "echo hello from busybox".into()],
            user: "0".into(),
            group: "0".into(),
            env: Vec::new(),
            working_directory: None,
            mount_points: Vec::new(),
            labels: vec![
                ("version".into(), "1.0.0".into()),
                ("os".into(), "linux".into()),
                ("arch".into(), "amd64".into()),
            ],
            files: Vec::new(),
            busybox: true,
            dependencies: Vec::new(),
            path_whitelist: Vec::new(),
            annotations: Vec::new(),
            app_extra: serde_json::Map::new(),
            dirs: Vec::new(),
            host_files: Vec::new(),
        }
    }

    /// A layer over `base`: only its own files, the rest comes from the dependency.
    pub fn layer(name: &str, base: &AciSpec) -> Self {
        let version = base
            .labels
            .iter()
            .filter(|(n, _)| n == "version")
            .cloned()
            .collect();
        AciSpec {
            busybox: false,
            dependencies: vec![(base.name.clone(), version)],
            ..AciSpec::busybox(name)
        }
    }

    pub fn manifest(&self) -> serde_json::Value {
        let mut app = json!({
            "exec": self.exec,
            "user": self.user,
            "group": self.group,
            "environment": self.env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
            "mountPoints": self.mount_points.iter()
                .map(|(n, p, ro)| json!({"name": n, "path": p, "readOnly": ro})).collect::<Vec<_>>(),
        });
        if let Some(wd) = &self.working_directory {
            app["workingDirectory"] = json!(wd);
        }
        for (key, value) in &self.app_extra {
            app[key] = value.clone();
        }
        let labels = |l: &[(String, String)]| {
            l.iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        };
        let mut manifest = json!({
            "acKind": "ImageManifest",
            "acVersion": "0.8.11",
            "name": self.name,
            "labels": labels(&self.labels),
            "app": app,
        });
        if !self.dependencies.is_empty() {
            manifest["dependencies"] = self
                .dependencies
                .iter()
                .map(|(name, l)| json!({"imageName": name, "labels": labels(l)}))
                .collect();
        }
        if !self.path_whitelist.is_empty() {
            manifest["pathWhitelist"] = json!(self.path_whitelist);
        }
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(labels(&self.annotations));
        }
        manifest
    }

    /// Writes the ACI (uncompressed tar) to `out`.
    pub fn write(&self, out: &Path) -> io::Result<()> {
        let file = std::fs::File::create(out)?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        let manifest = serde_json::to_vec_pretty(&self.manifest()).map_err(io::Error::other)?;
        append_file(&mut tar, "manifest", &manifest, 0o644)?;
        append_dir(&mut tar, "rootfs", 0o755)?;
        if self.busybox {
            append_busybox(&mut tar)?;
        }
        for dir in &self.dirs {
            append_dir(
                &mut tar,
                &format!("rootfs/{}", dir.trim_start_matches('/')),
                0o755,
            )?;
        }
        for (path, contents, mode) in &self.files {
            let path = format!("rootfs/{}", path.trim_start_matches('/'));
            append_file(&mut tar, &path, contents, *mode)?;
        }
        for (path, host, mode) in &self.host_files {
            let path = format!("rootfs/{}", path.trim_start_matches('/'));
            let file = std::fs::File::open(host)?;
            let size = file.metadata()?.len();
            tar.append_data(&mut header(tar::EntryType::Regular, size, *mode), &path, file)?;
        }
        tar.into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    }
}

/// busybox with its applets, /etc/passwd and /etc/group, and the usual dirs.
fn append_busybox<W: io::Write>(tar: &mut tar::Builder<W>) -> io::Result<()> {
    let busybox = busybox_path().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no static busybox (apt-get install busybox-static)",
        )
    })?;
    for dir in ["bin", "etc", "tmp", "root", "home", "home/app"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        append_dir(tar, &format!("rootfs/{dir}"), mode)?;
    }
    append_file(tar, "rootfs/bin/busybox", &std::fs::read(&busybox)?, 0o755)?;
    for applet in APPLETS {
        let mut link = header(tar::EntryType::Symlink, 0, 0o777);
        tar.append_link(&mut link, format!("rootfs/bin/{applet}"), "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app user:/home/app:/bin/sh\n";
    append_file(tar, "rootfs/etc/passwd", passwd, 0o644)?;
    append_file(
        tar,
        "rootfs/etc/group",
        b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        0o644,
    )
}

/// The applets the checks call.
pub(crate) const APPLETS: &[&str] = &[
    "sh", "echo", "env", "id", "pwd", "cat", "ls", "sleep", "true", "false", "test", "touch", "mkdir",
    "stat", "grep", "wc", "head", "printf", "kill", "mount", "readlink", "rm", "hostname", "wget", "timeout",
];

/// A GNU header with every numeric field set (an unset uid is not "0" to a tar reader).
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header
}

fn append_file<W: io::Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    tar.append_data(
        &mut header(tar::EntryType::Regular, data.len() as u64, mode),
        path,
        data,
    )
}

fn append_dir<W: io::Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    tar.append_data(&mut header(tar::EntryType::Directory, 0, mode), path, io::empty())
}

/// Debian's busybox-static installs a statically linked busybox here; the dynamic
/// one would need a libc inside the image.
pub fn busybox_path() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_static_elf(p))
}

/// A static ELF has no PT_INTERP program header.
fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    (0..phnum).all(|i| {
        let off = phoff + i * phentsize;
        data.get(off..off + 4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3) // PT_INTERP
            .unwrap_or(false)
    })
}

/// One tar entry exactly as written: raw name and link bytes (`..`, absolute and
/// over-long names included, through GNU long-name records), and a header size
/// that may lie about the data that follows.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub kind: tar::EntryType,
    pub name: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub data: Vec<u8>,
    pub mode: u32,
    /// The size the header claims, when it is not `data.len()`.
    pub claimed_size: Option<u64>,
}

impl RawEntry {
    pub fn file(name: impl AsRef<[u8]>, data: &[u8], mode: u32) -> Self {
        RawEntry {
            kind: tar::EntryType::Regular,
            name: name.as_ref().to_vec(),
            link: None,
            data: data.to_vec(),
            mode,
            claimed_size: None,
        }
    }
    pub fn dir(name: impl AsRef<[u8]>) -> Self {
        RawEntry {
            kind: tar::EntryType::Directory,
            ..RawEntry::file(name, b"", 0o755)
        }
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        RawEntry {
            kind: tar::EntryType::Symlink,
            link: Some(target.as_ref().to_vec()),
            ..RawEntry::file(name, b"", 0o777)
        }
    }
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        RawEntry {
            kind: tar::EntryType::Link,
            link: Some(target.as_ref().to_vec()),
            ..RawEntry::file(name, b"", 0o644)
        }
    }
}

/// A tar of `entries` exactly as given, with or without the end-of-archive marker.
pub fn raw_tar(entries: &[RawEntry], end_marker: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        if entry.name.len() >= 100 {
            long_record(&mut out, tar::EntryType::GNULongName, &entry.name)?;
        }
        if let Some(link) = entry.link.as_ref().filter(|l| l.len() >= 100) {
            long_record(&mut out, tar::EntryType::GNULongLink, link)?;
        }
        let size = entry.claimed_size.unwrap_or(entry.data.len() as u64);
        let mut h = header(entry.kind, size, entry.mode);
        put(&mut h.as_old_mut().name, &entry.name);
        if let Some(link) = &entry.link {
            put(&mut h.as_old_mut().linkname, link);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&entry.data);
        pad(&mut out);
    }
    if end_marker {
        out.extend_from_slice(&[0u8; 1024]);
    }
    Ok(out)
}

/// The busybox image of `spec` (its manifest replaced by `manifest` when given),
/// as raw entries that `raw_tar` writes back, so hostile entries can be appended.
pub fn raw_entries_of(spec: &AciSpec, manifest: Option<&[u8]>) -> io::Result<Vec<RawEntry>> {
    let mut bytes = Vec::new();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("base.aci");
    spec.write(&path)?;
    let mut archive = tar::Archive::new(std::fs::File::open(&path)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path_bytes().into_owned();
        let mut raw = RawEntry {
            kind: entry.header().entry_type(),
            link: entry.link_name_bytes().map(|l| l.into_owned()),
            mode: entry.header().mode()?,
            ..RawEntry::file(&name, b"", 0)
        };
        io::Read::read_to_end(&mut entry, &mut raw.data)?;
        if name == b"manifest"
            && let Some(m) = manifest
        {
            raw.data = m.to_vec();
        }
        bytes.push(raw);
    }
    Ok(bytes)
}

fn long_record(out: &mut Vec<u8>, kind: tar::EntryType, bytes: &[u8]) -> io::Result<()> {
    let mut data = bytes.to_vec();
    data.push(0);
    let mut h = header(kind, data.len() as u64, 0o644);
    put(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    pad(out);
    Ok(())
}

fn put(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}
