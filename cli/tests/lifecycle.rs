//! The pod lifecycle on the command line, through the real binary as root:
//! prepare / run-prepared, stop, rm, enter, cat-manifest, gc's prepared-pod
//! expiry and mark-only, `--pod-manifest`, rkt's JSON shape, and `list`/`status`
//! staying correct while other processes create and remove pods, and what a fly
//! pod leaves in its directory.
//!
//! Long-running pods are synchronised on what the app prints and on `rkt status
//! --wait[-ready]`, never on sleeps; every such pod is killed when its test ends.

mod common;
use common::{harness, one_line_254};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn busybox(rkt: &Rkt) -> String {
    let mut spec = AciSpec::busybox("example.com/busybox");
    spec.files
        .push(("only-in-image".into(), b"from the image\n".to_vec(), 0o644));
    s(&rkt.image(&spec).expect("image"))
}

fn prepare(rkt: &Rkt, args: &[&str]) -> RunOutput {
    let stage1 = format!("--stage1={}", rkt.stage1);
    let mut all = vec!["prepare", "--insecure-options=image", stage1.as_str()];
    all.extend_from_slice(args);
    rkt.rkt(&all)
}

/// A prepared pod's UUID (`prepare --quiet` prints exactly that).
fn prepared(rkt: &Rkt, args: &[&str]) -> String {
    let out = prepare(rkt, args);
    assert_eq!(out.code, 0, "{}", out.describe());
    let uuid = out.stdout.trim_end_matches('\n');
    assert!(uuid::Uuid::try_parse(uuid).is_ok(), "{}", out.describe());
    uuid.to_string()
}

