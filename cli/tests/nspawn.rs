//! The nspawn stage1 end to end, through the real binary, as root: multi-app
//! pods sharing a volume, exit-code precedence, the pod's pid and uts
//! namespaces, enter, stop, interactive mode under a pty, logs, and gc leaving
//! nothing behind. Skipped (with the reason) without root, busybox or nspawn.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt};
use rkt_engine::pod::PodsDir;

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    common::stage1_harness(test, "nspawn")
}

fn image(rkt: &Rkt, name: &str) -> String {
    rkt.image(&AciSpec::busybox(name))
        .expect("image")
        .display()
        .to_string()
}

fn run(rkt: &Rkt, args: &[&str]) -> RunOutput {
    rkt.run(args)
}

/// `rkt run` in the background, its UUID saved to a file.
fn spawn_run(rkt: &Rkt, args: &[&str]) -> (Child, std::path::PathBuf) {
    let uuid_file = rkt
        .work()
        .join(format!("uuid-{}", rkt_engine::fsutil::unique_suffix()));
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let mut all = vec![
        "run",
        "--insecure-options=image",
        "--stage1=nspawn",
        "--net=host",
        save.as_str(),
    ];
    all.extend_from_slice(args);
    let child = rkt
        .command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rkt run");
    (child, uuid_file)
}

/// Waits for the app's first line ("ready"), then for the pod's pid file.
fn wait_ready(rkt: &Rkt, child: &mut Child, uuid_file: &Path) -> String {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(line, b"ready", "the app's first line");
    let ready = rkt.rkt(&[
        "status",
        "--wait-ready=30s",
        &format!("--uuid-file={}", uuid_file.display()),
    ]);
    assert_eq!(ready.code, 0, "status --wait-ready: {}", ready.describe());
    std::fs::read_to_string(uuid_file)
        .expect("uuid file")
        .trim()
        .to_string()
}

fn pod_info(rkt: &Rkt, uuid: &str) -> rkt_engine::pod::PodInfo {
    let pods = PodsDir::existing(&rkt.dir);
    let uuid = pods.resolve(uuid).expect("uuid");
    pods.info(&uuid).expect("pod info")
}

