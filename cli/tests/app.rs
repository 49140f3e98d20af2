//! Mutable pods end to end, as root, through the real binary on the nspawn
//! stage1: sandbox -> add two apps -> start -> exec in one -> stop one -> its
//! status shows the exit code -> rm it -> the other still runs -> stop the
//! pod -> gc leaves nothing. Synchronised through FIFOs in a host volume and
//! `rkt status --wait-ready`, never sleeps.

#[allow(dead_code)] // each test binary uses its own subset
mod common;
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use rkt_conformance::Rkt;

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    common::stage1_harness(test, "nspawn")
}

/// A running `rkt app sandbox`; dropping it force-stops the pod and reaps
/// rkt, so a failed assertion leaves nothing running.
struct Sandbox<'a> {
    rkt: &'a Rkt,
    child: Option<Child>,
    uuid: String,
}

impl<'a> Sandbox<'a> {
    fn start(rkt: &'a Rkt, args: &[&str]) -> Self {
        let mut all = vec!["app", "sandbox", "--insecure-options=image", "--stage1=nspawn"];
        all.extend_from_slice(args);
        let mut child = rkt
            .command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rkt app sandbox");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the UUID");
        let mut sandbox = Sandbox {
            rkt,
            child: Some(child),
            uuid: line.trim().to_string(),
        };
        if sandbox.uuid.is_empty() {
            let err = sandbox.finish();
            panic!("rkt app sandbox printed no UUID: {err}");
        }
        let ready = rkt.rkt(&["status", "--wait-ready=60s", &sandbox.uuid]);
        assert_eq!(ready.code, 0, "status --wait-ready: {}", ready.describe());
        sandbox
    }

    /// Waits for `rkt app sandbox` to end; its exit code and stderr.
    fn finish(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let status = child.wait().expect("wait for rkt app sandbox");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        format!("{status}: {err}")
    }

    fn app(&self, args: &[&str]) -> rkt_conformance::harness::RunOutput {
        let mut all = vec!["--insecure-options=image", "app"];
        all.extend_from_slice(args);
        self.rkt.rkt(&all)
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.rkt.rkt(&["stop", "--force", &self.uuid]);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    path
}

/// Blocks until the app writes its line into the FIFO.
fn read_fifo(path: &Path) -> String {
    let mut text = String::new();
    std::fs::File::open(path)
        .expect("open fifo")
        .read_to_string(&mut text)
        .expect("read fifo");
    text.trim().to_string()
}

fn ok(out: &rkt_conformance::harness::RunOutput, what: &str) {
    assert_eq!(out.code, 0, "{what}: {}", out.describe());
}

