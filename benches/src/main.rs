//! Side-by-side benchmarks of rkt-rs against its peers (unshare+chroot, crun,
//! runc, systemd-nspawn, tar), interleaved A/B in one run so every side sees the
//! same machine state. Prints a markdown table of medians, min/max and ratios.
//! No pass/fail: targets are read off the table, never asserted.
//!
//! `cargo run -p rkt-benches --release -- [--runs N] [--scenario NAME...]`
//!
//! Needs root. Installs missing peers with apt-get, and does their setup itself
//! (see peers.rs). Under `cargo run` it first rebuilds the release `rkt`, so the
//! figures are always of the current source.

mod bigimage;
mod httpserve;
mod kvm;
mod measure;
mod peers;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Rounds of the quick scenarios; the slow ones (100-pod series, 200 MB image,
    /// gc) run a fraction of this, at least 3.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Scenarios to run (default: all): fly, nspawn, seccomp, net, fetch, kvm, series,
    /// big-image, list-gc, rss, concurrent.
    #[arg(long, num_args = 1..)]
    scenario: Vec<String>,
    /// The rkt binary (default: the release build next to this program, rebuilt
    /// first when run through cargo).
    #[arg(long)]
    rkt: Option<PathBuf>,
    /// Where images, bundles and data dirs live; the 200 MB image is kept here
    /// between runs.
    #[arg(long, default_value = "/var/tmp/rkt-bench")]
    work_dir: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scenarios: Vec<String> = if args.scenario.is_empty() {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario.clone()
    };
    if let Some(unknown) = scenarios.iter().find(|s| !scenarios::ALL.contains(&s.as_str())) {
        bail!(
            "unknown scenario {unknown:?}; known: {}",
            scenarios::ALL.join(", ")
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root (namespaces, mounts, OCI runtimes)");
    }
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating {}", args.work_dir.display()))?;
    let work = args.work_dir.canonicalize()?;
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded caller.
    peers::enter_private_mount_namespace(&work)?;
    let rkt = match args.rkt {
        Some(path) => path,
        None => release_rkt()?,
    };
    let peers = peers::Peers::find_or_install();
    scenarios::settle(&work);
    let load_before = loadavg();
    let bench = scenarios::Bench::new(rkt, work, args.runs.max(1), peers)?;
    let mut outcomes = Vec::new();
    for name in &scenarios {
        eprintln!("bench: {name}");
        outcomes.extend(bench.scenario(name)?);
    }
    bench.clean_up()?;

    println!("{}", report::markdown(&outcomes));
    println!(
        "Measured {} on {}; load average {} before, {} after. {}",
        date(),
        machine(),
        load_before,
        loadavg(),
        peers::SETUP_NOTES
    );
    Ok(())
}

/// The release `rkt` next to this program; under `cargo run`, rebuilt first.
fn release_rkt() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("this program has no directory")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let status = Command::new(cargo)
            .args(["build", "--release", "-q", "-p", "rkt", "--bin", "rkt"])
            .status()
            .context("running cargo build for rkt")?;
        if !status.success() {
            bail!("cargo build --release -p rkt: {status}");
        }
    }
    let rkt = dir.join("rkt");
    if !rkt.is_file() {
        bail!(
            "no {}: build it with `cargo build --release -p rkt`, or pass --rkt",
            rkt.display()
        );
    }
    Ok(rkt)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// "2 × Intel(R) Xeon(R) ..., Linux 6.1.0-..., Debian GNU/Linux 12 (bookworm)".
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("?");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    format!("{cpus} × {model}, Linux {}, {os}", kernel.trim())
}
