//! The kvm stage1 end to end, through the real binary, as root: each test boots
//! a real VM (QEMU, Debian's kernel, our initramfs), a few seconds each under
//! TCG, so the cases are few and each checks several things. Skipped (with the
//! reason) without root, busybox, QEMU or a kernel.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt};

use rkt_backend_kvm as _;

fn harness(test: &str) -> Option<Rkt> {
    common::stage1_harness(test, "kvm")
}

/// `rkt run --stage1=kvm --net=default ARGS...`.
fn run(rkt: &Rkt, args: &[&str]) -> RunOutput {
    let mut all = vec!["--net=default"];
    all.extend_from_slice(args);
    rkt.run(&all)
}

fn sh(rkt: &Rkt, script: &str, extra: &[&str]) -> RunOutput {
    let img = common::busybox_image(rkt);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&[&img, "--exec", "/bin/sh", "--", "-c", script]);
    run(rkt, &args)
}

fn hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    flags && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn exit_codes_round_trip_from_a_guest_with_its_own_kernel() {
    let Some(rkt) = harness("exit_codes_round_trip_from_a_guest_with_its_own_kernel") else {
        return;
    };
    let host_release = nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned();
    // --debug: rkt names the accelerator it chose (and the kernel log shows).
    let out = sh(&rkt, "uname -r; echo to-stderr >&2", &["--debug"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let guest_release = out.stdout.trim();
    assert!(
        guest_release.starts_with("6.") || guest_release.contains('-'),
        "{}",
        out.describe()
    );
    assert_ne!(guest_release, host_release, "the app ran on the host's kernel");
    assert!(out.stderr.contains("to-stderr"), "{}", out.describe());
    let accel = if hardware_virtualization() { "kvm" } else { "tcg" };
    assert!(
        out.stderr.contains(&format!("accel=\"{accel}\"")) || out.stderr.contains(&format!("accel={accel}")),
        "{}",
        out.describe()
    );

    // Into a regular file the caller writes to as well (a script's `> log`), the
    // app's output lands between what came before and what comes after.
    let log_path = rkt.work().join("console.log");
    let mut log = std::fs::File::create(&log_path).expect("creating the log");
    log.write_all(b"before\n").expect("writing the log");
    let img = common::busybox_image(&rkt);
    let run_args = [
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=none",
        &img,
    ];
    let mut cmd = rkt.command(&run_args);
    cmd.args(["--exec", "/bin/sh", "--", "-c", "echo three; exit 3"]);
    let out = cmd
        .stdout(log.try_clone().expect("dup of the log"))
        .output()
        .expect("rkt runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    log.write_all(b"after\n").expect("writing the log");
    assert_eq!(
        std::fs::read_to_string(&log_path).expect("reading the log"),
        "before\nthree\nafter\n",
        "no kernel noise on stdout, nothing overwritten: {stderr}"
    );
    assert!(!stderr.contains("Linux version"), "{stderr}");

    let out = sh(&rkt, "/no/such/command", &[]);
    assert_eq!(out.code, 127, "{}", out.describe());
    let status = rkt.rkt(&["list", "--no-legend", "--full"]);
    assert_eq!(status.code, 0, "{}", status.describe());
    assert_eq!(
        status.stdout.lines().filter(|l| l.contains("exited")).count(),
        3,
        "{}",
        status.describe()
    );
}

/// One boot, every kind of isolator: the guest's init confines the app as
/// nspawn's does, and gives it its own cgroup with its memory limit.
#[test]
fn isolators_are_enforced_inside_the_guest() {
    let Some(rkt) = harness("isolators_are_enforced_inside_the_guest") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    // `paths` lifts only the default masks, so the app can read its cgroup.
    let script = "grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status; \
                  mkdir /tmp/x; echo mkdir=$?; \
                  mount -t tmpfs none /tmp; echo mount=$?; \
                  touch /x; echo touch=$?; \
                  own=$(cut -d: -f3 /proc/self/cgroup); echo cgroup=$own; \
                  echo memory.max=$(cat /sys/fs/cgroup$own/memory.max)";
    let out = rkt.rkt(&[
        "run",
        "--insecure-options=image,paths",
        "--stage1=kvm",
        "--net=default",
        &img,
        "--caps-remove=CAP_NET_RAW",
        "--seccomp=mode=remove,errno=ENOSYS,mkdir,mkdirat",
        "--memory=96M",
        "--readonly-rootfs",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        script,
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {}", out.describe()))
            .to_string()
    };
    const NET_RAW: u64 = 1 << 13;
    const SYS_ADMIN: u64 = 1 << 21;
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).expect("CapBnd");
    assert_eq!(bounding & (NET_RAW | SYS_ADMIN), 0, "{}", out.describe());
    assert_ne!(bounding, 0, "{}", out.describe());
    assert_eq!(field("NoNewPrivs:"), "1", "{}", out.describe());
    assert_eq!(field("mkdir="), "1", "{}", out.describe());
    assert!(
        out.stderr.contains("Function not implemented"),
        "{}",
        out.describe()
    );
    assert_ne!(
        field("mount="),
        "0",
        "mount without CAP_SYS_ADMIN: {}",
        out.describe()
    );
    assert_eq!(field("touch="), "1", "{}", out.describe());
    assert!(out.stderr.contains("Read-only file system"), "{}", out.describe());
    assert_ne!(
        field("cgroup="),
        "/",
        "the app has its own cgroup: {}",
        out.describe()
    );
    assert_eq!(
        field("memory.max="),
        // appc's M is 10^6; the kernel keeps whole pages.
        (96_000_000u64 / 4096 * 4096).to_string(),
        "{}",
        out.describe()
    );
}

#[test]
fn two_apps_share_a_volume_inside_one_vm() {
    let Some(rkt) = harness("two_apps_share_a_volume_inside_one_vm") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let b = rkt
        .image(&AciSpec::busybox("example.com/other"))
        .expect("image")
        .display()
        .to_string();
    // Each app publishes its file by rename, then waits (a bounded loop, no
    // sleeps) for the other's. FIFOs would not do: 9p does not carry them.
    let script_a = "echo from-a > /shared/a.tmp && mv /shared/a.tmp /shared/a; n=0; while [ ! -e /shared/b ]; do n=$((n+1)); [ $n -lt 100000 ] || exit 9; done; cat /shared/b";
    let script_b = "echo from-b > /shared/b.tmp && mv /shared/b.tmp /shared/b; n=0; while [ ! -e /shared/a ]; do n=$((n+1)); [ $n -lt 100000 ] || exit 9; done; cat /shared/a; exit 5";
    let out = run(
        &rkt,
        &[
            "--volume=shared,kind=empty",
            "--mount=volume=shared,target=/shared",
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            script_a,
            "---",
            &b,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            script_b,
        ],
    );
    assert_eq!(out.code, 5, "the failing app's code: {}", out.describe());
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["from-a", "from-b"], "{}", out.describe());
}

#[test]
fn net_host_is_refused() {
    let Some(rkt) = harness("net_host_is_refused") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let out = rkt.run(&["--net=host", &img, "--exec", "/bin/true"]);
    common::one_line_254(&out, "--net=host");
}

/// `rkt run` in the background with its stdout piped; the UUID saved to a file.
fn spawn_run(rkt: &Rkt, args: &[&str]) -> (Child, std::path::PathBuf) {
    let uuid_file = rkt
        .work()
        .join(format!("uuid-{}", rkt_engine::fsutil::unique_suffix()));
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let mut all = vec!["run", "--insecure-options=image", "--stage1=kvm", save.as_str()];
    all.extend_from_slice(args);
    let child = rkt
        .command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rkt run");
    (child, uuid_file)
}

fn read_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// `rkt app sandbox --stage1=kvm NET` in the background, and the UUID it prints first.
fn start_sandbox(rkt: &Rkt, net: &str) -> (Child, String) {
    let mut sandbox = rkt
        .command(&["app", "sandbox", "--insecure-options=image", "--stage1=kvm", net])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rkt app sandbox");
    let uuid = read_line(&mut sandbox);
    if uuid.is_empty() {
        panic!("no UUID: {}", finish(sandbox).describe());
    }
    (sandbox, uuid)
}

fn finish(mut child: Child) -> RunOutput {
    let status = child.wait().expect("wait");
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    RunOutput {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// Two pods, both restored from one snapshot (a memory size of this test's
/// own keeps its snapshot from other tests): the second's NIC came out of the
/// snapshot with the first pod's MAC address and must take its own.
#[test]
fn a_pod_on_the_default_network_is_reachable_from_the_host() {
    let Some(rkt) = harness("a_pod_on_the_default_network_is_reachable_from_the_host") else {
        return;
    };
    let mut macs = Vec::new();
    for _ in 0..2 {
        let (out, mac) = reachable_pod(&rkt, &["--debug"], &["--memory=81M"]);
        assert!(
            out.stderr.contains("restored from a snapshot"),
            "{}",
            out.describe()
        );
        macs.push(mac);
    }
    assert_ne!(macs[0], macs[1], "the second pod kept the snapshot's MAC address");
}

/// A pod on the default network answering the host on TCP, and its guest's
/// MAC address.
fn reachable_pod(rkt: &Rkt, run_flags: &[&str], app_flags: &[&str]) -> (RunOutput, String) {
    let img = common::busybox_image(rkt);
    // The app's first line is its address (the CNI lease moved into the guest);
    // nc listens right after, so a refused connection is retried at once: the
    // loop is bounded by the deadline, not paced by sleeps.
    let mut args = vec!["--net=default"];
    args.extend_from_slice(run_flags);
    args.push(&img);
    args.extend_from_slice(app_flags);
    args.extend_from_slice(&[
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "echo \"$(ip -o -4 addr show dev eth0) mac=$(cat /sys/class/net/eth0/address)\"; \
         echo pong | nc -l -p 8080",
    ]);
    let (mut child, uuid_file) = spawn_run(rkt, &args);
    let line = read_line(&mut child);
    let Some(ip) = line
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        panic!("no address in {line:?}: {}", finish(child).describe());
    };
    assert!(
        ip.octets()[..3] == [172, 16, 28],
        "{ip} is not on the default network"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reply = String::new();
    let mut last_error = String::new();
    while Instant::now() < deadline && child.try_wait().expect("try_wait").is_none() {
        match TcpStream::connect_timeout(&SocketAddrV4::new(ip, 8080).into(), Duration::from_secs(5)) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"ping\n");
                // nc ends when both directions have: ours ends here.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let _ = stream.read_to_string(&mut reply);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    if reply.is_empty() {
        // The app still waits for a connection that never came: end it, or
        // waiting for `rkt run` below would never return.
        if let Ok(uuid) = std::fs::read_to_string(&uuid_file) {
            let _ = rkt.rkt(&["stop", "--force", uuid.trim()]);
        }
    }
    let out = finish(child);
    assert_eq!(
        reply,
        "pong\n",
        "last connect error: {last_error}; {}",
        out.describe()
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stdout.contains("ping"),
        "the app got the host's line: {}",
        out.describe()
    );
    let mac = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mac="))
        .unwrap_or_default()
        .to_string();
    assert_eq!(mac.len(), 17, "no MAC address in {line:?}");
    (out, mac)
}

#[test]
fn stop_ends_a_long_running_pod_and_gc_leaves_nothing() {
    let Some(rkt) = harness("stop_ends_a_long_running_pod_and_gc_leaves_nothing") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let (mut child, uuid_file) = spawn_run(
        &rkt,
        &[
            "--net=default",
            "--volume=v,kind=empty",
            "--mount=volume=v,target=/v",
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let ready = read_line(&mut child);
    assert_eq!(ready, "ready");
    let uuid = std::fs::read_to_string(&uuid_file).expect("uuid file");
    let uuid = uuid.trim().to_string();
    let pid: i32 = std::fs::read_to_string(rkt.dir.join("pods/run").join(&uuid).join("pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("qemu's exe");
    assert!(exe.to_string_lossy().contains("qemu-system"), "{exe:?}");
    let netns = Path::new("/run/netns").join(format!("rkt-{uuid}"));
    assert!(netns.exists(), "the pod's netns {netns:?}");

    // `rkt enter`: run by the guest's init in the app's root with its
    // environment; output and exit code come back through the share.
    let entered = rkt.rkt(&[
        "enter",
        &uuid,
        "/bin/sh",
        "-c",
        "echo entered-as-$USER; echo to-stderr >&2; touch /v/entered && exit 7",
    ]);
    assert_eq!(entered.code, 7, "{}", entered.describe());
    assert_eq!(entered.stdout, "entered-as-root\n", "{}", entered.describe());
    assert_eq!(entered.stderr, "to-stderr\n", "{}", entered.describe());
    let missing = rkt.rkt(&["enter", &uuid, "/no/such/command"]);
    assert_eq!(missing.code, 254, "{}", missing.describe());
    assert!(
        missing.stderr.contains("/no/such/command"),
        "{}",
        missing.describe()
    );
    let enter_dir = rkt
        .dir
        .join("pods/run")
        .join(&uuid)
        .join("stage1/rootfs/rkt/enter");
    let left = std::fs::read_dir(&enter_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "enter requests left in {enter_dir:?}");

    let stop = rkt.rkt(&["stop", &uuid]);
    assert_eq!(stop.code, 0, "{}", stop.describe());
    let out = finish(child);
    assert_ne!(
        out.code,
        0,
        "a stopped pod does not report success: {}",
        out.describe()
    );
    let status = rkt.rkt(&["status", &uuid]);
    assert!(status.stdout.contains("state=exited"), "{}", status.describe());
    // Stopped by the guest's init (SIGTERM to the app), not by killing QEMU.
    assert!(status.stdout.contains("app-busybox=143"), "{}", status.describe());
    assert_eq!(out.code, 143, "{}", out.describe());

    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu (pid {pid}) is still there"
    );
    assert!(!netns.exists(), "the netns (and its taps) outlived gc");
    assert!(rkt.mounts_left().is_empty(), "mounts: {:?}", rkt.mounts_left());
    let left = std::fs::read_dir(rkt.dir.join("pods/exited-garbage"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn uses_kvm_when_the_host_has_hardware_virtualization() {
    if !hardware_virtualization() {
        eprintln!("uses_kvm_when_the_host_has_hardware_virtualization: skipped: no hardware virtualization");
        return;
    }
    let Some(rkt) = harness("uses_kvm_when_the_host_has_hardware_virtualization") else {
        return;
    };
    let out = sh(&rkt, "grep -c hypervisor /proc/cpuinfo", &["--debug"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stderr.contains("kvm"), "{}", out.describe());
}

/// The sequence on a VM: sandbox -> add two apps -> start -> exec in
/// one -> stop one -> its status shows the exit code -> rm it -> the other
/// still runs -> stop the pod -> gc leaves nothing. Every request travels the
/// same typed protocol as on nspawn, over the VM's virtio-serial channel.
/// Synchronised on the apps' own lines, which the sandbox relays to its
/// stdout (a FIFO on the 9p share would be the guest's own pipe).
#[test]
fn a_vm_sandbox_takes_apps_that_come_and_go() {
    let Some(rkt) = harness("a_vm_sandbox_takes_apps_that_come_and_go") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let (mut sandbox, uuid) = start_sandbox(&rkt, "--net=default");
    let ok = |out: &RunOutput, what: &str| assert_eq!(out.code, 0, "{what}: {}", out.describe());
    // `paths` lifts only the default masks, so an app can read its cgroup.
    let app = |args: &[&str]| {
        let mut all = vec!["--insecure-options=image,paths", "app"];
        all.extend_from_slice(args);
        rkt.rkt(&all)
    };
    ok(
        &rkt.rkt(&["status", "--wait-ready=60s", &uuid]),
        "status --wait-ready",
    );
    let pod_dir = rkt.dir.join("pods/run").join(&uuid);
    let pid: i32 = std::fs::read_to_string(pod_dir.join("pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let netns = Path::new("/run/netns").join(format!("rkt-{uuid}"));
    assert!(netns.exists(), "the sandbox's netns {netns:?}");

    // a: in its own cgroup of the guest with its memory limit, exits 7 on
    // SIGTERM; b runs until the pod stops.
    let a_script = "trap 'exit 7' TERM; echo a-cgroup $(cat /proc/self/cgroup) $(cat /sys/fs/cgroup/a/memory.max); echo a-up; sleep 1000 & wait $!; exit 1";
    let b_script = "echo b-up; exec sleep 1000";
    for (name, script, extra) in [("a", a_script, "--memory=64M"), ("b", b_script, "--cpu=500m")] {
        let out = app(&[
            "add",
            &uuid,
            &img,
            &format!("--name={name}"),
            extra,
            "--exec=/bin/sh",
            "--",
            "-c",
            script,
        ]);
        ok(&out, &format!("app add {name}"));
    }
    for name in ["a", "b"] {
        ok(&app(&["start", &uuid, &format!("--app={name}")]), "app start");
    }
    let mut seen: Vec<String> = Vec::new();
    {
        let mut lines = BufReader::new(sandbox.stdout.as_mut().expect("stdout")).lines();
        while !(seen.iter().any(|l| l == "a-up") && seen.iter().any(|l| l == "b-up")) {
            match lines.next() {
                Some(line) => seen.push(line.expect("sandbox output")),
                None => panic!("the sandbox's output ended: {seen:?}"),
            }
        }
    }
    assert!(
        // appc's M is 10^6 (64 MB is whole pages).
        seen.iter().any(|l| l == "a-cgroup 0::/a 64000000"),
        "a's cgroup and limit in the guest: {seen:?}"
    );
    let status = app(&["status", &uuid, "--app=a", "--format=json"]);
    ok(&status, "app status a");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(json["state"], "running", "{}", status.describe());

    let exec = app(&[
        "exec",
        &uuid,
        "--app=a",
        "--",
        "/bin/sh",
        "-c",
        "echo in-$AC_APP_NAME; grep CapBnd /proc/self/status; exit 3",
    ]);
    assert_eq!(exec.code, 3, "{}", exec.describe());
    assert!(exec.stdout.starts_with("in-a\nCapBnd:"), "{}", exec.describe());
    // Confined as the added app: rkt's 14 default capabilities.
    let bnd = exec.stdout.rsplit('\t').next().map(str::trim).expect("CapBnd");
    let bnd = u64::from_str_radix(bnd, 16).expect("hex");
    assert_eq!(bnd.count_ones(), 14, "{bnd:#x}");

    ok(&app(&["stop", &uuid, "--app=a"]), "app stop a");
    let status = app(&["status", &uuid, "--app=a"]);
    ok(&status, "app status a");
    assert!(status.stdout.contains("state=exited"), "{}", status.describe());
    assert!(status.stdout.contains("exit_code=7"), "{}", status.describe());
    let logs = rkt.rkt(&["logs", "--app=a", &uuid]);
    assert!(logs.stdout.contains("a-up\n"), "{}", logs.describe());

    let a_root = pod_dir.join("stage1/rootfs/opt/stage2/a");
    assert!(a_root.join("rootfs/bin").exists(), "a's rootfs before rm");
    ok(&app(&["rm", &uuid, "--app=a"]), "app rm a");
    assert!(!a_root.exists(), "a's rootfs is left after rm");
    let list = app(&["list", "--no-legend", &uuid]);
    let names: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["b"], "{}", list.describe());

    // b still runs.
    let status = app(&["status", &uuid, "--app=b"]);
    assert!(status.stdout.contains("state=running"), "{}", status.describe());
    let exec = app(&["exec", &uuid, "--app=b", "--", "/bin/true"]);
    assert_eq!(exec.code, 0, "{}", exec.describe());

    // The name is free again, and the guest sees the new rootfs and command, not
    // what its 9p cache kept of the removed one.
    let out = app(&[
        "add",
        &uuid,
        &img,
        "--name=a",
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo a-again; exec sleep 1000",
    ]);
    ok(&out, "app add a again");
    ok(&app(&["start", &uuid, "--app=a"]), "app start a again");
    {
        let mut lines = BufReader::new(sandbox.stdout.as_mut().expect("stdout")).lines();
        loop {
            match lines.next() {
                Some(line) if line.as_deref().ok() == Some("a-again") => break,
                Some(line) => seen.push(line.expect("sandbox output")),
                None => panic!("the sandbox's output ended before a-again: {seen:?}"),
            }
        }
    }
    let status = app(&["status", &uuid, "--app=a"]);
    assert!(status.stdout.contains("state=running"), "{}", status.describe());

    ok(&rkt.rkt(&["stop", &uuid]), "rkt stop");
    let ended = finish(sandbox);
    let status = rkt.rkt(&["status", "--wait=60s", &uuid]);
    assert!(
        status.stdout.contains("state=exited"),
        "{}: {}",
        status.describe(),
        ended.describe()
    );
    ok(&rkt.rkt(&["gc", "--grace-period=0s"]), "gc");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu (pid {pid}) is still there"
    );
    assert!(!netns.exists(), "the netns (and its taps) outlived gc");
    assert!(rkt.mounts_left().is_empty(), "mounts: {:?}", rkt.mounts_left());
    let pods = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(pods.stdout, "", "{}", pods.describe());
}

/// `rkt app add --mnt-volume` on kvm: the host directory is bound in QEMU's
/// mount namespace and reaches the added app through the 9p share, read-only
/// where asked.
#[test]
fn a_vm_sandbox_app_gets_a_host_path() {
    let Some(rkt) = harness("a_vm_sandbox_app_gets_a_host_path") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    let data = rkt.work().join("host-data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("hello"), "from-host\n").expect("hello");
    let (sandbox, uuid) = start_sandbox(&rkt, "--net=none");
    let ok = |out: &RunOutput, what: &str| assert_eq!(out.code, 0, "{what}: {}", out.describe());
    let app = |args: &[&str]| {
        let mut all = vec!["--insecure-options=image", "app"];
        all.extend_from_slice(args);
        rkt.rkt(&all)
    };
    ok(
        &rkt.rkt(&["status", "--wait-ready=60s", &uuid]),
        "status --wait-ready",
    );
    let add = app(&[
        "add",
        &uuid,
        &img,
        "--name=m",
        &format!("--mnt-volume=name=data,source={},target=/data", data.display()),
        &format!(
            "--mnt-volume=name=data-ro,source={},target=/ro,readOnly=true",
            data.display()
        ),
        "--exec=/bin/sleep",
        "--",
        "1000",
    ]);
    ok(&add, "app add");
    ok(&app(&["start", &uuid, "--app=m"]), "app start");
    let seen = app(&[
        "exec",
        &uuid,
        "--app=m",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/hello; echo from-vm > /data/written; touch /ro/nope",
    ]);
    let _ = rkt.rkt(&["stop", "--force", &uuid]);
    let ended = finish(sandbox);
    assert_eq!(
        seen.stdout,
        "from-host\n",
        "{}: {}",
        seen.describe(),
        ended.describe()
    );
    assert_ne!(
        seen.code,
        0,
        "the read-only mount took a write: {}",
        seen.describe()
    );
    assert!(seen.stderr.contains("Read-only"), "{}", seen.describe());
    assert_eq!(
        std::fs::read_to_string(data.join("written")).expect("the VM's write reached the host"),
        "from-vm\n"
    );
    ok(&rkt.rkt(&["gc", "--grace-period=0s"]), "gc");
    assert_eq!(
        std::fs::read_to_string(data.join("hello")).expect("hello after gc"),
        "from-host\n"
    );
}

/// Pods without a network start from a snapshot of a booted guest (the first
/// such pod makes it). Each restored guest draws its own random numbers and
/// runs on the host's clock; a snapshot that does not restore is dropped and
/// the pod boots instead.
#[test]
fn pods_restored_from_one_snapshot_differ_and_a_bad_snapshot_is_dropped() {
    let Some(rkt) = harness("pods_restored_from_one_snapshot_differ_and_a_bad_snapshot_is_dropped") else {
        return;
    };
    let img = common::busybox_image(&rkt);
    // A memory size no other test asks for: the snapshot is this test's own
    // (it spoils it below).
    let pod = || {
        rkt.run(&[
            "--net=none",
            "--debug",
            &img,
            "--memory=77M",
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "cat /proc/sys/kernel/random/uuid; date +%s",
        ])
    };
    let host_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    };
    let mut uuids = Vec::new();
    let mut state = String::new();
    for _ in 0..2 {
        let before = host_now();
        let out = pod();
        assert_eq!(out.code, 0, "{}", out.describe());
        assert!(
            out.stderr.contains("restored from a snapshot"),
            "{}",
            out.describe()
        );
        assert!(out.stderr.contains("rkt-init: resumed"), "{}", out.describe());
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", out.describe());
        uuids.push(lines[0].to_string());
        let guest_now: i64 = lines[1].parse().expect("date +%s");
        assert!(
            guest_now >= before - 1 && guest_now <= host_now() + 1,
            "the guest's clock is not the host's: {}",
            out.describe()
        );
        state = out
            .stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("state="))
            .expect("the snapshot's state file in the debug log")
            .to_string();
    }
    assert_ne!(
        uuids[0], uuids[1],
        "two restored guests drew the same random numbers"
    );
    // The guest's memory (its kernel's layout, its random state) is root's.
    let ram = state.replace(".state", ".ram");
    for file in [&state, &ram] {
        let mode = std::fs::metadata(file)
            .expect("a snapshot file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others: {mode:o}");
    }

    std::fs::write(&state, b"not a migration stream").expect("spoiling the snapshot");
    let out = pod();
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stderr.contains("did not restore"), "{}", out.describe());
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.describe());
    let out = pod();
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stderr.contains("snapshot made"), "{}", out.describe());
    assert!(
        out.stderr.contains("restored from a snapshot"),
        "{}",
        out.describe()
    );
}

const KVM_CACHE: &str = "/var/cache/rkt-rs/kvm";

/// `rkt run --stage1=kvm --debug IMAGE --memory=MEMORY --exec /bin/true`
/// caught while it saves a new snapshot: the child once QEMU's RAM temp file
/// exists under its pid. `memory` must be a size no other test asks for; a
/// snapshot of that shape left by an earlier test run is removed first (the
/// run restores it and names it), then the run is tried again.
fn run_caught_saving(rkt: &Rkt, memory: &str) -> Child {
    let img = common::busybox_image(rkt);
    let memory = format!("--memory={memory}");
    for _ in 0..2 {
        let mut child = rkt
            .command(&[
                "run",
                "--insecure-options=image",
                "--stage1=kvm",
                "--net=none",
                "--debug",
                &img,
                &memory,
                "--exec",
                "/bin/true",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rkt run");
        let rkt_pid = child.id();
        let temp_prefix = format!(".tmp-{rkt_pid}-");
        // The RAM file is made before QEMU is started, and a stop signal is
        // forwarded only from QEMU's start on (before, it ends rkt as any
        // signal ends a process that has started nothing): saving means both.
        let saving = || {
            let ram_made = std::fs::read_dir(KVM_CACHE).is_ok_and(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(&temp_prefix) && name.ends_with(".ram")
                })
            });
            ram_made && runs_qemu(rkt_pid)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && child.try_wait().expect("try_wait").is_none() {
            if saving() {
                return child;
            }
            std::thread::yield_now();
        }
        // A snapshot of this shape existed already: the run restored it.
        let out = finish(child);
        assert_eq!(out.code, 0, "{}", out.describe());
        let state = out
            .stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("state="))
            .unwrap_or_else(|| panic!("no snapshot made nor restored: {}", out.describe()))
            .to_string();
        let _ = std::fs::remove_file(&state);
    }
    panic!("the run never made a snapshot");
}

/// Whether a child of `pid` (any of its threads') has exec'd QEMU.
fn runs_qemu(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|child| {
                std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|c| c.starts_with("qemu-system"))
            })
    })
}

/// SIGTERM to `rkt run` while it makes the pod's snapshot: the VM being saved
/// is stopped, the pod is not started, and the interrupted save is not taken
/// for a broken QEMU (no failure record that would make pods boot for an hour).
#[test]
fn a_stop_signal_during_the_snapshot_stops_the_run() {
    let Some(rkt) = harness("a_stop_signal_during_the_snapshot_stops_the_run") else {
        return;
    };
    let started = std::time::SystemTime::now();
    let child = run_caught_saving(&rkt, "83M");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to rkt");
    let out = finish(child);
    assert_ne!(out.code, 0, "{}", out.describe());
    assert!(out.stderr.contains("stopped by a signal"), "{}", out.describe());
    assert!(
        !out.stderr.contains("restored from a snapshot"),
        "{}",
        out.describe()
    );
    let failure_recorded = std::fs::read_dir(KVM_CACHE)
        .expect("the cache")
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().ends_with(".failed")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= started)
        });
    assert!(!failure_recorded, "a stopped save was recorded as a failure");
}

