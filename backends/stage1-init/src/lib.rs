//! The stage1 init: the pod's first process (PID 1 of its pid namespace) inside
//! an nspawn container. The cli runs it when `rkt` is started as
//! `rkt stage1-init` ([`protocol::INIT_ROLE_ARG`]); no backend imports this crate.
//!
//! Its life: read the pod manifest stage0 copied in, give every app its root
//! ([`mounts`]), run each app's pre-start handler, start the apps, tell stage0
//! they run ([`InitReport`]), then relay their output ([`relay`]), forward
//! stop signals, reap every process, record each app's exit code and run its
//! post-stop handler. When the last app has exited it exits with the pod's code;
//! as PID 1 its exit ends every process left in the pod.
//!
//! Single-threaded by design: it forks (std's Command with a pre_exec hook).

mod confine;
mod kmod;
mod mounts;
mod relay;
mod sandbox;
pub mod seccomp;
mod vm;
mod vm_sandbox;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, InitConfig, InitReport};
use rkt_engine::schema::{EventHandler, PodManifest};
use rkt_engine::stage::launch::{AppLaunch, LaunchError, plan_app};

use confine::Confinement;
pub use mounts::{Kernel, Mounter};
use relay::{Relay, Stream};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{context}: {}", errno_text(.source))]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {what}: {}", .source.desc())]
    Mount { what: String, source: Errno },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{0}")]
    Invalid(String),
}

impl InitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        InitError::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn mount(what: impl Into<String>, source: Errno) -> Self {
        InitError::Mount {
            what: what.into(),
            source,
        }
    }
}

/// strerror without Rust's "(os error N)".
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

const STOP_SIGNALS: [Signal; 4] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

/// The init role's entry point; returns the process exit code.
pub fn main() -> i32 {
    if std::env::args_os()
        .nth(2)
        .is_some_and(|a| a == protocol::VM_ROLE_ARG)
    {
        return vm::main();
    }
    if std::env::args_os()
        .nth(2)
        .is_some_and(|a| a == protocol::VM_ENTER_ROLE_ARG)
    {
        return match std::env::args_os().nth(3) {
            Some(dir) => vm_enter(Path::new(&dir)),
            None => 254,
        };
    }
    // The pod must not outlive nspawn (nor rkt, which nspawn dies with).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    run_pod()
}

/// Loads, starts and supervises the pod from the stage1 rootfs at `/`; the
/// pod's exit code. Shared by the container and the VM role.
fn run_pod() -> i32 {
    // Blocked from the first instant and read through a signalfd: a `rkt stop`
    // that arrives while apps are starting is acted on, not lost (PID 1 ignores
    // signals it has no handler for, but never blocked ones).
    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut pod = match Pod::load() {
        Ok(pod) => pod,
        Err(e) => return fail(&e),
    };
    vm::mark_in_vm("apps loaded");
    if let Err(e) = pod.start() {
        pod.kill_all(Signal::SIGKILL);
        pod.reap_all_blocking();
        return fail(&e);
    }
    vm::mark_in_vm("apps started");
    if pod.mutable {
        return sandbox::serve(pod, &signals);
    }
    report(&InitReport::Running);
    let code = pod.supervise(&signals);
    vm::mark_in_vm("apps exited");
    code
}

fn fail(e: &InitError) -> i32 {
    report(&InitReport::Failed {
        message: e.to_string(),
    });
    254
}

/// Writes the one report line; nobody listening (stage0 gone) is not an error.
fn report(r: &InitReport) {
    let path = protocol::report_fifo().inside();
    let Ok(fd) = nix::fcntl::open(
        &path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let _ = File::from(fd).write_all(&r.to_line());
}

fn block_signals() -> Result<SignalFd, InitError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in STOP_SIGNALS {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| InitError::io("blocking signals", e.into()))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| InitError::io("signalfd", e.into()))
}

