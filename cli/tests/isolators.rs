//! Isolators on nspawn pods, end to end through the real binary as root:
//! cgroup limits (an app past its memory limit is OOM-killed, CPU quota in the
//! cgroup files, gc removes every cgroup), capabilities, seccomp,
//! no_new_privs, a read-only rootfs, read-only and masked path isolators,
//! `--private-users` (uid 0 inside is an unprivileged host uid; enter joins
//! it), the labeler choice, and fly's warning. Skipped (with the reason)
//! without root, busybox, nspawn or the memory/cpu cgroup controllers.

mod common;

use std::path::PathBuf;

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt, busybox_path};
use rkt_engine::stage::{Availability, Stage1, registry};

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: needs root");
        return None;
    }
    if busybox_path().is_none() {
        eprintln!("{test}: skipped: needs busybox-static");
        return None;
    }
    for controller in ["memory", "cpu"] {
        if !std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("cgroup.procs")
            .exists()
        {
            eprintln!("{test}: skipped: needs the cgroup v1 {controller} controller");
            return None;
        }
    }
    match registry::create::<dyn Stage1>("nspawn").map(|s| s.availability()) {
        Ok(Availability::Available) => {}
        Ok(Availability::Unavailable(why)) => {
            eprintln!("{test}: skipped: {why}");
            return None;
        }
        Err(e) => panic!("nspawn is not registered: {e}"),
    }
    Some(Rkt::new(common::bin(), "nspawn").expect("harness"))
}

/// `rkt run` of one busybox app running `script`, with per-app flags.
fn sh(rkt: &Rkt, flags: &[&str], script: &str) -> RunOutput {
    let img = common::busybox_image(rkt);
    let mut args = vec![img.as_str()];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--exec", "/bin/sh", "--", "-c", script]);
    rkt.run(&args)
}

/// The cgroup directories the only pod of this `--dir` recorded.
fn recorded_cgroups(rkt: &Rkt) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for state in ["run", "exited-garbage"] {
        for pod in std::fs::read_dir(rkt.dir.join("pods").join(state))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(record) = std::fs::read_to_string(pod.path().join("cgroups")) {
                dirs.extend(record.lines().map(PathBuf::from));
            }
        }
    }
    dirs
}

#[test]
fn an_app_past_its_memory_limit_is_oom_killed_one_under_it_finishes() {
    let Some(rkt) = harness("an_app_past_its_memory_limit_is_oom_killed") else {
        return;
    };
    // tail keeps a line without a newline whole: 200 MB of zeros, in memory.
    let over = sh(&rkt, &["--memory=32M"], "head -c 200m /dev/zero | tail");
    assert_eq!(over.code, 137, "{}", over.describe());
    let under = sh(
        &rkt,
        &["--memory=32M"],
        "head -c 4m /dev/zero | tail >/dev/null && echo done",
    );
    assert_eq!(under.code, 0, "{}", under.describe());
    assert_eq!(under.stdout.trim(), "done");
}

#[test]
fn cpu_quota_and_shares_are_in_the_cgroup_files_and_gc_removes_every_cgroup() {
    let Some(rkt) = harness("cpu_quota_and_shares_are_in_the_cgroup_files") else {
        return;
    };
    let out = sh(
        &rkt,
        &["--cpu=500m", "--cpu-shares=512", "--oom-score-adj=300"],
        "cat /proc/self/oom_score_adj",
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(out.stdout.trim(), "300");
    let dirs = recorded_cgroups(&rkt);
    let app = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/cpu/") && d.ends_with("busybox"))
        .unwrap_or_else(|| panic!("no cpu cgroup for the app in {dirs:?}"));
    let read = |f: &str| std::fs::read_to_string(app.join(f)).expect(f).trim().to_string();
    assert_eq!(read("cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu.shares"), "512");
    assert!(dirs.iter().any(|d| d.starts_with("/sys/fs/cgroup/memory/")));
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups left after gc: {left:?}");
}

fn cap_bits(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.rsplit(['\t', ' ']).next().unwrap_or(""), 16).expect("hex")
}

