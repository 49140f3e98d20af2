//! Hostile images, built by the tests, through the real `rkt` binary: each is
//! either refused with a one-line error (exit 254) naming what is wrong, or runs
//! with a safe result; a canary file outside the data dir is never touched, and gc
//! leaves nothing behind. (`..`, absolute names, symlink/hardlink escapes and
//! device nodes are in robustness.rs for ACIs; the same escapes as OCI layers,
//! whiteouts included, are at the end of this file.)
//!
//! Also a malicious app inside a fly or an nspawn pod (CVE-2019-5736): it can
//! neither open the host's `rkt` binary for writing through /proc/<pid>/exe of rkt
//! or of any ancestor it can see, nor find any inherited descriptor (pod lock,
//! store) beyond stdin, stdout and stderr.

#[allow(dead_code)] // each test binary uses its own subset
mod common;
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, harness, one_line_254};
use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, RawEntry, Rkt, raw_entries_of, raw_tar};
use support::{finish_within, leftovers};

const LIMIT: Duration = Duration::from_secs(120);

/// A file outside the data dir that no image may change.
struct Canary(PathBuf, Vec<u8>, i64);

impl Canary {
    fn new(rkt: &Rkt) -> Self {
        let path = rkt.work().join("canary");
        std::fs::write(&path, b"canary\n").expect("write canary");
        let mtime = std::fs::metadata(&path).expect("stat").mtime_nsec();
        Canary(path, b"canary\n".to_vec(), mtime)
    }
    fn assert_untouched(&self, case: &str) {
        let now = std::fs::read(&self.0).expect("the canary is still there");
        let mtime = std::fs::metadata(&self.0).expect("stat").mtime_nsec();
        assert_eq!(
            (now, mtime),
            (self.1.clone(), self.2),
            "{case}: the canary changed"
        );
    }
}

enum Expect<'a> {
    /// Refused by run (and fetch, when `at_fetch`) with one line naming this.
    Refused { mentions: &'a str, at_fetch: bool },
    /// Runs: `rkt run IMAGE --exec /bin/sh -- -c SCRIPT` exits with `code`.
    Runs { script: &'a str, code: i32 },
}

fn write_image(rkt: &Rkt, name: &str, bytes: &[u8]) -> String {
    let path = rkt.work().join(name);
    std::fs::write(&path, bytes).expect("write image");
    path.display().to_string()
}

/// Base busybox entries plus `extra`, as a complete tar.
fn busybox_plus(extra: Vec<RawEntry>) -> Vec<u8> {
    let mut entries = raw_entries_of(&AciSpec::busybox("example.com/hostile"), None).expect("base");
    entries.extend(extra);
    raw_tar(&entries, true).expect("tar")
}

fn check(test: &str, image_bytes: &[u8], expect: Expect<'_>) {
    let Some(rkt) = harness(test) else {
        return;
    };
    let canary = Canary::new(&rkt);
    let image = write_image(&rkt, "hostile.aci", image_bytes);
    check_image(&rkt, test, &image, expect);
    canary.assert_untouched(test);
}

fn check_image(rkt: &Rkt, test: &str, image: &str, expect: Expect<'_>) {
    match expect {
        Expect::Refused { mentions, at_fetch } => {
            let run = rkt.run(&[image, "--exec", "/bin/true"]);
            eprintln!("{test}: run: {}", run.describe());
            one_line_254(&run, mentions);
            if at_fetch {
                let fetch = rkt.rkt(&["fetch", "--insecure-options=image", image]);
                one_line_254(&fetch, mentions);
                assert!(
                    support::stored_images(rkt).is_empty(),
                    "{test}: a refused image is in the store"
                );
            }
        }
        Expect::Runs { script, code } => {
            let run = rkt.run(&[image, "--exec", "/bin/sh", "--", "-c", script]);
            eprintln!("{test}: run: {}", run.describe());
            assert_eq!(run.code, code, "{test}: {}", run.describe());
        }
    }
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{test}: {}", gc.describe());
    let left = leftovers(rkt);
    assert!(left.is_empty(), "{test}: {left:?}");
}

#[test]
fn setuid_files_keep_their_bits_inside_an_owner_only_tree() {
    let Some(rkt) = harness("setuid_files_keep_their_bits_inside_an_owner_only_tree") else {
        return;
    };
    let image = write_image(
        &rkt,
        "suid.aci",
        &busybox_plus(vec![RawEntry::file("rootfs/suid-sh", b"#!/bin/sh\n", 0o4755)]),
    );
    let run = rkt.run(&[&image, "--exec", "/bin/sh", "--", "-c", "test -u /suid-sh"]);
    assert_eq!(
        run.code,
        0,
        "inside the pod the bit is the image's: {}",
        run.describe()
    );
    // Outside, no host user can reach the setuid program: the tree is owner-only.
    let trees: Vec<PathBuf> = std::fs::read_dir(rkt.dir.join("cas/tree"))
        .expect("tree store")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!trees.is_empty());
    for tree in trees {
        let mode = std::fs::metadata(&tree).expect("stat").mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", tree.display());
    }
}

