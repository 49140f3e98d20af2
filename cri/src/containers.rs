//! CRI containers on the apps of rkt's mutable pods. A container is an app
//! `rkt app add`ed to its sandbox's pod under the container's ID, so the
//! pod's own records (manifest, app state, exit code, log) say what state it
//! is in. What the CRI needs besides (metadata, labels, annotations, the
//! image as asked for, the log path) is a record in
//! `<dir>/cri/containers/<id>.json`, written atomically: a restarted service
//! finds every container again from `--dir` alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rkt_engine::fsutil;
use rkt_engine::mutable::AppStatus;
use rkt_engine::pod::sandbox::AppPhase;
use rkt_engine::pod::{PodError, PodState, PodsDir, layout, protocol};
use rkt_engine::runner::Runtime;
use rkt_engine::schema::PodManifest;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sandboxes::{Engine, SandboxError, io_err};

/// The most of each stream ExecSync hands back (the CRI asks for a cap).
const EXEC_OUTPUT_CAP: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The request is fine but the container or its sandbox is not in a
    /// state that allows it.
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl From<PodError> for ContainerError {
    fn from(e: PodError) -> Self {
        ContainerError::Sandbox(e.into())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let f = io_err(context);
    move |e| ContainerError::Sandbox(f(e))
}

/// What the CRI asked for when it created the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The app's name in the sandbox's pod.
    pub app: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the CRI named it, and the store's ID for it.
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Where the kubelet reads the log (absolute; empty: nowhere).
    pub log_path: String,
    pub memory_limit: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
}

/// What CreateContainer hands to `rkt app add`, already checked.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub record: ContainerRecord,
    /// The app's exec: the CRI command followed by its args, or the args
    /// alone (an ACI has one exec, no entrypoint/cmd split); empty keeps the
    /// image's.
    pub exec: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub cpu_shares: i64,
    pub oom_score_adj: i64,
    pub readonly_rootfs: bool,
    pub mounts: Vec<HostMount>,
}

/// A CRI mount: a host path bound at `container_path` in the container
/// (`rkt app add --mnt-volume`); checked absolute, existing and free of
/// commas (rkt's option syntax cannot carry them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

/// The state of a container as the CRI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Exited,
    /// Its pod is gone (collected behind the service's back).
    Unknown,
}

/// A container's record with what its pod says about it now.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub record: ContainerRecord,
    pub phase: Phase,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// Killed by the kernel's OOM killer (its memory cgroup counted a kill).
    pub oom_killed: bool,
}

