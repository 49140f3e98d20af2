//! The `rkt` command line as a user meets it: the issue's walk-through, the
//! registry, and bad input (one-line error, exit 254, nothing changed).

mod common;
use common::{bin, harness, one_line_254};
use std::path::{Path, PathBuf};

use rkt_conformance::AciSpec;
use rkt_engine::stage::{Stage1, registry};

use rkt_backend_cni as _;
use rkt_backend_finders as _;
use rkt_backend_fly as _;
use rkt_backend_selinux as _;

/// Everything below `dir` (names only), to prove a failed command changed nothing.
fn snapshot(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                out.push(e.path());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    // A run takes the store's prepare lock before it resolves its images; the empty
    // lock file that leaves is no state.
    out.retain(|p| !p.ends_with("cas/prepare.lock"));
    out.sort();
    out
}

#[test]
fn registry_lists_fly_and_refuses_unknown_names() {
    let names = registry::names::<dyn Stage1>().expect("registry");
    assert!(names.contains(&"fly"), "{names:?}");
    let err = registry::create::<dyn Stage1>("nope")
        .err()
        .expect("unknown name");
    assert!(
        err.to_string().contains("fly"),
        "the error lists the registered ones: {err}"
    );
}

#[test]
fn version_lists_backends() {
    let out = std::process::Command::new(bin())
        .arg("version")
        .output()
        .expect("rkt version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("fly") && text.contains("available"), "{text}");
    assert!(
        text.contains("image sources: discovery, docker, file, http, oci"),
        "{text}"
    );
}

#[test]
fn the_issue_walkthrough_works() {
    let Some(rkt) = harness("the_issue_walkthrough_works") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let image = image.display().to_string();

    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());
    let id = fetch.stdout.trim();
    assert!(id.starts_with("sha512-") && id.len() == 7 + 128, "{id:?}");
    let again = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    assert_eq!(again.stdout.trim(), id, "fetching twice yields the same ID");

    let run = rkt.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=fly",
        &image,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "echo hi; exit 7",
    ]);
    assert_eq!(run.code, 7, "{}", run.describe());
    assert_eq!(run.stdout, "hi\n");

    let list = rkt.rkt(&["list"]);
    assert_eq!(list.code, 0, "{}", list.describe());
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "legend and one pod: {}", list.stdout);
    assert!(
        lines[0].starts_with("UUID") && lines[0].contains("STATE"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("busybox") && lines[1].contains("exited"),
        "{}",
        lines[1]
    );

    let json = rkt.rkt(&["list", "--format=json"]);
    let pods: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    let uuid = pods[0]["name"].as_str().expect("uuid").to_string();
    assert_eq!(pods[0]["apps"][0]["image_id"], id);

    let short = &uuid[..8];
    let status = rkt.rkt(&["status", short]);
    assert!(status.stdout.contains("state=exited"), "{}", status.describe());
    assert!(status.stdout.contains("app-busybox=7"), "{}", status.describe());
    let waited = rkt.rkt(&["status", "--wait=5s", short]);
    assert_eq!(
        waited.code,
        0,
        "waiting on an exited pod returns at once: {}",
        waited.describe()
    );

    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    assert!(gc.stdout.contains(&uuid), "{}", gc.describe());
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(list.stdout, "", "the pod is gone");
    assert!(
        rkt.mounts_left().is_empty(),
        "mounts left: {:?}",
        rkt.mounts_left()
    );
}

#[test]
fn bad_archives_are_refused_and_change_nothing() {
    let Some(rkt) = harness("bad_archives_are_refused_and_change_nothing") else {
        return;
    };
    let good = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &good.display().to_string()]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());
    let before = snapshot(&rkt.dir);

    let bytes = std::fs::read(&good).expect("read");
    let truncated = rkt.work().join("truncated.aci");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let garbage = rkt.work().join("garbage.aci");
    std::fs::write(
        &garbage,
        b"this is not a tar archive at all, not even close........",
    )
    .expect("write");
    let missing = rkt.work().join("missing.aci");

    for (path, mentions) in [
        (&truncated, "truncated.aci"),
        (&garbage, "garbage.aci"),
        (&missing, "missing.aci"),
    ] {
        let p = path.display().to_string();
        one_line_254(&rkt.rkt(&["fetch", "--insecure-options=image", &p]), mentions);
        one_line_254(&rkt.run(&[&p]), mentions);
    }
    assert_eq!(
        snapshot(&rkt.dir),
        before,
        "a failed fetch or run changed the data dir"
    );
}

#[test]
fn unsigned_images_need_insecure_options() {
    let Some(rkt) = harness("unsigned_images_need_insecure_options") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let out = rkt.rkt(&["fetch", &image.display().to_string()]);
    one_line_254(&out, "--insecure-options=image");
}

#[test]
fn bad_flags_are_one_line_errors() {
    let Some(rkt) = harness("bad_flags_are_one_line_errors") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let image = image.display().to_string();
    one_line_254(
        &rkt.rkt(&["run", "--insecure-options=image", "--stage1=nope", &image]),
        "fly",
    );
    one_line_254(&rkt.run(&["--store-only", "--no-store", &image]), "--store-only");
    one_line_254(&rkt.run(&[]), "at least one image");
    one_line_254(&rkt.run(&["--net=none", "--port=http:80", &image]), "--port");
    one_line_254(&rkt.run(&["--net=default", &image]), "host");
    one_line_254(&rkt.run(&["--volume=data,kind=bogus", &image]), "kind");
    one_line_254(&rkt.run(&["--set-env=A=1", "--set-env=A=2", &image]), "A");
    one_line_254(&rkt.run(&[&image, &image]), "one app");
    one_line_254(&rkt.run(&[&image, "--mount=volume=nope,target=/x"]), "nope");
    one_line_254(&rkt.rkt(&["status", "00000000"]), "00000000");
    one_line_254(&rkt.rkt(&["gc", "--grace-period=10"]), "grace-period");
    one_line_254(&rkt.rkt(&["list", "--format=yaml"]), "yaml");
}

