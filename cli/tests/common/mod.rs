//! Helpers shared by the cli integration tests.

use std::path::Path;

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt, busybox_path};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rkt"))
}

/// A fly harness, or None (with a "skipped" line) when root or busybox is missing.
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

/// The path of the busybox image most tests run (built once per harness).
#[allow(dead_code)] // not every test file runs busybox
pub fn busybox_image(rkt: &Rkt) -> String {
    rkt.image(&AciSpec::busybox("example.com/busybox"))
        .expect("image")
        .display()
        .to_string()
}

/// A harness for `stage1`, or None (with a "skipped" line saying why) when
/// root, busybox or what the stage1 needs is missing. The backend must be
/// linked into the test (`use rkt_backend_NAME as _;`).
#[allow(dead_code)] // not every test file runs a pod
pub fn stage1_harness(test: &str, stage1: &str) -> Option<Rkt> {
    use rkt_engine::stage::{Availability, Stage1, registry};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: needs root");
        return None;
    }
    if busybox_path().is_none() {
        eprintln!("{test}: skipped: needs busybox-static");
        return None;
    }
    match registry::create::<dyn Stage1>(stage1).map(|s| s.availability()) {
        Ok(Availability::Available) => {}
        Ok(Availability::Unavailable(why)) => {
            eprintln!("{test}: skipped: {why}");
            return None;
        }
        Err(e) => panic!("{stage1} is not registered: {e}"),
    }
    Some(Rkt::new(bin(), stage1).expect("harness"))
}

/// Debian's docker-registry on 127.0.0.1, or None (with a "skipped" line)
/// when it or skopeo is missing.
#[allow(dead_code)] // only the tests that pull use a registry
pub fn registry(test: &str) -> Option<rkt_conformance::registry::Registry> {
    if let Some(why) = rkt_conformance::registry::unavailable() {
        eprintln!("{test}: skipped: {why}");
        return None;
    }
    Some(rkt_conformance::registry::Registry::start().expect("docker-registry"))
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

/// The IPv4 address with prefix of `ifname` in `ip -4 -o addr` output.
#[allow(dead_code)] // only the tests that look at several networks
pub fn ipv4_of(ip_addr_output: &str, ifname: &str) -> String {
    ip_addr_output
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(ifname))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("no {ifname} in {ip_addr_output}"))
        .to_string()
}