#[test]
fn capabilities_follow_the_default_set_and_the_flags() {
    let Some(rkt) = harness("capabilities_follow_the_default_set_and_the_flags") else {
        return;
    };
    const NET_RAW: u64 = 1 << 13;
    const SYS_ADMIN: u64 = 1 << 21;
    let default = sh(&rkt, &[], "cat /proc/self/status");
    assert_eq!(default.code, 0, "{}", default.describe());
    let bnd = cap_bits(&default.stdout, "CapBnd:");
    assert_eq!(bnd.count_ones(), 14, "{bnd:#x}");
    assert_eq!(bnd & (NET_RAW | SYS_ADMIN), NET_RAW);
    assert_eq!(cap_bits(&default.stdout, "CapEff:"), bnd);

    let removed = sh(&rkt, &["--caps-remove=CAP_NET_RAW"], "cat /proc/self/status");
    assert_eq!(
        cap_bits(&removed.stdout, "CapBnd:") & NET_RAW,
        0,
        "{}",
        removed.describe()
    );

    // mount(2) needs CAP_SYS_ADMIN (and not to be in the default seccomp blocklist).
    let script = "mkdir -p /m && mount -t tmpfs none /m && echo mounted";
    let refused = sh(&rkt, &["--seccomp=mode=remove,errno=ENOSYS,reboot"], script);
    assert_ne!(refused.code, 0, "{}", refused.describe());
    let allowed = sh(
        &rkt,
        &[
            "--caps-retain=CAP_SYS_ADMIN",
            "--seccomp=mode=remove,errno=ENOSYS,reboot",
        ],
        script,
    );
    assert_eq!(allowed.code, 0, "{}", allowed.describe());
    assert_eq!(allowed.stdout.trim(), "mounted");
}

#[test]
fn a_seccomp_removed_syscall_fails_with_the_configured_errno() {
    let Some(rkt) = harness("a_seccomp_removed_syscall_fails_with_the_configured_errno") else {
        return;
    };
    let out = sh(
        &rkt,
        &["--seccomp", "mode=remove,errno=ENOSYS,mkdir,mkdirat"],
        "mkdir /tmp/x; echo code=$?",
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stdout.contains("code=1"), "{}", out.describe());
    assert!(
        out.stderr.contains("Function not implemented"),
        "{}",
        out.describe()
    );
    // The default filter refuses mount(2) with EPERM even to CAP_SYS_ADMIN.
    let out = sh(&rkt, &["--caps-retain=CAP_SYS_ADMIN"], "mount -t tmpfs none /tmp");
    assert_ne!(out.code, 0, "{}", out.describe());
    // busybox's words for EPERM from mount(2).
    assert!(out.stderr.contains("permission denied"), "{}", out.describe());
}

#[test]
fn unprivileged_apps_under_seccomp_have_no_new_privileges() {
    let Some(rkt) = harness("unprivileged_apps_under_seccomp_have_no_new_privileges") else {
        return;
    };
    let mut spec = AciSpec::busybox("example.com/user");
    spec.user = "1000".into();
    spec.group = "1000".into();
    spec.exec = vec![
        "/bin/grep".into(),
        "NoNewPrivs".into(),
        "/proc/self/status".into(),
    ];
    let img = rkt.image(&spec).expect("image").display().to_string();
    let out = rkt.run(&[&img]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    let root = rkt.rkt(&[
        "run",
        "--insecure-options=image,seccomp",
        "--stage1=nspawn",
        "--net=host",
        &common::busybox_image(&rkt),
        "--exec",
        "/bin/grep",
        "--",
        "NoNewPrivs",
        "/proc/self/status",
    ]);
    assert_eq!(
        root.stdout.split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "0"],
        "{}",
        root.describe()
    );
}

#[test]
fn a_read_only_rootfs_refuses_writes_but_volumes_stay_writable() {
    let Some(rkt) = harness("a_read_only_rootfs_refuses_writes") else {
        return;
    };
    let out = sh(&rkt, &["--readonly-rootfs"], "touch /x; echo code=$?");
    assert!(out.stdout.contains("code=1"), "{}", out.describe());
    assert!(out.stderr.contains("Read-only file system"), "{}", out.describe());
    let writable = sh(&rkt, &[], "touch /x && echo ok");
    assert_eq!(writable.stdout.trim(), "ok", "{}", writable.describe());
}

#[test]
fn fly_warns_once_that_it_ignores_isolators() {
    if !nix::unistd::geteuid().is_root() || busybox_path().is_none() {
        eprintln!("fly_warns_once_that_it_ignores_isolators: skipped: needs root and busybox-static");
        return;
    }
    let rkt = Rkt::new(common::bin(), "fly").expect("harness");
    let out = sh(&rkt, &["--memory=64M"], "true");
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(
        out.stderr.matches("does not enforce isolators").count(),
        1,
        "{}",
        out.describe()
    );
    let quiet = sh(&rkt, &[], "true");
    assert!(!quiet.stderr.contains("isolators"), "{}", quiet.describe());
}

