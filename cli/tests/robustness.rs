//! The foundation's robustness promises, proven through the real `rkt` binary as
//! root: hostile archives never write outside the store, concurrent fetches and
//! runs (with `list` and `gc` racing them) stay consistent, an unwritable or full
//! data dir is a clean one-line error, and a bad manifest changes nothing.
//!
//! Every test has its own `Rkt` harness (private `--dir` in its own temp work dir);
//! every mount a test makes is undone by a guard's Drop, so a failed assertion
//! leaves nothing mounted. Concurrency is synchronised by waiting on processes and
//! channels with deadlines, never by sleeping.

mod common;
use common::{bin, harness, one_line_254};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt};

/// Everything below `dir` (names only), to prove a failed command changed nothing.
fn snapshot(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk(dir).into_iter().map(|(p, _)| p).collect();
    // A run takes the store's prepare lock before it resolves its images; the empty
    // lock file that leaves is no state.
    out.retain(|p| !p.ends_with("cas/prepare.lock"));
    out.sort();
    out
}

/// Every entry below `dir` with its metadata, symlinks not followed.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    fn go(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let is_dir = meta.is_dir();
            out.push((e.path(), meta));
            if is_dir {
                go(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, &mut out);
    out
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------
// Processes with deadlines: a hung rkt fails the test instead of hanging it.

/// Starts `cmd` with stdin closed and stdout/stderr captured.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rkt")
}

fn run_output(out: Output) -> RunOutput {
    RunOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for every child (each in its own thread, so their pipes drain in
/// parallel) until `deadline`; a child still running then is killed (by its pid:
/// we started it and have not reaped it) and the test fails, naming it.
fn wait_all(children: Vec<(String, Child)>, limit: Duration) -> Vec<(String, RunOutput)> {
    let (tx, rx) = mpsc::channel();
    let mut pending: BTreeMap<usize, (String, u32)> = BTreeMap::new();
    for (i, (what, child)) in children.into_iter().enumerate() {
        pending.insert(i, (what, child.id()));
        let tx = tx.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send((i, out));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut done: BTreeMap<usize, (String, RunOutput)> = BTreeMap::new();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, out)) => {
                let (what, _) = pending.remove(&i).expect("a child reports once");
                let out = out.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
                done.insert(i, (what, run_output(out)));
            }
            Err(_) => {
                for (what, pid) in pending.values() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    eprintln!("watchdog: killed {what} (pid {pid}) after {limit:?}");
                }
                let names: Vec<&String> = pending.values().map(|(w, _)| w).collect();
                panic!("still running after {limit:?}, killed: {names:?}");
            }
        }
    }
    done.into_values().collect()
}

/// One command with a deadline.
fn output_within(what: &str, cmd: Command, limit: Duration) -> RunOutput {
    let child = spawn(cmd);
    wait_all(vec![(what.to_string(), child)], limit)
        .pop()
        .expect("one result")
        .1
}

const GENEROUS: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------
// Hand-made archives: raw names and link names go into the header bytes directly
// (`set_path` refuses `..` and absolute names, which is the point of these tests).

/// One tar entry exactly as written.
struct Raw {
    kind: tar::EntryType,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    mode: u32,
    device: Option<(u32, u32)>,
}

impl Raw {
    fn file(name: impl AsRef<[u8]>, data: &[u8]) -> Self {
        Raw {
            kind: tar::EntryType::Regular,
            name: name.as_ref().to_vec(),
            link: None,
            data: data.to_vec(),
            mode: 0o644,
            device: None,
        }
    }
    fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Raw {
            kind: tar::EntryType::Symlink,
            link: Some(target.as_ref().to_vec()),
            mode: 0o777,
            ..Raw::file(name, b"")
        }
    }
    fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Raw {
            kind: tar::EntryType::Link,
            link: Some(target.as_ref().to_vec()),
            ..Raw::file(name, b"")
        }
    }
    fn dir(name: impl AsRef<[u8]>) -> Self {
        Raw {
            kind: tar::EntryType::Directory,
            mode: 0o755,
            ..Raw::file(name, b"")
        }
    }
    fn device(kind: tar::EntryType, name: &str, major: u32, minor: u32) -> Self {
        Raw {
            kind,
            device: Some((major, minor)),
            mode: 0o666,
            ..Raw::file(name, b"")
        }
    }
}

