//! `rkt app sandbox|add|start|stop|rm|list|status|exec`: mutable pods. A
//! sandbox runs (in the foreground, like `rkt run`) with no apps; the other
//! commands change it while it runs, through its stage1 (see
//! `rkt_engine::mutable`).

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rkt_engine::mutable::{AddAppRequest, AppStatus};
use rkt_engine::runner::{PrepareRequest, RunRequest, pod_stage1};
use rkt_engine::schema::{EnvVar, ExposedPort, MntVolume, Volume};
use rkt_engine::stage::process;
use rkt_engine::stage::{FetchPolicy, NetRequest};
use uuid::Uuid;

use super::run::{DnsFlags, Stage1Flags, parse_net};
use crate::apps::parse_apps;
use crate::flags::{Format, GlobalFlags, parse_duration, print_json, refuse};
use crate::table::Table;

#[derive(Debug, Args)]
pub struct AppArgs {
    #[command(subcommand)]
    pub command: AppCommand,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Run an empty pod that apps can be added to; prints its UUID
    Sandbox(Box<SandboxArgs>),
    /// Add an app to a running sandbox (not started): UUID IMAGE [per-app flags] [-- ARGS]
    Add(AddArgs),
    /// Start an added app
    Start(AppRef),
    /// Stop a running app; waits until it has exited
    Stop(StopArgs),
    /// Remove an app (stopped first if it runs) and its rootfs
    Rm(AppRef),
    /// List the apps of a pod
    List(ListArgs),
    /// Show one app's state, exit code and times
    Status(StatusArgs),
    /// Run a command in a running app; the exit code is the command's
    Exec(ExecArgs),
}

impl AppArgs {
    pub fn name(&self) -> &'static str {
        match self.command {
            AppCommand::Sandbox(_) => "app sandbox",
            AppCommand::Add(_) => "app add",
            AppCommand::Start(_) => "app start",
            AppCommand::Stop(_) => "app stop",
            AppCommand::Rm(_) => "app rm",
            AppCommand::List(_) => "app list",
            AppCommand::Status(_) => "app status",
            AppCommand::Exec(_) => "app exec",
        }
    }
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(flatten)]
    pub stage1: Stage1Flags,
    /// The pod's networks, as for `rkt run`
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "default")]
    pub net: Vec<String>,
    /// Ports to forward from the host, as rkt's: NAME:PROTO:PODPORT:HOSTIP:HOSTPORT
    /// (the pod has no apps yet to declare them)
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// A volume for the pod: NAME,kind=host|empty,source=PATH,readOnly=BOOL,...
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// The pod's hostname
    #[arg(long)]
    pub hostname: Option<String>,
    #[command(flatten)]
    pub dns: DnsFlags,
    /// Write the pod's UUID to this file
    #[arg(long)]
    pub uuid_file_save: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// UUID IMAGE [--name --exec --mount --mnt-volume --user --group --working-dir --set-env --memory --cpu ...] [-- ARGS]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "UUID IMAGE",
        required = true
    )]
    pub words: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AppRef {
    /// The pod's UUID (or an unambiguous prefix)
    pub uuid: String,
    /// The app's name
    #[arg(long)]
    pub app: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: AppRef,
    /// SIGKILL instead of SIGTERM
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The pod's UUID (or an unambiguous prefix)
    pub uuid: String,
    /// Omit the header line
    #[arg(long)]
    pub no_legend: bool,
    #[arg(long)]
    pub format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: AppRef,
    #[arg(long)]
    pub format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub target: AppRef,
    /// Kill the command after this long (e.g. 10s); 254 then
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// -- CMD [ARGS...]
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn app(global: &GlobalFlags, args: AppArgs) -> Result<u8> {
    match args.command {
        AppCommand::Sandbox(a) => sandbox(global, *a),
        AppCommand::Add(a) => add(global, a),
        AppCommand::Start(a) => {
            let runtime = global.runtime_read_only()?;
            let uuid = runtime.pods.resolve(&a.uuid)?;
            runtime.start_app(&uuid, &a.app)?;
            Ok(0)
        }
        AppCommand::Stop(a) => {
            let runtime = global.runtime_read_only()?;
            let uuid = runtime.pods.resolve(&a.target.uuid)?;
            runtime.stop_app(&uuid, &a.target.app, a.force)?;
            Ok(0)
        }
        AppCommand::Rm(a) => {
            let runtime = global.runtime_read_only()?;
            let uuid = runtime.pods.resolve(&a.uuid)?;
            runtime.remove_app(&uuid, &a.app)?;
            Ok(0)
        }
        AppCommand::List(a) => list(global, a),
        AppCommand::Status(a) => status(global, a),
        AppCommand::Exec(a) => exec(global, a),
    }
}

fn sandbox(global: &GlobalFlags, args: SandboxArgs) -> Result<u8> {
    let net = if args.net.is_empty() {
        parse_net(&["default".to_string()])
    } else {
        parse_net(&args.net)
    };
    let net = NetRequest {
        local_config: Some(global.local_config.clone()),
        ..net
    };
    let none = net.networks.iter().any(|(n, _)| n == "none");
    refuse(
        !args.ports.is_empty() && (none || net.is_host()),
        "--port flag does not work with 'none' or 'host' networking",
    )?;
    let prepare = PrepareRequest {
        volumes: args
            .volumes
            .iter()
            .map(|v| Volume::from_flag(v).with_context(|| format!("--volume {v:?}")))
            .collect::<Result<_>>()?,
        ports: args
            .ports
            .iter()
            .map(|p| ExposedPort::from_sandbox_flag(p).with_context(|| format!("--port {p:?}")))
            .collect::<Result<_>>()?,
        stage1: args.stage1.backend()?,
        fetch: FetchPolicy {
            insecure: global.insecure_options,
            config: global.config_dirs(),
            ..FetchPolicy::default()
        },
        uuid_file_save: args.uuid_file_save,
        mutable: true,
        ..PrepareRequest::default()
    };
    let request = RunRequest {
        prepare,
        net,
        net_explicit: !args.net.is_empty(),
        interactive: false,
        debug: global.debug,
        hostname: args.hostname,
        dns: args.dns.dns_mode()?,
        hosts: args.dns.hosts_mode()?,
        mds: None,
    };
    let runtime = global.runtime()?;
    let exit = runtime.sandbox(&request, |uuid| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{uuid}");
        let _ = out.flush();
    })?;
    Ok(super::exit_byte(exit.code))
}

