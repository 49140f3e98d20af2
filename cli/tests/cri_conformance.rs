//! The CRI conformance cases (`rkt_conformance::cri_runtime`, critest's
//! basics) against a `rkt cri-service` on the nspawn stage1, as root: runtime
//! status, sandbox and container lifecycles with filters, stop with a grace
//! period then kill, env/working dir/user/args, ExecSync with its timeout,
//! logs in the CRI format at the kubelet's path, DNS and hostname, several
//! sandboxes at once, the server restarted in the middle, then (crinet) the
//! pod IP in PodSandboxStatus, a host port mapping answered on 127.0.0.1 and
//! its iptables rules gone with the sandbox, container stats from the app's
//! cgroups, resource updates and ReopenContainerLog. Every case
//! must pass; none may be skipped when the prerequisites are here.

#[allow(dead_code)] // each test binary uses its own subset
mod common;

use rkt_conformance::Outcome;
use rkt_conformance::cri_runtime;

use rkt_backend_nspawn as _;

#[test]
fn cri_runtime_conformance_cases_pass() {
    let Some(rkt) = common::stage1_harness("cri_runtime_conformance_cases_pass", "nspawn") else {
        return;
    };
    let filter = std::env::var("RKT_CRI_CASES").ok();
    let results = cri_runtime::run_with_own_server(&rkt, filter.as_deref()).expect("the CRI suite runs");
    let mut failures = Vec::new();
    for (name, outcome) in &results {
        eprintln!("cri {name}: {outcome:?}");
        if outcome != &Outcome::Passed {
            failures.push(format!("{name}: {outcome:?}"));
        }
    }
    assert!(!results.is_empty(), "no CRI case ran");
    assert!(
        failures.is_empty(),
        "CRI cases not passing:\n{}",
        failures.join("\n")
    );
    // Every sandbox the cases made was removed through the CRI.
    let left = rkt.rkt(&["list", "--no-legend"]);
    assert!(left.stdout.trim().is_empty(), "pods left: {}", left.stdout);
}