/// `rkt run` SIGKILLed while it saves a snapshot: its QEMU dies with it (no
/// VM left behind), the snapshot's lock dies with it too, and the next pod of
/// that shape makes the snapshot and starts from it; gc clears the killed pod.
#[test]
fn a_run_killed_while_saving_leaves_no_vm_and_the_next_makes_the_snapshot() {
    let Some(rkt) = harness("a_run_killed_while_saving_leaves_no_vm_and_the_next_makes_the_snapshot") else {
        return;
    };
    let mut child = run_caught_saving(&rkt, "85M");
    let temp_prefix = format!(".tmp-{}-", child.id());
    child.kill().expect("SIGKILL to rkt");
    let _ = finish(child);
    // QEMU was started with the temp file on its command line.
    let qemu_alive = || {
        std::fs::read_dir("/proc").is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&temp_prefix))
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_alive() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!qemu_alive(), "the killed run's QEMU is still running");

    let img = common::busybox_image(&rkt);
    let out = rkt.run(&[
        "--net=none",
        "--debug",
        &img,
        "--memory=85M",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.code, 4, "{}", out.describe());
    assert!(out.stderr.contains("snapshot made"), "{}", out.describe());
    assert!(
        out.stderr.contains("restored from a snapshot"),
        "{}",
        out.describe()
    );
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(list.stdout.trim(), "", "{}", list.describe());
}

