//! fly stage1: one app, chroot in a private mount namespace, host network.
//!
//! The exec chain is rkt -> app: rkt forks, the child builds the app's root in its
//! own mount namespace (see [`child`]) and execs the app; rkt forwards signals,
//! waits, and returns the app's exit code as its own. Nothing is left outside the
//! pod directory: every mount lives in the child's namespace and dies with it.

mod child;
mod launcher;
mod stop;
pub mod syscall;

use std::path::Path;

use rkt_engine::pod::{Pod, PodInfo, PodState, Running};
use rkt_engine::stage::process::read_pid_file;
use rkt_engine::stage::{
    Availability, BackendError, PodExit, Registration, RunConfig, Stage1, Stage1Capabilities,
};

pub use launcher::{AppExit, enter_app, launch};

/// fly has nothing to configure; the struct exists so the stored record
/// (`{"stage1":"fly","config":{}}`) round-trips and can grow fields later.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FlyConfig {}

#[derive(Debug, Default)]
pub struct FlyStage1 {
    config: FlyConfig,
}

impl FlyStage1 {
    pub fn new(config: FlyConfig) -> Self {
        FlyStage1 { config }
    }
}

/// What can go wrong in a fly launch, enter or stop.
#[derive(Debug, thiserror::Error)]
pub enum FlyError {
    #[error(
        "fly runs exactly one app per pod; this pod has {0} (use a stage1 with multi-app support, e.g. nspawn)"
    )]
    NotOneApp(usize),
    #[error("fly runs apps in the host's network; a pod network namespace is not supported")]
    NetworkNamespace,
    /// A failure in the child before exec, as it reported it (`fly: ...`).
    #[error("{0}")]
    Child(String),
    #[error("fly: {0}")]
    Invalid(String),
    #[error("fly: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl FlyError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FlyError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<FlyError> for BackendError {
    fn from(e: FlyError) -> Self {
        match e {
            FlyError::NotOneApp(_) | FlyError::NetworkNamespace => BackendError::Unsupported(e.to_string()),
            FlyError::Io { context, source } => BackendError::io(format!("fly: {context}"), source),
            FlyError::Child(_) | FlyError::Invalid(_) => BackendError::Other(e.to_string()),
        }
    }
}

fn factory(de: &mut dyn erased_serde::Deserializer<'_>) -> Result<Box<dyn Stage1>, erased_serde::Error> {
    let config: FlyConfig = erased_serde::deserialize(de)?;
    Ok(Box::new(FlyStage1::new(config)))
}

inventory::submit! {
    Registration::<dyn Stage1> { name: "fly", factory }
}