struct App {
    name: String,
    root_dir: PathBuf,
    plan: AppLaunch,
    confinement: Confinement,
    pre_start: Option<Vec<String>>,
    post_stop: Option<Vec<String>>,
    pid: Option<Pid>,
    code: Option<i32>,
    log: Option<File>,
}

struct Pod {
    config: InitConfig,
    /// `rkt app sandbox`: apps come and go through requests (see [`sandbox`]).
    mutable: bool,
    apps: Vec<App>,
    relays: Vec<Relay>,
}

/// The config stage0 wrote for the init (`protocol::init_config`).
fn read_init_config() -> Result<InitConfig, InitError> {
    let path = protocol::init_config().inside();
    let bytes = std::fs::read(&path).map_err(|e| InitError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes).map_err(|e| InitError::Invalid(format!("{}: {e}", path.display())))
}

impl Pod {
    fn load() -> Result<Pod, InitError> {
        let config = read_init_config()?;
        let manifest = sandbox::read_manifest()?;

        mounts::ensure_console(&Kernel, Path::new("/dev"))?;
        let mutable = rkt_engine::pod::sandbox::is_mutable(&manifest);
        let mut apps = Vec::with_capacity(manifest.apps.len());
        // A sandbox starts empty: its apps arrive through requests, also those
        // stage0 added to the manifest while the pod was still starting (a VM's
        // requests wait on its channel until the init serves them).
        for runtime in manifest.apps.iter().filter(|_| !mutable) {
            let name = runtime.name.as_str();
            let isolation = config.apps.iter().find(|a| a.app == name);
            apps.push(load_app(&config, &manifest, runtime, isolation)?);
        }
        Ok(Pod {
            mutable,
            config,
            apps,
            relays: Vec::new(),
        })
    }

    /// Runs each app's pre-start handler, then starts it.
    fn start(&mut self) -> Result<(), InitError> {
        for i in 0..self.apps.len() {
            self.start_app(i)?;
        }
        Ok(())
    }

    fn start_app(&mut self, i: usize) -> Result<(), InitError> {
        {
            let app = &self.apps[i];
            if let Some(handler) = &app.pre_start {
                let code = run_handler(app, handler)?;
                if code != 0 {
                    return Err(InitError::Invalid(format!(
                        "app {:?}: pre-start handler {:?} exited with {code}",
                        app.name, handler[0]
                    )));
                }
            }
            let mut cmd = app_command(app, &app.plan.argv);
            if self.config.interactive {
                cmd.stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
                take_terminal(&mut cmd);
            } else {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| InitError::Invalid(start_error(app, &e)))?;
            if let Some(out) = child.stdout.take() {
                self.relays
                    .push(Relay::new(i, Stream::Stdout, OwnedFd::from(out)));
            }
            if let Some(err) = child.stderr.take() {
                self.relays
                    .push(Relay::new(i, Stream::Stderr, OwnedFd::from(err)));
            }
            // Reaped by pid through waitpid(-1) with every orphan: the Child
            // handle is not needed (dropping it neither waits nor kills).
            self.apps[i].pid = Some(Pid::from_raw(child.id() as i32));
        }
        Ok(())
    }

