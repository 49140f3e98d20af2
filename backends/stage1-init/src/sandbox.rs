//! The init of a mutable pod (`rkt app sandbox`): instead of starting a fixed
//! set of apps and ending with them, it serves `rkt_engine::pod::sandbox`
//! requests on a unix socket until the pod is stopped, while relaying output
//! and reaping as the ordinary init does. One connection carries one request;
//! a stop is answered when the app has exited, so it is parked until then.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, InitReport};
use rkt_engine::pod::sandbox::{self, AppPhase, AppState, Request, Response};
use rkt_engine::schema::PodManifest;

use crate::{InitError, Pod, fail, load_app, report};

/// How long a client may take to send its one line: a stuck client must not
/// stall the pod's init.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Server {
    states: HashMap<String, AppState>,
    /// Stop requests waiting for their app to exit.
    stops: Vec<(String, UnixStream)>,
    stopping: bool,
}

pub(crate) fn serve(mut pod: Pod, signals: &SignalFd) -> i32 {
    let path = sandbox::socket().inside();
    // In a VM the share's socket is the host relay's: the guest's is abstract.
    let in_vm = crate::vm_sandbox::take_listener();
    let vm = in_vm.is_some();
    let listener = match in_vm.map_or_else(|| listen(&path), Ok) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if let Err(e) = std::fs::create_dir_all(sandbox::app_state("x").inside().parent().unwrap_or(&path)) {
        return fail(&InitError::io("creating the app state directory", e));
    }
    report(&InitReport::Running);
    let mut server = Server {
        states: HashMap::new(),
        stops: Vec::new(),
        stopping: false,
    };
    loop {
        if server.stopping && !pod.apps.iter().any(|a| a.pid.is_some() && a.code.is_none()) {
            break;
        }
        let (signal_ready, client_ready, pipes) = {
            let mut fds = vec![
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            let mut owners = Vec::new();
            for (i, r) in pod.relays.iter().enumerate() {
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
            let pipes: Vec<usize> = fds[2..]
                .iter()
                .zip(&owners)
                .filter(|(f, _)| any(f))
                .map(|(_, i)| *i)
                .collect();
            (any(&fds[0]), any(&fds[1]), pipes)
        };
        for i in pipes {
            pod.pump(i);
        }
        if signal_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        pod.reap();
                        server.record_exits(&pod);
                    }
                    Ok(sig) => {
                        server.stopping = true;
                        pod.kill_all(sig);
                    }
                    Err(_) => {}
                }
            }
        }
        if client_ready && !server.stopping {
            while let Ok((stream, _)) = listener.accept() {
                if vm && !crate::vm_sandbox::admits(&stream) {
                    continue;
                }
                server.serve_client(&mut pod, stream);
            }
        }
    }
    pod.drain();
    if !vm {
        let _ = std::fs::remove_file(&path);
    }
    let codes: Vec<(String, i32)> = pod
        .apps
        .iter()
        .filter_map(|a| a.code.map(|c| (a.name.clone(), c)))
        .collect();
    protocol::pod_exit_code(&codes)
}

fn listen(path: &std::path::Path) -> Result<UnixListener, InitError> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| InitError::io(format!("listening on {}", path.display()), e))?;
    // Only root (stage0) may drive the pod.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| InitError::io(format!("chmod {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| InitError::io("listening socket", e))?;
    Ok(listener)
}

impl Server {
    fn serve_client(&mut self, pod: &mut Pod, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut line = Vec::new();
        if BufReader::new(&stream).read_until(b'\n', &mut line).is_err() || line.is_empty() {
            return;
        }
        let response = match sandbox::decode_request(&line) {
            Ok(request) => match self.handle(pod, request, &stream) {
                Ok(Some(r)) => r,
                // Parked until the app exits.
                Ok(None) => return,
                Err(e) => Response::Failed {
                    message: e.to_string(),
                },
            },
            Err(e) => Response::Failed {
                message: format!("stage1: {e}"),
            },
        };
        answer(stream, &response);
    }