impl Stage1 for FlyStage1 {
    fn name(&self) -> &'static str {
        "fly"
    }

    fn capabilities(&self) -> Stage1Capabilities {
        Stage1Capabilities {
            multi_app: false,
            network_namespace: false,
            host_network: true,
            interactive: true,
            isolators: false,
        }
    }

    fn availability(&self) -> Availability {
        if Path::new("/proc/self/ns/mnt").exists() {
            Availability::Available
        } else {
            Availability::Unavailable(
                "this kernel has no mount namespaces (/proc/self/ns/mnt is missing)".into(),
            )
        }
    }

    fn config(&self) -> &dyn erased_serde::Serialize {
        &self.config
    }

    /// stdin/stdout/stderr are inherited: fly is always interactive. The pod's
    /// lock stays with this process (the app never gets it) until the app ended.
    fn run(&self, pod: Pod<Running>, cfg: &RunConfig) -> Result<PodExit, BackendError> {
        if cfg.net.netns.is_some() {
            return Err(FlyError::NetworkNamespace.into());
        }
        launcher::ensure_cloexec(pod.lock_fd())?;
        let extra_env: Vec<(String, String)> = cfg
            .metadata_url
            .iter()
            .map(|url| ("AC_METADATA_URL".to_string(), url.clone()))
            .collect();
        let exit = launcher::launch_with_env(pod.path(), &extra_env)?;
        // Exited, then dropped: the lock goes, and on disk the pod is "exited".
        drop(pod.exited());
        Ok(PodExit {
            apps: vec![(exit.app, exit.code)],
            code: exit.code,
        })
    }

    fn enter(&self, pod: &PodInfo, app: &str, argv: &[String]) -> Result<i32, BackendError> {
        if pod.state != PodState::Running {
            return Err(BackendError::Other(format!(
                "pod {} is {}, cannot enter it",
                pod.uuid, pod.state
            )));
        }
        Ok(enter_app(&pod.path, app, argv)?)
    }

    fn stop(&self, pod: &PodInfo, force: bool) -> Result<(), BackendError> {
        // An exited pod's pid may belong to anyone by now.
        if pod.state != PodState::Running {
            return Ok(());
        }
        let pid = read_pid_file(&pod.path)?;
        let sig = if force {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        // Pin the process first, then make sure the pod still runs: the pid file
        // names the app only while the pod's lock is held, and once pinned a pid
        // that is reused afterwards can no longer be hit.
        let Some(process) = stop::Pinned::open(pid)? else {
            return Ok(());
        };
        if !stop::lock_held(&pod.path)? {
            return Ok(());
        }
        process.signal(sig)
    }

    /// Every fly mount lives in the app's own mount namespace and died with it.
    fn gc(&self, _pod_dir: &Path) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests build their own inputs; a panic is a failure report
mod launch_tests {
    use super::*;
    use rkt_engine::stage::registry;

    #[test]
    fn registers_as_fly_with_an_empty_config() {
        assert!(registry::names::<dyn Stage1>().unwrap().contains(&"fly"));
        let fly = registry::create::<dyn Stage1>("fly").unwrap();
        assert_eq!(fly.name(), "fly");
        let record = registry::Stage1Record::of(fly.as_ref()).unwrap();
        assert_eq!(record.config, serde_json::json!({}));
        assert_eq!(record.restore().unwrap().name(), "fly");
        let caps = fly.capabilities();
        assert!(!caps.multi_app && !caps.network_namespace && caps.interactive && !caps.isolators);
    }

    #[test]
    fn available_where_mount_namespaces_exist() {
        assert_eq!(FlyStage1::default().availability(), Availability::Available);
    }

    #[test]
    fn errors_map_to_backend_errors() {
        let e: BackendError = FlyError::NotOneApp(2).into();
        assert!(
            matches!(&e, BackendError::Unsupported(m) if m.starts_with("fly runs exactly one app per pod; "))
        );
        let e: BackendError = FlyError::Child("fly: exec \"/x\": No such file or directory".into()).into();
        assert_eq!(e.to_string(), "fly: exec \"/x\": No such file or directory");
    }

    #[test]
    fn a_pod_with_two_apps_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let app = |n: &str| serde_json::json!({"name": n, "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}, "app": {"exec": ["/x"], "user": "0", "group": "0"}});
        let m =
            serde_json::json!({"acVersion": "0.8.11", "acKind": "PodManifest", "apps": [app("a"), app("b")]});
        std::fs::write(dir.path().join("pod"), m.to_string()).unwrap();
        let err = launch(dir.path()).unwrap_err();
        assert!(matches!(err, FlyError::NotOneApp(2)), "{err}");
        assert!(!dir.path().join("pid").exists());
    }

    #[test]
    fn stop_of_a_pod_that_is_not_running_signals_nobody() {
        let dir = tempfile::tempdir().unwrap();
        // A pid file that must not be used: the pod is not running.
        std::fs::write(dir.path().join("pid"), "1").unwrap();
        let info = PodInfo {
            uuid: uuid::Uuid::nil(),
            state: PodState::Exited,
            path: dir.path().to_path_buf(),
        };
        FlyStage1::default().stop(&info, true).unwrap();
    }

    #[test]
    fn the_lock_fd_is_made_close_on_exec() {
        use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
        let dir = tempfile::tempdir().unwrap();
        // Opened without O_CLOEXEC, like a careless lock implementation would.
        let fd = nix::fcntl::open(
            dir.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let flags = |fd| FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(!flags(&fd).contains(FdFlag::FD_CLOEXEC));
        launcher::ensure_cloexec(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        assert!(flags(&fd).contains(FdFlag::FD_CLOEXEC));
    }
}
