//! Concurrency: many `rkt` processes on one `--dir` at once, bounded by a deadline
//! (a hang is killed and fails the test, naming what hung).
//!
//! - 50 `rkt run` at once, each with its own exit code, while `rkt list` and
//!   `rkt gc` loop beside them: every pod's exit code is right, every racing
//!   command succeeds, and gc leaves nothing (per stage1: fly, and nspawn when
//!   `rkt version` lists it as available).
//! - 8 `rkt fetch` and 8 `rkt run` of one image nobody has fetched yet: one
//!   image in the store, which verifies.
//!
//! (8 concurrent fetches alone are in robustness.rs.)

#[allow(dead_code)] // each test binary uses its own subset
mod common;
mod support;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{bin, harness};
use rkt_conformance::{AciSpec, Rkt};
use support::{Finished, leftovers, stage1_available, store_problems, stored_images, wait_all};

/// Kill everything and fail if the whole race has not finished by then.
const LIMIT: Duration = Duration::from_secs(120);
const RUNS: usize = 50;

/// Lets the racers stop when the runs are done, even if a panic unwinds first.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn runs_with_list_and_gc_racing(test: &str, stage1: &str) {
    let Some(probe) = harness(test) else {
        return;
    };
    if !stage1_available(&probe, stage1) {
        eprintln!("{test}: skipped: rkt version does not list stage1 {stage1} as available");
        return;
    }
    let rkt = Rkt::new(bin(), stage1).expect("harness");
    let image = rkt
        .image(&AciSpec::busybox("example.com/fifty"))
        .expect("image")
        .display()
        .to_string();
    // Fetched first: this test is about running and collecting, not importing.
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());

    let runs_done = AtomicBool::new(false);
    let (runs, racers) = std::thread::scope(|scope| {
        let racer = |args: &'static [&'static str]| {
            let rkt = &rkt;
            let runs_done = &runs_done;
            scope.spawn(move || {
                let mut seen: Vec<Finished> = Vec::new();
                // At least one round, bounded by the runs finishing (and each
                // round by the deadline).
                loop {
                    let finished = runs_done.load(Ordering::SeqCst);
                    let child = support::spawn(rkt.command(args));
                    let mut out = wait_all(vec![(args.join(" "), child)], LIMIT);
                    seen.push(out.pop().expect("one").1);
                    if finished {
                        break;
                    }
                }
                seen
            })
        };
        let lists = racer(&["list", "--no-legend"]);
        let gcs = racer(&["gc", "--grace-period=0s"]);
        let done = Done(&runs_done);
        let children: Vec<(String, Child)> = (0..RUNS)
            .map(|n| {
                let script = format!("exit {n}");
                let cmd = rkt.command(&[
                    "run",
                    "--insecure-options=image",
                    // No --net: nspawn pods get the default CNI network, so
                    // concurrent ADDs (leases, iptables) race too; fly keeps the host's.
                    &format!("--stage1={stage1}"),
                    &image,
                    "--exec",
                    "/bin/sh",
                    "--",
                    "-c",
                    &script,
                ]);
                (format!("run {n}"), support::spawn(cmd))
            })
            .collect();
        let runs = wait_all(children, LIMIT);
        drop(done);
        let lists = lists.join().expect("list racer");
        let gcs = gcs.join().expect("gc racer");
        (runs, (lists, gcs))
    });

    let mut wrong = Vec::new();
    for (n, (what, run)) in runs.iter().enumerate() {
        if run.out.code != n as i32 {
            wrong.push(format!("{what}: {}", run.out.describe()));
        }
    }
    assert!(wrong.is_empty(), "wrong exit codes:\n{}", wrong.join("\n"));
    let (lists, gcs) = racers;
    for (kind, outs) in [("list", &lists), ("gc", &gcs)] {
        for out in outs {
            assert_eq!(
                out.out.code,
                0,
                "a racing rkt {kind} failed: {}",
                out.out.describe()
            );
        }
    }
    for line in lists.iter().flat_map(|l| l.out.stdout.lines()) {
        let uuid = line.split_whitespace().next().unwrap_or("");
        assert!(
            uuid.len() >= 8 && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "a racing rkt list printed a malformed line {line:?}"
        );
    }
    eprintln!(
        "{test}: {RUNS} runs, every exit code right; {} list and {} gc rounds raced them",
        lists.len(),
        gcs.len()
    );

    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
    let problems = store_problems(&rkt);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn fifty_fly_runs_with_list_and_gc_racing() {
    runs_with_list_and_gc_racing("fifty_fly_runs_with_list_and_gc_racing", "fly");
}

#[test]
fn fifty_nspawn_runs_with_list_and_gc_racing() {
    runs_with_list_and_gc_racing("fifty_nspawn_runs_with_list_and_gc_racing", "nspawn");
}

#[test]
fn fetches_racing_runs_of_a_new_image_store_it_once() {
    let Some(rkt) = harness("fetches_racing_runs_of_a_new_image_store_it_once") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/fetch-vs-run"))
        .expect("image")
        .display()
        .to_string();
    let mut children: Vec<(String, Child)> = (0..8)
        .map(|i| {
            let cmd = rkt.command(&["fetch", "--insecure-options=image", &image]);
            (format!("fetch {i}"), support::spawn(cmd))
        })
        .collect();
    children.extend((0..8).map(|i| {
        let script = format!("exit {}", 10 + i);
        let cmd = rkt.command(&[
            "run",
            "--insecure-options=image",
            "--stage1=fly",
            &image,
            "--exec",
            "/bin/sh",
            "--",
            "-c",
            &script,
        ]);
        (format!("run {i}"), support::spawn(cmd))
    }));
    let results = wait_all(children, LIMIT);

    let mut ids: Vec<String> = Vec::new();
    for (i, (what, done)) in results.iter().enumerate() {
        if i < 8 {
            assert_eq!(done.out.code, 0, "{what}: {}", done.out.describe());
            ids.push(done.out.stdout.trim().to_string());
        } else {
            assert_eq!(
                done.out.code,
                10 + (i as i32 - 8),
                "{what}: {}",
                done.out.describe()
            );
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "the fetches disagree: {ids:?}");
    assert_eq!(stored_images(&rkt), ids, "one image in the store");
    let problems = store_problems(&rkt);
    assert!(problems.is_empty(), "{problems:?}");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
}
