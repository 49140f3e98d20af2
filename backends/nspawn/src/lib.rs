//! nspawn stage1: the pod is one systemd-nspawn container (private pid, mount,
//! ipc and uts namespaces; the host's network or the Networker's netns) whose
//! first process is the stage1 init — the `rkt` binary in its init role, a
//! shared read-only copy bound into the pod (`init_copy`). The init starts the
//! apps, each in its own rootfs; see the rkt-stage1-init crate and the protocol
//! in `rkt_engine::pod::protocol`.
//!
//! `rkt run` (this process) holds the pod's lock, waits for nspawn, forwards
//! stop signals to it, and records `ppid` (nspawn) and `pid` (the init, whose
//! namespaces `enter` joins and which `stop` signals).

mod cgroups;
mod command;
mod init_copy;
mod process;
mod setup;
mod userns;

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::layout;
use rkt_engine::pod::protocol::{self, InitReport};
use rkt_engine::pod::{Pod, PodInfo, PodState, Running};
use rkt_engine::schema::PodManifest;
use rkt_engine::stage::isolation::{self, IsolatorError};
use rkt_engine::stage::{
    Availability, BackendError, PodExit, Registration, RunConfig, Stage1, Stage1Capabilities,
};

pub use command::{NspawnArgs, Registration as MachineRegistration, valid_hostname};

/// Configurable for where nspawn lives elsewhere; stored with each pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NspawnConfig {
    pub nspawn: PathBuf,
    /// Where the read-only copy of rkt that pods run as their init is kept.
    pub init_cache: PathBuf,
}

impl Default for NspawnConfig {
    fn default() -> Self {
        NspawnConfig {
            nspawn: PathBuf::from("systemd-nspawn"),
            init_cache: PathBuf::from("/var/cache/rkt-rs/nspawn"),
        }
    }
}