    fn supervise(&mut self, signals: &SignalFd) -> i32 {
        while self.apps.iter().any(|a| a.pid.is_some() && a.code.is_none()) {
            let ready = {
                let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                let mut owners = Vec::new();
                for (i, r) in self.relays.iter().enumerate() {
                    if let Some(fd) = r.fd() {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        owners.push(i);
                    }
                }
                match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
                let any = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let signal_ready = any(&fds[0]);
                let pipes: Vec<usize> = fds[1..]
                    .iter()
                    .zip(&owners)
                    .filter(|(f, _)| any(f))
                    .map(|(_, i)| *i)
                    .collect();
                (signal_ready, pipes)
            };
            for i in ready.1 {
                self.pump(i);
            }
            if ready.0 {
                while let Ok(Some(info)) = signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(sig) => self.kill_all(sig),
                        Err(_) => {}
                    }
                }
            }
        }
        self.drain();
        let codes: Vec<(String, i32)> = self
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.code.unwrap_or(254)))
            .collect();
        protocol::pod_exit_code(&codes)
    }

    fn pump(&mut self, i: usize) {
        let relay = &mut self.relays[i];
        let log = self.apps[relay.app].log.as_mut();
        match relay.stream {
            Stream::Stdout => relay.pump(&mut std::io::stdout().lock(), log),
            Stream::Stderr => relay.pump(&mut std::io::stderr().lock(), log),
        };
    }

    /// After the last app: what its processes wrote before exiting is in the
    /// pipes already; a process it left behind may hold a pipe open forever, so
    /// nothing waits for EOF.
    fn drain(&mut self) {
        for i in 0..self.relays.len() {
            loop {
                let readable = match self.relays[i].fd() {
                    Some(fd) => {
                        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                        matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
                    }
                    None => false,
                };
                if !readable {
                    break;
                }
                self.pump(i);
            }
        }
    }

    /// Reaps every ended child; an app's end records its code and runs its
    /// post-stop handler.
    fn reap(&mut self) {
        loop {
            let (pid, code) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            if let Some(app) = self.apps.iter_mut().find(|a| a.pid == Some(pid)) {
                app.code = Some(code);
                let status = protocol::app_status(&app.name).inside();
                if let Err(e) = fsutil::replace_file(&status, code.to_string().as_bytes()) {
                    eprintln!(
                        "stage1: app {:?}: writing {}: {}",
                        app.name,
                        status.display(),
                        errno_text(&e)
                    );
                }
                if let Some(handler) = &app.post_stop
                    && let Err(e) = run_handler(app, handler)
                {
                    eprintln!("stage1: {e}");
                }
            }
        }
    }

    fn kill_all(&self, sig: Signal) {
        for app in &self.apps {
            if let (Some(pid), None) = (app.pid, app.code) {
                // The app's process group: what it started goes too.
                let group = if self.config.interactive {
                    pid
                } else {
                    Pid::from_raw(-pid.as_raw())
                };
                let _ = nix::sys::signal::kill(group, sig);
            }
        }
    }

    fn reap_all_blocking(&mut self) {
        while let Ok(status) = waitpid(None::<Pid>, None) {
            if let Some(pid) = status.pid()
                && let Some(app) = self.apps.iter_mut().find(|a| a.pid == Some(pid))
            {
                app.code = Some(254);
            }
        }
    }
}

/// Gives one app of the manifest its root (binds, confinement) and opens its
/// log; the app is not started.
fn load_app(
    config: &InitConfig,
    manifest: &PodManifest,
    runtime: &rkt_engine::schema::RuntimeApp,
    isolation: Option<&protocol::AppIsolation>,
) -> Result<App, InitError> {
    let name = runtime.name.as_str().to_string();
    let root_dir = protocol::app_rootfs(&name).inside();
    let root = fsutil::open_dir(&root_dir)
        .map_err(|e| InitError::io(format!("app {name:?}: opening {}", root_dir.display()), e))?;
    // The pod directory is not visible here: every volume source is
    // replaced by the pod-side path stage0 bound it to.
    let mut plan = plan_app(Path::new("/"), manifest, &name, root.as_fd())?;
    drop(root);
    if let Some(url) = &config.metadata_url {
        // The metadata service's URL is rkt's to give: it beats the app's own.
        plan.env.retain(|(k, _)| k != "AC_METADATA_URL");
        plan.env.push(("AC_METADATA_URL".into(), url.clone()));
    }
    mounts::assemble(&Kernel, &root_dir, &plan.binds)
        .map_err(|e| InitError::Invalid(format!("app {name:?}: {e}")))?;
    let confinement = match isolation {
        Some(iso) => {
            mounts::confine(
                &Kernel,
                &root_dir,
                iso.read_only_rootfs,
                &iso.read_only_paths,
                &iso.masked_paths,
            )
            .map_err(|e| InitError::Invalid(format!("app {name:?}: {e}")))?;
            let mut confinement =
                Confinement::new(iso).map_err(|e| InitError::Invalid(format!("app {name:?}: {e}")))?;
            if let Some(own) = &iso.own_cgroup {
                confinement.cgroup_procs.push(make_own_cgroup(own)?);
            }
            confinement
        }
        None => Confinement::default(),
    };
    let handler = |kind: &str| {
        runtime
            .app
            .as_ref()
            .and_then(|a| a.event_handler(kind))
            .map(|h| h.exec.clone())
    };
    let log = if config.interactive {
        None
    } else {
        let path = protocol::app_log(&name).inside();
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| InitError::io(format!("opening {}", path.display()), e))?,
        )
    };
    Ok(App {
        pre_start: handler(EventHandler::PRE_START),
        post_stop: handler(EventHandler::POST_STOP),
        name,
        root_dir,
        plan,
        confinement,
        pid: None,
        code: None,
        log,
    })
}