fn gnu_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn put(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// A GNU long-name (`L`) or long-link (`K`) record carrying `bytes` for the next entry.
fn append_long<W: io::Write>(
    tar: &mut tar::Builder<W>,
    kind: tar::EntryType,
    bytes: &[u8],
) -> io::Result<()> {
    let mut data = bytes.to_vec();
    data.push(0);
    let mut h = gnu_header(kind, data.len() as u64, 0o644);
    put(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_cksum();
    tar.append(&h, data.as_slice())
}

fn append_raw<W: io::Write>(tar: &mut tar::Builder<W>, raw: &Raw) -> io::Result<()> {
    let name_field = 100;
    if raw.name.len() >= name_field {
        append_long(tar, tar::EntryType::GNULongName, &raw.name)?;
    }
    if let Some(link) = &raw.link
        && link.len() >= name_field
    {
        append_long(tar, tar::EntryType::GNULongLink, link)?;
    }
    let mut h = gnu_header(raw.kind, raw.data.len() as u64, raw.mode);
    put(&mut h.as_old_mut().name, &raw.name);
    if let Some(link) = &raw.link {
        put(&mut h.as_old_mut().linkname, link);
    }
    if let Some((major, minor)) = raw.device {
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
    }
    h.set_cksum();
    tar.append(&h, raw.data.as_slice())
}

/// The busybox image of `spec` with its manifest replaced (when `manifest` is
/// given) and `extra` entries appended after the valid ones. Checks that a tar
/// reader sees the crafted names exactly as meant, so no test passes vacuously.
fn crafted_aci(rkt: &Rkt, spec: &AciSpec, manifest: Option<&[u8]>, extra: &[Raw], file: &str) -> PathBuf {
    let base = rkt.image(spec).expect("base image");
    let out = rkt.work().join(file);
    let mut tar = tar::Builder::new(io::BufWriter::new(
        std::fs::File::create(&out).expect("create crafted image"),
    ));
    let mut archive = tar::Archive::new(std::fs::File::open(&base).expect("open base image"));
    for entry in archive.entries().expect("read base image") {
        let mut entry = entry.expect("base image entry");
        let header = entry.header().clone();
        if entry.path_bytes().as_ref() == b"manifest"
            && let Some(bytes) = manifest
        {
            let mut h = gnu_header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
            put(&mut h.as_old_mut().name, b"manifest");
            h.set_cksum();
            tar.append(&h, bytes).expect("write manifest");
            continue;
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read base entry");
        tar.append(&header, data.as_slice()).expect("copy entry");
    }
    for raw in extra {
        append_raw(&mut tar, raw).expect("write crafted entry");
    }
    tar.into_inner()
        .expect("finish tar")
        .into_inner()
        .map_err(|e| e.into_error())
        .expect("flush")
        .sync_all()
        .expect("fsync");

    // Self-check: the crafted entries read back with their exact names.
    let mut seen = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("reopen crafted image"));
    for entry in archive.entries().expect("read crafted image") {
        let entry = entry.expect("crafted entry");
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        seen.push((entry.header().entry_type(), entry.path_bytes().into_owned(), link));
    }
    for raw in extra {
        assert!(
            seen.iter()
                .any(|(k, n, l)| *k == raw.kind && *n == raw.name && *l == raw.link),
            "crafted entry {:?} did not survive the round trip",
            String::from_utf8_lossy(&raw.name)
        );
    }
    out
}

// ---------------------------------------------------------------------------------
// 1. Hostile archives through `rkt run` and `rkt fetch`.

/// A file name that only a hostile entry creates.
const MARKER: &str = "rkt-robustness-pwned";

/// A directory and a file beside the store that no extraction may touch.
struct Canary {
    dir: PathBuf,
    file: PathBuf,
    before: Vec<String>,
}

impl Canary {
    fn new(rkt: &Rkt) -> Self {
        let dir = rkt.work().join("canary");
        std::fs::create_dir(&dir).expect("mkdir canary");
        let file = dir.join("secret");
        std::fs::write(&file, b"the canary's original content\n").expect("write canary");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let mut canary = Canary {
            dir,
            file,
            before: Vec::new(),
        };
        canary.before = canary.state();
        canary
    }

    /// Everything an escape could change: names, type and mode, owner, link count,
    /// inode (a replaced file), size, content, symlink targets.
    fn state(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut describe = |path: &Path, meta: &std::fs::Metadata| {
            let extra = if meta.is_file() {
                format!(
                    "{:?}",
                    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
                )
            } else if meta.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(path).unwrap_or_default())
            } else {
                String::new()
            };
            out.push(format!(
                "{} mode={:o} uid={} gid={} nlink={} ino={} size={} {extra}",
                path.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.nlink(),
                meta.ino(),
                meta.size(),
            ));
        };
        let top = std::fs::symlink_metadata(&self.dir).expect("the canary directory is still there");
        describe(&self.dir, &top);
        for (path, meta) in walk(&self.dir) {
            describe(&path, &meta);
        }
        out.sort();
        out
    }

    fn assert_untouched(&self, when: &str) {
        assert_eq!(self.state(), self.before, "{when}: the canary changed");
    }
}

/// What a hostile entry may say about itself in the error.
struct Hostile {
    entries: Vec<Raw>,
    /// Any of these in the one-line error counts as naming the offending entry.
    names: Vec<String>,
    /// When rkt accepts the image, the marker file must be found inside the
    /// rendered rootfs (proof that the entry was written, just not outside).
    lands_inside: bool,
}

/// `rootfs/../../../..(enough to reach /)` + `to` (an absolute host path).
fn dotdot_to(to: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(40),
        to.display().to_string().trim_start_matches('/')
    )
}

