//! Side-by-side benchmarks of rkt-rs against its peers, interleaved A/B in one run
//! so both see the same machine state. Prints a markdown table of medians, min/max
//! and ratios. No pass/fail: targets are read off the table, never asserted.
//!
//! `cargo run -p rkt-benches --release -- [--runs N] [--rkt PATH]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rkt_conformance::AciSpec;

#[derive(Parser)]
struct Args {
    /// Runs of each side per scenario
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// The rkt binary (default: next to this program)
    #[arg(long)]
    rkt: Option<PathBuf>,
}

struct Sample {
    name: String,
    times: Vec<Duration>,
}

impl Sample {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied().unwrap_or_default()
    }
    fn min(&self) -> Duration {
        self.times.iter().min().copied().unwrap_or_default()
    }
    fn max(&self) -> Duration {
        self.times.iter().max().copied().unwrap_or_default()
    }
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(elapsed)
}

fn rkt_cmd(rkt: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(rkt);
    cmd.arg(format!("--dir={}", dir.display())).args(args);
    cmd
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rkt = match args.rkt {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .join("rkt"),
    };
    let work = tempfile::Builder::new().prefix("rkt-bench-").tempdir()?;
    let dir = work.path().join("data");
    let image = work.path().join("busybox.aci");
    AciSpec::busybox("example.com/busybox").write(&image)?;
    let fetched = rkt_cmd(
        &rkt,
        &dir,
        &["fetch", "--insecure-options=image", &image.display().to_string()],
    )
    .output()?;
    let id = String::from_utf8(fetched.stdout)?.trim().to_string();
    if !id.starts_with("sha512-") {
        bail!("fetch failed: {}", String::from_utf8_lossy(&fetched.stderr));
    }
    // The first run renders the tree; the benchmark measures runs from the store.
    let run_args = [
        "run",
        "--insecure-options=image",
        "--stage1=fly",
        &id,
        "--exec",
        "/bin/true",
    ];
    time(&mut rkt_cmd(&rkt, &dir, &run_args))?;
    let tree = std::fs::read_dir(dir.join("cas/tree"))?
        .flatten()
        .map(|e| e.path().join("rootfs"))
        .find(|p| p.join("bin/true").exists())
        .context("no rendered tree")?;

    let mut fly = Sample {
        name: "rkt run --stage1=fly /bin/true".into(),
        times: Vec::new(),
    };
    let mut unshare = Sample {
        name: "unshare -m chroot ROOTFS /bin/true".into(),
        times: Vec::new(),
    };
    for i in 0..args.runs {
        fly.times.push(time(&mut rkt_cmd(&rkt, &dir, &run_args))?);
        let mut peer = Command::new("unshare");
        peer.args(["-m", "chroot"]).arg(&tree).arg("/bin/true");
        unshare.times.push(time(&mut peer)?);
        if i % 50 == 49 {
            // Keep the pod count flat so later runs do not measure a growing list.
            time(&mut rkt_cmd(&rkt, &dir, &["gc", "--grace-period=0s"]))?;
        }
    }
    let _ = rkt_cmd(&rkt, &dir, &["gc", "--grace-period=0s"]).status();

    println!("| scenario | median | min | max | ratio to peer |");
    println!("|---|---|---|---|---|");
    for s in [&fly, &unshare] {
        let ratio = s.median().as_secs_f64() / unshare.median().as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {ratio:.2}x |",
            s.name,
            ms(s.median()),
            ms(s.min()),
            ms(s.max())
        );
    }
    println!(
        "\n{} runs each, interleaved; image already in the store, tree rendered.",
        args.runs
    );
    Ok(())
}