/// Makes the app's cgroup with its limits; the `cgroup.procs` its processes join.
fn make_own_cgroup(own: &protocol::OwnCgroup) -> Result<PathBuf, InitError> {
    std::fs::create_dir_all(&own.dir)
        .map_err(|e| InitError::io(format!("creating {}", own.dir.display()), e))?;
    for (file, value) in &own.files {
        let path = own.dir.join(file);
        std::fs::write(&path, value)
            .map_err(|e| InitError::io(format!("writing {value} to {}", path.display()), e))?;
    }
    Ok(own.dir.join("cgroup.procs"))
}

/// A process in the app's root with its environment and credentials.
/// Why an app did not start, in words. A working directory missing from the
/// app's root fails the chdir before exec with the same ENOENT a missing
/// program gives (images from registries name one in their config), so it is
/// named when it is the cause.
fn start_error(app: &App, e: &std::io::Error) -> String {
    let dir = &app.plan.working_directory;
    if e.raw_os_error() == Some(libc::ENOENT) && !directory_in_root(&app.root_dir, dir) {
        return format!(
            "app {:?}: its working directory {dir:?} does not exist in the app's root",
            app.name
        );
    }
    format!(
        "app {:?}: exec {:?}: {}",
        app.name,
        app.plan.argv[0],
        errno_text(e)
    )
}

/// Whether `dir` names a directory as seen from inside `root` (symlinks
/// resolved inside it); true when that cannot be told.
fn directory_in_root(root: &Path, dir: &str) -> bool {
    let Ok(root) = fsutil::open_dir(root) else {
        return true;
    };
    fsutil::open_in_root(
        root.as_fd(),
        Path::new(dir),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .is_ok()
}

fn app_command(app: &App, argv: &[String]) -> Command {
    command_in(&app.root_dir, &app.plan, &app.confinement, argv)
}

fn command_in(root: &Path, plan: &AppLaunch, confinement: &Confinement, argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)));
    let root = root.to_path_buf();
    let plan = plan.clone();
    let confinement = confinement.clone();
    // SAFETY: the init is single-threaded, so the forked child can run ordinary
    // code until exec; the hook only changes the child's root, credentials and
    // confinement.
    unsafe {
        cmd.pre_exec(move || become_app(&root, &plan, &confinement));
    }
    cmd
}

/// chroot into the app's root, then the app's groups and user (groups first:
/// they need the privilege dropped last), then its working directory.
fn become_app(root: &Path, plan: &AppLaunch, confinement: &Confinement) -> std::io::Result<()> {
    // The init blocks the signals it reads through its signalfd; a blocked mask
    // survives fork and exec, and an app must start with nothing blocked.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    confinement.enter_cgroups()?;
    nix::unistd::chroot(root)?;
    nix::unistd::chdir("/")?;
    let groups: Vec<Gid> = plan
        .supplementary_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    confinement.limit_bounding_set()?;
    nix::unistd::setgroups(&groups)?;
    let gid = Gid::from_raw(plan.gid);
    nix::unistd::setresgid(gid, gid, gid)?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid)?;
    nix::unistd::chdir(Path::new(&plan.working_directory))?;
    confinement.finish()
}

