//! Mutable pods, stage0's side (`rkt app ...`): a sandbox is a pod prepared
//! with no apps and run like any other; apps are then added, started, stopped
//! and removed while it runs. Each added app is prepared exactly as `rkt run`
//! prepares one (resolved image, rendered tree, the pod manifest's effective
//! app), into a private copy of its tree: an overlay would have to be mounted
//! in the running pod's mount namespace, where the tree store is not visible.
//! The running init does the rest through `pod::sandbox` requests.
//!
//! Manifest changes are serialised by an flock on `app.lock` in the pod
//! directory; the pod's own lock stays with the process that runs it.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use uuid::Uuid;

use crate::fsutil;
use crate::pod::layout;
use crate::pod::protocol;
use crate::pod::sandbox::{self, AppPhase, AppState, Request, Response};
use crate::pod::{PodInfo, PodState};
use crate::runner::{
    AppRequest, PrepareRequest, RunRequest, RunnerError, Runtime, build_pod_manifest, check_capabilities,
    effective_net, pod_stage1, select_stage1,
};
use crate::schema::{EnvVar, MntVolume, Mount, PodManifest};
use crate::stage::{FetchPolicy, PodExit, RunConfig};

const APP_LOCK: &str = "app.lock";

/// `rkt app add`.
#[derive(Debug, Clone, Default)]
pub struct AddAppRequest {
    pub uuid: Uuid,
    pub app: AppRequest,
    pub set_env: Vec<EnvVar>,
    /// `--user` and `--group`: replace the image's.
    pub user: Option<String>,
    pub group: Option<String>,
    /// `--working-dir`: replaces the image's working directory.
    pub working_dir: Option<String>,
    /// `--mnt-volume`: host paths the pod gets with this app, mounted in it only.
    pub mnt_volumes: Vec<MntVolume>,
    pub fetch: FetchPolicy,
}

/// One app of a mutable pod as `rkt app list/status` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStatus {
    pub name: String,
    pub image: String,
    pub state: AppPhase,
    pub created_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
}

impl Runtime {
    /// `rkt app sandbox`: prepares a pod with no apps and runs it in this
    /// process's lifetime, like `rkt run`; `on_prepared` learns its UUID
    /// before it starts.
    pub fn sandbox(
        &self,
        request: &RunRequest,
        on_prepared: impl FnOnce(Uuid),
    ) -> Result<PodExit, RunnerError> {
        let stage1 = select_stage1(&request.prepare.stage1)?;
        if !stage1.supports_mutable_pods() {
            return Err(RunnerError::Invalid(format!(
                "stage1 {} does not support mutable pods (rkt app)",
                stage1.name()
            )));
        }
        check_capabilities(stage1.as_ref(), &request.prepare, false)?;
        let net = effective_net(stage1.as_ref(), &request.net, request.net_explicit)?;
        let mut prepare = request.prepare.clone();
        prepare.apps.clear();
        prepare.mutable = true;
        let pod = self.prepare_pod(stage1.as_ref(), &prepare)?;
        let pod = pod.run()?;
        on_prepared(pod.uuid());
        let cfg = RunConfig {
            debug: request.debug,
            hostname: request.hostname.clone(),
            insecure: request.prepare.fetch.insecure,
            dns: request.dns.clone(),
            hosts: request.hosts.clone(),
            ..RunConfig::default()
        };
        self.start_pod(stage1.as_ref(), pod, &net, cfg)
    }