/// Runs and fetches the hostile image; either rkt refuses it with a one-line error
/// naming the entry, or it succeeds; in every case nothing outside the store
/// changed, nothing stays mounted, and gc leaves no pod behind.
fn check_hostile(test: &str, make: impl FnOnce(&Canary) -> Hostile) {
    let Some(rkt) = harness(test) else {
        return;
    };
    let canary = Canary::new(&rkt);
    let hostile = make(&canary);
    let image = crafted_aci(
        &rkt,
        &AciSpec::busybox("example.com/hostile"),
        None,
        &hostile.entries,
        "hostile.aci",
    );
    let image = s(&image);

    let judge = |what: &str, out: &RunOutput| {
        if out.code == 0 {
            return;
        }
        assert_eq!(out.code, 254, "{test}: {what}: {}", out.describe());
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{test}: {what}: want one line: {}",
            out.describe()
        );
        assert!(
            hostile.names.iter().any(|n| out.stderr.contains(n.as_str())),
            "{test}: {what}: the error names none of {:?}: {}",
            hostile.names,
            out.describe()
        );
    };

    // With an overlay over the tree store, and with a private copy of the tree
    // (whose removal by gc must not follow the image's links either).
    let mut accepted = false;
    for extra in [&[][..], &["--no-overlay"][..]] {
        let mut args = extra.to_vec();
        args.extend([image.as_str(), "--exec", "/bin/true"]);
        let run = rkt.run(&args);
        eprintln!("{test}: rkt run {extra:?}: {}", run.describe());
        judge("rkt run", &run);
        accepted |= run.code == 0;
        canary.assert_untouched(&format!("{test}: after rkt run {extra:?}"));
        assert!(
            rkt.mounts_left().is_empty(),
            "{test}: mounts left after run: {:?}",
            rkt.mounts_left()
        );
    }

    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    eprintln!("{test}: rkt fetch: {}", fetch.describe());
    judge("rkt fetch", &fetch);
    canary.assert_untouched(&format!("{test}: after rkt fetch"));

    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{test}: gc: {}", gc.describe());
    let pods: Vec<PathBuf> = walk(&rkt.dir.join("pods"))
        .into_iter()
        .filter(|(p, _)| p.components().count() == rkt.dir.components().count() + 3)
        .map(|(p, _)| p)
        .collect();
    assert!(pods.is_empty(), "{test}: pods left after gc: {pods:?}");
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(
        (list.code, list.stdout.as_str()),
        (0, ""),
        "{test}: {}",
        list.describe()
    );
    assert!(
        rkt.mounts_left().is_empty(),
        "{test}: mounts left after gc: {:?}",
        rkt.mounts_left()
    );
    canary.assert_untouched(&format!("{test}: after rkt gc"));

    // Inside the store, a hostile name may only land inside a rendered rootfs, and no
    // device node exists anywhere.
    let trees = rkt.dir.join("cas").join("tree");
    let mut inside = 0;
    for (path, meta) in walk(rkt.work()) {
        let in_a_rootfs = path
            .strip_prefix(&trees)
            .map(|rel| rel.components().nth(1).is_some_and(|c| c.as_os_str() == "rootfs"))
            .unwrap_or(false);
        if path
            .file_name()
            .is_some_and(|n| n.as_bytes() == MARKER.as_bytes())
        {
            assert!(
                in_a_rootfs,
                "{test}: a hostile entry landed at {}",
                path.display()
            );
            inside += 1;
        }
        let kind = meta.file_type();
        assert!(
            !kind.is_char_device() && !kind.is_block_device(),
            "{test}: a device node was created at {}",
            path.display()
        );
    }
    if accepted && hostile.lands_inside {
        assert!(
            inside > 0,
            "{test}: rkt accepted the image but its entry is nowhere in the rootfs"
        );
    }
}

#[test]
fn hostile_dotdot_reaching_the_host_is_harmless() {
    check_hostile("dotdot to the canary", |canary| Hostile {
        entries: vec![Raw::file(
            format!("rootfs/{}", dotdot_to(&canary.dir.join(MARKER))),
            b"escaped\n",
        )],
        lands_inside: false,
        names: vec![MARKER.into(), "..".into()],
    });
}

#[test]
fn hostile_dotdot_into_the_store_is_harmless() {
    check_hostile("dotdot into the store", |_| Hostile {
        entries: vec![Raw::file(format!("rootfs/../../{MARKER}"), b"escaped\n")],
        lands_inside: false,
        names: vec![MARKER.into(), "..".into()],
    });
}

#[test]
fn hostile_absolute_name_is_harmless() {
    check_hostile("absolute name", |canary| Hostile {
        entries: vec![Raw::file(s(&canary.dir.join(MARKER)), b"escaped\n")],
        lands_inside: false,
        names: vec![MARKER.into()],
    });
}

#[test]
fn hostile_absolute_symlink_then_file_through_it_is_harmless() {
    check_hostile("absolute symlink then file", |canary| Hostile {
        entries: vec![
            Raw::symlink("rootfs/evil", s(&canary.dir)),
            // Overwriting an existing host file through the link, then adding one.
            Raw::file("rootfs/evil/secret", b"overwritten\n"),
            Raw::file(format!("rootfs/evil/{MARKER}"), b"escaped\n"),
        ],
        lands_inside: false,
        names: vec!["evil".into()],
    });
}

#[test]
fn hostile_symlink_to_a_host_path_that_also_exists_in_the_image_stays_inside() {
    check_hostile("symlink to a host path mirrored in the image", |canary| {
        // rootfs/<canary path>/ exists in the image too: the link resolves there,
        // inside the root, and the entries are written there, never on the host.
        let mut entries = Vec::new();
        let mut mirror = PathBuf::from("rootfs");
        for c in canary.dir.components().skip(1) {
            mirror.push(c);
            entries.push(Raw::dir(mirror.as_os_str().as_bytes()));
        }
        entries.push(Raw::symlink("rootfs/evil", s(&canary.dir)));
        entries.push(Raw::file(format!("rootfs/evil/{MARKER}"), b"escaped\n"));
        entries.push(Raw::file("rootfs/evil/secret", b"overwritten\n"));
        Hostile {
            entries,
            lands_inside: true,
            names: vec!["evil".into()],
        }
    });
}