/// Whether the kernel's OOM killer killed in the app's memory cgroup: its
/// `oom_kill` count (cgroup v1 `memory.oom_control`, v2 `memory.events`) as
/// the pod's cgroup record lists it. A VM pod's cgroups are in the guest,
/// out of sight: never.
fn oom_killed(pod: &Path, app: &str) -> bool {
    let Ok(record) = std::fs::read_to_string(pod.join("cgroups")) else {
        return false;
    };
    record
        .lines()
        .map(Path::new)
        .filter(|dir| dir.file_name().is_some_and(|n| n == app))
        .flat_map(|dir| [dir.join("memory.oom_control"), dir.join("memory.events")])
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .any(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
}

/// The image reference `rkt app add` is given for a CRI image reference: the
/// store's image ID when the ImageService's lookup knows the name (registry
/// tags and digests, `oci:` locations, ID prefixes), else the name as given,
/// which rkt's store resolves itself (ACI names and labels).
pub fn store_reference(dir: &std::path::Path, image: &str) -> Result<String, ContainerError> {
    let image = image.trim();
    let store = rkt_engine::store::Store::open(dir)
        .map_err(|e| ContainerError::Invalid(format!("cannot open the image store: {e}")))?;
    match crate::images::find_image(&store, image) {
        Ok(Some(id)) => Ok(id.to_string()),
        Ok(None) => Ok(image.to_string()),
        Err(e) => Err(ContainerError::Invalid(e.to_string())),
    }
}

impl Engine {
    fn containers_dir(&self) -> PathBuf {
        self.dir.join("cri").join("containers")
    }

    fn container_path(&self, id: &str) -> PathBuf {
        self.containers_dir().join(format!("{id}.json"))
    }

    fn container_record(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        if Uuid::try_parse(id).is_err() {
            return Ok(None);
        }
        let path = self.container_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ContainerError::Invalid(format!("{}: {e}", path.display())))
    }

    fn existing_container(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        self.container_record(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn app_of(&self, record: &ContainerRecord) -> Result<Option<(PodState, AppStatus)>, ContainerError> {
        let uuid = Uuid::parse_str(&record.sandbox_id)
            .map_err(|_| ContainerError::Invalid(format!("bad sandbox id {:?}", record.sandbox_id)))?;
        let Some(state) = self.pod_state(&uuid)? else {
            return Ok(None);
        };
        let runtime = Runtime::existing(&self.dir).map_err(|e| SandboxError::Rkt(e.to_string()))?;
        let statuses = match runtime.app_statuses(&uuid) {
            Ok(s) => s,
            // Removed between the two looks.
            Err(rkt_engine::runner::RunnerError::Pod(PodError::NotFound(_))) => return Ok(None),
            Err(e) => return Err(SandboxError::Rkt(e.to_string()).into()),
        };
        Ok(statuses
            .into_iter()
            .find(|a| a.name == record.app)
            .map(|a| (state, a)))
    }

    fn pod_dir(&self, sandbox_id: &str) -> Option<PathBuf> {
        let uuid = Uuid::parse_str(sandbox_id).ok()?;
        PodsDir::existing(&self.dir).info(&uuid).ok().map(|p| p.path)
    }

    fn view(&self, record: ContainerRecord) -> Result<ContainerView, ContainerError> {
        let Some((_, app)) = self.app_of(&record)? else {
            return Ok(ContainerView {
                record,
                phase: Phase::Unknown,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                oom_killed: false,
            });
        };
        let phase = match app.state {
            AppPhase::Created => Phase::Created,
            AppPhase::Running => Phase::Running,
            AppPhase::Exited => Phase::Exited,
        };
        let started_at = app.started_at.unwrap_or(0);
        let finished_at = match phase {
            // An app whose pod ended under it has no finish time of its own.
            Phase::Exited => app.finished_at.unwrap_or(started_at.max(record.created_at)),
            _ => 0,
        };
        Ok(ContainerView {
            phase,
            started_at,
            finished_at,
            exit_code: app
                .exit_code
                .unwrap_or(if phase == Phase::Exited { 255 } else { 0 }),
            oom_killed: phase == Phase::Exited
                && app.exit_code == Some(137)
                && self
                    .pod_dir(&record.sandbox_id)
                    .is_some_and(|pod| oom_killed(&pod, &record.app)),
            record,
        })
    }

    /// `rkt app add`s the container to its sandbox (not started), links its
    /// log where the kubelet asked, and records it.
    pub fn create_container(&self, spec: ContainerSpec) -> Result<String, ContainerError> {
        let sandbox_id = spec.record.sandbox_id.clone();
        let (sandbox, readiness) = self.status(&sandbox_id)?;
        if readiness != crate::sandboxes::Readiness::Ready {
            return Err(ContainerError::Precondition(format!(
                "pod sandbox {sandbox_id} is not ready"
            )));
        }
        let dir = self.containers_dir();
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let id = Uuid::new_v4().simple().to_string();
        let mut args = vec![
            "app".to_string(),
            "add".to_string(),
            sandbox_id.clone(),
            store_reference(&self.dir, &spec.record.image)?,
            format!("--name={id}"),
        ];
        if let Some((exec, _)) = spec.exec.split_first() {
            args.push(format!("--exec={exec}"));
        }
        if spec.record.memory_limit > 0 {
            args.push(format!("--memory={}", spec.record.memory_limit));
        }
        if spec.record.cpu_quota > 0 && spec.record.cpu_period > 0 {
            // Millicores, rounded up so a small quota still gets some CPU.
            let millis =
                ((spec.record.cpu_quota * 1000 + spec.record.cpu_period - 1) / spec.record.cpu_period).max(1);
            args.push(format!("--cpu={millis}m"));
        }
        if spec.cpu_shares > 0 {
            args.push(format!("--cpu-shares={}", spec.cpu_shares.max(2)));
        }
        if spec.oom_score_adj != 0 {
            args.push(format!("--oom-score-adj={}", spec.oom_score_adj));
        }
        if spec.readonly_rootfs {
            args.push("--readonly-rootfs=true".into());
        }
        if let Some(user) = &spec.user {
            args.push(format!("--user={user}"));
        }
        if let Some(group) = &spec.group {
            args.push(format!("--group={group}"));
        }
        if !spec.working_dir.is_empty() {
            args.push(format!("--working-dir={}", spec.working_dir));
        }
        for (key, value) in &spec.env {
            args.push(format!("--set-env={key}={value}"));
        }
        for (i, m) in spec.mounts.iter().enumerate() {
            // Volume names are the pod's: the container's ID keeps them unique.
            args.push(format!(
                "--mnt-volume=name={id}-m{i},kind=host,source={},target={},readOnly={}",
                m.host_path, m.container_path, m.readonly
            ));
        }
        if spec.exec.len() > 1 {
            args.push("--".into());
            args.extend(spec.exec[1..].iter().cloned());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.rkt_ok(&argv)?;
        let created = (|| {
            let pod = PodsDir::existing(&self.dir).info(
                &Uuid::parse_str(&sandbox_id)
                    .map_err(|_| ContainerError::Invalid(format!("bad sandbox id {sandbox_id:?}")))?,
            )?;
            let image_id = app_image_id(&pod.path, &id)?;
            let log_path = if spec.record.log_path.is_empty() || sandbox.log_directory.is_empty() {
                String::new()
            } else {
                let path = Path::new(&sandbox.log_directory).join(&spec.record.log_path);
                link_log(&protocol::app_log(&id).on_host(&pod.path), &path)?;
                path.display().to_string()
            };
            let record = ContainerRecord {
                id: id.clone(),
                app: id.clone(),
                image_id,
                log_path,
                ..spec.record.clone()
            };
            let bytes = serde_json::to_vec_pretty(&record)
                .map_err(|e| ContainerError::Invalid(format!("cannot encode the container record: {e}")))?;
            let path = self.container_path(&id);
            fsutil::atomic_write(&path, &bytes).map_err(io(format!("cannot write {}", path.display())))
        })();
        if let Err(e) = created {
            let _ = self.rkt_ok(&["app", "rm", &sandbox_id, &format!("--app={id}")]);
            return Err(e);
        }
        Ok(id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.existing_container(id)?;
        let view = self.view(record.clone())?;
        if view.phase != Phase::Created {
            return Err(ContainerError::Precondition(format!(
                "container {id} is {}, not created",
                phase_name(view.phase)
            )));
        }
        self.rkt_ok(&[
            "app",
            "start",
            &record.sandbox_id,
            &format!("--app={}", record.app),
        ])?;
        Ok(())
    }

    /// Asks the app to stop, kills it after `timeout`; a missing, never
    /// started or exited container is fine, as the CRI requires.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(record) = self.container_record(id)? else {
            return Ok(());
        };
        if self.view(record.clone())?.phase != Phase::Running {
            return Ok(());
        }
        let app = format!("--app={}", record.app);
        let mut polite = None;
        if !timeout.is_zero() {
            let mut child = self
                .rkt(&["app", "stop", &record.sandbox_id, &app])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io("cannot run rkt app stop"))?;
            if wait_timeout(&mut child, timeout).map_err(io("waiting for rkt app stop"))? {
                return Ok(());
            }
            polite = Some(child);
        }
        let forced = self.rkt_ok(&["app", "stop", &record.sandbox_id, &app, "--force"]);
        if let Some(mut child) = polite {
            // It returns once the app has exited, which the kill just made happen.
            let _ = child.wait();
        }
        match forced {
            Ok(()) => Ok(()),
            // It exited (or its pod did) while this was deciding.
            Err(_) if self.view(record)?.phase != Phase::Running => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Kills the container if it runs, removes its app from the pod and
    /// forgets it; missing is fine.
    pub fn remove_container(&self, id: &str) -> Result<(), ContainerError> {
        let Some(record) = self.container_record(id)? else {
            return Ok(());
        };
        self.stop_container(id, Duration::ZERO)?;
        if let Some((PodState::Running, _)) = self.app_of(&record)? {
            self.rkt_ok(&["app", "rm", &record.sandbox_id, &format!("--app={}", record.app)])?;
        }
        self.forget_container(id)
    }

    fn forget_container(&self, id: &str) -> Result<(), ContainerError> {
        let path = self.container_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("cannot remove {}", path.display()))(e)),
        }
    }

    /// Forgets every container of a removed sandbox.
    pub(crate) fn forget_containers_of(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let all = self.containers().map_err(|e| SandboxError::Rkt(e.to_string()))?;
        for record in all.into_iter().filter(|r| r.sandbox_id == sandbox_id) {
            self.forget_container(&record.id)
                .map_err(|e| SandboxError::Rkt(e.to_string()))?;
        }
        Ok(())
    }

    fn containers(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        let dir = self.containers_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("cannot read {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(record) = self.container_record(id)? {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every recorded container with its current state.
    pub fn list_containers(&self) -> Result<Vec<ContainerView>, ContainerError> {
        self.containers()?.into_iter().map(|r| self.view(r)).collect()
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerView, ContainerError> {
        let record = self.existing_container(id)?;
        self.view(record)
    }

    /// Runs `cmd` in the running container through `rkt app exec`; after
    /// `timeout` (zero: none) the command's process group is killed.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), ContainerError> {
        let record = self.existing_container(id)?;
        let engine = self.clone();
        let probe = record.clone();
        let phase = tokio::task::spawn_blocking(move || engine.view(probe))
            .await
            .map_err(|e| ContainerError::Invalid(format!("worker failed: {e}")))??
            .phase;
        if phase != Phase::Running {
            return Err(ContainerError::Precondition(format!(
                "container {id} is {}, not running",
                phase_name(phase)
            )));
        }
        let mut command = tokio::process::Command::new(&self.rkt);
        command
            .args(&self.global_args)
            .args([
                "app",
                "exec",
                &record.sandbox_id,
                &format!("--app={}", record.app),
                "--",
            ])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(io("cannot run rkt app exec"))?;
        let pid = child.id();
        let output = if timeout.is_zero() {
            child.wait_with_output().await
        } else {
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Ok(output) => output,
                Err(_) => {
                    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                    return Err(ContainerError::Timeout(format!(
                        "command {cmd:?} in container {id} did not finish within {}s",
                        timeout.as_secs()
                    )));
                }
            }
        }
        .map_err(io("waiting for rkt app exec"))?;
        use std::os::unix::process::ExitStatusExt;
        let code = output
            .status
            .code()
            .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
        let mut stdout = output.stdout;
        let mut stderr = output.stderr;
        stdout.truncate(EXEC_OUTPUT_CAP);
        stderr.truncate(EXEC_OUTPUT_CAP);
        Ok((stdout, stderr, code))
    }
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Created => "created",
        Phase::Running => "running",
        Phase::Exited => "exited",
        Phase::Unknown => "unknown",
    }
}