/// Flags `rkt app add` takes besides `rkt run`'s per-app ones.
const ADD_FLAGS: &[&str] = &["--user", "--group", "--working-dir", "--set-env", "--mnt-volume"];

fn add(global: &GlobalFlags, args: AddArgs) -> Result<u8> {
    let Some((uuid, rest)) = args.words.split_first() else {
        bail!("a pod UUID and an image are required");
    };
    let mut app_words = Vec::new();
    let mut request = AddAppRequest::default();
    let mut i = 0;
    while i < rest.len() {
        let word = &rest[i];
        i += 1;
        if word == "--" {
            app_words.extend(rest[i - 1..].iter().cloned());
            break;
        }
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (word.as_str(), None),
        };
        if !ADD_FLAGS.contains(&name) {
            app_words.push(word.clone());
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = rest.get(i).with_context(|| format!("{name} needs a value"))?;
                i += 1;
                v.clone()
            }
        };
        match name {
            "--user" => request.user = Some(value),
            "--group" => request.group = Some(value),
            "--working-dir" => request.working_dir = Some(value),
            "--mnt-volume" => request
                .mnt_volumes
                .push(MntVolume::from_flag(&value).with_context(|| format!("--mnt-volume {value:?}"))?),
            _ => {
                let var = EnvVar::from_flag(&value).with_context(|| format!("--set-env {value:?}"))?;
                request.set_env.retain(|v| v.name != var.name);
                request.set_env.push(var);
            }
        }
    }
    let mut apps = parse_apps(&app_words)?;
    refuse(apps.is_empty(), "an image is required")?;
    refuse(apps.len() > 1, "rkt app add takes one image")?;
    let runtime = global.runtime()?;
    request.uuid = runtime.pods.resolve(uuid)?;
    request.app = apps.remove(0);
    request.fetch = FetchPolicy {
        insecure: global.insecure_options,
        config: global.config_dirs(),
        ..FetchPolicy::default()
    };
    runtime.add_app(&request)?;
    Ok(0)
}

