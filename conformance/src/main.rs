//! `rkt-conformance`: run the conformance checks against one stage1 backend, or
//! build the example image the README's demo runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rkt_conformance::{AciSpec, Outcome, Rkt, all_checks};

#[derive(Parser)]
#[command(
    name = "rkt-conformance",
    about = "Checks a rkt-rs stage1 backend through the real rkt binary"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The stage1 backend to check
    #[arg(long, default_value = "fly")]
    stage1: String,
    /// The rkt binary (default: the one next to this program)
    #[arg(long)]
    rkt: Option<PathBuf>,
    /// Only run checks whose name contains this
    #[arg(long)]
    filter: Option<String>,
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
    let rkt = args.rkt.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("rkt")))
            .unwrap_or_else(|| PathBuf::from("rkt"))
    });
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for check in all_checks() {
        if args.filter.as_deref().is_some_and(|f| !check.name.contains(f)) {
            continue;
        }
        let outcome = match Rkt::new(&rkt, &args.stage1) {
            Ok(h) => (check.run)(&h),
            Err(e) => Outcome::Failed(format!("cannot set up: {e}")),
        };
        match &outcome {
            Outcome::Passed => passed += 1,
            Outcome::Skipped(_) => skipped += 1,
            Outcome::Failed(_) => failed += 1,
        }
        println!("{:<32} {outcome:?}", check.name);
    }
    println!(
        "stage1 {}: {passed} passed, {failed} failed, {skipped} skipped",
        args.stage1
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