#[test]
fn bad_isolator_flags_are_one_line_errors() {
    let Some(rkt) = harness("bad_isolator_flags_are_one_line_errors") else {
        return;
    };
    let out = sh(&rkt, &["--caps-retain=CAP_NOPE"], "true");
    common::one_line_254(&out, "CAP_NOPE");
}

/// `rkt prepare` of `image` running `script`, turned into a pod manifest with
/// `isolators` added to its app; returns `--pod-manifest=PATH`.
fn manifest_with_isolators(rkt: &Rkt, image: &str, script: &str, isolators: serde_json::Value) -> String {
    let stage1 = format!("--stage1={}", rkt.stage1);
    let prepared = rkt.rkt(&[
        "prepare",
        "--quiet",
        "--insecure-options=image",
        &stage1,
        image,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        script,
    ]);
    assert_eq!(prepared.code, 0, "{}", prepared.describe());
    let cat = rkt.rkt(&["cat-manifest", prepared.stdout.trim()]);
    assert_eq!(cat.code, 0, "{}", cat.describe());
    let mut manifest: serde_json::Value = serde_json::from_str(&cat.stdout).expect("pod manifest");
    manifest["apps"][0]["app"]["isolators"] = isolators;
    let path = rkt.work().join("pod-manifest.json");
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
    format!("--pod-manifest={}", path.display())
}

#[test]
fn read_only_and_masked_path_isolators_apply_to_the_app() {
    let Some(rkt) = harness("read_only_and_masked_path_isolators_apply_to_the_app") else {
        return;
    };
    let mut spec = AciSpec::busybox("example.com/paths");
    spec.files
        .push(("root/secret".into(), b"secret\n".to_vec(), 0o600));
    let img = rkt.image(&spec).expect("image").display().to_string();
    let script = "touch /etc/probe; echo etc=$?; echo x >/tmp/probe; echo tmp=$?; \
                  echo passwd=$(wc -c </etc/passwd); echo root=$(ls -A /root | wc -l); \
                  cat /root/secret; echo secret=$?";
    let flag = manifest_with_isolators(
        &rkt,
        &img,
        script,
        serde_json::json!([
            {"name": "os/linux/read-only-paths", "value": {"paths": ["/etc"]}},
            {"name": "os/linux/masked-paths", "value": {"paths": ["/etc/passwd", "/root", "/nonexistent"]}},
        ]),
    );
    let out = rkt.run(&[&flag]);
    assert_eq!(out.code, 0, "{}", out.describe());
    for expected in ["etc=1", "tmp=0", "passwd=0", "root=0", "secret=1"] {
        assert!(
            out.stdout.lines().any(|l| l == expected),
            "{expected}: {}",
            out.describe()
        );
    }
    assert!(out.stderr.contains("Read-only file system"), "{}", out.describe());
    assert!(!out.stdout.contains("secret\n"), "{}", out.describe());

    // Without the isolators the same app writes /etc and reads /root.
    let plain = rkt.run(&[
        &img,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "touch /etc/probe && cat /root/secret",
    ]);
    assert_eq!(plain.code, 0, "{}", plain.describe());
    assert_eq!(plain.stdout.trim(), "secret");
}

#[test]
fn bad_path_isolators_are_one_line_errors() {
    let Some(rkt) = harness("bad_path_isolators_are_one_line_errors") else {
        return;
    };
    let flag = manifest_with_isolators(
        &rkt,
        &common::busybox_image(&rkt),
        "true",
        serde_json::json!([{"name": "os/linux/masked-paths", "value": {"paths": ["relative/x"]}}]),
    );
    common::one_line_254(&rkt.run(&[&flag]), "relative/x");
}

/// The directory of pod `uuid`, in whichever state it is.
fn pod_dir(rkt: &Rkt, uuid: &str) -> PathBuf {
    std::fs::read_dir(rkt.dir.join("pods"))
        .expect("pods dir")
        .flatten()
        .map(|state| state.path().join(uuid))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no pod {uuid}"))
}