/// A pod on two networks, twice from one snapshot (a memory size of this
/// test's own): each restored guest's NICs keep QEMU's device order and take
/// that pod's MAC addresses (the ones on its QEMU command line), and each gets
/// its network's address.
#[test]
fn two_networks_restored_from_a_snapshot_keep_their_order_and_take_the_pods_macs() {
    let Some(rkt) = harness("two_networks_restored_from_a_snapshot_keep_their_order_and_take_the_pods_macs")
    else {
        return;
    };
    let img = common::busybox_image(&rkt);
    for _ in 0..2 {
        let out = rkt.run(&[
            "--net=default,default-restricted",
            "--debug",
            &img,
            "--memory=89M",
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "for i in eth0 eth1; do echo $i $(cat /sys/class/net/$i/address); done; ip -4 -o addr",
        ]);
        assert_eq!(out.code, 0, "{}", out.describe());
        assert!(
            out.stderr.contains("restored from a snapshot"),
            "{}",
            out.describe()
        );
        let qemu_line = out
            .stderr
            .lines()
            .rfind(|l| l.contains("starting qemu"))
            .expect("the QEMU command line in the debug log");
        let expected: Vec<&str> = qemu_line.split("mac=").skip(1).map(|rest| &rest[..17]).collect();
        assert_eq!(expected.len(), 2, "{qemu_line}");
        for (i, mac) in expected.iter().enumerate() {
            let line = format!("eth{i} {mac}");
            assert!(
                out.stdout.lines().any(|l| l == line),
                "expected {line:?}: {}",
                out.describe()
            );
        }
        let addr = |ifname: &str| common::ipv4_of(&out.stdout, ifname);
        assert!(addr("eth0").starts_with("172.16.28."), "{}", out.stdout);
        assert!(addr("eth1").starts_with("172.31."), "{}", out.stdout);
    }
}
