//! `rkt`: the command line of rkt-rs. A thin layer: flags become plain requests
//! for rkt-engine; every backend is linked here and nowhere else.

mod apps;
mod commands;
mod flags;
mod podview;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

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

/// The command line. Its parser is written out rather than derived so that
/// each subcommand's flags are built only when the command line names it
/// (see [`lazy_subcommands`]); `Command` (derived) still reads the matches.
#[derive(Debug)]
pub struct Cli {
    pub global: flags::GlobalFlags,
    pub command: Command,
}

const ABOUT: &str = "rkt-rs: the pod-native container engine";

impl clap::CommandFactory for Cli {
    fn command() -> clap::Command {
        use clap::Args;
        let root = clap::Command::new("rkt")
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .disable_help_subcommand(true)
            .subcommand_required(true)
            .arg_required_else_help(true);
        lazy_subcommands(flags::GlobalFlags::augment_args(root))
    }

    fn command_for_update() -> clap::Command {
        Self::command()
    }
}

impl clap::FromArgMatches for Cli {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Cli {
            global: flags::GlobalFlags::from_arg_matches_mut(matches)?,
            command: Command::from_arg_matches_mut(matches)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.global.update_from_arg_matches(matches)?;
        self.command.update_from_arg_matches(matches)
    }
}

impl clap::Parser for Cli {}

/// Every subcommand, each with its flags deferred (clap's `defer`) until the
/// command line names it. Building all of them, and the global flags' copies
/// in each nested one, was ~40% of the user-space instructions of a fly run
/// (callgrind). Names and one-line helps as `Command`'s derive gives them;
/// `lazy_subcommands_match_the_derived_ones` keeps the two in step.
fn lazy_subcommands(root: clap::Command) -> clap::Command {
    use commands::*;
    // An Args type's own doc comment would replace the one-line help when its
    // flags are added; the derive sets the help after them, and so does this.
    macro_rules! sub {
        ($name:literal, $about:literal, $args:ty) => {
            clap::Command::new($name)
                .about($about)
                .long_about(None)
                .defer(|c| {
                    <$args as clap::Args>::augment_args(c)
                        .about($about)
                        .long_about(None)
                })
        };
    }
    root.subcommands([
        sub!("run", "Run image(s) in a pod", run::RunArgs),
        sub!(
            "prepare",
            "Prepare a pod from image(s) and print its UUID, to run later with run-prepared",
            prepare::PrepareArgs
        ),
        sub!(
            "run-prepared",
            "Run a prepared pod",
            run_prepared::RunPreparedArgs
        ),
        sub!("stop", "Stop running pods", stop::StopArgs),
        sub!(
            "rm",
            "Remove exited or prepared pods and everything they hold",
            rm::RmArgs
        ),
        sub!(
            "enter",
            "Run a command inside a running pod's app",
            enter::EnterArgs
        ),
        sub!(
            "cat-manifest",
            "Print a pod's manifest",
            cat_manifest::CatManifestArgs
        ),
        sub!(
            "fetch",
            "Fetch image(s) and store them in the local store",
            fetch::FetchArgs
        ),
        sub!("list", "List pods", list::ListArgs),
        sub!("status", "Check the status of a pod", status::StatusArgs),
        sub!("gc", "Garbage-collect pods no longer in use", gc::GcArgs),
        sub!(
            "image",
            "Operate on image(s) in the local store",
            image::ImageArgs
        ),
        sub!(
            "logs",
            "Print the output the apps of a pod wrote (nspawn pods)",
            logs::LogsArgs
        ),
        sub!(
            "metadata-service",
            "Run the metadata service pods registered with --mds-register reach",
            metadata_service::MetadataServiceArgs
        ),
        sub!("trust", "Trust a key for verifying images", trust::TrustArgs),
        clap::Command::new("version")
            .about("Print the version and the backends this build can use")
            .long_about(None),
        sub!(
            "app",
            "Mutable pods: sandbox, add, start, stop, rm, list, status, exec",
            app::AppArgs
        ),
        sub!(
            "api-service",
            "Serve rkt's read-only gRPC API (v1alpha) over --dir",
            api_service::ApiServiceArgs
        ),
        sub!(
            "cri-service",
            "Serve the Kubernetes CRI v1 RuntimeService on a unix socket",
            cri_service::CriServiceArgs
        ),
    ])
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

    /// The parser as clap's derive would build it, for comparison.
    #[derive(Debug, clap::Parser)]
    #[command(name = "rkt", version, about = super::ABOUT, disable_help_subcommand = true)]
    struct DerivedCli {
        #[command(flatten)]
        global: crate::flags::GlobalFlags,
        #[command(subcommand)]
        command: super::Command,
    }

    /// Every command's long help, by path, with every deferred part built.
    fn helps(command: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
        out.push((path.clone(), command.render_long_help().to_string()));
        for sub in command.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            helps(sub, format!("{path} {name}"), out);
        }
    }

    #[test]
    fn lazy_subcommands_match_the_derived_ones() {
        use clap::CommandFactory;
        let mut lazy = super::Cli::command();
        let mut derived = DerivedCli::command();
        lazy.build();
        derived.build();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        helps(&mut lazy, "rkt".into(), &mut a);
        helps(&mut derived, "rkt".into(), &mut b);
        assert_eq!(
            a.len(),
            b.len(),
            "{:?}",
            a.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        assert!(a.len() > 30, "nested subcommands are compared too");
        for ((path, lazy_help), (_, derived_help)) in a.iter().zip(&b) {
            assert_eq!(lazy_help, derived_help, "{path}");
        }
        lazy.debug_assert();
    }

    #[test]
    fn a_run_is_parsed_through_the_lazy_tree() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "rkt",
            "--dir=/d",
            "run",
            "--stage1=fly",
            "img",
            "--exec",
            "/bin/true",
        ])
        .expect("parse");
        assert_eq!(cli.global.dir, std::path::PathBuf::from("/d"));
        assert!(matches!(cli.command, super::Command::Run(_)));
        for argv in [
            &["rkt", "rnu"][..],
            &["rkt", "runn"],
            &["rkt"],
            &["rkt", "image", "lst"],
            &["rkt", "--bogus", "run"],
            &["rkt", "list", "--bogus"],
            &["rkt", "--dir"],
        ] {
            let lazy = super::Cli::try_parse_from(argv)
                .expect_err("refused")
                .render()
                .to_string();
            let derived = DerivedCli::try_parse_from(argv)
                .expect_err("refused")
                .render()
                .to_string();
            assert_eq!(lazy, derived, "{argv:?}");
        }
    }

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