    fn handle(
        &mut self,
        pod: &mut Pod,
        request: Request,
        stream: &UnixStream,
    ) -> Result<Option<Response>, InitError> {
        match request {
            Request::AddApp { app, isolation } => {
                if pod.apps.iter().any(|a| a.name == app) {
                    return Err(InitError::Invalid(format!("app {app:?} is already in the pod")));
                }
                let manifest = read_manifest()?;
                let runtime = manifest
                    .app(&app)
                    .ok_or_else(|| InitError::Invalid(format!("app {app:?} is not in the pod manifest")))?;
                let loaded = load_app(&pod.config, &manifest, runtime, isolation.as_ref());
                let loaded = match loaded {
                    Ok(a) => a,
                    Err(e) => {
                        // What was bound before the failure goes with the root.
                        let _ = detach_all_under(&protocol::app_rootfs(&app).inside());
                        return Err(e);
                    }
                };
                pod.apps.push(loaded);
                self.set(&app, AppState::created());
                Ok(Some(Response::Done))
            }
            Request::StartApp { app } => {
                let i = index(pod, &app)?;
                if pod.apps[i].pid.is_some() {
                    return Err(InitError::Invalid(format!(
                        "app {app:?} has already been started"
                    )));
                }
                pod.start_app(i)?;
                let mut state = self.states.get(&app).cloned().unwrap_or_else(AppState::created);
                state.state = AppPhase::Running;
                state.started_at = Some(sandbox::now_nanos());
                state.pid = pod.apps[i].pid.map(|p| p.as_raw());
                self.set(&app, state);
                Ok(Some(Response::Done))
            }
            Request::StopApp { app, force } => {
                let i = index(pod, &app)?;
                let a = &pod.apps[i];
                match (a.pid, a.code) {
                    (None, _) => Err(InitError::Invalid(format!("app {app:?} has not been started"))),
                    (Some(_), Some(code)) => Ok(Some(Response::Stopped { exit_code: code })),
                    (Some(pid), None) => {
                        let sig = if force { Signal::SIGKILL } else { Signal::SIGTERM };
                        let _ = nix::sys::signal::kill(Pid::from_raw(-pid.as_raw()), sig);
                        let parked = stream
                            .try_clone()
                            .map_err(|e| InitError::io("keeping the stop request", e))?;
                        self.stops.push((app, parked));
                        Ok(None)
                    }
                }
            }
            Request::RemoveApp { app } => {
                let i = index(pod, &app)?;
                if pod.apps[i].pid.is_some() && pod.apps[i].code.is_none() {
                    return Err(InitError::Invalid(format!(
                        "app {app:?} is running; stop it first"
                    )));
                }
                let root = pod.apps[i].root_dir.clone();
                detach_all_under(&root)?;
                pod.relays.retain(|r| r.app != i);
                for r in &mut pod.relays {
                    if r.app > i {
                        r.app -= 1;
                    }
                }
                pod.apps.remove(i);
                self.states.remove(&app);
                Ok(Some(Response::Done))
            }
        }
    }

    /// After a reap: apps that ended get their final state, and their
    /// parked stop requests their answer.
    fn record_exits(&mut self, pod: &Pod) {
        for a in &pod.apps {
            let Some(code) = a.code else { continue };
            let Some(state) = self.states.get(&a.name) else {
                continue;
            };
            if state.state == AppPhase::Exited {
                continue;
            }
            let mut state = state.clone();
            state.state = AppPhase::Exited;
            state.finished_at = Some(sandbox::now_nanos());
            state.exit_code = Some(code);
            state.pid = None;
            self.set(&a.name, state);
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stops)
                .into_iter()
                .partition(|(n, _)| *n == a.name);
            self.stops = waiting;
            for (_, stream) in done {
                answer(stream, &Response::Stopped { exit_code: code });
            }
        }
    }

    fn set(&mut self, app: &str, state: AppState) {
        let path = sandbox::app_state(app).inside();
        if let Err(e) = state.write(&path) {
            eprintln!("stage1: app {app:?}: writing {}: {e}", path.display());
        }
        self.states.insert(app.to_string(), state);
    }
}

/// Lazily detaches every mount below an app's root, shallowest first (a
/// detach takes the mounts below it along). Unlike stage0's unmount, file
/// mount points are fine here (nspawn binds files into /proc).
fn detach_all_under(root: &std::path::Path) -> Result<(), InitError> {
    use nix::mount::{MntFlags, umount2};
    let mut points = fsutil::mounts_under(root).map_err(|e| InitError::io("reading mountinfo", e))?;
    points.reverse();
    for point in points {
        match umount2(&point, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(InitError::mount(format!("{} (unmounting)", point.display()), e)),
        }
    }
    Ok(())
}

fn answer(mut stream: UnixStream, response: &Response) {
    // A client that went away is not the pod's problem.
    let _ = stream.write_all(&sandbox::encode_response(response));
}

fn index(pod: &Pod, app: &str) -> Result<usize, InitError> {
    pod.apps
        .iter()
        .position(|a| a.name == app)
        .ok_or_else(|| InitError::Invalid(format!("the pod has no app {app:?}")))
}

/// The pod manifest as the init sees it (stage0 rewrites it as apps come and go).
pub(crate) fn read_manifest() -> Result<PodManifest, InitError> {
    let path = protocol::pod_manifest().inside();
    let bytes = std::fs::read(&path).map_err(|e| InitError::io(format!("reading {}", path.display()), e))?;
    PodManifest::from_json(&bytes).map_err(|e| InitError::Invalid(format!("{}: {e}", path.display())))
}