#[test]
fn sandbox_apps_come_and_go_and_gc_leaves_nothing() {
    let Some(rkt) = harness("sandbox_apps_come_and_go_and_gc_leaves_nothing") else {
        return;
    };
    let image = common::busybox_image(&rkt);
    let sync = rkt.work().join("sync");
    std::fs::create_dir(&sync).expect("sync dir");
    let a_up = fifo(&sync, "a-up");
    let b_up = fifo(&sync, "b-up");
    let volume = format!("--volume=sync,kind=host,source={}", sync.display());
    let mut pod = Sandbox::start(&rkt, &["--net=host", &volume]);
    let uuid = pod.uuid.clone();

    // a: stops with 7 on SIGTERM; b runs until the pod stops.
    let a_script = "echo a-says-hi; grep CapBnd /proc/self/status; trap 'exit 7' TERM; sleep 1000 & echo up > /sync/a-up; wait $!; exit 1";
    let b_script = "echo b-line $(id -u):$(id -g); echo up > /sync/b-up; exec sleep 1000";
    for (name, script, user) in [("a", a_script, "0"), ("b", b_script, "1234")] {
        let out = pod.app(&[
            "add",
            &uuid,
            &image,
            &format!("--user={user}"),
            &format!("--group={user}"),
            &format!("--name={name}"),
            "--mount=volume=sync,target=/sync",
            "--set-env=GREETING=hello",
            "--cpu-shares=512",
            "--exec=/bin/sh",
            "--",
            "-c",
            script,
        ]);
        ok(&out, &format!("app add {name}"));
    }
    let list = pod.app(&["list", "--no-legend", &uuid]);
    ok(&list, "app list");
    let states: Vec<(String, String)> = list
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect();
    assert_eq!(
        states,
        [("a".into(), "created".into()), ("b".into(), "created".into())],
        "{}",
        list.describe()
    );
    // An app name is taken once.
    common::one_line_254(
        &pod.app(&["add", &uuid, &image, "--name=a", "--exec=/bin/true"]),
        "already has an app named a",
    );

    for name in ["a", "b"] {
        ok(&pod.app(&["start", &uuid, &format!("--app={name}")]), "app start");
    }
    assert_eq!(read_fifo(&a_up), "up");
    assert_eq!(read_fifo(&b_up), "up");
    let status = pod.app(&["status", &uuid, "--app=a", "--format=json"]);
    ok(&status, "app status");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(json["state"], "running", "{}", status.describe());
    assert!(json["started_at"].as_i64().is_some(), "{json}");
    // rkt list shows the apps' own states too.
    let listed = rkt.rkt(&["list", "--format=json"]);
    ok(&listed, "rkt list");
    let pods: serde_json::Value = serde_json::from_str(&listed.stdout).expect("list json");
    let states: Vec<&str> = pods[0]["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|a| a["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["running", "running"], "{}", listed.describe());

    // exec: in the app's root with its environment; the command's exit code.
    let exec = pod.app(&[
        "exec",
        &uuid,
        "--app=a",
        "--",
        "/bin/sh",
        "-c",
        "echo $AC_APP_NAME $GREETING; test -e /sync/a-up && exit 3",
    ]);
    assert_eq!(exec.code, 3, "{}", exec.describe());
    assert_eq!(exec.stdout.trim(), "a hello", "{}", exec.describe());
    let timed_out = pod.app(&[
        "exec",
        &uuid,
        "--app=a",
        "--timeout=1s",
        "--",
        "/bin/sleep",
        "100",
    ]);
    assert_eq!(timed_out.code, 254, "{}", timed_out.describe());
    assert!(
        timed_out.stderr.contains("did not finish"),
        "{}",
        timed_out.describe()
    );

    ok(&pod.app(&["stop", &uuid, "--app=a"]), "app stop a");
    // Logs: CRI records in the pod, the app's own lines from `rkt logs`. The
    // stop was answered after the init relayed what a wrote before it exited.
    let pod_dir = rkt.dir.join("pods/run").join(&uuid);
    let raw = std::fs::read_to_string(pod_dir.join("stage1/rootfs/rkt/logs/a")).expect("a's log");
    let record: Vec<&str> = raw.lines().next().expect("a record").splitn(4, ' ').collect();
    assert_eq!(record[1..], ["stdout", "F", "a-says-hi"], "{raw:?}");
    assert!(
        record[0].len() == 30 && record[0].ends_with('Z') && record[0].as_bytes()[10] == b'T',
        "RFC 3339 with nanoseconds: {raw:?}"
    );
    let logs = rkt.rkt(&["logs", "--app=a", &uuid]);
    assert!(
        logs.stdout.starts_with("a-says-hi\nCapBnd:"),
        "{}",
        logs.describe()
    );
    // Confined as in rkt run: rkt's 14 default capabilities, its own cgroup.
    let bnd = logs
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.rsplit('\t').next())
        .expect("CapBnd");
    let bnd = u64::from_str_radix(bnd, 16).expect("hex");
    assert_eq!(bnd.count_ones(), 14, "{bnd:#x}");
    let record = std::fs::read_to_string(pod_dir.join("cgroups")).expect("cgroup record");
    let cpu = record
        .lines()
        .find(|d| d.starts_with("/sys/fs/cgroup/cpu/") && d.ends_with("/a"))
        .unwrap_or_else(|| panic!("no cpu cgroup for a in {record}"));
    let shares = std::fs::read_to_string(Path::new(cpu).join("cpu.shares")).expect("cpu.shares");
    assert_eq!(shares.trim(), "512");

    let status = pod.app(&["status", &uuid, "--app=a"]);
    ok(&status, "app status a");
    assert!(status.stdout.contains("state=exited"), "{}", status.describe());
    assert!(status.stdout.contains("exit_code=7"), "{}", status.describe());

    let a_root = pod_dir.join("stage1/rootfs/opt/stage2/a");
    assert!(a_root.join("rootfs/bin").exists(), "a's rootfs before rm");
    ok(&pod.app(&["rm", &uuid, "--app=a"]), "app rm a");
    assert!(!a_root.exists(), "a's rootfs is left after rm");
    let list = pod.app(&["list", "--no-legend", &uuid]);
    let names: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["b"], "{}", list.describe());
    common::one_line_254(&pod.app(&["status", &uuid, "--app=a"]), "no app");

    // b still runs.
    let status = pod.app(&["status", &uuid, "--app=b"]);
    assert!(status.stdout.contains("state=running"), "{}", status.describe());
    let exec = pod.app(&["exec", &uuid, "--app=b", "--", "/bin/true"]);
    assert_eq!(exec.code, 0, "{}", exec.describe());

    // `rkt logs --follow` prints what b wrote and ends with the pod.
    let mut follow = rkt
        .command(&["logs", "--follow", "--app=b", &uuid])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rkt logs --follow");
    let mut first = String::new();
    BufReader::new(follow.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("a followed line");
    assert_eq!(first, "b-line 1234:1234\n", "b runs as --user and --group");

    ok(&rkt.rkt(&["stop", &uuid]), "rkt stop");
    let ended = pod.finish();
    let followed = follow.wait().expect("rkt logs --follow ends with the pod");
    assert!(followed.success(), "{followed}");
    let waited = rkt.rkt(&["status", "--wait=60s", &uuid]);
    ok(&waited, "status --wait");
    assert!(
        waited.stdout.contains("state=exited"),
        "{}: {ended}",
        waited.describe()
    );
    ok(&rkt.rkt(&["gc", "--grace-period=0s"]), "gc");
    let left = support::leftovers(&rkt);
    assert!(left.is_empty(), "after gc: {left:?}");
}

