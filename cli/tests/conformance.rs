//! Runs the conformance kit against every stage1 the kit knows
//! (`rkt_conformance::backends`), through the real binary. Needs root
//! (namespaces, mounts): without it the test says "skipped".

use rkt_conformance::{Outcome, Rkt, all_checks, backends};
use rkt_engine::stage::Availability;

const VM_CHECKS: &[&str] = &[
    "exit-code-propagates",
    "environment-precedence",
    "stop-ends-the-pod",
    "enter-runs-in-the-app",
    "metadata-service",
];

#[test]
fn every_registered_stage1_passes_the_conformance_checks() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the conformance checks need root");
        return;
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_rkt"));
    let mut failures = Vec::new();
    let mut ran = 0;
    for backend in backends::all().expect("registry") {
        if let Availability::Unavailable(why) = &backend.availability {
            eprintln!("stage1 {}: skipped: {why}", backend.name);
            continue;
        }
        // A pod that cannot share the host's network is a VM: every pod is a
        // boot (2-4 s under TCG), so `cargo test` runs a few checks there
        // (the ACE pod runs in tests/metadata.rs); `cargo run -p
        // rkt-conformance -- --stage1=NAME` runs them all.
        let vm = !backend.capabilities.host_network;
        for check in all_checks() {
            if vm && !VM_CHECKS.contains(&check.name) {
                continue;
            }
            let harness = Rkt::new(bin, backend.name).expect("harness");
            let outcome = (check.run)(&harness);
            eprintln!("{:<8} {:<32} {outcome:?}", backend.name, check.name);
            match outcome {
                Outcome::Passed => ran += 1,
                Outcome::Skipped(_) => {}
                Outcome::Failed(why) => failures.push(format!("{} {}: {why}", backend.name, check.name)),
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