/// The interactive app leads its own session with the pod's console as its
/// controlling terminal, so ^C and job control reach it.
fn take_terminal(cmd: &mut Command) {
    // SAFETY: single-threaded (see app_command); setsid and ioctl only.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            // Best effort: without a terminal on stdin the app still runs.
            let _ = libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
}

/// Runs an event handler in the app's root to completion; its exit code.
fn run_handler(app: &App, argv: &[String]) -> Result<i32, InitError> {
    let what = || format!("app {:?}: event handler {:?}", app.name, argv[0]);
    let mut cmd = app_command(app, argv);
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| InitError::io(what(), e))?;
    let status = child.wait().map_err(|e| InitError::io(what(), e))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `rkt enter` inside a VM: runs the request in `dir` (see
/// [`protocol::vm_enter_dir`]) in the app's root with its environment and
/// credentials, its output into files there, then records its exit code (or
/// why it could not start). Started by the VM init, already in the share.
fn vm_enter(dir: &Path) -> i32 {
    let result = run_enter_request(dir);
    let (name, text) = match &result {
        Ok(code) => (protocol::VM_ENTER_EXIT, code.to_string()),
        Err(e) => (protocol::VM_ENTER_ERROR, e.to_string()),
    };
    let _ = fsutil::replace_file(&dir.join(name), text.as_bytes());
    result.unwrap_or(254)
}

fn run_enter_request(dir: &Path) -> Result<i32, InitError> {
    // The init's blocked signals came along through exec.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| InitError::io("unblocking signals", e.into()))?;
    let claimed = dir.join(protocol::VM_ENTER_CLAIMED);
    let request: protocol::VmEnterRequest = std::fs::read(&claimed)
        .map_err(|e| InitError::io(format!("reading {}", claimed.display()), e))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| InitError::Invalid(format!("{}: {e}", claimed.display())))
        })?;
    if request.argv.is_empty() {
        return Err(InitError::Invalid("enter: no command given".into()));
    }
    let config = read_init_config()?;
    let manifest = sandbox::read_manifest()?;
    let name = request.app.as_str();
    if manifest.app(name).is_none() {
        return Err(InitError::Invalid(format!("app {name:?} is not in this pod")));
    }
    let root_dir = protocol::app_rootfs(name).inside();
    let root = fsutil::open_dir(&root_dir)
        .map_err(|e| InitError::io(format!("app {name:?}: opening {}", root_dir.display()), e))?;
    let mut plan = plan_app(Path::new("/"), &manifest, name, root.as_fd())?;
    drop(root);
    if let Some(url) = &config.metadata_url {
        plan.env.retain(|(k, _)| k != "AC_METADATA_URL");
        plan.env.push(("AC_METADATA_URL".into(), url.clone()));
    }
    let confinement = match config.apps.iter().find(|a| a.app == name) {
        Some(iso) => Confinement::new(iso).map_err(|e| InitError::Invalid(format!("app {name:?}: {e}")))?,
        None => Confinement::default(),
    };
    let output = |file: &str| {
        let path = dir.join(file);
        File::create(&path).map_err(|e| InitError::io(format!("creating {}", path.display()), e))
    };
    let mut cmd = command_in(&root_dir, &plan, &confinement, &request.argv);
    cmd.stdin(Stdio::null())
        .stdout(output(protocol::VM_ENTER_STDOUT)?)
        .stderr(output(protocol::VM_ENTER_STDERR)?);
    let status = cmd
        .status()
        .map_err(|e| InitError::Invalid(format!("enter: exec {:?}: {}", request.argv[0], errno_text(&e))))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
