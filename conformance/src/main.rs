//! `rkt-conformance`: run the conformance checks against one stage1 backend (or
//! all of them), or build the example image the README's demo runs.
//!
//! Each check prints one line: passed, FAILED with what was seen, or skipped
//! with the reason; any failure makes the exit code non-zero.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use rkt_conformance::{AciSpec, Outcome, Rkt, ace, all_checks, backends};
use rkt_engine::stage::Availability;

#[derive(Parser)]
#[command(
    name = "rkt-conformance",
    about = "Checks a rkt-rs stage1 backend through the real rkt binary"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The stage1 backend to check, or `all` for every registered one
    #[arg(long, default_value = "fly")]
    stage1: String,
    /// The rkt binary (default: the one next to this program, rebuilt first
    /// when this runs under `cargo run`)
    #[arg(long)]
    rkt: Option<PathBuf>,
    /// Only run checks whose name contains this
    #[arg(long)]
    filter: Option<String>,
    /// List the checks and the registered backends, run nothing
    #[arg(long)]
    list: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a busybox example image (an ACI) to a file
    BuildImage {
        #[arg(long, default_value = "example.com/busybox")]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the appc ACE validator and write its two images
    /// (ace-validator-main.aci, ace-validator-sidekick.aci) into a directory
    BuildAceImages {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Run the CRI RuntimeService cases (critest's basics): against --socket,
    /// or against a `rkt cri-service` started on a fresh --dir
    Cri {
        /// A CRI server's unix socket; without it the suite starts its own
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The image containers run, already in that server's store (with --socket)
        #[arg(long, default_value = rkt_conformance::cri_runtime::SUITE_IMAGE)]
        image: String,
        /// Where sandboxes' log directories go (with --socket)
        #[arg(long, default_value = "/tmp/rkt-cri-conformance-logs")]
        log_root: PathBuf,
    },
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::BuildImage { name, out }) = args.command {
        return match AciSpec::busybox(&name).write(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("build-image: {e}");
                ExitCode::from(254)
            }
        };
    }
    if let Some(Cmd::BuildAceImages { out_dir }) = &args.command {
        return match build_ace_images(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("build-ace-images: {e}");
                ExitCode::from(254)
            }
        };
    }
    if let Some(Cmd::Cri {
        socket,
        image,
        log_root,
    }) = &args.command
    {
        return run_cri(&args, socket.as_deref(), image, log_root);
    }
    let registered = match backends::all() {
        Ok(all) => all,
        Err(e) => {
            eprintln!("rkt-conformance: {e}");
            return ExitCode::from(254);
        }
    };
    if args.list {
        for backend in &registered {
            println!(
                "stage1 {:<8} {:?} {:?}",
                backend.name, backend.capabilities, backend.availability
            );
        }
        for check in all_checks() {
            println!("check {}", check.name);
        }
        return ExitCode::SUCCESS;
    }
    let targets: Vec<_> = if args.stage1 == "all" {
        registered
    } else {
        match backends::find(&args.stage1) {
            Ok(b) => vec![b],
            Err(e) => {
                eprintln!("rkt-conformance: {e}");
                return ExitCode::from(254);
            }
        }
    };
    let rkt = match args.rkt {
        Some(rkt) => rkt,
        None => match default_rkt() {
            Ok(rkt) => rkt,
            Err(e) => {
                eprintln!("rkt-conformance: {e}");
                return ExitCode::from(254);
            }
        },
    };
    let mut failed_any = false;
    for backend in targets {
        if let Availability::Unavailable(why) = &backend.availability {
            println!(
                "stage1 {}: skipped: cannot run on this machine: {why}",
                backend.name
            );
            continue;
        }
        let mut tally = Tally::default();
        for check in all_checks() {
            if args.filter.as_deref().is_some_and(|f| !check.name.contains(f)) {
                continue;
            }
            let outcome = match Rkt::new(&rkt, backend.name) {
                Ok(h) => (check.run)(&h),
                Err(e) => Outcome::Failed(format!("cannot set up: {e}")),
            };
            let line = match &outcome {
                Outcome::Passed => {
                    tally.passed += 1;
                    "passed".to_string()
                }
                Outcome::Skipped(why) => {
                    tally.skipped += 1;
                    format!("skipped: {why}")
                }
                Outcome::Failed(why) => {
                    tally.failed += 1;
                    format!("FAILED: {why}")
                }
            };
            println!("{:<8} {:<32} {line}", backend.name, check.name);
        }
        println!(
            "stage1 {}: {} passed, {} failed, {} skipped",
            backend.name, tally.passed, tally.failed, tally.skipped
        );
        failed_any |= tally.failed > 0;
    }
    if failed_any {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn build_ace_images(dir: &Path) -> Result<(), String> {
    let validator = ace::validator().map_err(|e| format!("{e:?}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (file, spec) in [
        ("ace-validator-main.aci", ace::main_image(&validator)),
        ("ace-validator-sidekick.aci", ace::sidekick_image(&validator)),
    ] {
        let path = dir.join(file);
        spec.write(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The `rkt` next to this program. Under `cargo run` (which sets `CARGO`) it is
/// rebuilt first with the same profile, so the checks never judge a stale binary.
fn default_rkt() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "rkt", "--bin", "rkt"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().map_err(|e| format!("cargo build -p rkt: {e}"))?;
        if !status.success() {
            return Err("cargo build -p rkt failed".into());
        }
    }
    let rkt = dir.join("rkt");
    if rkt.is_file() {
        Ok(rkt)
    } else {
        Err(format!(
            "no rkt binary at {} (cargo build -p rkt, or give --rkt=PATH)",
            rkt.display()
        ))
    }
}

fn run_cri(args: &Args, socket: Option<&Path>, image: &str, log_root: &Path) -> ExitCode {
    use rkt_conformance::cri_runtime;
    let results = match socket {
        Some(socket) => cri_runtime::Ctx::new(socket, image, log_root, None)
            .map(|mut ctx| cri_runtime::run_cases(&mut ctx, args.filter.as_deref())),
        None => {
            let rkt = match args.rkt.clone().map(Ok).unwrap_or_else(default_rkt) {
                Ok(rkt) => rkt,
                Err(e) => {
                    eprintln!("rkt-conformance: {e}");
                    return ExitCode::from(254);
                }
            };
            let stage1 = if args.stage1 == "fly" {
                "nspawn"
            } else {
                &args.stage1
            };
            Rkt::new(&rkt, stage1)
                .map_err(|e| format!("cannot set up: {e}"))
                .and_then(|h| cri_runtime::run_with_own_server(&h, args.filter.as_deref()))
        }
    };
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rkt-conformance cri: {e}");
            return ExitCode::from(254);
        }
    };
    let mut failed = false;
    for (name, outcome) in &results {
        match outcome {
            Outcome::Passed => println!("cri {name}: passed"),
            Outcome::Skipped(why) => println!("cri {name}: skipped: {why}"),
            Outcome::Failed(what) => {
                failed = true;
                println!("cri {name}: FAILED: {what}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