#[test]
fn a_path_longer_than_path_max_is_refused() {
    let name = format!("rootfs/{}", "d/".repeat(2100)) + "f";
    check(
        "a_path_longer_than_path_max_is_refused",
        &busybox_plus(vec![RawEntry::file(name, b"x", 0o644)]),
        Expect::Refused {
            mentions: "PATH_MAX",
            at_fetch: false,
        },
    );
}

#[test]
fn a_100_mb_manifest_is_refused_before_it_is_read() {
    let mut manifest = serde_json::to_vec(&AciSpec::busybox("example.com/big").manifest()).expect("json");
    manifest.resize(100 << 20, b' ');
    let entries = vec![
        RawEntry::file("manifest", &manifest, 0o644),
        RawEntry::dir("rootfs"),
    ];
    check(
        "a_100_mb_manifest_is_refused_before_it_is_read",
        &raw_tar(&entries, true).expect("tar"),
        Expect::Refused {
            mentions: "larger than the 4 MiB limit",
            at_fetch: true,
        },
    );
}

#[test]
fn duplicate_entries_last_one_wins() {
    check(
        "duplicate_entries_last_one_wins",
        &busybox_plus(vec![
            RawEntry::file("rootfs/dup", b"first\n", 0o644),
            RawEntry::file("rootfs/dup", b"second\n", 0o644),
        ]),
        Expect::Runs {
            script: "test \"$(cat /dup)\" = second",
            code: 0,
        },
    );
}

#[test]
fn a_tar_that_claims_more_data_than_it_has_is_refused() {
    let mut lying = RawEntry::file("rootfs/liar", b"short", 0o644);
    lying.claimed_size = Some(1 << 20);
    check(
        "a_tar_that_claims_more_data_than_it_has_is_refused",
        &busybox_plus(vec![lying]),
        Expect::Refused {
            mentions: "corrupt image archive",
            at_fetch: true,
        },
    );
}

#[test]
fn a_symlink_loop_is_an_error_or_harmless() {
    let Some(rkt) = harness("a_symlink_loop_is_an_error_or_harmless") else {
        return;
    };
    let canary = Canary::new(&rkt);
    let image = write_image(
        &rkt,
        "loop.aci",
        &busybox_plus(vec![
            RawEntry::symlink("rootfs/loop-a", "loop-b"),
            RawEntry::symlink("rootfs/loop-b", "loop-a"),
            RawEntry::file("rootfs/loop-a/x", b"x", 0o644),
        ]),
    );
    let run = rkt.run(&[&image, "--exec", "/bin/true"]);
    eprintln!("loop: {}", run.describe());
    if run.code != 0 {
        one_line_254(&run, "loop-a");
    }
    canary.assert_untouched("symlink loop");
    assert!(leftovers(&rkt).iter().all(|l| l.contains("rkt list still shows")));
}