#[test]
fn hostile_relative_symlink_then_file_through_it_is_harmless() {
    check_hostile("relative symlink then file", |canary| Hostile {
        entries: vec![
            Raw::symlink("rootfs/evil", dotdot_to(&canary.dir)),
            Raw::file(format!("rootfs/evil/{MARKER}"), b"escaped\n"),
            Raw::file("rootfs/evil/secret", b"overwritten\n"),
        ],
        lands_inside: false,
        names: vec!["evil".into()],
    });
}

#[test]
fn hostile_hardlink_to_a_host_file_is_harmless() {
    check_hostile("hardlink to a host path", |canary| Hostile {
        entries: vec![Raw::hardlink("rootfs/passwd-link", s(&canary.file))],
        lands_inside: false,
        names: vec!["passwd-link".into()],
    });
}

#[test]
fn hostile_hardlink_with_dotdot_is_harmless() {
    check_hostile("hardlink with ..", |canary| Hostile {
        entries: vec![Raw::hardlink(
            "rootfs/passwd-link",
            format!("rootfs/{}", dotdot_to(&canary.file)),
        )],
        lands_inside: false,
        names: vec!["passwd-link".into()],
    });
}

#[test]
fn hostile_hardlink_through_a_symlink_is_harmless() {
    check_hostile("hardlink through a symlink", |canary| Hostile {
        entries: vec![
            Raw::symlink("rootfs/evil", s(&canary.dir)),
            Raw::hardlink("rootfs/passwd-link", "rootfs/evil/secret"),
        ],
        lands_inside: false,
        names: vec!["passwd-link".into()],
    });
}

#[test]
fn hostile_device_nodes_are_not_created() {
    check_hostile("device nodes", |_| Hostile {
        entries: vec![
            // /dev/mem and /dev/sda: raw handles on host memory and disk.
            Raw::device(tar::EntryType::Char, "rootfs/dev-mem", 1, 1),
            Raw::device(tar::EntryType::Block, "rootfs/dev-sda", 8, 0),
        ],
        lands_inside: false,
        names: vec!["dev-mem".into(), "dev-sda".into()],
    });
}

// ---------------------------------------------------------------------------------
// 2. Concurrent fetches of one image.