fn pods_in(dir: &Path, state: &str) -> usize {
    std::fs::read_dir(dir.join("pods").join(state))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn status_line(rkt: &Rkt, uuid: &str) -> String {
    let out = rkt.rkt(&["status", uuid]);
    assert_eq!(out.code, 0, "{}", out.describe());
    out.stdout
}

/// A `rkt run` of a long-running app; SIGKILLed (which takes the app with it)
/// if the test ends before the pod does.
struct LongPod {
    child: Child,
    stdout: BufReader<ChildStdout>,
    uuid: String,
    uuid_file: PathBuf,
}

impl LongPod {
    /// Runs `script` with `sh -c`; it must print "ready" once it is set up.
    fn start(rkt: &Rkt, image: &str, name: &str, pod_flags: &[&str], script: &str) -> LongPod {
        let uuid_file = rkt.work().join(format!("{name}.uuid"));
        let save = format!("--uuid-file-save={}", s(&uuid_file));
        let stage1 = format!("--stage1={}", rkt.stage1);
        let mut args = vec!["run", "--insecure-options=image", stage1.as_str(), save.as_str()];
        args.extend_from_slice(pod_flags);
        args.extend_from_slice(&[image, "--exec", "/bin/sh", "--", "-c", script]);
        let mut child = rkt
            .command(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("rkt run");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let mut pod = LongPod {
            child,
            stdout,
            uuid: String::new(),
            uuid_file,
        };
        // Dropping `pod` on a failed assertion kills it.
        assert!(
            matches!(read, Ok(n) if n > 0) && line == "ready\n",
            "the app never said ready: {line:?} {read:?}"
        );
        pod.uuid = std::fs::read_to_string(&pod.uuid_file)
            .expect("uuid file")
            .trim()
            .to_string();
        let ready = rkt.rkt(&["status", "--wait-ready=30s", &pod.uuid]);
        assert!(ready.stdout.contains("state=running"), "{}", ready.describe());
        pod
    }

    fn uuid_file_arg(&self) -> String {
        format!("--uuid-file={}", s(&self.uuid_file))
    }

    /// `rkt run`'s exit code, once the pod has ended.
    fn wait(mut self) -> Option<i32> {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        self.child.wait().expect("rkt run").code()
    }
}

impl Drop for LongPod {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a fly pod of `/bin/true` leaves in its directory. The mount points
/// come with the rendered tree, so the overlay's upper dir stays empty; a pod
/// on the host's network carries no network record. Each inode counts: on
/// this CI machine's ext4 creating one is the largest part of a fly start.
#[test]
fn a_fly_pod_creates_only_what_it_needs() {
    let Some(rkt) = harness("a_fly_pod_creates_only_what_it_needs") else {
        return;
    };
    let image = busybox(&rkt);
    let uuid_file = rkt.work().join("uuid");
    let save = format!("--uuid-file-save={}", s(&uuid_file));
    let out = rkt.run(&["--net=host", &save, &image, "--exec", "/bin/true"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let uuid = std::fs::read_to_string(&uuid_file).expect("uuid");
    let pod = rkt.dir.join("pods/run").join(uuid.trim());
    let upper = pod.join("overlay/busybox/upper");
    let written: Vec<_> = std::fs::read_dir(&upper)
        .expect("upper dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        written.is_empty(),
        "the app wrote nothing, yet the upper dir holds {written:?}"
    );
    for absent in ["net-info.json", "pgid"] {
        assert!(!pod.join(absent).exists(), "{absent} in a host-network fly pod");
    }
    let inodes = walkdir_count(&pod);
    assert!(inodes <= 27, "{inodes} inodes in the pod directory");
    let status = status_line(&rkt, uuid.trim());
    assert!(
        status.contains("state=exited") && status.contains("app-busybox=0"),
        "{status}"
    );
}

/// Entries under `dir`, itself included, without following links.
fn walkdir_count(dir: &Path) -> usize {
    1 + std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walkdir_count(&e.path()),
            _ => 1,
        })
        .sum::<usize>()
}

#[test]
fn prepare_then_run_prepared_from_a_fresh_process() {
    let Some(rkt) = harness("prepare_then_run_prepared_from_a_fresh_process") else {
        return;
    };
    let image = busybox(&rkt);
    let uuid_file = rkt.work().join("prepared.uuid");
    let save = format!("--uuid-file-save={}", s(&uuid_file));
    let uuid = prepared(
        &rkt,
        &[
            "--quiet",
            &save,
            &image,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo prepared ran; exit 7",
        ],
    );
    assert_eq!(std::fs::read_to_string(&uuid_file).expect("uuid file"), uuid);
    let file_arg = format!("--uuid-file={}", s(&uuid_file));

    assert!(status_line(&rkt, &uuid).contains("state=prepared"));
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("prepared"), "{}", list.describe());
    let json = rkt.rkt(&["status", "--format=json", &uuid[..8]]);
    let pod: serde_json::Value = serde_json::from_str(&json.stdout).expect("status json");
    assert_eq!(pod["state"], "prepared");
    assert_eq!(pod["apps"][0]["state"], "created");

    let pretty = rkt.rkt(&["cat-manifest", &file_arg]);
    assert_eq!(pretty.code, 0, "{}", pretty.describe());
    assert!(
        pretty.stdout.contains("\n\t\"apps\""),
        "tab-indented: {}",
        pretty.stdout
    );
    let compact = rkt.rkt(&["cat-manifest", "--pretty-print=false", &uuid]);
    assert_eq!(compact.stdout.trim().lines().count(), 1, "{}", compact.describe());
    let manifest: serde_json::Value = serde_json::from_str(&pretty.stdout).expect("manifest");
    let same: serde_json::Value = serde_json::from_str(&compact.stdout).expect("manifest");
    assert_eq!(manifest, same);
    assert_eq!(manifest["apps"][0]["name"], "busybox");
    assert_eq!(manifest["apps"][0]["app"]["exec"][2], "echo prepared ran; exit 7");

    // A new process, with nothing but the pod directory to go on.
    let run = rkt.rkt(&["run-prepared", &file_arg]);
    assert_eq!(run.code, 7, "{}", run.describe());
    assert_eq!(run.stdout, "prepared ran\n");
    let status = status_line(&rkt, &uuid[..8]);
    assert!(
        status.contains("state=exited") && status.contains("app-busybox=7"),
        "{status}"
    );

    one_line_254(&rkt.rkt(&["run-prepared", &uuid]), "not prepared");

    let rm = rkt.rkt(&["rm", &file_arg]);
    assert_eq!(rm.code, 0, "{}", rm.describe());
    assert!(rm.stdout.contains(&uuid), "{}", rm.describe());
    assert_eq!(rkt.rkt(&["list", "--no-legend"]).stdout, "");
    assert!(rkt.mounts_left().is_empty(), "{:?}", rkt.mounts_left());
}

#[test]
fn unknown_and_ambiguous_uuids_are_one_line_errors() {
    let Some(rkt) = harness("unknown_and_ambiguous_uuids_are_one_line_errors") else {
        return;
    };
    for uuid in [
        "aaaaaaaa-0000-4000-8000-000000000001",
        "aaaaaaaa-0000-4000-8000-000000000002",
    ] {
        std::fs::create_dir_all(rkt.dir.join("pods/prepared").join(uuid)).expect("mkdir");
    }
    for command in ["status", "stop", "rm", "cat-manifest", "enter", "run-prepared"] {
        one_line_254(&rkt.rkt(&[command, "aaaaaaaa"]), "ambiguous");
        one_line_254(&rkt.rkt(&[command, "ffffffff"]), "ffffffff");
    }
    let missing = rkt.work().join("no-such-uuid-file");
    one_line_254(
        &rkt.rkt(&["stop", &format!("--uuid-file={}", s(&missing))]),
        "no-such-uuid-file",
    );
    assert_eq!(pods_in(&rkt.dir, "prepared"), 2, "nothing was removed");
}

#[test]
fn stop_enter_and_rm_a_running_pod() {
    let Some(rkt) = harness("stop_enter_and_rm_a_running_pod") else {
        return;
    };
    let image = busybox(&rkt);
    let done = rkt.run(&[&image]);
    assert_eq!(done.code, 0, "{}", done.describe());
    let list: serde_json::Value =
        serde_json::from_str(&rkt.rkt(&["list", "--format=json"]).stdout).expect("json");
    let exited = list[0]["name"].as_str().expect("uuid").to_string();

    let pod = LongPod::start(
        &rkt,
        &image,
        "long",
        &["--set-env=GREETING=hello"],
        "echo ready; exec sleep 1000",
    );
    let uuid = pod.uuid.clone();

    let cat = rkt.rkt(&["enter", &uuid, "cat", "/only-in-image"]);
    assert_eq!(
        (cat.code, cat.stdout.as_str()),
        (0, "from the image\n"),
        "{}",
        cat.describe()
    );
    let env = rkt.rkt(&[
        "enter",
        "--app=busybox",
        &uuid[..8],
        "/bin/sh",
        "-c",
        "echo $GREETING $AC_APP_NAME; exit 3",
    ]);
    assert_eq!(
        (env.code, env.stdout.as_str()),
        (3, "hello busybox\n"),
        "{}",
        env.describe()
    );
    // No command: a shell, reading ours.
    let mut shell = rkt
        .command(&["enter", &pod.uuid_file_arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rkt enter");
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo in the shell; exit 5\n")
        .expect("write");
    let shell = shell.wait_with_output().expect("rkt enter");
    assert_eq!(shell.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&shell.stdout), "in the shell\n");
    one_line_254(&rkt.rkt(&["enter", "--app=nope", &uuid, "true"]), "nope");

    // rm refuses the running pod, removes the exited one, and says which failed.
    let rm = rkt.rkt(&["rm", &uuid, &exited]);
    assert_eq!(rm.code, 254, "{}", rm.describe());
    assert!(rm.stdout.contains(&exited), "{}", rm.describe());
    assert!(
        rm.stderr.contains(&uuid) && rm.stderr.contains("running"),
        "{}",
        rm.describe()
    );
    assert!(
        rkt.rkt(&["status", &exited]).code == 254,
        "the exited pod is gone"
    );
    assert!(status_line(&rkt, &uuid).contains("state=running"));

    let stop = rkt.rkt(&["stop", &uuid]);
    assert_eq!(stop.code, 0, "{}", stop.describe());
    assert!(stop.stdout.contains(&uuid), "{}", stop.describe());
    let waited = rkt.rkt(&["status", "--wait=30s", &uuid]);
    assert!(
        waited.stdout.contains("state=exited") && waited.stdout.contains("app-busybox=143"),
        "{}",
        waited.describe()
    );
    assert_eq!(pod.wait(), Some(143), "rkt run reports the app's SIGTERM");

    let again = rkt.rkt(&["stop", &uuid]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert!(again.stdout.contains("already stopped"), "{}", again.describe());
    one_line_254(&rkt.rkt(&["enter", &uuid, "true"]), "not running");

    let rm = rkt.rkt(&["rm", &uuid]);
    assert_eq!(rm.code, 0, "{}", rm.describe());
    assert_eq!(rkt.rkt(&["list", "--no-legend"]).stdout, "");
    assert!(rkt.mounts_left().is_empty(), "{:?}", rkt.mounts_left());
}

#[test]
fn stop_force_kills_a_pod_that_ignores_sigterm() {
    let Some(rkt) = harness("stop_force_kills_a_pod_that_ignores_sigterm") else {
        return;
    };
    let image = busybox(&rkt);
    let pod = LongPod::start(
        &rkt,
        &image,
        "stubborn",
        &[],
        "trap '' TERM; echo ready; exec sleep 1000",
    );
    let stop = rkt.rkt(&["stop", "--force", &pod.uuid_file_arg()]);
    assert_eq!(stop.code, 0, "{}", stop.describe());
    let uuid = pod.uuid.clone();
    assert_eq!(pod.wait(), Some(137), "SIGKILL ended it");
    let status = status_line(&rkt, &uuid);
    assert!(
        status.contains("state=exited") && status.contains("app-busybox=137"),
        "{status}"
    );
}

#[test]
fn gc_expires_prepared_pods_and_marks_only_when_asked() {
    let Some(rkt) = harness("gc_expires_prepared_pods_and_marks_only_when_asked") else {
        return;
    };
    let image = busybox(&rkt);
    let uuid = prepared(&rkt, &["--quiet", &image]);

    let young = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(young.code, 0, "{}", young.describe());
    assert!(
        status_line(&rkt, &uuid).contains("state=prepared"),
        "24h default expiry keeps it"
    );

    let mark = rkt.rkt(&["gc", "--expire-prepared=0s", "--mark-only"]);
    assert_eq!(mark.code, 0, "{}", mark.describe());
    assert!(
        mark.stdout.contains(&format!("Moving pod {uuid} to garbage")),
        "{}",
        mark.describe()
    );
    assert_eq!(
        (pods_in(&rkt.dir, "prepared"), pods_in(&rkt.dir, "garbage")),
        (0, 1)
    );
    assert!(status_line(&rkt, &uuid).contains("state=garbage"));
    one_line_254(&rkt.rkt(&["run-prepared", &uuid]), "not prepared");

    let sweep = rkt.rkt(&["gc"]);
    assert_eq!(sweep.code, 0, "{}", sweep.describe());
    assert!(
        sweep.stdout.contains(&format!("Garbage collecting pod {uuid}")),
        "{}",
        sweep.describe()
    );
    assert_eq!(pods_in(&rkt.dir, "garbage"), 0);

    // A prepare whose process died: in prepare/, nobody holding its lock.
    let aborted = "0b0a5c55-0c6f-4e0e-9d86-6f1d7d4c1a22";
    std::fs::create_dir_all(rkt.dir.join("pods/prepare").join(aborted)).expect("mkdir");
    assert!(status_line(&rkt, aborted).contains("state=aborted prepare"));
    let mark = rkt.rkt(&["gc", "--mark-only"]);
    assert!(mark.stdout.contains(aborted), "{}", mark.describe());
    assert_eq!(
        (pods_in(&rkt.dir, "prepare"), pods_in(&rkt.dir, "garbage")),
        (0, 1)
    );
    let sweep = rkt.rkt(&["gc"]);
    assert_eq!(sweep.code, 0, "{}", sweep.describe());
    assert_eq!(pods_in(&rkt.dir, "garbage"), 0);
}

#[test]
fn pod_manifest_runs_and_refuses_conflicting_flags() {
    let Some(rkt) = harness("pod_manifest_runs_and_refuses_conflicting_flags") else {
        return;
    };
    let image = busybox(&rkt);
    let template = prepared(&rkt, &[&image, "--exec", "/bin/sh", "--", "-c", "exit 9"]);
    let manifest = rkt.work().join("pod-manifest.json");
    let cat = rkt.rkt(&["cat-manifest", &template]);
    std::fs::write(&manifest, &cat.stdout).expect("write manifest");
    let flag = format!("--pod-manifest={}", s(&manifest));

    let run = rkt.run(&[&flag, "--no-overlay", "--net=host"]);
    assert_eq!(run.code, 9, "{}", run.describe());
    let uuid = prepared(&rkt, &["--quiet", &flag]);
    let run = rkt.rkt(&["run-prepared", &uuid]);
    assert_eq!(run.code, 9, "{}", run.describe());

    let before = rkt.rkt(&["list", "--no-legend"]).stdout.lines().count();
    one_line_254(&rkt.run(&[&flag, "--set-env=A=1"]), "--set-env");
    one_line_254(&rkt.run(&[&flag, &image]), "IMAGE");
    one_line_254(&prepare(&rkt, &[&flag, "--volume=data,kind=empty"]), "--volume");
    one_line_254(&prepare(&rkt, &[&flag, "--pull-policy=never"]), "--pull-policy");
    one_line_254(&prepare(&rkt, &[&flag, "--port=http:80"]), "--port");
    let after = rkt.rkt(&["list", "--no-legend"]).stdout.lines().count();
    assert_eq!(before, after, "a refused command created no pod");
}

#[test]
fn json_output_has_rkts_shape() {
    let Some(rkt) = harness("json_output_has_rkts_shape") else {
        return;
    };
    let image = busybox(&rkt);
    assert_eq!(rkt.run(&[&image]).code, 0);
    let list = rkt.rkt(&["list", "--format=json"]);
    let pods: serde_json::Value = serde_json::from_str(&list.stdout).expect("list json");
    let pod = &pods[0];
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    let pod_fields = [
        "app_names",
        "apps",
        "created_at",
        "name",
        "networks",
        "started_at",
        "state",
    ];
    assert!(
        keys(pod).iter().all(|k| pod_fields.contains(&k.as_str())),
        "{pod}"
    );
    for required in ["name", "state", "app_names", "apps", "created_at", "started_at"] {
        assert!(pod.get(required).is_some(), "{required} missing: {pod}");
    }
    let app = &pod["apps"][0];
    assert_eq!(
        keys(app),
        [
            "created_at",
            "exit_code",
            "finished_at",
            "image_id",
            "name",
            "started_at",
            "state"
        ]
    );
    assert_eq!(
        (app["state"].as_str(), app["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
    assert_eq!(pod["app_names"], serde_json::json!(["busybox"]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let now = i64::try_from(now).expect("now");
    let created = pod["created_at"].as_i64().expect("seconds");
    assert!(
        (now - created).abs() < 3600,
        "pod times are Unix seconds: {created}"
    );
    let app_created = app["created_at"].as_i64().expect("nanoseconds");
    assert_eq!(app_created / 1_000_000_000, created, "app times are nanoseconds");

    let uuid = pod["name"].as_str().expect("name");
    let status = rkt.rkt(&["status", "--format=json", uuid]);
    let one: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(&one, pod);
    let pretty = rkt.rkt(&["list", "--format=json-pretty"]);
    assert!(
        pretty.stdout.starts_with("[\n\t{"),
        "tab-indented: {}",
        pretty.stdout
    );
    let same: serde_json::Value = serde_json::from_str(&pretty.stdout).expect("pretty json");
    assert_eq!(same, pods);
}

#[test]
fn list_and_status_never_fail_while_pods_come_and_go() {
    let Some(rkt) = harness("list_and_status_never_fail_while_pods_come_and_go") else {
        return;
    };
    let image = busybox(&rkt);
    assert_eq!(rkt.run(&[&image]).code, 0);
    let stable: serde_json::Value =
        serde_json::from_str(&rkt.rkt(&["list", "--format=json"]).stdout).expect("json");
    let stable = stable[0]["name"].as_str().expect("uuid").to_string();

    const ROUNDS: usize = 6;
    /// Bounds the reader even if the churn thread dies early.
    const MAX_READS: usize = 400;
    let churning = AtomicBool::new(true);
    let (reads, failures) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            let mut failures = Vec::new();
            while churning.load(Ordering::SeqCst) && reads < MAX_READS {
                let list = rkt.rkt(&["list", "--format=json"]);
                if list.code != 0 || serde_json::from_str::<serde_json::Value>(&list.stdout).is_err() {
                    failures.push(format!("list: {}", list.describe()));
                }
                let table = rkt.rkt(&["list", "--full"]);
                if table.code != 0 {
                    failures.push(format!("list --full: {}", table.describe()));
                }
                let status = rkt.rkt(&["status", "--format=json", &stable]);
                if status.code != 0 || !status.stdout.contains("\"exited\"") {
                    failures.push(format!("status: {}", status.describe()));
                }
                reads += 1;
            }
            (reads, failures)
        });
        let churn = || {
            for round in 0..ROUNDS {
                let file = rkt.work().join(format!("churn-{round}.uuid"));
                let save = format!("--uuid-file-save={}", s(&file));
                let from_file = format!("--uuid-file={}", s(&file));
                let made = if round % 2 == 0 {
                    rkt.run(&[&save, &image])
                } else {
                    prepare(&rkt, &[&save, &image])
                };
                assert_eq!(made.code, 0, "{}", made.describe());
                let rm = rkt.rkt(&["rm", &from_file]);
                assert_eq!(rm.code, 0, "{}", rm.describe());
            }
        };
        let churned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(churn));
        churning.store(false, Ordering::SeqCst);
        let result = reader.join().expect("reader");
        if let Err(panic) = churned {
            std::panic::resume_unwind(panic);
        }
        result
    });
    assert!(reads > 0, "the reader ran while pods came and went");
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {failures:#?}",
        failures.len()
    );
    let left = rkt.rkt(&["list", "--no-legend"]).stdout;
    assert_eq!(left.lines().count(), 1, "only the stable pod is left: {left}");
}
