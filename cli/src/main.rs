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
use rkt_backend_kvm as _;
use rkt_backend_nspawn as _;
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
    /// Prepare a pod from image(s) and print its UUID, to run later with run-prepared
    Prepare(Box<commands::prepare::PrepareArgs>),
    /// Run a prepared pod
    RunPrepared(commands::run_prepared::RunPreparedArgs),
    /// Stop running pods
    Stop(commands::stop::StopArgs),
    /// Remove exited or prepared pods and everything they hold
    Rm(commands::rm::RmArgs),
    /// Run a command inside a running pod's app
    Enter(commands::enter::EnterArgs),
    /// Print a pod's manifest
    CatManifest(commands::cat_manifest::CatManifestArgs),
    /// Fetch image(s) and store them in the local store
    Fetch(commands::fetch::FetchArgs),
    /// List pods
    List(commands::list::ListArgs),
    /// Check the status of a pod
    Status(commands::status::StatusArgs),
    /// Garbage-collect pods no longer in use
    Gc(commands::gc::GcArgs),
    /// Operate on image(s) in the local store
    Image(commands::image::ImageArgs),
    /// Print the output the apps of a pod wrote (nspawn pods)
    Logs(commands::logs::LogsArgs),
    /// Run the metadata service pods registered with --mds-register reach
    MetadataService(commands::metadata_service::MetadataServiceArgs),
    /// Trust a key for verifying images
    Trust(commands::trust::TrustArgs),
    /// Print the version and the backends this build can use
    Version,
    /// Mutable pods: sandbox, add, start, stop, rm, list, status, exec
    App(commands::app::AppArgs),
    /// Serve rkt's read-only gRPC API (v1alpha) over --dir
    ApiService(commands::api_service::ApiServiceArgs),
    /// Serve the Kubernetes CRI v1 RuntimeService on a unix socket
    CriService(commands::cri_service::CriServiceArgs),
}

fn main() -> ExitCode {
    // The multi-call role: inside a pod this binary is the stage1 init.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == rkt_engine::pod::protocol::INIT_ROLE_ARG)
    {
        return ExitCode::from(commands::exit_byte(rkt_stage1_init::main()));
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        // --help and --version are not errors: print them whole.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A usage error is one line, like every other rkt error; --help has the rest.
        Err(e) => {
            let text = e.render().to_string();
            // "...were not provided:" names the arguments on the next line.
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("invalid arguments").to_string();
            if first.ends_with(':') {
                first = format!("{first} {}", lines.next().unwrap_or(""));
            }
            eprintln!("rkt: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_RKT_ERROR);
        }
    };
    init_tracing(cli.global.debug);
    let name = command_name(&cli.command);
    match commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e));
            ExitCode::from(EXIT_RKT_ERROR)
        }
    }
}

/// `Cli::try_parse`, minus freeing the parser: the tree of every subcommand
/// and flag takes about as long to drop as to build, on every run, and the
/// process is about to exec or exit.
fn parse_args() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = std::mem::ManuallyDrop::new(Cli::command());
    let mut matches = std::mem::ManuallyDrop::new(command.try_get_matches_from_mut(std::env::args_os())?);
    Cli::from_arg_matches_mut(&mut matches)
}

/// The error and its causes on one line, each said once. Library errors often
/// carry their cause both in their text and as `source()`, and a caller's context
/// may repeat what the error already names: a cause already in the message is
/// skipped, and a cause that contains the message so far replaces it.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if line.contains(text) {
            continue;
        }
        if text.contains(line.as_str()) {
            line = text.to_string();
        } else {
            line.push_str(": ");
            line.push_str(text);
        }
    }
    line.replace('\n', " ")
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "run",
        Command::Prepare(_) => "prepare",
        Command::RunPrepared(_) => "run-prepared",
        Command::Stop(_) => "stop",
        Command::Rm(_) => "rm",
        Command::Enter(_) => "enter",
        Command::CatManifest(_) => "cat-manifest",
        Command::Fetch(_) => "fetch",
        Command::List(_) => "list",
        Command::Status(_) => "status",
        Command::Gc(_) => "gc",
        Command::Image(args) => args.name(),
        Command::Logs(_) => "logs",
        Command::MetadataService(_) => "metadata-service",
        Command::Trust(_) => "trust",
        Command::Version => "version",
        Command::App(args) => args.name(),
        Command::ApiService(_) => "api-service",
        Command::CriService(_) => "cri-service",
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create /x: {source}")]
    struct WithSource {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::from_raw_os_error(30);
        let e = anyhow::Error::new(WithSource { source: io });
        let line = one_line(&e);
        assert_eq!(line.matches("Read-only file system").count(), 1, "{line}");

        let e = anyhow::anyhow!("x.aci: manifest: name: bad").context("x.aci");
        assert_eq!(one_line(&e), "x.aci: manifest: name: bad");

        let e = anyhow::anyhow!("disk full").context("cannot write blob");
        assert_eq!(one_line(&e), "cannot write blob: disk full");
    }
}