#[test]
fn concurrent_fetches_store_one_image() {
    let Some(rkt) = harness("concurrent_fetches_store_one_image") else {
        return;
    };
    // Fresh content (never fetched by anyone), about 1 MiB beyond busybox.
    let mut spec = AciSpec::busybox("example.com/concurrent-fetch");
    let noise: Vec<u8> = (0u32..1 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    spec.files.push(("data/noise".into(), noise, 0o644));
    let image = s(&rkt.image(&spec).expect("image"));

    let children: Vec<(String, Child)> = (0..8)
        .map(|i| {
            let cmd = rkt.command(&["fetch", "--insecure-options=image", &image]);
            (format!("fetch #{i}"), spawn(cmd))
        })
        .collect();
    let results = wait_all(children, GENEROUS);

    let mut ids = Vec::new();
    for (what, out) in &results {
        assert_eq!(out.code, 0, "{what}: {}", out.describe());
        let id = out.stdout.trim().to_string();
        assert!(id.starts_with("sha512-") && id.len() == 7 + 128, "{what}: {id:?}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "the fetches disagree on the ID: {ids:?}");

    let cas = rkt.dir.join("cas");
    let records: Vec<PathBuf> = walk(&cas.join("index"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(records.len(), 1, "index records: {records:?}");
    let blobs: Vec<PathBuf> = walk(&cas.join("blob"))
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(blobs.len(), 1, "blobs: {blobs:?}");
    let tmp = snapshot(&cas.join("tmp"));
    assert!(tmp.is_empty(), "leftover temp files: {tmp:?}");
    let dot_files: Vec<PathBuf> = snapshot(&cas)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".")))
        .collect();
    assert!(
        dot_files.is_empty(),
        "leftover atomic-write temp files: {dot_files:?}"
    );

    // The stored image is intact: a run from it by ID works.
    let run = rkt.run(&[&ids[0], "--exec", "/bin/sh", "--", "-c", "test -s /data/noise"]);
    assert_eq!(run.code, 0, "{}", run.describe());
}

// 3. Concurrent runs while list and gc race them: 50 of them, in concurrency.rs.

// ---------------------------------------------------------------------------------
// 4. Read-only and full data dirs.

/// A mount that is undone when dropped, even when an assertion failed.
struct MountGuard(PathBuf);

impl MountGuard {
    fn new(point: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(point).expect("mkdir mount point");
        let status = Command::new("mount")
            .args(args)
            .arg(point)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount {args:?} {}", point.display());
        MountGuard(point.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// `rkt --dir=<dir> ARGS...` (the harness's own `--dir` is not used).
fn rkt_in(dir: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(bin());
    cmd.arg(format!("--dir={}", dir.display()))
        .args(args)
        .env_remove("RKT_STAGE1")
        .env_remove("RKT_DIR");
    output_within(&format!("rkt {}", args.join(" ")), cmd, GENEROUS)
}

/// Soft assertions: every problem of a multi-part check is reported at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
    fn one_line_254(&mut self, what: &str, out: &RunOutput, mentions: &str) {
        self.check(
            out.code == 254 && out.stderr.trim().lines().count() == 1 && out.stderr.contains(mentions),
            || {
                format!(
                    "{what}: want exit 254 and one line naming {mentions:?}: {}",
                    out.describe()
                )
            },
        );
    }
    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} problem(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

#[test]
fn read_only_data_dir_is_a_clean_error() {
    let Some(rkt) = harness("read_only_data_dir_is_a_clean_error") else {
        return;
    };
    let image = s(&rkt.image(&AciSpec::busybox("example.com/ro")).expect("image"));
    let mut problems = Problems::default();

    // A data dir that does not exist yet, on a read-only filesystem.
    let ro = rkt.work().join("ro");
    let _ro_mount = MountGuard::new(&ro, &["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]);
    let data = ro.join("data");
    let shown = s(&data);
    let fetch = rkt_in(&data, &["fetch", "--insecure-options=image", &image]);
    problems.one_line_254("fetch into a read-only dir", &fetch, &shown);
    let run = rkt_in(
        &data,
        &[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &image,
            "--exec",
            "/bin/true",
        ],
    );
    problems.one_line_254("run in a read-only dir", &run, &shown);
    // Listing is reading: there are no pods, and saying so needs no write.
    let list = rkt_in(&data, &["list", "--no-legend"]);
    problems.check(
        list.code == 0 && list.stdout.is_empty() && list.stderr.is_empty(),
        || {
            format!(
                "list of an absent data dir on a read-only fs: want exit 0, no output: {}",
                list.describe()
            )
        },
    );

    // A populated data dir, made read-only (a bind mount): the pod is still listed,
    // a new run is refused.
    let populated = rkt.run(&[&image, "--exec", "/bin/sh", "--", "-c", "exit 3"]);
    assert_eq!(populated.code, 3, "{}", populated.describe());
    let ro_bind = rkt.work().join("ro-bind");
    let bind = MountGuard::new(&ro_bind, &["--bind", &s(&rkt.dir)]);
    let remount = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&ro_bind)
        .status()
        .expect("run mount");
    assert!(remount.success(), "remount read-only");
    let before = snapshot(&ro_bind);
    let list = rkt_in(&ro_bind, &["list", "--no-legend"]);
    problems.check(
        list.code == 0 && list.stdout.lines().count() == 1 && list.stdout.contains("exited"),
        || {
            format!(
                "list of a populated read-only dir: want the exited pod: {}",
                list.describe()
            )
        },
    );
    let run = rkt_in(
        &ro_bind,
        &[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &image,
            "--exec",
            "/bin/true",
        ],
    );
    problems.one_line_254("run in a populated read-only dir", &run, &s(&ro_bind));
    problems.check(snapshot(&ro_bind) == before, || {
        "the read-only dir changed".into()
    });
    drop(bind);

    // A full filesystem: the import fails cleanly and leaves nothing half-written.
    let full = rkt.work().join("full");
    let _full_mount = MountGuard::new(&full, &["-t", "tmpfs", "-o", "size=64k", "tmpfs"]);
    let data = full.join("data");
    let fetch = rkt_in(&data, &["fetch", "--insecure-options=image", &image]);
    problems.one_line_254("fetch into a full dir", &fetch, "No space left on device");
    let cas = data.join("cas");
    let leftovers: Vec<String> = walk(&cas)
        .into_iter()
        .filter(|(p, m)| {
            !m.is_dir()
                && ["blob", "tmp", "index", "tree"]
                    .iter()
                    .any(|d| p.starts_with(cas.join(d)))
        })
        .map(|(p, m)| format!("{} ({} bytes)", p.display(), m.len()))
        .collect();
    problems.check(leftovers.is_empty(), || {
        format!("a failed fetch left partial files: {leftovers:?}")
    });
    let dot_files: Vec<PathBuf> = snapshot(&cas)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".")))
        .collect();
    problems.check(dot_files.is_empty(), || {
        format!("leftover temp files: {dot_files:?}")
    });
    let list = rkt_in(&data, &["list", "--no-legend"]);
    problems.check(list.code == 0 && list.stdout.is_empty(), || {
        format!("list after a failed fetch: {}", list.describe())
    });

    problems.assert_none();
}

// ---------------------------------------------------------------------------------
// 5. Bad manifests through run and fetch.

fn check_bad_manifest(test: &str, manifest: &[u8], mentions: &[&str]) {
    let Some(rkt) = harness(test) else {
        return;
    };
    let good = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &s(&good)]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());
    let before = snapshot(&rkt.dir);

    let bad = crafted_aci(
        &rkt,
        &AciSpec::busybox("example.com/busybox"),
        Some(manifest),
        &[],
        "bad-manifest.aci",
    );
    let bad = s(&bad);
    let run = rkt.run(&[&bad, "--exec", "/bin/true"]);
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &bad]);
    eprintln!(
        "{test}: run: {}\n{test}: fetch: {}",
        run.describe(),
        fetch.describe()
    );
    for mention in mentions {
        one_line_254(&run, mention);
        one_line_254(&fetch, mention);
    }
    assert_eq!(
        snapshot(&rkt.dir),
        before,
        "{test}: a refused image changed the data dir"
    );
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(
        (list.code, list.stdout.as_str()),
        (0, ""),
        "{test}: no pod was made: {}",
        list.describe()
    );
    assert!(
        rkt.mounts_left().is_empty(),
        "mounts left: {:?}",
        rkt.mounts_left()
    );
}