#[test]
fn two_apps_share_an_empty_volume_and_see_each_others_files() {
    let Some(rkt) = harness("two_apps_share_an_empty_volume") else {
        return;
    };
    let (a, b) = (image(&rkt, "example.com/a"), image(&rkt, "example.com/b"));
    // a writes its file, then opens the FIFO for writing, which blocks until b
    // has written its file and opened the FIFO for reading. b's wait for the FIFO
    // to exist is a bounded loop without sleeps.
    let script_a =
        "echo from-a > /shared/a && mkfifo /shared/sync && echo go > /shared/sync && cat /shared/b";
    let script_b = "echo from-b > /shared/b; n=0; while [ ! -p /shared/sync ]; do n=$((n+1)); [ $n -lt 1000000 ] || exit 9; done; read x < /shared/sync; cat /shared/a";
    let out = run(
        &rkt,
        &[
            "--volume=shared,kind=empty",
            "--mount=volume=shared,target=/shared",
            &a,
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
    assert_eq!(out.code, 0, "{}", out.describe());
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["from-a", "from-b"], "{}", out.describe());
}

#[test]
fn the_first_failing_app_decides_the_exit_code() {
    let Some(rkt) = harness("the_first_failing_app_decides_the_exit_code") else {
        return;
    };
    let (a, b, c) = (
        image(&rkt, "example.com/a"),
        image(&rkt, "example.com/b"),
        image(&rkt, "example.com/c"),
    );
    let out = run(
        &rkt,
        &[
            &a,
            "--exec",
            "/bin/true",
            &b,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "exit 5",
            "---",
            &c,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(out.code, 5, "{}", out.describe());
    let uuid = rkt.rkt(&["list", "--no-legend", "--full"]);
    let uuid = uuid.stdout.split_whitespace().next().expect("a pod").to_string();
    let status = rkt.rkt(&["status", &uuid]);
    for want in ["app-a=0", "app-b=5", "app-c=7"] {
        assert!(status.stdout.contains(want), "{want}: {}", status.describe());
    }
}

#[test]
fn apps_see_only_the_pods_processes_and_its_hostname() {
    let Some(rkt) = harness("apps_see_only_the_pods_processes") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    let uuid_file = rkt.work().join("uuid");
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let out = run(
        &rkt,
        &[
            &save,
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "ls /proc | grep -c '^[0-9]'; tr '\\0' ' ' < /proc/1/cmdline; echo; hostname",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let pids: usize = lines[0].parse().expect("a count");
    // The init, the shell, ls/grep: nothing of the host's.
    assert!(pids <= 5, "the app saw {pids} processes: {}", out.describe());
    assert_eq!(lines[1].trim(), "/rkt/init stage1-init", "{}", out.describe());
    let uuid = std::fs::read_to_string(&uuid_file).expect("uuid");
    assert_eq!(lines[2], format!("rkt-{}", uuid.trim()));

    let named = run(&rkt, &["--hostname=web.example", &img, "--exec", "/bin/hostname"]);
    assert_eq!(named.stdout, "web.example\n", "{}", named.describe());
    let bad = run(&rkt, &["--hostname=no spaces", &img, "--exec", "/bin/true"]);
    common::one_line_254(&bad, "--hostname");
}

#[test]
fn enter_runs_in_the_app_and_stop_ends_the_pod() {
    let Some(rkt) = harness("enter_runs_in_the_app_and_stop_ends_the_pod") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    let host = rkt.work().join("vol");
    std::fs::create_dir_all(&host).expect("dir");
    let volume = format!("--volume=data,kind=host,source={}", host.display());
    let (mut child, uuid_file) = spawn_run(
        &rkt,
        &[
            &volume,
            "--mount=volume=data,target=/data",
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo app > /data/app-root-marker; echo ready; exec sleep 1000",
        ],
    );
    let uuid = wait_ready(&rkt, &mut child, &uuid_file);
    let info = pod_info(&rkt, &uuid);
    let stage1 = rkt_engine::runner::pod_stage1(&info.path).expect("stage1");
    let argv: Vec<String> = ["/bin/sh", "-c", "echo $AC_APP_NAME:$(hostname):$(cat /data/app-root-marker) > /data/entered; test -e /rkt/init && exit 3; exit 4"]
        .map(String::from)
        .to_vec();
    let code = stage1.enter(&info, "busybox", &argv).expect("enter");
    assert_eq!(code, 4, "enter ran in the stage1 root, not the app's");
    let entered = std::fs::read_to_string(host.join("entered")).expect("enter wrote");
    assert_eq!(entered, format!("busybox:rkt-{uuid}:app\n"));
    assert!(stage1.enter(&info, "nope", &argv).is_err());

    stage1.stop(&info, false).expect("stop");
    let out = child.wait_with_output().expect("rkt run");
    assert_eq!(out.status.code(), Some(143), "SIGTERM ends the app: {out:?}");
    let status = rkt.rkt(&["status", &uuid]);
    assert!(status.stdout.contains("state=exited"), "{}", status.describe());
}

/// The init is neither the host's rkt (which a pod's root could then rewrite,
/// CVE-2019-5736) nor a copy per pod (the binary's size written on every
/// start): one copy, shared, that a pod sees read-only.
#[test]
fn pods_share_one_read_only_copy_of_rkt_as_their_init() {
    use std::os::unix::fs::MetadataExt;
    let Some(rkt) = harness("pods_share_one_read_only_copy_of_rkt_as_their_init") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    let app = ["--exec", "/bin/sh", "--", "-c", "echo ready; exec sleep 1000"];
    let mut pods = Vec::new();
    for _ in 0..2 {
        let mut args = vec![img.as_str()];
        args.extend_from_slice(&app);
        let (mut child, uuid_file) = spawn_run(&rkt, &args);
        let uuid = wait_ready(&rkt, &mut child, &uuid_file);
        pods.push((child, pod_info(&rkt, &uuid)));
    }
    let inits: Vec<_> = pods
        .iter()
        .map(|(_, info)| rkt_engine::stage::process::read_pid_file(&info.path).expect("pid"))
        .collect();
    let exe = |pid: &nix::unistd::Pid| {
        let m = std::fs::metadata(format!("/proc/{pid}/exe")).expect("init's exe");
        (m.dev(), m.ino(), m.size())
    };
    let rkt_binary = std::fs::metadata(env!("CARGO_BIN_EXE_rkt")).expect("rkt");
    let (first, second) = (exe(&inits[0]), exe(&inits[1]));
    assert_eq!(first, second, "both pods run one copy");
    assert_ne!(
        (first.0, first.1),
        (rkt_binary.dev(), rkt_binary.ino()),
        "not the host's rkt"
    );
    assert_eq!(first.2, rkt_binary.size(), "a whole copy of it");
    for (_, info) in &pods {
        let in_pod_dir = info.path.join("stage1/rootfs/rkt/init");
        assert_eq!(
            std::fs::metadata(&in_pod_dir).expect("mount point").size(),
            0,
            "no copy in the pod"
        );
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", inits[0])).expect("mountinfo");
    let init_mount: Vec<&str> = mountinfo
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/rkt/init"))
        .expect("/rkt/init is a mount in the pod")
        .get(5)
        .expect("its options")
        .split(',')
        .collect();
    assert!(
        init_mount.contains(&"ro") && init_mount.contains(&"nosuid"),
        "{init_mount:?}"
    );
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/root/rkt/init", inits[0]));
    let errno = write.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        errno == Some(libc::ETXTBSY) || errno == Some(libc::EROFS),
        "the pod's /rkt/init cannot be written: {write:?}"
    );
    for (child, info) in pods {
        let stage1 = rkt_engine::runner::pod_stage1(&info.path).expect("stage1");
        stage1.stop(&info, true).expect("stop");
        let out = child.wait_with_output().expect("rkt run");
        assert_eq!(out.status.code(), Some(137), "{out:?}");
    }
}

#[test]
fn force_stop_kills_the_pod() {
    let Some(rkt) = harness("force_stop_kills_the_pod") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    // A shell that ignores SIGTERM: only SIGKILL ends it.
    let (mut child, uuid_file) = spawn_run(
        &rkt,
        &[
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "trap '' TERM; echo ready; sleep 1000 & wait; wait",
        ],
    );
    let uuid = wait_ready(&rkt, &mut child, &uuid_file);
    let info = pod_info(&rkt, &uuid);
    let stage1 = rkt_engine::runner::pod_stage1(&info.path).expect("stage1");
    stage1.stop(&info, true).expect("stop --force");
    let out = child.wait_with_output().expect("rkt run");
    assert_eq!(out.status.code(), Some(137), "{out:?}");
}

#[test]
fn interactive_apps_get_the_terminal() {
    let Some(rkt) = harness("interactive_apps_get_the_terminal") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = rkt
        .command(&[
            "run",
            "--insecure-options=image",
            "--stage1=nspawn",
            "--net=host",
            "--interactive",
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "read line; echo got:$line; tty -s && echo is-a-tty",
        ])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("rkt run");
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"hello\n").expect("type");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    // Until the last holder of the slave side is gone (EIO).
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains("is-a-tty") {
            break;
        }
    }
    let status = child.wait().expect("wait");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("got:hello"), "{text:?}");
    assert!(text.contains("is-a-tty"), "{text:?}");
    assert_eq!(status.code(), Some(0), "{text:?}");
}

#[test]
fn logs_keep_each_apps_output() {
    let Some(rkt) = harness("logs_keep_each_apps_output") else {
        return;
    };
    let (a, b) = (image(&rkt, "example.com/a"), image(&rkt, "example.com/b"));
    let out = run(
        &rkt,
        &[
            &a,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo a-out; echo a-err >&2",
            "---",
            &b,
            "--exec",
            "/bin/echo",
            "--",
            "b-out",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stdout.contains("a-out\n") && out.stdout.contains("b-out\n"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr, "a-err\n", "{}", out.describe());
    let uuid = rkt.rkt(&["list", "--no-legend", "--full"]);
    let uuid = uuid.stdout.split_whitespace().next().expect("a pod").to_string();
    let all = rkt.rkt(&["logs", &uuid]);
    assert_eq!(all.code, 0, "{}", all.describe());
    let mut lines: Vec<&str> = all.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["a-err", "a-out", "b-out"], "{}", all.describe());
    let only_b = rkt.rkt(&["logs", "--app=b", &uuid]);
    assert_eq!(only_b.stdout, "b-out\n", "{}", only_b.describe());
    common::one_line_254(&rkt.rkt(&["logs", "--app=zzz", &uuid]), "zzz");
}

#[test]
fn gc_leaves_no_mount_and_no_process_behind() {
    let Some(rkt) = harness("gc_leaves_no_mount_and_no_process_behind") else {
        return;
    };
    let img = image(&rkt, "example.com/busybox");
    let out = run(
        &rkt,
        &[
            "--volume=v,kind=empty",
            "--mount=volume=v,target=/v",
            &img,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "sleep 1000 & echo started",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    assert!(rkt.mounts_left().is_empty(), "mounts: {:?}", rkt.mounts_left());
    // No process anywhere has its root or cwd inside this test's directory.
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        for link in ["root", "cwd"] {
            if let Ok(target) = std::fs::read_link(entry.path().join(link))
                && target.starts_with(rkt.work())
            {
                left.push(entry.path());
            }
        }
    }
    assert!(left.is_empty(), "processes left in the pod: {left:?}");
    let pods = std::fs::read_dir(rkt.dir.join("pods/exited-garbage"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pods, 0);
}
