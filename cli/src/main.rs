//! `rkt`: the command line of rkt-rs. A thin layer: flags become plain requests
//! for rkt-engine; every backend is linked here and nowhere else.

mod apps;
mod commands;
mod flags;
mod podview;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A backend crate that no code names is not linked, and its `inventory`
// registrations vanish with it: name every one.
use rkt_backend_cni as _;
use rkt_backend_finders as _;
use rkt_backend_fly as _;
use rkt_backend_selinux as _;

/// Exit code for rkt's own failures (as opposed to an app's exit code).
pub const EXIT_RKT_ERROR: u8 = 254;

#[derive(Debug, Parser)]
#[command(
    name = "rkt",
    version,
    about = "rkt-rs: the pod-native container engine",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: flags::GlobalFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run image(s) in a pod
    Run(Box<commands::run::RunArgs>),
    /// Fetch image(s) and store them in the local store
    Fetch(commands::fetch::FetchArgs),
    /// List pods
    List(commands::list::ListArgs),
    /// Check the status of a pod
    Status(commands::status::StatusArgs),
    /// Garbage-collect pods no longer in use
    Gc(commands::gc::GcArgs),
    /// Print the version and the backends this build can use
    Version,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors: print them whole.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A usage error is one line, like every other rkt error; --help has the rest.
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("rkt: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_RKT_ERROR);
        }
    };
    init_tracing(cli.global.debug);
    let name = command_name(&cli.command);
    match commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the whole cause chain, joined.
            eprintln!("{name}: {e:#}");
            ExitCode::from(EXIT_RKT_ERROR)
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "run",
        Command::Fetch(_) => "fetch",
        Command::List(_) => "list",
        Command::Status(_) => "status",
        Command::Gc(_) => "gc",
        Command::Version => "version",
    }
}

fn init_tracing(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

/// Defaults rkt users know.
pub const DEFAULT_DIR: &str = "/var/lib/rkt";

pub fn default_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DIR)
}