#[test]
fn invalid_manifest_name_is_refused_naming_the_field() {
    let mut manifest = AciSpec::busybox("example.com/busybox").manifest();
    manifest["name"] = serde_json::json!("Bad Name");
    let bytes = serde_json::to_vec(&manifest).expect("json");
    check_bad_manifest(
        "invalid_manifest_name_is_refused_naming_the_field",
        &bytes,
        &["name", "Bad Name"],
    );
}

#[test]
fn truncated_manifest_is_refused() {
    let manifest = serde_json::to_vec(&AciSpec::busybox("example.com/busybox").manifest()).expect("json");
    check_bad_manifest(
        "truncated_manifest_is_refused",
        &manifest[..manifest.len() / 2],
        &["manifest"],
    );
}

// ---------------------------------------------------------------------------------
// The quality of what the refusals above print, checked in one place so that a
// wording problem does not hide behind (or masquerade as) a safety failure.

/// Segments of a one-line error (split at ": ") that it says more than once.
fn repeated_segments(stderr: &str) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for part in stderr.trim().split(": ").filter(|p| p.len() >= 8) {
        *seen.entry(part).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(p, _)| p.to_string())
        .collect()
}

#[test]
fn errors_say_each_thing_once_and_carry_no_terminal_codes() {
    let Some(rkt) = harness("errors_say_each_thing_once_and_carry_no_terminal_codes") else {
        return;
    };
    let mut problems = Problems::default();
    let spec = AciSpec::busybox("example.com/messages");
    let mut manifest = spec.manifest();
    manifest["name"] = serde_json::json!("Bad Name");
    let bad = s(&crafted_aci(
        &rkt,
        &spec,
        Some(&serde_json::to_vec(&manifest).expect("json")),
        &[],
        "bad-name.aci",
    ));
    let missing = s(&rkt.work().join("missing.aci"));
    let hostile = s(&crafted_aci(
        &rkt,
        &spec,
        None,
        &[Raw::hardlink("rootfs/passwd-link", "rootfs/no/such/target")],
        "dangling-hardlink.aci",
    ));
    let failures = [
        ("run of a bad manifest", rkt.run(&[&bad])),
        (
            "fetch of a bad manifest",
            rkt.rkt(&["fetch", "--insecure-options=image", &bad]),
        ),
        (
            "fetch of a missing file",
            rkt.rkt(&["fetch", "--insecure-options=image", &missing]),
        ),
        ("run of a dangling hard link", rkt.run(&[&hostile])),
    ];
    for (what, out) in &failures {
        problems.check(out.code == 254, || {
            format!("{what}: want 254: {}", out.describe())
        });
        let repeated = repeated_segments(&out.stderr);
        problems.check(repeated.is_empty(), || {
            format!(
                "{what}: the error says {repeated:?} more than once: {:?}",
                out.stderr
            )
        });
    }

    // A warning (a skipped device node) written to a pipe: plain text, no colours.
    let device = s(&crafted_aci(
        &rkt,
        &spec,
        None,
        &[Raw::device(tar::EntryType::Char, "rootfs/dev-mem", 1, 1)],
        "device.aci",
    ));
    let run = rkt.run(&[&device, "--exec", "/bin/true"]);
    problems.check(run.code == 0, || {
        format!("run with a device node: {}", run.describe())
    });
    problems.check(!run.stderr.contains('\u{1b}'), || {
        format!(
            "stderr is a pipe, yet carries ANSI escape codes: {:?}",
            run.stderr
        )
    });

    problems.assert_none();
}

// ---------------------------------------------------------------------------------
// 6. Every command with a wrong flag, a missing argument or an unknown UUID.

/// Every command of this build, as the words that name it; a command added later
/// joins the bad-input checks by being listed here.
const COMMANDS: &[&[&str]] = &[
    &["run"],
    &["fetch"],
    &["list"],
    &["status"],
    &["gc"],
    &["version"],
    &["prepare"],
    &["run-prepared"],
    &["stop"],
    &["rm"],
    &["enter"],
    &["cat-manifest"],
    &["image", "list"],
    &["image", "rm"],
    &["image", "cat-manifest"],
    &["image", "export"],
    &["image", "extract"],
    &["image", "render"],
    &["image", "gc"],
    &["image", "verify"],
];

/// The commands that take a pod UUID.
const POD_COMMANDS: &[&str] = &["status", "run-prepared", "stop", "rm", "enter", "cat-manifest"];

/// `rkt image CMD REFERENCE [its output argument]`, for every image command that
/// takes an image; outputs go below `out`, which must stay empty.
fn image_commands(reference: &str, out: &Path) -> Vec<Vec<String>> {
    let target = |name: &str| s(&out.join(name));
    [
        vec!["rm", reference],
        vec!["cat-manifest", reference],
        vec!["export", reference, &target("exported.aci")],
        vec!["extract", reference, &target("extracted")],
        vec!["render", reference, &target("rendered")],
        vec!["verify", reference],
    ]
    .into_iter()
    .map(|args| std::iter::once("image").chain(args).map(String::from).collect())
    .collect()
}

