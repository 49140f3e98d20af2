//! Crash injection: `failpoint("fetch.blob-renamed")` kills this process with
//! SIGKILL when the environment variable `RKT_FAILPOINT` names that step.
//!
//! The crash suite (cli/tests/crash.rs) runs `rkt` once per name in [`STEPS`] and
//! then checks that nothing was lost or left behind. SIGKILL, not a panic or an
//! exit: no destructor, no `Drop` of a temp file, no unlock runs — exactly what a
//! power cut or the OOM killer leaves. Unset, a failpoint costs one comparison
//! against a value read from the environment once per process.

use std::sync::OnceLock;

/// The variable that arms one failpoint.
pub const ENV: &str = "RKT_FAILPOINT";

/// Every failpoint in the engine, the backends and the cli, in the order a `rkt
/// run` of a new image meets them, then the other commands' own steps. The crash
/// suite iterates this list (and kills the commands that share a step at it too);
/// a name used in code but missing here is caught by a debug assertion.
pub const STEPS: &[&str] = &[
    // fetch: store/cas.rs, store/index.rs
    "fetch.temp-created",
    "fetch.temp-written",
    "fetch.temp-synced",
    "fetch.blob-renamed",
    "fetch.manifest-written",
    "fetch.index-written",
    // the tree store: store/tree.rs
    "render.tree-built",
    "render.tree-published",
    // prepare: runner.rs
    "prepare.embryo-created",
    "prepare.preparing",
    "prepare.app-rendered",
    "prepare.app-ready",
    "prepare.manifest-written",
    "prepare.before-prepared-rename",
    "prepare.after-prepared-rename",
    // run: runner.rs, fly's launcher
    "run.running",
    // pod networks: backends/cni
    "net.netns-created",
    "net.before-add",
    "net.after-add",
    "run.network-ready",
    "run.stage1-starting",
    "run.stage1-started",
    "run.exit-status-written",
    // gc: gc.rs, fsutil.rs
    "gc.marked",
    "gc.unmounted",
    "gc.deleting",
    "gc.swept-one",
    // run-prepared: runner.rs (then the run steps from run.network-ready on)
    "run-prepared.running",
    // stop: cli's stop command (the pod itself exits through run.exit-status-written)
    "stop.pod-checked",
    "stop.signal-sent",
    // rm: gc.rs (then the sweep's gc.unmounted and gc.deleting)
    "rm.marked-garbage",
    // image rm: store/cas.rs, image_gc.rs (then a tree's removal: gc.deleting)
    "image-rm.record-removed",
    "image-rm.blob-removed",
    // image gc: image_gc.rs, after each tree and each image it sweeps
    "image-gc.swept-tree",
    "image-gc.swept-image",
];

/// Kills this process on the spot if `RKT_FAILPOINT` names `step`.
#[inline]
pub fn failpoint(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "failpoint {step:?} is not listed in STEPS");
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(step) {
        kill_self();
    }
}

#[cold]
fn kill_self() -> ! {
    // stderr is unbuffered: the line is out before the signal lands.
    eprintln!("rkt: failpoint: killed by {ENV}");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be blocked or caught; this is not reached.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_unique_and_grouped() {
        let mut seen = std::collections::BTreeSet::new();
        for step in STEPS {
            assert!(seen.insert(*step), "{step} listed twice");
            assert!(step.split_once('.').is_some(), "{step}: want <phase>.<step>");
        }
    }

    #[test]
    fn an_unarmed_failpoint_returns() {
        // The test process does not set RKT_FAILPOINT (and if it did, it would
        // not name a step of this list).
        failpoint("gc.marked");
    }
}