    /// `rkt app add`: prepares the app and hands it to the pod's init, which
    /// assembles its root; it is not started. Returns the app's name.
    pub fn add_app(&self, request: &AddAppRequest) -> Result<String, RunnerError> {
        let (info, _lock) = self.mutable_pod(&request.uuid)?;
        let dir = info.path.as_path();
        let manifest = read_manifest(dir)?;
        let _no_image_removal = self.store.lock_trees_shared()?;
        let mut policy = request.fetch.clone();
        if request.app.signature.is_some() {
            policy.signature = request.app.signature.clone();
        }
        let id = self.find_image(&request.app.image, &policy)?;
        let image = self.store.manifest(&id)?;
        check_mnt_volumes(&info, &manifest, &request.mnt_volumes)?;
        let mut app_request = request.app.clone();
        let mut volumes = manifest.volumes.clone();
        for m in &request.mnt_volumes {
            volumes.push(m.volume.clone());
            app_request.mounts.push(Mount {
                volume: m.volume.name.clone(),
                path: m.target.clone(),
            });
        }
        let single = build_pod_manifest(
            &PrepareRequest {
                apps: vec![app_request],
                volumes,
                set_env: request.set_env.clone(),
                ..PrepareRequest::default()
            },
            &[(id, image.clone())],
        )?;
        let Some(mut app) = single.apps.into_iter().next() else {
            return Err(RunnerError::Invalid("no app to add".into()));
        };
        if let Some(spec) = app.app.as_mut() {
            if let Some(user) = &request.user {
                spec.user = user.clone();
            }
            if let Some(group) = &request.group {
                spec.group = group.clone();
            }
            if let Some(dir) = &request.working_dir {
                spec.working_directory = Some(dir.clone());
            }
        }
        let name = app.name.as_str().to_string();
        if let Some(extra) = single.volumes.iter().find(|v| {
            !manifest.volumes.iter().any(|p| p.name == v.name)
                && !request.mnt_volumes.iter().any(|m| m.volume.name == v.name)
        }) {
            return Err(RunnerError::Invalid(format!(
                "app {name}: mount point {:?} needs a volume the pod does not have; give `rkt app sandbox` a --volume {}",
                extra.name.as_str(),
                extra.name.as_str()
            )));
        }
        if manifest.app(&name).is_some() {
            return Err(RunnerError::Invalid(format!(
                "pod {} already has an app named {name}; give this one a --name",
                info.uuid
            )));
        }
        let stage1 = pod_stage1(dir)?;
        let mut updated = manifest.clone();
        updated.apps.push(app.clone());
        updated
            .volumes
            .extend(request.mnt_volumes.iter().map(|m| m.volume.clone()));
        // Once the backend may have bound the new volumes into the pod, their
        // names stay taken, app or no app: a later app must not find a
        // stale binding under a name it reuses.
        let mut volumes_bound = false;
        let added = (|| {
            self.prepare_app(dir, &app, &image, false)?;
            write_manifest(dir, &updated)?;
            volumes_bound = !request.mnt_volumes.is_empty();
            let isolation = stage1.prepare_added_app(&info, &updated, &name, request.fetch.insecure)?;
            expect_done(
                dir,
                &Request::AddApp {
                    app: name.clone(),
                    isolation,
                },
            )
        })();
        if let Err(e) = added {
            let mut without = manifest.clone();
            if volumes_bound {
                without.volumes = updated.volumes.clone();
            }
            forget_app(dir, &without, &name);
            return Err(e);
        }
        Ok(name)
    }

    /// `rkt app start`.
    pub fn start_app(&self, uuid: &Uuid, app: &str) -> Result<(), RunnerError> {
        let (info, _lock) = self.mutable_pod(uuid)?;
        known_app(&info, app)?;
        expect_done(&info.path, &Request::StartApp { app: app.into() })
    }

    /// `rkt app stop`: returns once the app has exited, with its exit code.
    pub fn stop_app(&self, uuid: &Uuid, app: &str, force: bool) -> Result<i32, RunnerError> {
        let info = self.running_mutable(uuid)?;
        known_app(&info, app)?;
        stop(&info.path, app, force)
    }

    /// `rkt app rm`: stops the app if it runs, then removes it and its rootfs.
    pub fn remove_app(&self, uuid: &Uuid, app: &str) -> Result<(), RunnerError> {
        let info = self.running_mutable(uuid)?;
        known_app(&info, app)?;
        let state = AppState::read(&sandbox::app_state(app).on_host(&info.path));
        if state.is_some_and(|s| s.state == AppPhase::Running) {
            stop(&info.path, app, false)?;
        }
        let (info, _lock) = self.mutable_pod(uuid)?;
        let manifest = read_manifest(&info.path)?;
        expect_done(&info.path, &Request::RemoveApp { app: app.into() })?;
        forget_app(&info.path, &manifest, app);
        Ok(())
    }

    /// `rkt app list` and `rkt app status`: every app of the pod (any state).
    pub fn app_statuses(&self, uuid: &Uuid) -> Result<Vec<AppStatus>, RunnerError> {
        let info = self.pods.info(uuid)?;
        let manifest = read_manifest(&info.path)?;
        Ok(manifest
            .apps
            .iter()
            .map(|a| {
                let name = a.name.as_str();
                let state = AppState::read(&sandbox::app_state(name).on_host(&info.path));
                let recorded_code = std::fs::read_to_string(layout::app_status(&info.path, name))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                let phase = match &state {
                    // The pod ended under it.
                    Some(s) if info.state != PodState::Running && s.state == AppPhase::Running => {
                        AppPhase::Exited
                    }
                    Some(s) => s.state,
                    None if recorded_code.is_some() => AppPhase::Exited,
                    None => AppPhase::Created,
                };
                AppStatus {
                    name: name.to_string(),
                    image: a
                        .image
                        .name
                        .as_ref()
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_else(|| a.image.id.to_string()),
                    state: phase,
                    created_at: state.as_ref().map(|s| s.created_at),
                    started_at: state.as_ref().and_then(|s| s.started_at),
                    finished_at: state.as_ref().and_then(|s| s.finished_at),
                    exit_code: state.as_ref().and_then(|s| s.exit_code).or(recorded_code),
                }
            })
            .collect())
    }

