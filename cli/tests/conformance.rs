//! Runs the conformance kit against every registered stage1, through the real
//! binary. Needs root (namespaces, mounts): without it the test says "skipped".

use rkt_conformance::{Outcome, Rkt, all_checks};
use rkt_engine::stage::{Availability, Stage1, registry};

// Link every backend so the registry here matches the binary's.
use rkt_backend_cni as _;
use rkt_backend_finders as _;
use rkt_backend_fly as _;
use rkt_backend_nspawn as _;
use rkt_backend_selinux as _;

#[test]
fn every_registered_stage1_passes_the_conformance_checks() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the conformance checks need root");
        return;
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_rkt"));
    let mut failures = Vec::new();
    let mut ran = 0;
    for stage1 in registry::all::<dyn Stage1>().expect("registry") {
        if let Availability::Unavailable(why) = stage1.availability() {
            eprintln!("stage1 {}: skipped: {why}", stage1.name());
            continue;
        }
        for check in all_checks() {
            let harness = Rkt::new(bin, stage1.name()).expect("harness");
            let outcome = (check.run)(&harness);
            eprintln!("{:<8} {:<32} {outcome:?}", stage1.name(), check.name);
            match outcome {
                Outcome::Passed => ran += 1,
                Outcome::Skipped(_) => {}
                Outcome::Failed(why) => failures.push(format!("{} {}: {why}", stage1.name(), check.name)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    assert!(ran > 0, "no conformance check ran");
}
