//! Crash injection: `rkt` is SIGKILLed at every failpoint the engine, the fly
//! backend and the cli declare (`rkt_engine::failpoint::STEPS`), one kill per step
//! and command, each in a fresh `--dir`. A step several commands pass through (the
//! sweep's unmount and delete, the run steps after `run-prepared`'s rename) is
//! killed once under each of them. After each kill:
//!
//! - `rkt list` works and shows only legal states;
//! - `rkt image verify` finds the store intact: whatever the store lists it has in
//!   full (a blob left without its index record is invisible, and is the one
//!   thing tolerated, until the next import of that image takes it over);
//! - a pod the killed command left running (`rkt stop` killed before its signal)
//!   is stopped with `rkt stop --force` and ends;
//! - `rkt gc --grace-period=0s` leaves no pod directory, no mount below the test's
//!   directory, no process, no store temp file;
//! - the image fetches and runs again with the right exit code, and `rkt image
//!   verify` is then clean without exception.

#[allow(dead_code)] // each test binary uses its own subset
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use common::{bin, harness};
use rkt_conformance::{AciSpec, Rkt};
use rkt_engine::failpoint::{ENV, STEPS};
use support::{LEGAL_STATES, finish_within, leftovers, list_pods, store_problems, wait_all};

const LIMIT: Duration = Duration::from_secs(120);
const SIGKILL: i32 = 9;

/// Which command is killed, and what must exist before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `rkt fetch IMAGE` into an empty store.
    Fetch,
    /// `rkt run IMAGE` (fetch, render, prepare and run in one).
    Run,
    /// `rkt prepare IMAGE`.
    Prepare,
    /// `rkt run-prepared UUID` of a pod `rkt prepare` left.
    RunPrepared,
    /// `rkt stop UUID` of a running pod.
    Stop,
    /// `rkt rm UUID` of an exited pod.
    Rm,
    /// `rkt gc` with two exited pods waiting.
    Gc,
    /// `rkt image rm ID` of an image whose tree no pod uses any more.
    ImageRm,
    /// `rkt image gc` with two unused images and their two unused trees.
    ImageGc,
}

/// The command whose own step this is.
fn owner(step: &str) -> Scenario {
    match step.split_once('.').map(|(phase, _)| phase) {
        Some("fetch") => Scenario::Fetch,
        Some("gc") => Scenario::Gc,
        Some("run-prepared") => Scenario::RunPrepared,
        Some("stop") => Scenario::Stop,
        Some("rm") => Scenario::Rm,
        Some("image-rm") => Scenario::ImageRm,
        Some("image-gc") => Scenario::ImageGc,
        _ if step.contains("prepared-rename") => Scenario::Prepare,
        _ => Scenario::Run,
    }
}

/// Steps that other commands reach too, after their own steps.
const SHARED: &[(&str, Scenario)] = &[
    ("run.network-ready", Scenario::RunPrepared),
    ("run.stage1-starting", Scenario::RunPrepared),
    ("run.stage1-started", Scenario::RunPrepared),
    ("run.exit-status-written", Scenario::RunPrepared),
    ("gc.unmounted", Scenario::Rm),
    ("gc.deleting", Scenario::Rm),
    // Deleting a tree the image no longer needs.
    ("gc.deleting", Scenario::ImageRm),
    ("gc.deleting", Scenario::ImageGc),
];

/// Every kill the suite makes: each step under its own command, then the shared ones.
fn every_kill() -> Vec<(&'static str, Scenario)> {
    STEPS
        .iter()
        .map(|step| (*step, owner(step)))
        .chain(SHARED.iter().copied())
        .collect()
}

/// `rkt run` of a pod that runs until it is stopped; SIGKILLed with its app if the
/// test ends first.
struct LongPod {
    child: Option<Child>,
    uuid: String,
}