#[test]
fn a_dependency_cycle_is_named() {
    let Some(rkt) = harness("a_dependency_cycle_is_named") else {
        return;
    };
    let canary = Canary::new(&rkt);
    let a = AciSpec::busybox("example.com/cycle-a");
    let b = AciSpec::busybox("example.com/cycle-b");
    let a = AciSpec {
        dependencies: vec![(b.name.clone(), Vec::new())],
        ..a
    };
    let b = AciSpec {
        dependencies: vec![(a.name.clone(), Vec::new())],
        ..b
    };
    let a_path = rkt.image(&a).expect("a").display().to_string();
    let b_path = rkt.image(&b).expect("b").display().to_string();
    for path in [&a_path, &b_path] {
        let fetch = rkt.rkt(&["fetch", "--insecure-options=image", path]);
        assert_eq!(fetch.code, 0, "{}", fetch.describe());
    }
    check_image(
        &rkt,
        "a_dependency_cycle_is_named",
        &a_path,
        Expect::Refused {
            mentions: "dependency cycle",
            at_fetch: false,
        },
    );
    canary.assert_untouched("dependency cycle");
}

#[test]
fn an_exec_missing_from_the_image_is_a_clean_error() {
    let Some(rkt) = harness("an_exec_missing_from_the_image_is_a_clean_error") else {
        return;
    };
    let mut spec = AciSpec::busybox("example.com/no-exec");
    spec.exec = vec!["/no/such/program".into()];
    let image = rkt.image(&spec).expect("image").display().to_string();
    let run = rkt.run(&[&image]);
    one_line_254(&run, "/no/such/program");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
}

/// A gzip member of `len` zero bytes, made by the system's gzip (fast, and it
/// keeps the test free of a compression crate).
fn gzip_of_zeros(len: u64) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {len} /dev/zero | gzip -1 -c"))
        .output()
        .expect("gzip");
    assert!(out.status.success());
    out.stdout
}

fn gzip(bytes: &[u8], dir: &Path) -> Vec<u8> {
    let path = dir.join("member");
    std::fs::write(&path, bytes).expect("write");
    let out = Command::new("gzip").arg("-c").arg(&path).output().expect("gzip");
    assert!(out.status.success());
    out.stdout
}

/// A gzipped ACI whose one file is `gib` GiB of zeros: concatenated gzip members
/// (one stream to a reader) of a header, 64 MiB of zeros repeated, and the end.
fn bomb(rkt: &Rkt, gib: u64) -> String {
    let chunk = 64u64 << 20;
    let size = gib << 30;
    let manifest = serde_json::to_vec(&AciSpec::busybox("example.com/bomb").manifest()).expect("json");
    let mut head = raw_tar(
        &[
            RawEntry::file("manifest", &manifest, 0o644),
            RawEntry::dir("rootfs"),
        ],
        false,
    )
    .expect("tar");
    let mut zeros = RawEntry::file("rootfs/zeros", b"", 0o644);
    zeros.claimed_size = Some(size);
    head.extend(raw_tar(&[zeros], false).expect("header"));
    let mut out = gzip(&head, rkt.work());
    let member = gzip_of_zeros(chunk);
    for _ in 0..size / chunk {
        out.extend_from_slice(&member);
    }
    out.extend(gzip(&[0u8; 1024], rkt.work()));
    let path = rkt.work().join("bomb.aci");
    std::fs::write(&path, &out).expect("write bomb");
    path.display().to_string()
}

#[test]
fn a_decompression_bomb_stops_at_the_size_limit() {
    let Some(rkt) = harness("a_decompression_bomb_stops_at_the_size_limit") else {
        return;
    };
    let canary = Canary::new(&rkt);
    let image = bomb(&rkt, 6);
    let mut cmd = rkt.command(&["fetch", "--insecure-options=image", &image]);
    cmd.env("RKT_MAX_IMAGE_SIZE", "256M");
    let fetch = finish_within("fetch of a bomb", cmd, LIMIT).out;
    one_line_254(&fetch, "image too large");
    canary.assert_untouched("bomb");
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
    assert!(support::stored_images(&rkt).is_empty());
}