fn rkt_args(rkt: &Rkt, args: &[String]) -> RunOutput {
    rkt.rkt(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn every_command_refuses_bad_flags_missing_arguments_and_unknown_uuids() {
    let Some(rkt) = harness("every_command_refuses_bad_flags_missing_arguments_and_unknown_uuids") else {
        return;
    };
    let image = s(&rkt
        .image(&AciSpec::busybox("example.com/bad-input"))
        .expect("image"));
    let run = rkt.run(&[&image, "--exec", "/bin/true"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let outputs = rkt.work().join("outputs");
    std::fs::create_dir(&outputs).expect("mkdir");
    let before = snapshot(&rkt.dir);
    let mut problems = Problems::default();
    for cmd in COMMANDS {
        let mut args = cmd.to_vec();
        args.push("--no-such-flag");
        let out = rkt.rkt(&args);
        problems.one_line_254(&args.join(" "), &out, "--no-such-flag");
    }
    for (cmd, mentions) in [
        (&["run"][..], "image"),
        (&["prepare"], "image"),
        (&["fetch"], "<IMAGE>"),
        (&["status"], "<UUID"),
        (&["run-prepared"], "<UUID"),
        (&["stop"], "<UUID"),
        (&["rm"], "<UUID"),
        (&["enter"], "UUID"),
        (&["cat-manifest"], "<UUID"),
        (&["image", "rm"], "<IMAGE"),
        (&["image", "cat-manifest"], "<IMAGE"),
        (&["image", "export"], "<IMAGE"),
        (&["image", "export", "sha512-00"], "<OUTPUT_ACI_FILE"),
        (&["image", "extract"], "<IMAGE"),
        (&["image", "extract", "sha512-00"], "<OUTPUT_DIR"),
        (&["image", "render"], "<IMAGE"),
        (&["image", "render", "sha512-00"], "<OUTPUT_DIR"),
    ] {
        let out = rkt.rkt(cmd);
        problems.one_line_254(
            &format!("{} without all its arguments", cmd.join(" ")),
            &out,
            mentions,
        );
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    for cmd in POD_COMMANDS {
        let out = rkt.rkt(&[cmd, unknown]);
        problems.one_line_254(&format!("{cmd} of an unknown UUID"), &out, "00000000");
        let out = rkt.rkt(&[cmd, "not-a-uuid!"]);
        problems.one_line_254(&format!("{cmd} of a malformed UUID"), &out, "not-a-uuid!");
    }
    for reference in ["sha512-0123abcd", "example.com/no-such-image", "sha512-not-hex"] {
        for args in image_commands(reference, &outputs) {
            let out = rkt_args(&rkt, &args);
            problems.one_line_254(&args.join(" "), &out, reference);
        }
    }
    for cmd in ["run", "prepare"] {
        let out = rkt.rkt(&[cmd, "--stage1=fly", "example.com/no-such-image"]);
        problems.one_line_254(
            &format!("{cmd} of an unknown image"),
            &out,
            "example.com/no-such-image",
        );
    }
    problems.check(snapshot(&rkt.dir) == before, || {
        "a refused command changed the data dir".into()
    });
    problems.check(snapshot(&outputs).is_empty(), || {
        format!("a refused command wrote an output: {:?}", snapshot(&outputs))
    });
    problems.assert_none();
}

/// The first hex digit of a pod UUID or of an image ID's hash.
fn first_hex(id: &str) -> char {
    id.trim_start_matches("sha512-").chars().next().expect("an ID")
}

/// Calls `make` until two of the IDs it returns share their first hex digit (at
/// most 17 calls: there are 16 digits); returns that digit.
fn until_two_share_a_first_digit(mut make: impl FnMut(usize) -> String) -> char {
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..=16 {
        let digit = first_hex(&make(n));
        if !seen.insert(digit) {
            return digit;
        }
    }
    unreachable!("17 IDs over 16 hex digits share one")
}

#[test]
fn ambiguous_short_pod_and_image_ids_are_refused_by_every_command() {
    let Some(rkt) = harness("ambiguous_short_pod_and_image_ids_are_refused_by_every_command") else {
        return;
    };
    let image = s(&rkt
        .image(&AciSpec::busybox("example.com/ambiguous"))
        .expect("image"));
    let mut pods = Vec::new();
    let pod_digit = until_two_share_a_first_digit(|_| {
        let out = rkt.rkt(&[
            "prepare",
            "--insecure-options=image",
            "--stage1=fly",
            "--quiet",
            &image,
            "--exec",
            "/bin/true",
        ]);
        assert_eq!(out.code, 0, "{}", out.describe());
        pods.push(out.stdout.trim().to_string());
        out.stdout.trim().to_string()
    });
    let mut images = Vec::new();
    let image_digit = until_two_share_a_first_digit(|n| {
        let mut spec = AciSpec::busybox(&format!("example.com/ambiguous-{n}"));
        spec.busybox = false;
        spec.files = vec![("file".into(), format!("{n}").into_bytes(), 0o644)];
        let path = s(&rkt.image(&spec).expect("image"));
        let out = rkt.rkt(&["fetch", "--insecure-options=image", &path]);
        assert_eq!(out.code, 0, "{}", out.describe());
        images.push(out.stdout.trim().to_string());
        out.stdout.trim().to_string()
    });
    let outputs = rkt.work().join("outputs");
    std::fs::create_dir(&outputs).expect("mkdir");
    let before = snapshot(&rkt.dir);
    let mut problems = Problems::default();

    let pod_prefix = pod_digit.to_string();
    for cmd in POD_COMMANDS {
        let out = rkt.rkt(&[cmd, &pod_prefix]);
        problems.one_line_254(&format!("{cmd} {pod_prefix}"), &out, "ambiguous");
    }
    let image_prefix = format!("sha512-{image_digit}");
    for args in image_commands(&image_prefix, &outputs) {
        let out = rkt_args(&rkt, &args);
        problems.one_line_254(&args.join(" "), &out, "ambiguous");
    }
    for cmd in ["run", "prepare"] {
        let out = rkt.rkt(&[cmd, "--stage1=fly", &image_prefix, "--exec", "/bin/true"]);
        problems.one_line_254(&format!("{cmd} {image_prefix}"), &out, "ambiguous");
    }

    problems.check(snapshot(&rkt.dir) == before, || {
        "a refused command changed the data dir".into()
    });
    problems.check(snapshot(&outputs).is_empty(), || {
        format!("a refused command wrote an output: {:?}", snapshot(&outputs))
    });
    for uuid in &pods {
        let status = rkt.rkt(&["status", uuid]);
        problems.check(status.stdout.contains("state=prepared"), || {
            format!("pod {uuid} after the refusals: {}", status.describe())
        });
    }
    let listed = rkt.rkt(&["image", "list", "--no-legend", "--full", "--fields=id"]);
    problems.check(listed.stdout.lines().count() == images.len() + 1, || {
        format!("images after the refusals: {}", listed.describe())
    });
    eprintln!(
        "ambiguous ids: {} pods share first digit {pod_digit}, {} images share {image_prefix}",
        pods.len(),
        images.len()
    );
    problems.assert_none();
}

/// Writes zeros to `path` until the filesystem is full; tmpfs then has no page left
/// for any file's data (new names and empty directories still fit).
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create filler");
    let block = vec![0u8; 64 << 10];
    for chunk in [block.as_slice(), &block[..4096], &block[..1]] {
        loop {
            match file.write(chunk) {
                Ok(n) if n == chunk.len() => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
    }
}

#[test]
fn full_data_dir_refuses_prepare_and_image_output_cleanly() {
    let Some(rkt) = harness("full_data_dir_refuses_prepare_and_image_output_cleanly") else {
        return;
    };
    let image = s(&rkt
        .image(&AciSpec::busybox("example.com/full-disk"))
        .expect("image"));
    let full = rkt.work().join("full");
    let _mount = MountGuard::new(&full, &["-t", "tmpfs", "-o", "size=24m", "tmpfs"]);
    let data = full.join("data");
    let fetch = rkt_in(&data, &["fetch", "--insecure-options=image", &image]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());
    let id = fetch.stdout.trim().to_string();
    // Rendered once, so prepare has only the pod's own files left to write.
    let run = rkt_in(
        &data,
        &[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &id,
            "--exec",
            "/bin/true",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.describe());
    let gc = rkt_in(&data, &["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    fill(&full.join("filler"));

    let before = snapshot(&data);
    let mut problems = Problems::default();
    let nospace = "No space left on device";
    let prepare = rkt_in(
        &data,
        &[
            "prepare",
            "--insecure-options=image",
            "--stage1=fly",
            &id,
            "--exec",
            "/bin/true",
        ],
    );
    problems.one_line_254("prepare in a full dir", &prepare, nospace);
    let exported = full.join("exported.aci");
    let export = rkt_in(&data, &["image", "export", &id, &s(&exported)]);
    problems.one_line_254("image export onto the full disk", &export, nospace);
    let extracted = full.join("extracted");
    let extract = rkt_in(&data, &["image", "extract", &id, &s(&extracted)]);
    problems.one_line_254("image extract onto the full disk", &extract, nospace);
    let rendered = full.join("rendered");
    let render = rkt_in(&data, &["image", "render", &id, &s(&rendered)]);
    problems.one_line_254("image render onto the full disk", &render, nospace);

    // Nothing half-written: no pod, no output, no temp beside the outputs.
    problems.check(snapshot(&data) == before, || {
        let after = snapshot(&data);
        let new: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
        let gone: Vec<&PathBuf> = before.iter().filter(|p| !after.contains(p)).collect();
        format!("the data dir changed: new {new:?}, gone {gone:?}")
    });
    let beside: Vec<String> = std::fs::read_dir(&full)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "data" && n != "filler")
        .collect();
    problems.check(beside.is_empty(), || {
        format!("failed outputs left {beside:?} on the full disk")
    });
    let list = rkt_in(&data, &["list", "--no-legend"]);
    problems.check(list.code == 0 && list.stdout.is_empty(), || {
        format!("list after the failed prepare: {}", list.describe())
    });
    // Reading a full store still works: an export to another disk succeeds.
    let elsewhere = rkt.work().join("exported.aci");
    let export = rkt_in(&data, &["image", "export", &id, &s(&elsewhere)]);
    problems.check(export.code == 0 && elsewhere.exists(), || {
        format!("export from the full dir to another disk: {}", export.describe())
    });
    let verify = rkt_in(&data, &["image", "verify"]);
    problems.check(
        verify.code == 0 && verify.stdout.contains("no damage found"),
        || format!("image verify after the failures: {}", verify.describe()),
    );
    problems.assert_none();
}
