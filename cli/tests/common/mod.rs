//! Helpers shared by the cli integration tests.

use std::path::Path;

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{Rkt, busybox_path};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rkt"))
}

/// A harness, or None (with a "skipped" line) when root or busybox is missing.
#[allow(dead_code)] // not every test file uses the fly harness
pub fn harness(test: &str) -> Option<Rkt> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: needs root");
        return None;
    }
    if busybox_path().is_none() {
        eprintln!("{test}: skipped: needs busybox-static");
        return None;
    }
    Some(Rkt::new(bin(), "fly").expect("harness"))
}

/// rkt's contract for its own errors: exit 254, one line, naming what was wrong.
pub fn one_line_254(out: &RunOutput, mentions: &str) {
    assert_eq!(out.code, 254, "{}", out.describe());
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "want one line: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains(mentions),
        "want {mentions:?} in {}",
        out.describe()
    );
}