#[test]
fn a_decompression_bomb_does_not_fill_the_disk() {
    let Some(rkt) = harness("a_decompression_bomb_does_not_fill_the_disk") else {
        return;
    };
    let image = bomb(&rkt, 6);
    // A small filesystem and the default (16 GiB) limit: the free-space reserve
    // is what stops the import.
    let small = rkt.work().join("small");
    let _mount = TmpfsGuard::new(&small, "400m");
    let mut cmd = Command::new(bin());
    cmd.arg(format!("--dir={}", small.join("data").display()))
        .args(["fetch", "--insecure-options=image", &image])
        .env_remove("RKT_MAX_IMAGE_SIZE");
    let fetch = finish_within("fetch of a bomb", cmd, LIMIT).out;
    one_line_254(&fetch, "less than 256 MiB free");
    let used: Vec<String> = std::fs::read_dir(small.join("data/cas/tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(used.is_empty(), "temp files left: {used:?}");
}

/// A tmpfs mounted for one test and unmounted on drop, even after a failure.
struct TmpfsGuard(PathBuf);

impl TmpfsGuard {
    fn new(point: &Path, size: &str) -> Self {
        std::fs::create_dir_all(point).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(point)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs at {}", point.display());
        TmpfsGuard(point.to_path_buf())
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------
// CVE-2019-5736: the app must not reach the host's rkt binary or the store.

/// What a malicious app reports: what its parent's exe is, and whether opening
/// that (or its own exe) for writing worked.
const PROBE: &str = r#"
echo "exe $(readlink /proc/$PPID/exe 2>/dev/null || echo hidden)"
if ( : >> /proc/$PPID/exe ) 2>/dev/null; then echo "parent-exe writable"; else echo "parent-exe refused"; fi
if ( : >> /proc/self/exe ) 2>/dev/null; then echo "self-exe writable"; else echo "self-exe refused"; fi
"#;

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read rkt binary")
}

/// Runs the probe as `user`, and `ls -l /proc/self/fd` as the app itself (so the
/// only descriptor it opens is the directory it lists).
fn probe_as(user: &str) -> Option<(RunOutput, RunOutput, PathBuf)> {
    let rkt = harness("a_fly_app_cannot_reach_rkt_or_the_store")?;
    let mut spec = AciSpec::busybox("example.com/cve-2019-5736");
    spec.user = user.into();
    spec.group = user.into();
    let image = rkt.image(&spec).expect("image").display().to_string();
    let probe = rkt.run(&[&image, "--exec", "/bin/sh", "--", "-c", PROBE]);
    // An fd this test process holds without O_CLOEXEC, as a careless caller of
    // rkt would: it must not reach the app.
    let leaky = std::fs::File::open(&rkt.dir).expect("open data dir");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaky);
    let mut cmd = rkt.command(&[
        "run",
        "--insecure-options=image",
        "--stage1=fly",
        &image,
        "--exec",
        "/bin/ls",
        "--",
        "-l",
        "/proc/self/fd",
    ]);
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let fds = finish_within("ls /proc/self/fd", cmd, LIMIT).out;
    drop(leaky);
    Some((probe, fds, rkt.dir.clone()))
}

#[test]
fn a_fly_app_cannot_reach_rkt_or_the_store() {
    let before = sha(bin());
    for user in ["0", "1000"] {
        let Some((run, fds, data_dir)) = probe_as(user) else {
            return;
        };
        eprintln!("as uid {user}: {}\n{}", run.describe(), fds.describe());
        assert_eq!(run.code, 0, "{}", run.describe());
        assert_eq!(fds.code, 0, "{}", fds.describe());
        let mut extra = Vec::new();
        let mut listed = 0;
        for line in fds.stdout.lines() {
            // "lrwx------ 1 root root 64 Nov 29 11:35 3 -> /proc/7/fd"
            let Some((left, target)) = line.split_once(" -> ") else {
                continue;
            };
            listed += 1;
            let fd = left.rsplit(' ').next().unwrap_or("");
            // ls's own handle on the directory it lists.
            let own = target.starts_with("/proc/") && target.ends_with("/fd");
            if !["0", "1", "2"].contains(&fd) && !own {
                extra.push(format!("{fd} -> {target}"));
            }
            assert!(
                !target.contains(&*data_dir.to_string_lossy()),
                "uid {user}: an inherited fd reaches the data dir: {line}"
            );
        }
        assert!(listed >= 3, "uid {user}: no fd listing: {}", fds.describe());
        assert!(extra.is_empty(), "uid {user}: inherited descriptors: {extra:?}");
        assert!(
            run.stdout.contains("parent-exe refused"),
            "uid {user}: the app could open rkt's binary for writing: {}",
            run.stdout
        );
        if user == "0" {
            // Non-vacuous: root can see that its parent is rkt, and still cannot write it.
            let exe = bin().canonicalize().expect("rkt path");
            assert!(
                run.stdout.contains(&format!("exe {}", exe.display())),
                "the app's parent should be rkt: {}",
                run.stdout
            );
        } else {
            assert!(
                run.stdout.contains("exe hidden"),
                "uid {user} can see rkt's executable: {}",
                run.stdout
            );
        }
    }
    assert!(sha(bin()) == before, "the rkt binary changed");
}

// ---------------------------------------------------------------------------------
// Hostile OCI layers (`oci:DIR`): layers are applied by their own extractor
// (whiteouts, hardlinks into earlier layers), so the ACI cases are not enough.

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The busybox base as an OCI layer: the ACI's rootfs entries, `rootfs/` dropped.
fn busybox_layer() -> Vec<RawEntry> {
    let strip = |name: &[u8]| name.strip_prefix(b"rootfs/").map(<[u8]>::to_vec);
    raw_entries_of(&AciSpec::busybox("example.com/hostile-oci"), None)
        .expect("base")
        .into_iter()
        .filter_map(|mut entry| {
            entry.name = strip(&entry.name)?;
            if entry.kind == tar::EntryType::Link {
                entry.link = entry.link.as_deref().and_then(strip);
            }
            Some(entry)
        })
        .collect()
}

/// An OCI layout under the work dir holding one image: the busybox layer, then
/// `hostile` as a second layer. Returns its `oci:DIR` reference.
fn oci_image(rkt: &Rkt, name: &str, hostile: &[RawEntry]) -> String {
    let dir = rkt.work().join(name);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| {
        let digest = sha256_of(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).expect("blob");
        serde_json::json!({"digest": digest, "size": bytes.len()})
    };
    let layer = |entries: &[RawEntry]| {
        let mut d = put(&raw_tar(entries, true).expect("tar"));
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        d
    };
    let layers = vec![layer(&busybox_layer()), layer(hostile)];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["true"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>()}
    });
    let mut config = put(&serde_json::to_vec(&config).expect("json"));
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers
    });
    let mut manifest = put(&serde_json::to_vec(&manifest).expect("json"));
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index");
    format!("oci:{}", dir.display())
}