    fn running_mutable(&self, uuid: &Uuid) -> Result<PodInfo, RunnerError> {
        let info = self.pods.info(uuid)?;
        if info.state != PodState::Running {
            return Err(RunnerError::Invalid(format!(
                "pod {uuid} is {}, not running",
                info.state
            )));
        }
        let manifest = read_manifest(&info.path)?;
        if !sandbox::is_mutable(&manifest) {
            return Err(RunnerError::Invalid(format!(
                "pod {uuid} is not a mutable pod (start one with `rkt app sandbox`)"
            )));
        }
        Ok(info)
    }

    /// A running mutable pod with its manifest locked against other `rkt app`s.
    fn mutable_pod(&self, uuid: &Uuid) -> Result<(PodInfo, Flock<File>), RunnerError> {
        let info = self.running_mutable(uuid)?;
        let path = info.path.join(APP_LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(format!("cannot open {}", path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(format!("cannot lock {}", path.display()), e.into()))?;
        // The pod may have ended while this waited.
        let info = self.running_mutable(uuid)?;
        Ok((info, lock))
    }
}

/// `--mnt-volume`s that name a volume the pod has, repeat a name, or whose
/// source is missing are refused before anything is made.
fn check_mnt_volumes(info: &PodInfo, manifest: &PodManifest, added: &[MntVolume]) -> Result<(), RunnerError> {
    for (i, m) in added.iter().enumerate() {
        let name = m.volume.name.as_str();
        if manifest.volumes.iter().any(|v| v.name == m.volume.name)
            || added[..i].iter().any(|o| o.volume.name == m.volume.name)
        {
            return Err(RunnerError::Invalid(format!(
                "--mnt-volume: pod {} already has a volume named {name:?}; pick another name",
                info.uuid
            )));
        }
        let source = m.volume.source.as_deref().unwrap_or_default();
        if let Err(e) = std::fs::metadata(source) {
            return Err(RunnerError::Invalid(format!(
                "--mnt-volume {name}: source {source:?}: {e}"
            )));
        }
    }
    Ok(())
}

fn io(context: String, source: std::io::Error) -> RunnerError {
    RunnerError::Io { context, source }
}

fn read_manifest(dir: &Path) -> Result<PodManifest, RunnerError> {
    let path = layout::manifest(dir);
    let bytes = std::fs::read(&path).map_err(|e| io(format!("cannot read {}", path.display()), e))?;
    PodManifest::from_json(&bytes).map_err(|e| RunnerError::Invalid(format!("{}: {e}", path.display())))
}

/// The pod's manifest and the init's copy of it.
fn write_manifest(dir: &Path, manifest: &PodManifest) -> Result<(), RunnerError> {
    let bytes = manifest.to_json();
    for path in [layout::manifest(dir), protocol::pod_manifest().on_host(dir)] {
        fsutil::atomic_write(&path, &bytes).map_err(|e| io(format!("cannot write {}", path.display()), e))?;
    }
    Ok(())
}

fn known_app(info: &PodInfo, app: &str) -> Result<(), RunnerError> {
    let manifest = read_manifest(&info.path)?;
    if manifest.app(app).is_none() {
        let names: Vec<&str> = manifest.apps.iter().map(|a| a.name.as_str()).collect();
        return Err(RunnerError::Invalid(format!(
            "pod {} has no app {app:?} (apps: {})",
            info.uuid,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok(())
}

fn ask(dir: &Path, request: &Request) -> Result<Response, RunnerError> {
    sandbox::send(dir, request).map_err(|e| RunnerError::Invalid(e.to_string()))
}

fn expect_done(dir: &Path, request: &Request) -> Result<(), RunnerError> {
    match ask(dir, request)? {
        Response::Done => Ok(()),
        Response::Failed { message } => Err(RunnerError::Invalid(message)),
        other => Err(RunnerError::Invalid(format!(
            "unexpected answer from the pod's init: {other:?}"
        ))),
    }
}

fn stop(dir: &Path, app: &str, force: bool) -> Result<i32, RunnerError> {
    match ask(
        dir,
        &Request::StopApp {
            app: app.into(),
            force,
        },
    )? {
        Response::Stopped { exit_code } => Ok(exit_code),
        Response::Failed { message } => Err(RunnerError::Invalid(message)),
        other => Err(RunnerError::Invalid(format!(
            "unexpected answer from the pod's init: {other:?}"
        ))),
    }
}

/// Puts the manifest back as it was without `app` and deletes what stage0
/// made for it. Best effort: what is left is removed with the pod at gc.
fn forget_app(dir: &Path, without: &PodManifest, app: &str) {
    let mut manifest = without.clone();
    manifest.apps.retain(|a| a.name.as_str() != app);
    if let Err(e) = write_manifest(dir, &manifest) {
        tracing::warn!("app {app}: {e}");
    }
    let paths: [PathBuf; 5] = [
        layout::app_dir(dir, app),
        layout::appsinfo(dir, app),
        layout::app_status(dir, app),
        sandbox::app_state(app).on_host(dir),
        protocol::app_log(app).on_host(dir),
    ];
    for path in paths {
        if let Err(e) = fsutil::remove_tree(&path) {
            tracing::warn!("app {app}: cannot remove {}: {e}", path.display());
        }
    }
}