#[test]
fn unusable_dir_is_a_clear_error() {
    let Some(rkt) = harness("unusable_dir_is_a_clear_error") else {
        return;
    };
    let file = rkt.work().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let out = std::process::Command::new(bin())
        .arg(format!("--dir={}/sub", file.display()))
        .arg("list")
        .output()
        .expect("rkt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(254), "{stderr}");
    assert!(stderr.contains("a-file"), "{stderr}");
}

#[test]
fn uuid_file_save_names_the_pod() {
    let Some(rkt) = harness("uuid_file_save_names_the_pod") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let file = rkt.work().join("uuid");
    let out = rkt.run(&[
        &format!("--uuid-file-save={}", file.display()),
        &image.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let uuid = std::fs::read_to_string(&file).expect("uuid file");
    let status = rkt.rkt(&["status", &format!("--uuid-file={}", file.display())]);
    assert!(
        status.stdout.contains("state=exited"),
        "{} ({uuid})",
        status.describe()
    );
}

#[test]
fn status_wait_returns_when_a_running_pod_exits() {
    use std::io::{BufRead, Write};
    let Some(rkt) = harness("status_wait_returns_when_a_running_pod_exits") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let uuid_file = rkt.work().join("uuid");
    let mut pod = rkt
        .command(&[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &format!("--uuid-file-save={}", uuid_file.display()),
            &image.display().to_string(),
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo ready; read line; exit 4",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rkt run");
    let mut stdin = pod.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(pod.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the app's first line");
    assert_eq!(line, "ready\n", "the app runs");

    let uuid_arg = format!("--uuid-file={}", uuid_file.display());
    let ready = rkt.rkt(&["status", "--wait-ready=10s", &uuid_arg]);
    assert!(ready.stdout.contains("state=running"), "{}", ready.describe());
    assert!(ready.stdout.contains("exited=false"), "{}", ready.describe());

    // `--wait` blocks on the pod's lock; the app ends once it reads a line.
    let waiter = rkt
        .command(&["status", "--wait=30s", &uuid_arg])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rkt status --wait");
    stdin.write_all(b"go\n").expect("write to the app");
    drop(stdin);
    let waiter = waiter.wait_with_output().expect("rkt status --wait");
    let out = String::from_utf8_lossy(&waiter.stdout);
    assert!(
        out.contains("state=exited") && out.contains("app-busybox=4"),
        "{out}"
    );
    assert_eq!(pod.wait().expect("rkt run").code(), Some(4));
}

fn pods_in(dir: &Path, state: &str) -> usize {
    std::fs::read_dir(dir.join("pods").join(state))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn gc_marks_first_and_sweeps_after_the_grace_period() {
    let Some(rkt) = harness("gc_marks_first_and_sweeps_after_the_grace_period") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    assert_eq!(rkt.run(&[&image.display().to_string()]).code, 0);

    let mark = rkt.rkt(&["gc", "--mark-only"]);
    assert_eq!(mark.code, 0, "{}", mark.describe());
    assert_eq!(
        (pods_in(&rkt.dir, "run"), pods_in(&rkt.dir, "exited-garbage")),
        (0, 1)
    );
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("exited garbage"), "{}", list.describe());

    let within_grace = rkt.rkt(&["gc"]);
    assert_eq!(within_grace.code, 0, "{}", within_grace.describe());
    assert_eq!(
        pods_in(&rkt.dir, "exited-garbage"),
        1,
        "the default 30m grace period keeps it"
    );

    let sweep = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(sweep.code, 0, "{}", sweep.describe());
    assert_eq!(pods_in(&rkt.dir, "exited-garbage"), 0);
}

#[test]
fn gc_collects_an_embryo_whose_creator_died() {
    let Some(rkt) = harness("gc_collects_an_embryo_whose_creator_died") else {
        return;
    };
    let embryo = rkt.dir.join("pods/embryo/2b0a5c55-0c6f-4e0e-9d86-6f1d7d4c1a11");
    std::fs::create_dir_all(&embryo).expect("mkdir");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    assert!(!embryo.exists());
    assert_eq!(pods_in(&rkt.dir, "garbage"), 0);
}

#[test]
fn sigterm_to_rkt_reaches_the_app_and_rkt_reports_its_exit() {
    use std::io::BufRead;
    let Some(rkt) = harness("sigterm_to_rkt_reaches_the_app_and_rkt_reports_its_exit") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/busybox"))
        .expect("image");
    let mut pod = rkt
        .command(&[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &image.display().to_string(),
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "trap 'exit 42' TERM; echo ready; sleep 30 & wait",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rkt run");
    let mut stdout = std::io::BufReader::new(pod.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the app's first line");
    assert_eq!(line, "ready\n", "the app runs with its trap set");
    let rkt_pid = nix::unistd::Pid::from_raw(i32::try_from(pod.id()).expect("pid"));
    nix::sys::signal::kill(rkt_pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let status = pod.wait().expect("rkt run");
    assert_eq!(
        status.code(),
        Some(42),
        "rkt forwarded SIGTERM and returned the app's code"
    );
}