impl LongPod {
    fn start(rkt: &Rkt, image: &str) -> LongPod {
        let uuid_file = rkt.work().join("long.uuid");
        let save = format!("--uuid-file-save={}", uuid_file.display());
        let stage1 = format!("--stage1={}", rkt.stage1);
        let mut child = support::spawn(rkt.command(&[
            "run",
            "--insecure-options=image",
            &stage1,
            "--net=host",
            &save,
            image,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            "echo ready; exec sleep 1000",
        ]));
        let stdout = child.stdout.take().expect("stdout");
        let mut pod = LongPod {
            child: Some(child),
            uuid: String::new(),
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        assert!(
            matches!(read, Ok(n) if n > 0) && line == "ready\n",
            "the long pod never said ready: {line:?} {read:?}"
        );
        pod.uuid = std::fs::read_to_string(&uuid_file)
            .expect("uuid file")
            .trim()
            .to_string();
        let ready = rkt.rkt(&["status", "--wait-ready=30s", &pod.uuid]);
        assert!(ready.stdout.contains("state=running"), "{}", ready.describe());
        pod
    }

    /// Makes sure the pod ends (`rkt stop --force`) and returns `rkt run`'s exit code.
    fn finish(mut self, rkt: &Rkt) -> Result<i32, String> {
        let stop = rkt.rkt(&["stop", "--force", &self.uuid]);
        if stop.code != 0 {
            return Err(format!("stop --force: {}", stop.describe()));
        }
        let child = self.child.take().expect("running");
        let (_, done) = wait_all(vec![("rkt run of the long pod".into(), child)], LIMIT)
            .pop()
            .expect("one");
        Ok(done.out.code)
    }
}

impl Drop for LongPod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a scenario set up before the killed command: its arguments, and a pod
/// to settle afterwards.
struct Setup {
    args: Vec<String>,
    long_pod: Option<LongPod>,
}

fn setup(rkt: &Rkt, scenario: Scenario, image: &str, other: &str) -> Setup {
    let stage1 = format!("--stage1={}", rkt.stage1);
    let run_args = |args: &[&str]| -> Vec<String> {
        ["run", "--insecure-options=image", &stage1, "--net=host"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    // An exited pod, and the tree it ran from.
    let exited_pod = || -> String {
        let uuid_file = rkt.work().join("exited.uuid");
        let save = format!("--uuid-file-save={}", uuid_file.display());
        let run = rkt.run(&[&save, image, "--exec", "/bin/sh", "--", "-c", "exit 3"]);
        assert_eq!(run.code, 3, "setup run: {}", run.describe());
        std::fs::read_to_string(&uuid_file)
            .expect("uuid file")
            .trim()
            .to_string()
    };
    let fetched = |image: &str| -> String {
        let fetch = rkt.rkt(&["fetch", "--insecure-options=image", image]);
        assert_eq!(fetch.code, 0, "setup fetch: {}", fetch.describe());
        fetch.stdout.trim().to_string()
    };
    let collect_pods = || {
        let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
        assert_eq!(gc.code, 0, "setup gc: {}", gc.describe());
    };
    let args = match scenario {
        Scenario::Fetch => vec!["fetch".into(), "--insecure-options=image".into(), image.into()],
        Scenario::Run => run_args(&[image, "--exec", "/bin/sh", "--", "-c", "exit 7"]),
        Scenario::Prepare => ["prepare", "--insecure-options=image", &stage1, image]
            .map(String::from)
            .to_vec(),
        Scenario::RunPrepared => {
            let prepare = rkt.rkt(&[
                "prepare",
                "--insecure-options=image",
                &stage1,
                "--quiet",
                image,
                "--exec",
                "/bin/sh",
                "--",
                "-c",
                "exit 7",
            ]);
            assert_eq!(prepare.code, 0, "setup prepare: {}", prepare.describe());
            vec![
                "run-prepared".into(),
                "--net=host".into(),
                prepare.stdout.trim().to_string(),
            ]
        }
        Scenario::Stop => {
            let pod = LongPod::start(rkt, image);
            let args = vec!["stop".into(), pod.uuid.clone()];
            return Setup {
                args,
                long_pod: Some(pod),
            };
        }
        Scenario::Rm => vec!["rm".into(), exited_pod()],
        Scenario::Gc => {
            // Two exited pods, so a kill after the first one is swept leaves the second.
            exited_pod();
            exited_pod();
            vec!["gc".into(), "--grace-period=0s".into()]
        }
        Scenario::ImageRm => {
            let id = fetched(image);
            exited_pod();
            collect_pods();
            vec!["image".into(), "rm".into(), id]
        }
        Scenario::ImageGc => {
            fetched(image);
            fetched(other);
            exited_pod();
            let run = rkt.run(&[other, "--exec", "/bin/true"]);
            assert_eq!(run.code, 0, "setup run: {}", run.describe());
            collect_pods();
            vec!["image".into(), "gc".into(), "--grace-period=0s".into()]
        }
    };
    Setup { args, long_pod: None }
}

/// What one kill showed: every problem found afterwards, and whether the store
/// held an invisible blob (tolerated, and taken over by the re-fetch).
#[derive(Default)]
struct Outcome {
    problems: Vec<String>,
    orphan_blob: bool,
}

/// Kills rkt at `step` of `scenario` in a fresh data dir and checks what is left.
fn kill_at(stage1: &str, step: &str, scenario: Scenario, image: &str, other: &str) -> Outcome {
    let rkt = Rkt::new(bin(), stage1).expect("harness");
    let mut outcome = Outcome::default();
    let problems = &mut outcome.problems;
    let setup = setup(&rkt, scenario, image, other);

    let args: Vec<&str> = setup.args.iter().map(String::as_str).collect();
    let mut cmd = rkt.command(&args);
    cmd.env(ENV, step);
    let killed = finish_within(step, cmd, LIMIT);
    if killed.signal != Some(SIGKILL) {
        // The step was never reached (or rkt failed first): the kill did not happen.
        problems.push(format!(
            "not killed at {step} (signal {:?}): {}",
            killed.signal,
            killed.out.describe()
        ));
    }

    // 1. rkt list works and shows legal states only.
    match list_pods(&rkt) {
        Ok(pods) => {
            for (uuid, state) in pods {
                if !LEGAL_STATES.contains(&state.as_str()) {
                    problems.push(format!("pod {uuid} in state {state:?}"));
                }
            }
        }
        Err(e) => problems.push(e),
    }

    // 2. The store is intact: what it lists, it has in full.
    let (orphans, damaged): (Vec<String>, Vec<String>) = store_problems(&rkt)
        .into_iter()
        .partition(|p| p.ends_with("no index record"));
    outcome.orphan_blob = !orphans.is_empty();
    if outcome.orphan_blob {
        // Invisible to every command, but `image gc` reclaims it.
        let gc = rkt.rkt(&["image", "gc"]);
        let left: Vec<String> = store_problems(&rkt)
            .into_iter()
            .filter(|p| p.ends_with("no index record"))
            .collect();
        if gc.code != 0 || !left.is_empty() {
            problems.push(format!("image gc left orphans {left:?}: {}", gc.describe()));
        }
    }
    if !damaged.is_empty() {
        problems.push(format!("rkt image verify after the kill: {damaged:?}"));
    }

    // 3. A pod the kill left running is stopped for good; it ends by a signal.
    if let Some(pod) = setup.long_pod {
        match pod.finish(&rkt) {
            Ok(143 | 137) => {}
            Ok(code) => problems.push(format!("the stopped pod's rkt run exited {code}")),
            Err(e) => problems.push(e),
        }
    }

    // 4. gc cleans up everything (the pods' cgroups too, checked at the end).
    let mut uuids = pod_uuids(&rkt);
    let gc = rkt.rkt(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
    if gc.code != 0 {
        problems.push(format!("gc after the kill: {}", gc.describe()));
    }
    problems.extend(leftovers(&rkt).into_iter().map(|p| format!("after gc: {p}")));

    // 5. The image fetches and runs again, and the store then verifies clean.
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", image]);
    if fetch.code != 0 {
        problems.push(format!("re-fetch: {}", fetch.describe()));
    }
    let run = rkt.run(&[image, "--exec", "/bin/sh", "--", "-c", "exit 5"]);
    if run.code != 5 {
        problems.push(format!("re-run: {}", run.describe()));
    }
    let verify = store_problems(&rkt);
    if !verify.is_empty() {
        problems.push(format!("rkt image verify after the re-run: {verify:?}"));
    }
    uuids.extend(pod_uuids(&rkt));
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    if gc.code != 0 {
        problems.push(format!("final gc: {}", gc.describe()));
    }
    problems.extend(leftovers(&rkt).into_iter().map(|p| format!("at the end: {p}")));
    problems.extend(
        cgroups_of(&uuids)
            .into_iter()
            .map(|c| format!("cgroup left: {}", c.display())),
    );
    outcome
}

/// The UUIDs of every pod directory in the data dir, whatever its state.
fn pod_uuids(rkt: &Rkt) -> Vec<String> {
    support::pod_dirs(&rkt.dir)
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Every cgroup named `rkt-<uuid>` of one of `uuids`, in any hierarchy under
/// /sys/fs/cgroup.
fn cgroups_of(uuids: &[String]) -> Vec<std::path::PathBuf> {
    let names: Vec<String> = uuids.iter().map(|u| format!("rkt-{u}")).collect();
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Directories only, symlinks (cpu -> cpu,cpuacct) not followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if names.iter().any(|n| entry.file_name() == n.as_str()) {
                found.push(path.clone());
            }
            stack.push(path);
        }
    }
    found
}

#[test]
fn sigkill_at_every_step_loses_nothing() {
    let Some(rkt) = harness("sigkill_at_every_step_loses_nothing") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/crash"))
        .expect("image")
        .display()
        .to_string();
    let other = rkt
        .image(&AciSpec::busybox("example.com/crash-other"))
        .expect("image")
        .display()
        .to_string();

    let mut table = Vec::new();
    let mut failures = Vec::new();
    let (mut kills, mut lost, mut orphans) = (0, 0, 0);
    for (step, scenario) in every_kill() {
        if step.starts_with("net.") {
            // Reached only by a pod network: cli/tests/network.rs kills rkt there.
            table.push(format!("| {step} | covered by network.rs |"));
            continue;
        }
        let outcome = kill_at("fly", step, scenario, &image, &other);
        kills += 1;
        if outcome.orphan_blob {
            orphans += 1;
        }
        let note = if outcome.orphan_blob {
            " (left an invisible blob; image gc reclaimed it)"
        } else {
            ""
        };
        if outcome.problems.is_empty() {
            table.push(format!("| {step} | {scenario:?}: killed, recovered{note} |"));
        } else {
            lost += 1;
            table.push(format!("| {step} | {scenario:?}: FAILED |"));
            failures.push(format!(
                "{step} ({scenario:?}):\n  {}",
                outcome.problems.join("\n  ")
            ));
        }
    }
    eprintln!(
        "crash: {} steps, {kills} kills, {} survived, {lost} lost; {orphans} left a blob without its record\n{}",
        STEPS.len(),
        kills - lost,
        table.join("\n")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(kills > STEPS.len(), "every step and every shared step was killed");
}

#[test]
fn every_step_has_a_scenario_that_reaches_it() {
    // A new phase needs its own scenario here first.
    for step in STEPS {
        let phase = step.split_once('.').map(|(p, _)| p).unwrap_or("");
        assert!(
            [
                "fetch",
                "render",
                "prepare",
                "run",
                "run-prepared",
                "stop",
                "rm",
                "gc",
                "image-rm",
                "image-gc",
                "net"
            ]
            .contains(&phase),
            "{step}: no crash scenario for phase {phase:?}"
        );
    }
    for (step, _) in SHARED {
        assert!(STEPS.contains(step), "{step} is not a failpoint");
    }
}

#[test]
fn sigkill_at_every_run_step_of_an_nspawn_pod_loses_nothing() {
    let test = "sigkill_at_every_run_step_of_an_nspawn_pod_loses_nothing";
    let Some(rkt) = harness(test) else {
        return;
    };
    let rkt_nspawn = Rkt::new(bin(), "nspawn").expect("harness");
    if !support::stage1_available(&rkt_nspawn, "nspawn") {
        eprintln!("{test}: skipped: rkt version does not list stage1 nspawn as available");
        return;
    }
    let image = rkt
        .image(&AciSpec::busybox("example.com/crash"))
        .expect("image")
        .display()
        .to_string();
    let mut failures = Vec::new();
    let mut kills = 0;
    for (step, scenario) in every_kill() {
        let run_step = step.starts_with("run.") || step.starts_with("run-prepared.");
        // The fly launcher's own steps: the nspawn backend declares none.
        let fly_only = ["run.stage1-started", "run.exit-status-written"].contains(&step);
        if !run_step || fly_only || !matches!(scenario, Scenario::Run | Scenario::RunPrepared) {
            continue;
        }
        let outcome = kill_at("nspawn", step, scenario, &image, &image);
        kills += 1;
        if !outcome.problems.is_empty() {
            failures.push(format!(
                "{step} ({scenario:?}):\n  {}",
                outcome.problems.join("\n  ")
            ));
        }
    }
    eprintln!("{test}: {kills} kills, {} lost", failures.len());
    assert!(kills >= 6, "the run steps were not found: {kills}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
