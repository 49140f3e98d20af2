//! Isolators on nspawn pods, end to end through the real binary as root:
//! cgroup limits (an app past its memory limit is OOM-killed, CPU quota in the
//! cgroup files, gc removes every cgroup), capabilities, seccomp,
//! no_new_privs, a read-only rootfs, and fly's warning. Skipped (with the
//! reason) without root, busybox, nspawn or the memory/cpu cgroup controllers.

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

fn image(rkt: &Rkt) -> String {
    rkt.image(&AciSpec::busybox("example.com/busybox"))
        .expect("image")
        .display()
        .to_string()
}

/// Pods of a test end with a gc: their cgroups live outside the test's --dir.
struct GcOnDrop<'a>(&'a Rkt);

impl Drop for GcOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.rkt(&["gc", "--grace-period=0s"]);
    }
}

/// `rkt run` of one busybox app running `script`, with per-app flags.
fn sh(rkt: &Rkt, flags: &[&str], script: &str) -> RunOutput {
    let img = image(rkt);
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
    let _gc = GcOnDrop(&rkt);
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
    let _gc = GcOnDrop(&rkt);
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
    let _gc = GcOnDrop(&rkt);
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
    let _gc = GcOnDrop(&rkt);
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
    let _gc = GcOnDrop(&rkt);
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
        &image(&rkt),
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
    let _gc = GcOnDrop(&rkt);
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