#[test]
fn app_commands_refuse_what_they_cannot_do() {
    let Some(rkt) = harness("app_commands_refuse_what_they_cannot_do") else {
        return;
    };
    let image = common::busybox_image(&rkt);
    // A pod that is not a sandbox takes no app requests.
    let out = rkt.run(&[&image, "--exec=/bin/true"]);
    ok(&out, "rkt run");
    let list = rkt.rkt(&["list", "--no-legend", "--full"]);
    let uuid = list.stdout.split_whitespace().next().expect("a pod").to_string();
    common::one_line_254(&rkt.rkt(&["app", "start", &uuid, "--app=busybox"]), "not running");

    // A stage1 without mutable pods is refused before any pod exists.
    common::one_line_254(
        &rkt.rkt(&["app", "sandbox", "--stage1=fly"]),
        "does not support mutable pods",
    );
    assert_eq!(support::pod_dirs(&rkt.dir).len(), 1, "only the run's pod");

    let pod = Sandbox::start(&rkt, &["--net=host"]);
    let uuid = pod.uuid.clone();
    common::one_line_254(&pod.app(&["start", &uuid, "--app=zzz"]), "no app \"zzz\"");
    common::one_line_254(&pod.app(&["add", &uuid, "/nonexistent.aci"]), "nonexistent");
    common::one_line_254(
        &pod.app(&[
            "add",
            &uuid,
            &image,
            "--exec=/bin/true",
            "--mount=volume=v,target=/v",
        ]),
        "volume",
    );
    let list = pod.app(&["list", "--no-legend", &uuid]);
    ok(&list, "app list");
    assert_eq!(
        list.stdout,
        "",
        "a refused add leaves no app: {}",
        list.describe()
    );
    // A failed exec in the image's root is the app's failure, not a stuck pod.
    ok(
        &pod.app(&["add", &uuid, &image, "--name=bad", "--exec=/nonexistent"]),
        "add bad",
    );
    common::one_line_254(&pod.app(&["start", &uuid, "--app=bad"]), "nonexistent");
    ok(&pod.app(&["rm", &uuid, "--app=bad"]), "rm bad");
    // A working directory the image lacks is named as such, not as a missing program.
    ok(
        &pod.app(&[
            "add",
            &uuid,
            &image,
            "--name=nowhere",
            "--working-dir=/no/such/dir",
            "--exec=/bin/true",
        ]),
        "add nowhere",
    );
    let start = pod.app(&["start", &uuid, "--app=nowhere"]);
    common::one_line_254(&start, "working directory \"/no/such/dir\" does not exist");
    assert!(!start.stderr.contains("exec"), "{}", start.describe());
}