#[test]
fn root_in_a_private_users_pod_is_an_unprivileged_host_uid() {
    let Some(rkt) = harness("root_in_a_private_users_pod_is_an_unprivileged_host_uid") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    // rkt's rule: the tree store under an overlay cannot be shifted per pod.
    let refused = rkt.run(&["--private-users", &img]);
    common::one_line_254(&refused, "--no-overlay");

    let uuid_file = rkt.work().join("private-users.uuid");
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let out = rkt.run(&[
        "--private-users",
        "--no-overlay",
        &save,
        &img,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "cat /proc/self/uid_map; touch /created; id -u",
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let uuid = std::fs::read_to_string(&uuid_file).expect("uuid file");
    let uuid = uuid.trim();
    let map: Vec<u64> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|w| w.parse().expect("uid_map number"))
        .collect();
    assert_eq!(map.len(), 3, "{}", out.describe());
    let (inside, host, count) = (map[0], map[1], map[2]);
    assert_eq!((inside, count), (0, 65536), "{}", out.describe());
    assert!(host >= 65536 && host % 65536 == 0, "{host}");
    assert_eq!(
        out.stdout.lines().last(),
        Some("0"),
        "root inside: {}",
        out.describe()
    );

    let pod = pod_dir(&rkt, uuid);
    assert_eq!(
        std::fs::read_to_string(pod.join("private-users"))
            .expect("range file")
            .trim(),
        format!("{host}:65536")
    );
    let created = pod.join("stage1/rootfs/opt/stage2/busybox/rootfs/created");
    let meta = std::fs::metadata(&created).expect("the app's file");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (u64::from(meta.uid()), u64::from(meta.gid())),
        (host, host),
        "seen from the host"
    );
    let table = || std::fs::read_to_string("/run/rkt-rs/uid-ranges").unwrap_or_default();
    assert!(table().contains(uuid), "allocated: {}", table());
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    assert!(!table().contains(uuid), "released at gc: {}", table());
}

#[test]
fn the_labeler_is_selinux_where_enabled_and_the_no_op_elsewhere() {
    let test = "the_labeler_is_selinux_where_enabled_and_the_no_op_elsewhere";
    let Some(rkt) = harness(test) else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let selinux = std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok();
    // Without an LSM the kernel refuses the read (EINVAL): only SELinux fills it.
    let script = "cat /proc/self/attr/current 2>/dev/null; exit 0";
    let auto = rkt.run(&["--debug", &img, "--exec", "/bin/sh", "--", "-c", script]);
    assert_eq!(auto.code, 0, "{}", auto.describe());
    let chosen = auto
        .stderr
        .lines()
        .find(|l| l.contains("labeler chosen"))
        .unwrap_or_else(|| panic!("no labeler in the debug log: {}", auto.describe()))
        .to_string();
    if !selinux {
        assert!(chosen.contains("none"), "{chosen}");
        let forced = rkt.run(&["--labeler=selinux", &img]);
        common::one_line_254(&forced, "SELinux is not enabled");
        let none = rkt.run(&["--labeler=none", &img, "--exec", "/bin/true"]);
        assert_eq!(none.code, 0, "{}", none.describe());
        eprintln!("{test}: live labels skipped: SELinux not enabled");
        return;
    }
    // SELinux on: the app runs in a container domain at a level of its own.
    assert!(chosen.contains("selinux"), "{chosen}");
    assert!(auto.stdout.contains(":s0:c"), "{}", auto.describe());
}

#[test]
fn enter_into_a_private_users_pod_runs_as_the_pods_root() {
    use std::io::Read;
    let Some(rkt) = harness("enter_into_a_private_users_pod_runs_as_the_pods_root") else {
        return;
    };
    let uuid_file = rkt.work().join("enter.uuid");
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let img = common::busybox_image(&rkt);
    let mut child = rkt
        .command(&[
            "run",
            "--insecure-options=image",
            "--stage1=nspawn",
            "--net=host",
            "--private-users",
            "--no-overlay",
            &save,
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo ready; exec sleep 600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rkt run");
    // The app's first line says it runs; nothing is polled.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let stdout = child.stdout.as_mut().expect("stdout");
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let uuid_flag = format!("--uuid-file={}", uuid_file.display());
    let ready = rkt.rkt(&["status", "--wait-ready=30s", &uuid_flag]);
    let entered = rkt.rkt(&["enter", &uuid_flag, "/bin/sh", "-c", "id -u; touch /entered"]);
    let stop = rkt.rkt(&["stop", "--force", &uuid_flag]);
    let _ = child.wait();
    assert_eq!(line, b"ready", "the app's first line");
    assert_eq!(ready.code, 0, "{}", ready.describe());
    assert_eq!(entered.code, 0, "{}", entered.describe());
    assert_eq!(entered.stdout.trim(), "0", "{}", entered.describe());
    assert_eq!(stop.code, 0, "{}", stop.describe());
    let uuid = std::fs::read_to_string(&uuid_file).expect("uuid file");
    let pod = pod_dir(&rkt, uuid.trim());
    let range = std::fs::read_to_string(pod.join("private-users")).expect("range file");
    let shift: u32 = range
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("shift");
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(pod.join("stage1/rootfs/opt/stage2/busybox/rootfs/entered")).expect("entered");
    assert_eq!(meta.uid(), shift, "enter's file belongs to the pod's root");
}