#[derive(serde::Serialize)]
struct AppJson<'a> {
    name: &'a str,
    image: &'a str,
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

impl<'a> From<&'a AppStatus> for AppJson<'a> {
    fn from(a: &'a AppStatus) -> Self {
        AppJson {
            name: &a.name,
            image: &a.image,
            state: a.state.as_str(),
            created_at: a.created_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
            exit_code: a.exit_code,
        }
    }
}

fn statuses(global: &GlobalFlags, uuid: &str) -> Result<(Uuid, Vec<AppStatus>)> {
    let runtime = global.runtime_read_only()?;
    let uuid = runtime.pods.resolve(uuid)?;
    Ok((uuid, runtime.app_statuses(&uuid)?))
}

fn list(global: &GlobalFlags, args: ListArgs) -> Result<u8> {
    let (_, apps) = statuses(global, &args.uuid)?;
    if let Some(format) = args.format {
        print_json(&apps.iter().map(AppJson::from).collect::<Vec<_>>(), format)?;
        return Ok(0);
    }
    let mut table = Table::new(&["NAME", "IMAGE", "STATE", "CREATED", "STARTED"], !args.no_legend);
    for a in &apps {
        table.push(vec![
            a.name.clone(),
            a.image.clone(),
            a.state.as_str().to_string(),
            time_text(a.created_at),
            time_text(a.started_at),
        ]);
    }
    print!("{}", table.render());
    Ok(0)
}

fn status(global: &GlobalFlags, args: StatusArgs) -> Result<u8> {
    let (uuid, apps) = statuses(global, &args.target.uuid)?;
    let Some(app) = apps.iter().find(|a| a.name == args.target.app) else {
        bail!("pod {uuid} has no app {:?}", args.target.app);
    };
    if let Some(format) = args.format {
        print_json(&AppJson::from(app), format)?;
        return Ok(0);
    }
    let mut out = format!("name={}\nstate={}\n", app.name, app.state.as_str());
    for (key, t) in [
        ("created", app.created_at),
        ("started", app.started_at),
        ("finished", app.finished_at),
    ] {
        if t.is_some() {
            out.push_str(&format!("{key}={}\n", time_text(t)));
        }
    }
    if let Some(code) = app.exit_code {
        out.push_str(&format!("exit_code={code}\n"));
    }
    print!("{out}");
    Ok(0)
}

fn time_text(nanos: Option<i64>) -> String {
    match nanos.and_then(|n| u64::try_from(n).ok()) {
        Some(n) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(n)).to_string()
        }
        None => "-".into(),
    }
}

fn exec(global: &GlobalFlags, args: ExecArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let uuid = runtime.pods.resolve(&args.target.uuid)?;
    let info = runtime.pods.info(&uuid)?;
    let app = &args.target.app;
    if !runtime.app_statuses(&uuid)?.iter().any(|a| a.name == *app) {
        bail!("pod {uuid} has no app {app:?}");
    }
    let Some(timeout) = args.timeout else {
        let code = pod_stage1(&info.path)?.enter(&info, app, &args.command)?;
        return Ok(super::exit_byte(code));
    };
    // `rkt enter` in its own process group: on timeout the group goes, with
    // what it started inside the pod.
    let exe = std::env::current_exe().context("cannot find the rkt binary")?;
    let mut child = std::process::Command::new(exe)
        .arg("--dir")
        .arg(&runtime.dir)
        .arg("enter")
        .arg(format!("--app={app}"))
        .arg(uuid.to_string())
        .args(&args.command)
        .process_group(0)
        .spawn()
        .context("cannot start rkt enter")?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let pidfd = process::pidfd_open(pid).context("pidfd_open")?;
    if !process::wait_pidfd(pidfd.as_fd(), Some(timeout)).context("waiting for the command")? {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::SIGKILL);
        let _ = child.wait();
        bail!(
            "the command did not finish within {}",
            humantime::format_duration(timeout)
        );
    }
    let status = child.wait().context("waiting for the command")?;
    use std::os::unix::process::ExitStatusExt;
    Ok(super::exit_byte(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    ))
}