/// `..` enough times to climb from anywhere in the store to `/`, then `path`.
fn climbing_to(path: &Path) -> Vec<u8> {
    let mut name = "../".repeat(24).into_bytes();
    name.extend_from_slice(
        path.strip_prefix("/")
            .expect("absolute")
            .as_os_str()
            .as_encoded_bytes(),
    );
    name
}

fn raw_link(kind: tar::EntryType, name: &[u8], target: &[u8]) -> RawEntry {
    RawEntry {
        kind,
        link: Some(target.to_vec()),
        ..RawEntry::file(name, b"", 0o777)
    }
}

/// Runs `rkt run oci:DIR` once per hostile layer (so a refusal of one case does
/// not hide the next): each refused with one line (254) or run (0), the canary
/// (content, mtime and link count) and the store intact, nothing escaped to
/// `escaped` (a path beside the canary), gc leaving nothing.
fn check_oci(test: &str, build: impl FnOnce(&Path) -> Vec<Vec<RawEntry>>) {
    let Some(rkt) = harness(test) else {
        return;
    };
    let canary = Canary::new(&rkt);
    let nlink = std::fs::metadata(&canary.0).expect("stat").nlink();
    let escaped = rkt.work().join("escaped");
    for (n, hostile) in build(&canary.0).iter().enumerate() {
        let case = format!("{test} #{n}");
        let image = oci_image(&rkt, &format!("layout-{n}"), hostile);
        let run = rkt.run(&[&image, "--exec", "/bin/true"]);
        eprintln!("{case}: run: {}", run.describe());
        if run.code != 0 {
            one_line_254(&run, "");
        }
        canary.assert_untouched(&case);
        assert_eq!(
            std::fs::metadata(&canary.0).expect("stat").nlink(),
            nlink,
            "{case}: the canary gained a hard link"
        );
        assert!(
            std::fs::symlink_metadata(&escaped).is_err(),
            "{case}: {} was written outside the store",
            escaped.display()
        );
        assert!(
            support::store_problems(&rkt).is_empty(),
            "{case}: {:?}",
            support::store_problems(&rkt)
        );
        let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
        assert_eq!(gc.code, 0, "{case}: {}", gc.describe());
        let left = leftovers(&rkt);
        assert!(left.is_empty(), "{case}: {left:?}");
    }
}