/// `rkt app add --mnt-volume`: a host directory and a host file reach an app
/// added to a running pod, read-write or read-only; a way out of the root,
/// a missing source and a taken name are refused; what the host holds under
/// the volume outlives app rm and gc.
#[test]
fn added_apps_get_host_paths_with_mnt_volume() {
    let Some(rkt) = harness("added_apps_get_host_paths_with_mnt_volume") else {
        return;
    };
    let image = common::busybox_image(&rkt);
    let data = rkt.work().join("host-data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("hello"), "from-host\n").expect("hello");
    let hosts = rkt.work().join("host-hosts");
    std::fs::write(&hosts, "10.1.2.3 db\n").expect("hosts file");
    let pod = Sandbox::start(&rkt, &["--net=host"]);
    let uuid = pod.uuid.clone();
    let data_flag = |name: &str, target: &str, extra: &str| {
        format!(
            "--mnt-volume=name={name},kind=host,source={},target={target}{extra}",
            data.display()
        )
    };
    let add = |name: &str, flags: &[String]| {
        let mut args = vec![
            "add".to_string(),
            uuid.clone(),
            image.clone(),
            format!("--name={name}"),
        ];
        args.extend_from_slice(flags);
        args.extend(["--exec=/bin/sleep", "--", "1000"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pod.app(&args)
    };
    ok(
        &add(
            "rw",
            &[
                data_flag("data", "/data", ""),
                format!(
                    "--mnt-volume=name=hosts,source={},target=/etc/hosts",
                    hosts.display()
                ),
            ],
        ),
        "app add rw",
    );
    ok(
        &add("ro", &[data_flag("data-ro", "/srv/ro", ",readOnly=true")]),
        "app add ro",
    );
    common::one_line_254(&add("bad", &[data_flag("escape", "/a/../../etc", "")]), "..");
    common::one_line_254(
        &add("bad", &[data_flag("data", "/again", "")]),
        "already has a volume named",
    );
    common::one_line_254(
        &add(
            "bad",
            &["--mnt-volume=name=gone,source=/no/such/source,target=/x".to_string()],
        ),
        "/no/such/source",
    );
    // The manifest records each volume and the app's mount of it.
    let manifest = rkt.rkt(&["cat-manifest", &uuid]);
    ok(&manifest, "cat-manifest");
    let json: serde_json::Value = serde_json::from_str(&manifest.stdout).expect("manifest json");
    let volumes: Vec<&str> = json["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(volumes, ["data", "hosts", "data-ro"], "{}", manifest.stdout);
    let rw = json["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "rw")
        .expect("app rw");
    assert_eq!(rw["mounts"][0]["path"], "/data", "{rw}");

    for name in ["rw", "ro"] {
        ok(&pod.app(&["start", &uuid, &format!("--app={name}")]), "app start");
    }
    let exec = |app: &str, script: &str| {
        pod.app(&[
            "exec",
            &uuid,
            &format!("--app={app}"),
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    };
    let seen = exec(
        "rw",
        "cat /data/hello /etc/hosts && echo from-app > /data/written",
    );
    ok(&seen, "exec in rw");
    assert_eq!(seen.stdout, "from-host\n10.1.2.3 db\n", "{}", seen.describe());
    assert_eq!(
        std::fs::read_to_string(data.join("written")).expect("the app's write reached the host"),
        "from-app\n"
    );
    let refused = exec("ro", "cat /srv/ro/hello && touch /srv/ro/nope");
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert_eq!(refused.stdout, "from-host\n", "{}", refused.describe());
    assert!(
        refused.stderr.contains("Read-only file system"),
        "{}",
        refused.describe()
    );
    assert!(!data.join("nope").exists());

    for name in ["rw", "ro"] {
        ok(&pod.app(&["rm", &uuid, &format!("--app={name}")]), "app rm");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("hello")).expect("hello after rm"),
        "from-host\n"
    );
    ok(&rkt.rkt(&["stop", &uuid]), "rkt stop");
    ok(&rkt.rkt(&["status", "--wait=60s", &uuid]), "status --wait");
    ok(&rkt.rkt(&["gc", "--grace-period=0s"]), "gc");
    assert_eq!(
        std::fs::read_to_string(data.join("hello")).expect("hello after gc"),
        "from-host\n"
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).expect("hosts after gc"),
        "10.1.2.3 db\n"
    );
    assert!(data.join("written").exists(), "the app's file after gc");
    let left = support::leftovers(&rkt);
    assert!(left.is_empty(), "after gc: {left:?}");
}