fn app_image_id(pod: &Path, app: &str) -> Result<String, ContainerError> {
    let path = layout::manifest(pod);
    let bytes = std::fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?;
    let manifest = PodManifest::from_json(&bytes)
        .map_err(|e| ContainerError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(manifest
        .app(app)
        .map(|a| a.image.id.to_string())
        .unwrap_or_default())
}

/// Makes the kubelet's log path the app's log in the pod: the pod's init
/// appends CRI records to that file, so a hard link shows them as they
/// come and keeps them after the app is removed. Across filesystems a
/// symlink does instead.
fn link_log(app_log: &Path, kubelet_path: &Path) -> Result<(), ContainerError> {
    if let Some(parent) = app_log.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app_log)
        .map_err(io(format!("cannot create {}", app_log.display())))?;
    if let Some(parent) = kubelet_path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    }
    match std::fs::remove_file(kubelet_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot replace {}", kubelet_path.display()))(e)),
    }
    match std::fs::hard_link(app_log, kubelet_path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc_exdev()) => std::os::unix::fs::symlink(app_log, kubelet_path)
            .map_err(io(format!("cannot link {}", kubelet_path.display()))),
        Err(e) => Err(io(format!("cannot link {}", kubelet_path.display()))(e)),
    }
}

fn libc_exdev() -> i32 {
    nix::errno::Errno::EXDEV as i32
}

/// Waits for `child` up to `timeout`; true if it exited. Polls the child's
/// pidfd, so no sleeping.
fn wait_timeout(child: &mut std::process::Child, timeout: Duration) -> std::io::Result<bool> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let pid = i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let raw = i32::try_from(raw).map_err(|_| std::io::Error::other("fd out of range"))?;
    // SAFETY: a fresh fd the syscall just returned, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let wait = nix::poll::PollTimeout::try_from(left.as_millis().min(60_000) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {
                child.wait()?;
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