#[test]
fn an_oci_layer_with_dotdot_names_stays_inside() {
    check_oci("an_oci_layer_with_dotdot_names_stays_inside", |canary| {
        let escaped = canary.with_file_name("escaped");
        vec![
            vec![RawEntry::file(climbing_to(canary), b"pwned\n", 0o644)],
            vec![RawEntry::file(climbing_to(&escaped), b"pwned\n", 0o644)],
            vec![RawEntry::file("bin/../../escaped", b"pwned\n", 0o644)],
        ]
    });
}

#[test]
fn an_oci_layer_writing_through_an_absolute_symlink_stays_inside() {
    check_oci(
        "an_oci_layer_writing_through_an_absolute_symlink_stays_inside",
        |canary| {
            let dir = canary.parent().expect("work dir").as_os_str().as_encoded_bytes();
            let relative = &climbing_to(canary)[24 * 3..];
            vec![
                vec![
                    raw_link(tar::EntryType::Symlink, b"evil", dir),
                    RawEntry::file("evil/canary", b"pwned\n", 0o644),
                ],
                vec![
                    raw_link(tar::EntryType::Symlink, b"evil", dir),
                    RawEntry::file("evil/escaped", b"pwned\n", 0o644),
                ],
                vec![
                    raw_link(tar::EntryType::Symlink, b"up", b"../../../../../../../../../.."),
                    RawEntry::file([b"up/".as_slice(), relative].concat(), b"pwned\n", 0o644),
                ],
                // Symlink first in one layer, the file in the next is the same thing
                // here: the second layer is applied over the first's tree.
                vec![
                    raw_link(tar::EntryType::Symlink, b"bin/evil", dir),
                    RawEntry::dir("bin/evil"),
                    RawEntry::file("bin/evil/canary", b"pwned\n", 0o644),
                ],
            ]
        },
    );
}

#[test]
fn an_oci_whiteout_cannot_remove_outside_the_rootfs() {
    check_oci("an_oci_whiteout_cannot_remove_outside_the_rootfs", |canary| {
        let dir = canary.parent().expect("work dir");
        let mut through_dotdot = climbing_to(dir);
        through_dotdot.extend_from_slice(b"/.wh.canary");
        vec![
            vec![RawEntry::file(through_dotdot, b"", 0o644)],
            // The whiteout of `..` (in the root and below it).
            vec![RawEntry::file(".wh...", b"", 0o644)],
            vec![RawEntry::file("bin/.wh...", b"", 0o644)],
            vec![
                raw_link(
                    tar::EntryType::Symlink,
                    b"evil",
                    dir.as_os_str().as_encoded_bytes(),
                ),
                RawEntry::file("evil/.wh.canary", b"", 0o644),
            ],
            vec![
                raw_link(
                    tar::EntryType::Symlink,
                    b"evil",
                    dir.as_os_str().as_encoded_bytes(),
                ),
                RawEntry::file("evil/.wh..wh..opq", b"", 0o644),
            ],
        ]
    });
}

#[test]
fn an_oci_hardlink_to_a_host_path_is_refused_or_harmless() {
    check_oci(
        "an_oci_hardlink_to_a_host_path_is_refused_or_harmless",
        |canary| {
            vec![
                vec![
                    raw_link(
                        tar::EntryType::Link,
                        b"abs",
                        canary.as_os_str().as_encoded_bytes(),
                    ),
                    RawEntry::file("abs", b"pwned\n", 0o644),
                ],
                vec![
                    raw_link(tar::EntryType::Link, b"rel", &climbing_to(canary)),
                    RawEntry::file("rel", b"pwned\n", 0o644),
                ],
                // Through a symlink to the host directory.
                vec![
                    raw_link(
                        tar::EntryType::Symlink,
                        b"evil",
                        canary.parent().expect("work dir").as_os_str().as_encoded_bytes(),
                    ),
                    raw_link(tar::EntryType::Link, b"via", b"evil/canary"),
                    RawEntry::file("via", b"pwned\n", 0o644),
                ],
            ]
        },
    );
}

