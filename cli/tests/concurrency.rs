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
//! - 24 `rkt run` of an image file while `rkt image rm` of that image, `rkt image
//!   gc --grace-period=0s` and `rkt gc` loop beside them: every run's exit code is
//!   right (a run imports the file again if its image was just removed), every
//!   `image gc` succeeds, every `image rm` succeeds or finds the image already
//!   gone, and `rkt image verify` is clean afterwards.
//!
//! (8 concurrent fetches alone are in robustness.rs; `rkt rm` racing `rkt list`
//! and `rkt status` is in lifecycle.rs.)

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

/// Runs `args` over and over until `stop` is set (at least once), each round
/// bounded by the deadline; returns every round's result.
fn loop_until(rkt: &Rkt, args: &[&str], stop: &AtomicBool) -> Vec<Finished> {
    let mut seen = Vec::new();
    loop {
        let finished = stop.load(Ordering::SeqCst);
        let child = support::spawn(rkt.command(args));
        seen.push(
            wait_all(vec![(args.join(" "), child)], LIMIT)
                .pop()
                .expect("one")
                .1,
        );
        if finished {
            return seen;
        }
    }
}

#[test]
fn image_rm_and_image_gc_racing_runs_break_none() {
    let Some(rkt) = harness("image_rm_and_image_gc_racing_runs_break_none") else {
        return;
    };
    const RACED_RUNS: usize = 24;
    let image = rkt
        .image(&AciSpec::busybox("example.com/rm-vs-run"))
        .expect("image")
        .display()
        .to_string();
    let fetch = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    assert_eq!(fetch.code, 0, "{}", fetch.describe());
    let id = fetch.stdout.trim().to_string();

    let runs_done = AtomicBool::new(false);
    let (runs, removals, image_gcs, gcs) = std::thread::scope(|scope| {
        let removals = scope.spawn(|| loop_until(&rkt, &["image", "rm", &id], &runs_done));
        let image_gcs = scope.spawn(|| loop_until(&rkt, &["image", "gc", "--grace-period=0s"], &runs_done));
        let gcs = scope.spawn(|| loop_until(&rkt, &["gc", "--grace-period=0s"], &runs_done));
        let done = Done(&runs_done);
        let children: Vec<(String, Child)> = (0..RACED_RUNS)
            .map(|n| {
                let script = format!("test -x /bin/busybox && exit {n}");
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
                (format!("run {n}"), support::spawn(cmd))
            })
            .collect();
        let runs = wait_all(children, LIMIT);
        drop(done);
        (
            runs,
            removals.join().expect("image rm racer"),
            image_gcs.join().expect("image gc racer"),
            gcs.join().expect("gc racer"),
        )
    });

    let mut wrong = Vec::new();
    for (n, (what, run)) in runs.iter().enumerate() {
        if run.out.code != n as i32 {
            wrong.push(format!("{what}: {}", run.out.describe()));
        }
    }
    for (kind, outs) in [("image gc", &image_gcs), ("gc", &gcs)] {
        for out in outs {
            if out.out.code != 0 {
                wrong.push(format!("a racing rkt {kind} failed: {}", out.out.describe()));
            }
        }
    }
    let mut removed = 0;
    for out in &removals {
        let gone = out.out.code == 254
            && out.out.stderr.trim().lines().count() == 1
            && out.out.stderr.contains("not found");
        if out.out.code == 0 {
            removed += 1;
        } else if !gone {
            wrong.push(format!("a racing rkt image rm failed: {}", out.out.describe()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The image was in the store when the first round started.
    assert!(removed >= 1, "no racing image rm removed the image");
    eprintln!(
        "image_rm_and_image_gc_racing_runs_break_none: {RACED_RUNS} runs, every exit code right; \
         {} image rm rounds ({removed} removed the image), {} image gc and {} gc rounds raced them",
        removals.len(),
        image_gcs.len(),
        gcs.len()
    );

    let problems = store_problems(&rkt);
    assert!(problems.is_empty(), "{problems:?}");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let left = leftovers(&rkt);
    assert!(left.is_empty(), "{left:?}");
    let image_gc = rkt.rkt(&["image", "gc", "--grace-period=0s"]);
    assert_eq!(image_gc.code, 0, "{}", image_gc.describe());
    assert!(stored_images(&rkt).is_empty(), "image gc took every unused image");
    let problems = store_problems(&rkt);
    assert!(problems.is_empty(), "{problems:?}");
}