#[derive(Debug, Default)]
pub struct NspawnStage1 {
    config: NspawnConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum NspawnError {
    #[error("nspawn: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// What the init or the child before exec reported, shown as is.
    #[error("{0}")]
    Pod(String),
    #[error("nspawn: {0}")]
    Invalid(String),
}

impl NspawnError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NspawnError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rkt_engine::pod::mounts::PodMountError> for NspawnError {
    fn from(e: rkt_engine::pod::mounts::PodMountError) -> Self {
        use rkt_engine::pod::mounts::PodMountError;
        match e {
            PodMountError::Io { context, source } => NspawnError::Io { context, source },
            PodMountError::Invalid(msg) => NspawnError::Invalid(msg),
        }
    }
}

impl From<IsolatorError> for NspawnError {
    fn from(e: IsolatorError) -> Self {
        NspawnError::Invalid(e.to_string())
    }
}

impl From<NspawnError> for BackendError {
    fn from(e: NspawnError) -> Self {
        match e {
            NspawnError::Io { context, source } => BackendError::io(format!("nspawn: {context}"), source),
            NspawnError::Pod(_) | NspawnError::Invalid(_) => BackendError::Other(e.to_string()),
        }
    }
}

fn factory(de: &mut dyn erased_serde::Deserializer<'_>) -> Result<Box<dyn Stage1>, erased_serde::Error> {
    let config: NspawnConfig = erased_serde::deserialize(de)?;
    Ok(Box::new(NspawnStage1 { config }))
}

inventory::submit! {
    Registration::<dyn Stage1> { name: "nspawn", factory }
}

impl NspawnStage1 {
    fn nspawn_path(&self) -> Option<PathBuf> {
        let name = &self.config.nspawn;
        if name.components().count() > 1 {
            return name.is_file().then(|| name.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }
}

impl Stage1 for NspawnStage1 {
    fn name(&self) -> &'static str {
        "nspawn"
    }

    fn capabilities(&self) -> Stage1Capabilities {
        Stage1Capabilities {
            multi_app: true,
            network_namespace: true,
            host_network: true,
            interactive: true,
            isolators: true,
        }
    }

    fn availability(&self) -> Availability {
        match self.nspawn_path() {
            Some(_) => Availability::Available,
            None => Availability::Unavailable(format!(
                "{} not found (apt-get install systemd-container)",
                self.config.nspawn.display()
            )),
        }
    }

    fn config(&self) -> &dyn erased_serde::Serialize {
        &self.config
    }

    fn run(&self, pod: Pod<Running>, cfg: &RunConfig) -> Result<PodExit, BackendError> {
        process::ensure_cloexec(pod.lock_fd())?;
        let exit = self.run_pod(pod.path(), &pod.uuid().to_string(), cfg);
        if exit.is_err() {
            // A pod that never ran leaves no cgroup behind; gc would find
            // an empty record otherwise too, this is just sooner.
            let _ = cgroups::remove(pod.path());
        }
        let exit = exit?;
        drop(pod.exited());
        Ok(exit)
    }

    fn enter(&self, pod: &PodInfo, app: &str, argv: &[String]) -> Result<i32, BackendError> {
        if pod.state != PodState::Running {
            return Err(BackendError::Other(format!(
                "pod {} is {}, cannot enter it",
                pod.uuid, pod.state
            )));
        }
        let manifest = read_manifest(&pod.path)?;
        if manifest.app(app).is_none() {
            return Err(NspawnError::Invalid(format!("app {app:?} is not in this pod")).into());
        }
        if argv.is_empty() {
            return Err(NspawnError::Invalid("enter: no command given".into()).into());
        }
        let pid = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        Ok(process::enter(pid, &pod.path, &manifest, app, argv)?)
    }

    fn stop(&self, pod: &PodInfo, force: bool) -> Result<(), BackendError> {
        if pod.state != PodState::Running {
            return Ok(());
        }
        let pid = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        // SIGTERM reaches the init, which stops every app; SIGKILL of a pid
        // namespace's init ends every process in it.
        let sig = if force {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        match nix::sys::signal::kill(pid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(BackendError::io(
                format!("nspawn: signalling pid {pid}"),
                e.into(),
            )),
        }
    }

    fn supports_mutable_pods(&self) -> bool {
        true
    }

    /// The app's `--mnt-volume`s are bound into the pod's mount namespace, its
    /// cgroups (with its limits) made beside its siblings', and its
    /// confinement planned as for an app present from the start.
    fn prepare_added_app(
        &self,
        pod: &PodInfo,
        manifest: &PodManifest,
        app: &str,
        insecure: rkt_engine::stage::InsecureOptions,
    ) -> Result<Option<protocol::AppIsolation>, BackendError> {
        // The init's root is the stage1 rootfs, in the pod's mount namespace.
        let init = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        rkt_engine::pod::inject::bind_added_volumes(&pod.path, manifest, app, init, &|name| {
            protocol::volume(name).inside()
        })
        .map_err(NspawnError::from)?;
        let pod_cgroups = cgroups::PodCgroups::plan(&pod.uuid.to_string(), manifest)?;
        let runtime = manifest
            .app(app)
            .ok_or_else(|| NspawnError::Invalid(format!("app {app:?} is not in the pod manifest")))?;
        let isolators = runtime
            .app
            .as_ref()
            .map(|a| a.isolators.as_slice())
            .unwrap_or(&[]);
        let limits = vec![(app.to_string(), cgroups::AppLimits::of(isolators)?)];
        pod_cgroups.create(&pod.path, &limits)?;
        let isolation = isolation::plan(manifest, insecure, &|app| pod_cgroups.app_procs(app))?;
        Ok(isolation.into_iter().find(|i| i.app == app))
    }

    /// Every mount of the pod lived in the namespace nspawn ran in and went
    /// with it; the pod's cgroups are what is left outside the pod directory.
    fn gc(&self, pod_dir: &Path) -> Result<(), BackendError> {
        Ok(cgroups::remove(pod_dir)?)
    }
}

impl NspawnStage1 {
    fn run_pod(&self, dir: &Path, uuid: &str, cfg: &RunConfig) -> Result<PodExit, NspawnError> {
        let manifest_bytes = std::fs::read(layout::manifest(dir))
            .map_err(|e| NspawnError::io(format!("reading {}", layout::manifest(dir).display()), e))?;
        let manifest = PodManifest::from_json(&manifest_bytes)
            .map_err(|e| NspawnError::Invalid(format!("{}: {e}", layout::manifest(dir).display())))?;
        if cfg.interactive && manifest.apps.len() != 1 {
            return Err(NspawnError::Invalid(
                "--interactive needs a pod of exactly one app".into(),
            ));
        }
        let machine = format!("rkt-{uuid}");
        let hostname = cfg.hostname.clone().unwrap_or_else(|| machine.clone());
        if !valid_hostname(&hostname) {
            return Err(NspawnError::Invalid(format!(
                "--hostname {hostname:?}: want at most 64 letters, digits, '-' and '.'"
            )));
        }
        let nspawn = self
            .nspawn_path()
            .ok_or_else(|| NspawnError::Invalid(format!("{} not found", self.config.nspawn.display())))?;
        let registration = MachineRegistration::detect();
        let private_runtime = registration == MachineRegistration::None;
        if private_runtime {
            std::fs::create_dir_all(setup::NSPAWN_RUNTIME_DIR)
                .map_err(|e| NspawnError::io(format!("creating {}", setup::NSPAWN_RUNTIME_DIR), e))?;
        }
        let pod_cgroups = cgroups::PodCgroups::plan(uuid, &manifest)?;
        let isolation = isolation::plan(&manifest, cfg.insecure, &|app| pod_cgroups.app_procs(app))?;
        let own_seccomp = isolation.iter().all(|app| app.seccomp.is_some());
        let limits = manifest
            .apps
            .iter()
            .map(|a| {
                let isolators = a.app.as_ref().map(|app| app.isolators.as_slice()).unwrap_or(&[]);
                Ok((a.name.as_str().to_string(), cgroups::AppLimits::of(isolators)?))
            })
            .collect::<Result<Vec<_>, NspawnError>>()?;
        setup::prepare_stage1_rootfs(dir, &manifest_bytes, &manifest, cfg, &hostname, isolation)?;
        pod_cgroups.create(dir, &limits)?;
        let init = init_copy::prepare(&self.config.init_cache)?;
        let mounts = setup::PodMounts::plan(dir, &manifest, private_runtime, &pod_cgroups, &init)?;
        let private_users = rkt_engine::userns::read(dir).map_err(|e| NspawnError::Invalid(e.to_string()))?;
        if let Some(range) = private_users {
            let shifted = userns::shift_pod(dir, &manifest, range)?;
            pod_cgroups.delegate(range.shift)?;
            tracing::debug!(
                shift = range.shift,
                shifted,
                "pod files shifted into its uid range"
            );
        }
        let args = NspawnArgs {
            directory: layout::stage1_rootfs(dir),
            machine,
            hostname,
            registration,
            interactive: cfg.interactive,
            netns: cfg.net.netns.clone(),
            init: vec![
                protocol::init_binary().inside().into_os_string(),
                protocol::INIT_ROLE_ARG.into(),
            ],
            own_seccomp,
            private_users: private_users.map(|r| (r.shift, r.count)),
            labels: cfg.labels.clone(),
        };
        let report = process::ReportReader::open(&protocol::report_fifo().on_host(dir))?;
        let nspawn = process::spawn_nspawn(&nspawn, &args.to_argv(), &args.env(), &mounts)?;
        write_pid_file(&dir.join(layout::PPID), nspawn.pid())?;

        let outcome = report.wait(&nspawn);
        if let Some(InitReport::Running) = &outcome
            && let Some(init) = process::init_of(nspawn.pid())
        {
            write_pid_file(&dir.join(layout::PID), init)?;
        }
        let nspawn_code = nspawn.wait()?;
        match outcome {
            Some(InitReport::Running) => {}
            Some(InitReport::Failed { message }) => return Err(NspawnError::Pod(message)),
            None => {
                return Err(NspawnError::Pod(format!(
                    "nspawn: systemd-nspawn exited with {nspawn_code} before the pod's apps started"
                )));
            }
        }
        Ok(protocol::recorded_pod_exit(dir, &manifest))
    }
}

fn write_pid_file(path: &Path, pid: nix::unistd::Pid) -> Result<(), NspawnError> {
    fsutil::replace_file(path, pid.to_string().as_bytes())
        .map_err(|e| NspawnError::io(format!("writing {}", path.display()), e))
}

fn read_manifest(dir: &Path) -> Result<PodManifest, NspawnError> {
    let path = layout::manifest(dir);
    let bytes =
        std::fs::read(&path).map_err(|e| NspawnError::io(format!("reading {}", path.display()), e))?;
    PodManifest::from_json(&bytes).map_err(|e| NspawnError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rkt_engine::stage::registry;

    #[test]
    fn registers_as_nspawn_with_its_capabilities() {
        let s = registry::create::<dyn Stage1>("nspawn").unwrap();
        assert_eq!(s.name(), "nspawn");
        let record = registry::Stage1Record::of(s.as_ref()).unwrap();
        assert_eq!(
            record.config,
            serde_json::json!({"nspawn": "systemd-nspawn", "init_cache": "/var/cache/rkt-rs/nspawn"})
        );
        let caps = s.capabilities();
        assert!(caps.multi_app && caps.interactive && caps.network_namespace && caps.isolators);
    }

    #[test]
    fn a_missing_nspawn_is_unavailable_with_the_package_named() {
        let s = NspawnStage1 {
            config: NspawnConfig {
                nspawn: "/nonexistent/systemd-nspawn".into(),
                ..NspawnConfig::default()
            },
        };
        match s.availability() {
            Availability::Unavailable(why) => assert!(why.contains("systemd-container"), "{why}"),
            Availability::Available => panic!("available without the binary"),
        }
    }

    #[test]
    fn stop_of_a_pod_that_is_not_running_signals_nobody() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pid"), "1").unwrap();
        let info = PodInfo {
            uuid: uuid::Uuid::nil(),
            state: PodState::Exited,
            path: dir.path().to_path_buf(),
        };
        NspawnStage1::default().stop(&info, true).unwrap();
    }
}