// ---------------------------------------------------------------------------------
// CVE-2019-5736 in an nspawn pod: the app's ancestors inside the pod (stage1's
// init is rkt's own binary) and its descriptors.

/// Walks from the app up through every ancestor it can see, trying to open each
/// one's exe for writing: one line per process.
const ANCESTRY_PROBE: &str = r#"
p=$$
while [ -n "$p" ] && [ "$p" != 0 ]; do
  exe=$(readlink /proc/$p/exe 2>/dev/null || echo hidden)
  if ( : >> /proc/$p/exe ) 2>/dev/null; then w=writable; else w=refused; fi
  echo "pid $p exe $exe $w"
  next=
  while read -r key value; do [ "$key" = PPid: ] && next=$value; done < /proc/$p/status
  p=$next
done
"#;

fn nspawn_harness(test: &str) -> Option<Rkt> {
    harness(test)?; // root and busybox
    let rkt = Rkt::new(bin(), "nspawn").expect("harness");
    if !support::stage1_available(&rkt, "nspawn") {
        eprintln!("{test}: skipped: rkt version does not list stage1 nspawn as available");
        return None;
    }
    Some(rkt)
}

#[test]
fn an_nspawn_app_cannot_reach_rkt_or_the_store() {
    let test = "an_nspawn_app_cannot_reach_rkt_or_the_store";
    let Some(rkt) = nspawn_harness(test) else {
        return;
    };
    let before = sha(bin());
    let image = rkt
        .image(&AciSpec::busybox("example.com/cve-2019-5736"))
        .expect("image")
        .display()
        .to_string();
    let probe = rkt.run(&[&image, "--exec", "/bin/sh", "--", "-c", ANCESTRY_PROBE]);
    eprintln!("{test}: {}", probe.describe());
    assert_eq!(probe.code, 0, "{}", probe.describe());
    let lines: Vec<&str> = probe.stdout.lines().filter(|l| l.starts_with("pid ")).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("pid 1 ")),
        "the probe never reached the pod's init: {}",
        probe.stdout
    );
    let writable: Vec<&&str> = lines.iter().filter(|l| l.ends_with(" writable")).collect();
    assert!(
        writable.is_empty(),
        "the app could open an ancestor's exe for writing: {writable:?}"
    );

    // A descriptor the caller leaks (no O_CLOEXEC) must not reach the app either.
    let leaky = std::fs::File::open(&rkt.dir).expect("open data dir");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaky);
    let mut cmd = rkt.command(&[
        "run",
        "--insecure-options=image",
        "--stage1=nspawn",
        "--net=host",
        &image,
        "--exec",
        "/bin/ls",
        "--",
        "-l",
        "/proc/self/fd",
    ]);
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let fds = finish_within("ls /proc/self/fd", cmd, LIMIT).out;
    drop(leaky);
    eprintln!("{test}: {}", fds.describe());
    assert_eq!(fds.code, 0, "{}", fds.describe());
    let data_dir = rkt.dir.to_string_lossy().into_owned();
    let mut listed = Vec::new();
    for line in fds.stdout.lines() {
        let Some((left, target)) = line.split_once(" -> ") else {
            continue;
        };
        let fd = left.rsplit(' ').next().unwrap_or("").to_string();
        let own = target.starts_with("/proc/") && target.ends_with("/fd");
        assert!(
            !target.contains(&data_dir),
            "an inherited fd reaches the data dir: {line}"
        );
        if !own {
            listed.push(fd);
        }
    }
    assert_eq!(
        listed,
        ["0", "1", "2"],
        "descriptors beyond 0, 1, 2: {}",
        fds.stdout
    );
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
    assert!(sha(bin()) == before, "the rkt binary changed");
}
