//! Drives a pod Embryo -> Preparing -> Prepared | Running through the registered
//! backends, in rkt's order: pick the stage1, resolve every image, create the pod,
//! write its manifest and app rootfs, then hand it to the Networker and the Stage1.
//!
//! A prepare that fails is rolled back: the pod goes to garbage and is deleted
//! before the error is returned, so nothing half-prepared is left to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::fsutil;
use crate::mds::MdsRegistration;
use crate::pod::layout::{self, AppRootfs};
use crate::pod::{AnyPod, Pod, PodError, PodsDir, Prepared, Preparing, Running};
use crate::schema::{
    ACName, App, EnvVar, ExposedPort, ImageId, ImageManifest, Isolator, Mount, PodManifest, RuntimeApp,
    RuntimeImage, SchemaError, Volume, VolumeKind,
};
use crate::stage::block_on::block_on;
use crate::stage::registry::{self, RegistryError, Stage1Record};
use crate::stage::{
    Availability, BackendError, FetchPolicy, ImageFinder, ImageRef, InsecureOptions, Labeler, NetRequest,
    Networker, PodExit, RunConfig, Stage1,
};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunnerError {
    let context = context.into();
    move |source| RunnerError::Io { context, source }
}

/// One image on the command line with the flags that follow it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppRequest {
    pub image: String,
    /// `--name`: the app's name in the pod (default: from the image name).
    pub name: Option<String>,
    /// `--exec`: replaces the image's exec[0] and its arguments.
    pub exec: Option<String>,
    /// Arguments after `--`, appended to the exec.
    pub args: Vec<String>,
    /// `--mount` given after this image.
    pub mounts: Vec<Mount>,
    /// `--signature` for this image.
    pub signature: Option<PathBuf>,
    /// `--memory`, `--cpu`, `--caps-retain`, `--seccomp`, ... after this image:
    /// each replaces the image's isolator of the same name.
    pub isolators: Vec<Isolator>,
    /// `--readonly-rootfs` after this image.
    pub read_only_rootfs: bool,
}

/// Everything `rkt prepare` and `rkt run` need to build a pod.
#[derive(Debug, Clone, Default)]
pub struct PrepareRequest {
    pub apps: Vec<AppRequest>,
    /// `--mount` given before any image: applies to every app.
    pub mounts: Vec<Mount>,
    pub volumes: Vec<Volume>,
    pub set_env: Vec<EnvVar>,
    pub inherit_env: bool,
    pub ports: Vec<ExposedPort>,
    pub no_overlay: bool,
    /// `--private-users`: the pod gets its own uid range (see [`crate::userns`]).
    pub private_users: bool,
    /// `--pod-manifest`: use this manifest instead of building one from the flags.
    pub pod_manifest: Option<PathBuf>,
    pub stage1: String,
    pub fetch: FetchPolicy,
    /// `--uuid-file-save`: written as soon as the pod exists, so it can be removed
    /// even if preparing fails.
    pub uuid_file_save: Option<PathBuf>,
    /// `rkt app sandbox`: a pod with no apps that takes `rkt app` requests.
    pub mutable: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub prepare: PrepareRequest,
    pub net: NetRequest,
    /// Whether `--net` was given explicitly (a stage1 without network namespaces
    /// silently uses the host's network only when the user asked for nothing).
    pub net_explicit: bool,
    pub interactive: bool,
    pub debug: bool,
    /// `--hostname` (stage1s with a UTS namespace).
    pub hostname: Option<String>,
    /// `--dns*` and `--hosts-entry`.
    pub dns: crate::stage::DnsMode,
    pub hosts: crate::stage::HostsMode,
    /// `--mds-register`: register the pod with the metadata service there.
    pub mds: Option<MdsRegistration>,
}

/// `rkt run-prepared`: which prepared pod, and the run-time flags it takes.
#[derive(Debug, Clone)]
pub struct RunPreparedRequest {
    pub uuid: Uuid,
    pub net: NetRequest,
    pub net_explicit: bool,
    pub interactive: bool,
    pub debug: bool,
    pub insecure: InsecureOptions,
    /// `--mds-register`.
    pub mds: Option<MdsRegistration>,
}

/// The engine's view of one `--dir`.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub dir: PathBuf,
    pub store: Store,
    pub pods: PodsDir,
    /// `--labeler`: a Labeler by name; None picks one (see `select_labeler`).
    pub labeler: Option<String>,
}

impl Runtime {
    pub fn open(dir: &Path) -> Result<Self, RunnerError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        // Pods record tree-store paths; they must not depend on the caller's cwd.
        let dir = std::fs::canonicalize(dir).map_err(io_err(format!("cannot resolve {}", dir.display())))?;
        let dir = dir.as_path();
        Ok(Runtime {
            dir: dir.to_path_buf(),
            store: Store::open(dir)?,
            pods: PodsDir::open(dir)?,
            labeler: None,
        })
    }

    /// The runtime of a `--dir` as it is, creating nothing (see `PodsDir::existing`).
    pub fn existing(dir: &Path) -> Result<Self, RunnerError> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(Runtime {
            store: Store::open(&dir)?,
            pods: PodsDir::existing(&dir),
            dir,
            labeler: None,
        })
    }

    /// Resolves an image reference to an image in the store, fetching it through
    /// the first registered ImageFinder that handles it.
    pub fn find_image(&self, reference: &str, policy: &FetchPolicy) -> Result<ImageId, RunnerError> {
        self.find_image_into(&self.store, reference, policy)
    }

    /// `find_image`, fetching into `store` (this runtime's store, maybe set to
    /// render what it imports).
    fn find_image_into(
        &self,
        store: &Store,
        reference: &str,
        policy: &FetchPolicy,
    ) -> Result<ImageId, RunnerError> {
        let parsed = ImageRef::parse(reference);
        match &parsed {
            ImageRef::Id(_) => return Ok(self.store.resolve(reference)?),
            ImageRef::Name(name) => match self.store.resolve(name) {
                Ok(id) => return Ok(id),
                // Not a store name (a discovery string: `host:port/app`, `,label=v`):
                // the image sources decide.
                Err(StoreError::NotFound(_) | StoreError::InvalidReference { .. }) => {}
                Err(e) => return Err(e.into()),
            },
            ImageRef::Path(_) | ImageRef::Url(_) => {}
        }
        let finders = registry::all::<dyn ImageFinder>()?;
        let finder = finders.iter().find(|f| f.handles(&parsed)).ok_or_else(|| {
            if let ImageRef::Name(name) = &parsed {
                return RunnerError::Invalid(format!(
                    "image {name:?} is not in the store, and no image source in this build can fetch it by name"
                ));
            }
            RunnerError::Invalid(format!(
                "no image source handles {reference:?} (registered: {})",
                finders.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        if finder.needs_runtime() {
            return Err(RunnerError::Invalid(format!(
                "fetching {reference:?} needs the {} image source, which is not available in this build",
                finder.name()
            )));
        }
        let id = block_on(finder.find(store, &parsed, policy))?;
        tracing::debug!(image = reference, %id, source = finder.name(), "image found");
        Ok(id)
    }

    /// `rkt prepare`: a pod in state prepared, ready for `run-prepared`.
    pub fn prepare(&self, request: &PrepareRequest) -> Result<Pod<Prepared>, RunnerError> {
        let stage1 = select_stage1(&request.stage1)?;
        check_capabilities(stage1.as_ref(), request, false)?;
        let pod = self.prepare_pod(stage1.as_ref(), request)?;
        crate::failpoint::failpoint("prepare.before-prepared-rename");
        let pod = pod.prepared()?;
        crate::failpoint::failpoint("prepare.after-prepared-rename");
        Ok(pod)
    }

    /// `rkt run`: prepare, then run the pod in this process's lifetime.
    pub fn run(&self, request: &RunRequest) -> Result<PodExit, RunnerError> {
        let stage1 = select_stage1(&request.prepare.stage1)?;
        check_capabilities(stage1.as_ref(), &request.prepare, request.interactive)?;
        let net = effective_net(stage1.as_ref(), &request.net, request.net_explicit)?;
        let pod = self.prepare_pod(stage1.as_ref(), &request.prepare)?;
        let pod = pod.run()?;
        crate::failpoint::failpoint("run.running");
        tracing::debug!(pod = %pod.uuid(), stage1 = stage1.name(), "pod running");
        let cfg = RunConfig {
            interactive: request.interactive,
            debug: request.debug,
            hostname: request.hostname.clone(),
            insecure: request.prepare.fetch.insecure,
            dns: request.dns.clone(),
            hosts: request.hosts.clone(),
            ..RunConfig::default()
        };
        self.start_registered_pod(stage1.as_ref(), pod, &net, cfg, request.mds.as_ref())
    }

    /// `rkt run-prepared`: runs a pod that `prepare` left in state prepared, with
    /// the stage1 it was prepared for. Any process may do this, any time later.
    pub fn run_prepared(&self, request: &RunPreparedRequest) -> Result<PodExit, RunnerError> {
        let uuid = request.uuid;
        let pod = match self.pods.load(&uuid)? {
            AnyPod::Prepared(pod) => pod,
            other => {
                return Err(RunnerError::Invalid(format!(
                    "pod {uuid} is {}, not prepared; only a prepared pod can be run",
                    other.info().state
                )));
            }
        };
        let stage1 = pod_stage1(pod.path())?;
        if let Availability::Unavailable(why) = stage1.availability() {
            return Err(RunnerError::Invalid(format!(
                "pod {uuid} was prepared for stage1 {}, which cannot run on this machine: {why}",
                stage1.name()
            )));
        }
        if request.interactive {
            let path = layout::manifest(pod.path());
            let bytes = std::fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
            let manifest = PodManifest::from_json(&bytes)
                .map_err(|e| RunnerError::Invalid(format!("pod {uuid}: manifest: {e}")))?;
            if manifest.apps.len() > 1 {
                return Err(RunnerError::Invalid(
                    "interactive option only supports pods with one app".into(),
                ));
            }
            if !stage1.capabilities().interactive {
                return Err(RunnerError::Invalid(format!(
                    "stage1 {} does not support --interactive",
                    stage1.name()
                )));
            }
        }
        let net = effective_net(stage1.as_ref(), &request.net, request.net_explicit)?;
        let pod = pod.run()?;
        crate::failpoint::failpoint("run-prepared.running");
        tracing::debug!(pod = %uuid, stage1 = stage1.name(), "prepared pod running");
        let cfg = RunConfig {
            interactive: request.interactive,
            debug: request.debug,
            insecure: request.insecure,
            ..RunConfig::default()
        };
        self.start_registered_pod(stage1.as_ref(), pod, &net, cfg, request.mds.as_ref())
    }

    /// Sets up the network and hands a running pod to its stage1.
    pub fn run_pod(
        &self,
        stage1: &dyn Stage1,
        pod: Pod<Running>,
        net: &NetRequest,
        interactive: bool,
        debug: bool,
    ) -> Result<PodExit, RunnerError> {
        let cfg = RunConfig {
            interactive,
            debug,
            ..RunConfig::default()
        };
        self.start_pod(stage1, pod, net, cfg)
    }

    /// `run_pod` with every run option: `cfg`'s network and labels are filled in here.
    pub fn start_pod(
        &self,
        stage1: &dyn Stage1,
        pod: Pod<Running>,
        net: &NetRequest,
        cfg: RunConfig,
    ) -> Result<PodExit, RunnerError> {
        self.start_registered_pod(stage1, pod, net, cfg, None)
    }

    /// `start_pod`, registering the pod with the metadata service once its
    /// network is up (the apps' URL names the host side of that network) and
    /// unregistering it when the pod has ended.
    pub fn start_registered_pod(
        &self,
        stage1: &dyn Stage1,
        pod: Pod<Running>,
        net: &NetRequest,
        mut cfg: RunConfig,
        mds: Option<&MdsRegistration>,
    ) -> Result<PodExit, RunnerError> {
        let info = pod.info();
        let networker = select_networker(net)?;
        // Recorded before setup, so gc finds the networker of a crashed setup.
        let mut record = NetRecord {
            networker: networker.name().to_string(),
            info: Default::default(),
        };
        let record_path = pod.path().join(layout::NET_INFO);
        if networker.needs_teardown() {
            write_json(&record_path, &record)?;
        }
        let net_info = match block_on(networker.setup(&info, net)) {
            Ok(net_info) => net_info,
            Err(e) => {
                teardown_after_failed_start(networker.as_ref(), &info.path);
                return Err(e.into());
            }
        };
        // Host networking sets nothing up and leaves no record at all.
        if net_info != record.info {
            record.info = net_info.clone();
            write_json(&record_path, &record)?;
        }
        crate::failpoint::failpoint("run.network-ready");
        tracing::debug!(pod = %info.uuid, networker = networker.name(), "network set up");
        let labels = select_labeler(self.labeler.as_deref()).and_then(|labeler| {
            tracing::debug!(pod = %info.uuid, labeler = labeler.name(), "labeler chosen");
            Ok(labeler.labels(&info)?)
        });
        cfg.labels = match labels {
            Ok(labels) => labels,
            Err(e) => {
                teardown_after_failed_start(networker.as_ref(), &info.path);
                return Err(e);
            }
        };
        let registered = match mds.map(|m| m.register(&info.path, info.uuid, &net_info)) {
            None => None,
            Some(Ok(registered)) => Some(registered),
            Some(Err(e)) => {
                teardown_after_failed_start(networker.as_ref(), &info.path);
                return Err(RunnerError::Invalid(e.to_string()));
            }
        };
        cfg.metadata_url = registered.as_ref().map(|r| r.url.clone());
        cfg.net = net_info;
        crate::failpoint::failpoint("run.stage1-starting");
        if !stage1.capabilities().isolators && asks_for_isolators(pod.path()) {
            // rkt's stage1-fly: one warning, then the pod runs unconfined.
            tracing::warn!(
                "stage1 {} does not enforce isolators; the pod's isolators are ignored",
                stage1.name()
            );
        }
        let exit = stage1.run(pod, &cfg).map_err(|e| {
            teardown_after_failed_start(networker.as_ref(), &info.path);
            e.into()
        });
        if let Some(registered) = registered {
            registered.unregister();
        }
        exit
    }

    pub(crate) fn prepare_pod(
        &self,
        stage1: &dyn Stage1,
        request: &PrepareRequest,
    ) -> Result<Pod<Preparing>, RunnerError> {
        // Until the pod records its images and trees, this keeps image rm and gc off them.
        let _no_image_removal = self.store.lock_trees_shared()?;
        // Images first: a typo in an image name should not even create a pod.
        // A new image's tree is rendered as it is imported: it is needed next.
        let importing = self.store.rendering_on_import();
        let images = match &request.pod_manifest {
            Some(_) => Vec::new(),
            None => request
                .apps
                .iter()
                .map(|app| {
                    let mut policy = request.fetch.clone();
                    if app.signature.is_some() {
                        policy.signature = app.signature.clone();
                    }
                    let id = self.find_image_into(&importing, &app.image, &policy)?;
                    let manifest = self.store.manifest(&id)?;
                    Ok((id, manifest))
                })
                .collect::<Result<Vec<_>, RunnerError>>()?,
        };
        let manifest = match &request.pod_manifest {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(io_err(format!("cannot read {}", path.display())))?;
                PodManifest::from_json(&bytes)
                    .map_err(|e| RunnerError::Invalid(format!("pod manifest {}: {e}", path.display())))?
            }
            None => build_pod_manifest(request, &images)?,
        };
        if manifest.apps.is_empty() && !request.mutable {
            return Err(RunnerError::Invalid("the pod has no apps".into()));
        }
        if manifest.apps.len() > 1 && !stage1.capabilities().multi_app {
            return Err(RunnerError::Invalid(format!(
                "stage1 {} runs one app per pod, {} were given",
                stage1.name(),
                manifest.apps.len()
            )));
        }

        let embryo = self.pods.create()?;
        crate::failpoint::failpoint("prepare.embryo-created");
        if let Some(path) = &request.uuid_file_save {
            let text = embryo.uuid().to_string();
            fsutil::atomic_write(path, text.as_bytes())
                .map_err(io_err(format!("cannot save the pod UUID to {}", path.display())))?;
        }
        let pod = embryo.prepare()?;
        crate::failpoint::failpoint("prepare.preparing");
        match self.fill_pod(&pod, stage1, &manifest, &images, request) {
            Ok(()) => {
                tracing::debug!(pod = %pod.uuid(), path = %pod.path().display(), "pod prepared");
                Ok(pod)
            }
            Err(e) => {
                let uuid = pod.uuid();
                if let Err(cleanup) = pod.abort().and_then(|garbage| garbage.destroy()) {
                    tracing::warn!("pod {uuid}: rollback left it for gc: {cleanup}");
                }
                Err(e)
            }
        }
    }

    /// Writes everything a stage1 needs into a preparing pod.
    fn fill_pod(
        &self,
        pod: &Pod<Preparing>,
        stage1: &dyn Stage1,
        manifest: &PodManifest,
        images: &[(ImageId, ImageManifest)],
        request: &PrepareRequest,
    ) -> Result<(), RunnerError> {
        let no_overlay = request.no_overlay;
        let dir = pod.path();
        let record = Stage1Record::of(stage1)
            .map_err(|e| RunnerError::Invalid(format!("stage1 {} config: {e}", stage1.name())))?;
        write_json(&dir.join(layout::STAGE1), &record)?;
        let use_overlay = !no_overlay && overlay_supported();
        if !no_overlay && !use_overlay {
            tracing::warn!("overlayfs is not available; copying each app's rootfs instead");
        }
        if request.private_users {
            // As rkt: an overlay's lower layers are the shared tree store, whose
            // owners cannot be shifted for one pod.
            if use_overlay {
                return Err(RunnerError::Invalid(
                    "--private-users cannot be used with overlay: add --no-overlay".into(),
                ));
            }
            if !crate::userns::supported() {
                return Err(RunnerError::Invalid(
                    "--private-users: this kernel has no user namespaces".into(),
                ));
            }
            crate::userns::Allocator::default()
                .allocate(self.pods.root(), pod.uuid(), dir)
                .map_err(|e| RunnerError::Invalid(e.to_string()))?;
        }
        for app in &manifest.apps {
            // Already read while resolving the images, except for --pod-manifest.
            let image_manifest = match images.iter().find(|(id, _)| *id == app.image.id) {
                Some((_, m)) => std::borrow::Cow::Borrowed(m),
                None => std::borrow::Cow::Owned(self.store.manifest(&app.image.id)?),
            };
            self.prepare_app(dir, app, &image_manifest, use_overlay)?;
        }
        layout::create_host_dirs(dir, manifest).map_err(io_err("cannot create the pod's directories"))?;
        // Written without fsyncs: the pod becomes durable as a whole when (and if)
        // it moves to prepared; a crash before that leaves an aborted prepare for gc.
        fsutil::replace_file(&layout::manifest(dir), &manifest.to_json())
            .map_err(io_err("cannot write the pod manifest"))?;
        crate::failpoint::failpoint("prepare.manifest-written");
        Ok(())
    }

    pub(crate) fn prepare_app(
        &self,
        pod_dir: &Path,
        app: &RuntimeApp,
        image_manifest: &ImageManifest,
        use_overlay: bool,
    ) -> Result<(), RunnerError> {
        let name = app.name.as_str();
        // Until the tree ID is recorded below, only this lock tells image gc the
        // tree is in use (see crate::image_gc).
        let _using_tree = self.store.lock_trees_shared()?;
        let tree = self.store.render(&app.image.id)?;
        tracing::debug!(app = name, tree = %tree.tree_id, "rootfs rendered");
        crate::failpoint::failpoint("prepare.app-rendered");
        let info_dir = layout::appsinfo(pod_dir, name);
        mkdirs(&info_dir)?;
        fsutil::replace_file(
            &layout::app_image_manifest(pod_dir, name),
            &image_manifest.to_json(),
        )
        .map_err(io_err("cannot write the app's image manifest"))?;
        fsutil::replace_file(&layout::app_tree_id(pod_dir, name), tree.tree_id.as_bytes())
            .map_err(io_err("cannot write the app's tree ID"))?;
        let rootfs = layout::app_rootfs(pod_dir, name);
        let spec = if use_overlay {
            AppRootfs::Overlay {
                lower: tree.rootfs.clone(),
            }
        } else {
            if let Some(parent) = rootfs.parent() {
                mkdirs(parent)?;
            }
            crate::store::copy_tree(&tree.rootfs, &rootfs)
                .map_err(io_err(format!("cannot copy the rootfs of app {name}")))?;
            AppRootfs::Copy
        };
        write_json(&layout::app_rootfs_spec(pod_dir, name), &spec)?;
        crate::failpoint::failpoint("prepare.app-ready");
        Ok(())
    }
}

/// A pod that never started keeps no network: its leases and rules go now, not at gc.
fn teardown_after_failed_start(networker: &dyn Networker, pod_dir: &Path) {
    if let Err(e) = block_on(networker.teardown(pod_dir)) {
        tracing::warn!("network teardown of {}: {e}; gc will retry", pod_dir.display());
    }
}

/// What a Networker set up, so teardown at gc reaches the same one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetRecord {
    pub networker: String,
    #[serde(flatten)]
    pub info: crate::stage::NetInfo,
}

/// Pod files are written without fsyncs; see `fill_pod`.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RunnerError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| RunnerError::Invalid(format!("cannot encode {}: {e}", path.display())))?;
    fsutil::replace_file(path, &bytes).map_err(io_err(format!("cannot write {}", path.display())))
}

fn mkdirs(path: &Path) -> Result<(), RunnerError> {
    std::fs::create_dir_all(path).map_err(io_err(format!("cannot create {}", path.display())))
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
        .unwrap_or(false)
}

/// The stage1 named by `--stage1`, refusing one that cannot run here.
pub fn select_stage1(name: &str) -> Result<Box<dyn Stage1>, RunnerError> {
    let stage1 = registry::create::<dyn Stage1>(name)?;
    match stage1.availability() {
        Availability::Available => Ok(stage1),
        Availability::Unavailable(why) => Err(RunnerError::Invalid(format!(
            "stage1 {name} cannot run on this machine: {why}"
        ))),
    }
}

fn select_networker(net: &NetRequest) -> Result<Box<dyn Networker>, RunnerError> {
    let all = registry::all::<dyn Networker>()?;
    all.into_iter().find(|n| n.handles(net)).ok_or_else(|| {
        let names: Vec<_> = net.networks.iter().map(|(n, _)| n.as_str()).collect();
        RunnerError::Invalid(format!("no networker handles --net={}", names.join(",")))
    })
}

/// The labeler `--labeler` names (refused where it cannot run), or by default
/// the first one that labels and can run here (`selinux` where SELinux is
/// enabled), else the no-op `none`.
pub fn select_labeler(name: Option<&str>) -> Result<Box<dyn Labeler>, RunnerError> {
    if let Some(name) = name.filter(|n| *n != "auto") {
        let labeler = registry::create::<dyn Labeler>(name)?;
        return match labeler.availability() {
            Availability::Available => Ok(labeler),
            Availability::Unavailable(why) => Err(RunnerError::Invalid(format!(
                "--labeler={name} cannot run on this machine: {why}"
            ))),
        };
    }
    let mut all = registry::all::<dyn Labeler>()?;
    let pick = all
        .iter()
        .position(|l| l.name() != "none" && l.availability() == Availability::Available)
        .or_else(|| all.iter().position(|l| l.name() == "none"))
        .ok_or_else(|| RunnerError::Invalid("no labeler can run on this machine".into()))?;
    Ok(all.swap_remove(pick))
}

pub(crate) fn check_capabilities(
    stage1: &dyn Stage1,
    request: &PrepareRequest,
    interactive: bool,
) -> Result<(), RunnerError> {
    let caps = stage1.capabilities();
    if request.apps.len() > 1 && !caps.multi_app {
        return Err(RunnerError::Invalid(format!(
            "stage1 {} runs one app per pod, {} images were given",
            stage1.name(),
            request.apps.len()
        )));
    }
    if interactive && !caps.interactive {
        return Err(RunnerError::Invalid(format!(
            "stage1 {} does not support --interactive",
            stage1.name()
        )));
    }
    Ok(())
}

/// A stage1 without network namespaces runs every pod on the host's network; that
/// is only an error when the user explicitly asked for something else.
pub(crate) fn effective_net(
    stage1: &dyn Stage1,
    net: &NetRequest,
    explicit: bool,
) -> Result<NetRequest, RunnerError> {
    if stage1.capabilities().network_namespace || net.is_host() {
        return Ok(if net.networks.is_empty() {
            NetRequest::host()
        } else {
            net.clone()
        });
    }
    if explicit {
        return Err(RunnerError::Invalid(format!(
            "stage1 {} only supports the host's network (--net=host)",
            stage1.name()
        )));
    }
    Ok(NetRequest::host())
}

/// Builds the pod manifest from command-line apps: each app is the image's app
/// with rkt's overrides applied, so a stage1 reads one effective definition.
pub fn build_pod_manifest(
    request: &PrepareRequest,
    images: &[(ImageId, ImageManifest)],
) -> Result<PodManifest, RunnerError> {
    let mut volumes = request.volumes.clone();
    let mut apps = Vec::with_capacity(images.len());
    let mut names = BTreeMap::new();
    let host_env: Vec<EnvVar> = if request.inherit_env {
        std::env::vars()
            .map(|(name, value)| EnvVar { name, value })
            .collect()
    } else {
        Vec::new()
    };
    for (app_request, (id, image)) in request.apps.iter().zip(images) {
        let name = match &app_request.name {
            Some(n) => ACName::new(n).map_err(|e| RunnerError::Invalid(format!("--name {n:?}: {e}")))?,
            None => default_app_name(image)?,
        };
        if let Some(previous) = names.insert(name.clone(), app_request.image.clone()) {
            return Err(RunnerError::Invalid(format!(
                "two apps are named {name:?} ({previous} and {}); give one a --name",
                app_request.image
            )));
        }
        let mut app = match (&image.app, &app_request.exec) {
            (Some(app), _) => app.clone(),
            (None, Some(_)) => App {
                user: "0".into(),
                group: "0".into(),
                ..App::default()
            },
            (None, None) => {
                return Err(RunnerError::Invalid(format!(
                    "image {} has no app to run; give it one with --exec",
                    image.name
                )));
            }
        };
        if let Some(exec) = &app_request.exec {
            app.exec = vec![exec.clone()];
        }
        app.exec.extend(app_request.args.iter().cloned());
        if app.exec.is_empty() {
            return Err(RunnerError::Invalid(format!(
                "image {} has no exec; give one with --exec",
                image.name
            )));
        }
        app.environment = merge_env(&host_env, &app.environment, &request.set_env);
        for isolator in &app_request.isolators {
            // A retain flag also replaces the image's remove set, and back.
            let family = |name: &str| {
                name.trim_end_matches("-retain-set")
                    .trim_end_matches("-remove-set")
                    .to_string()
            };
            let replaced = family(isolator.name.as_str());
            app.isolators.retain(|i| family(i.name.as_str()) != replaced);
            app.isolators.push(isolator.clone());
        }

        let mut mounts = merge_mounts(&request.mounts, &app_request.mounts);
        for mount_point in &app.mount_points {
            let covered = mounts
                .iter()
                .any(|m| m.path == mount_point.path || m.volume == mount_point.name);
            if covered {
                continue;
            }
            if !volumes.iter().any(|v| v.name == mount_point.name) {
                tracing::warn!(
                    "app {name}: no volume for mount point {} ({}); using an empty one",
                    mount_point.name,
                    mount_point.path
                );
                volumes.push(Volume {
                    name: mount_point.name.clone(),
                    kind: VolumeKind::Empty,
                    source: None,
                    read_only: Some(mount_point.read_only),
                    recursive: None,
                    mode: None,
                    uid: None,
                    gid: None,
                });
            }
            mounts.push(Mount {
                volume: mount_point.name.clone(),
                path: mount_point.path.clone(),
            });
        }
        for mount in &mounts {
            if !volumes.iter().any(|v| v.name == mount.volume) {
                return Err(RunnerError::Invalid(format!(
                    "app {name}: --mount names volume {:?}, which no --volume defines",
                    mount.volume.as_str()
                )));
            }
        }
        apps.push(RuntimeApp {
            name,
            image: RuntimeImage {
                name: Some(image.name.clone()),
                id: id.clone(),
                labels: image.labels.clone(),
            },
            app: Some(app),
            mounts,
            annotations: Vec::new(),
            read_only_root_fs: app_request.read_only_rootfs,
        });
    }
    let mut annotations = Vec::new();
    if request.mutable {
        annotations.push(crate::pod::sandbox::mutable_annotation());
    }
    Ok(PodManifest {
        apps,
        volumes,
        isolators: Vec::new(),
        annotations,
        ports: request.ports.clone(),
        ..PodManifest::default()
    })
}

/// Whether the pod or any of its apps carries an isolator.
fn asks_for_isolators(pod: &Path) -> bool {
    pod.join(crate::userns::RANGE_FILE).exists()
        || std::fs::read(layout::manifest(pod))
            .ok()
            .and_then(|b| PodManifest::from_json(&b).ok())
            .is_some_and(|m| {
                !m.isolators.is_empty()
                    || m.apps
                        .iter()
                        .any(|a| a.app.as_ref().is_some_and(|app| !app.isolators.is_empty()))
            })
}

/// appc: an app is named after the last component of its image name.
fn default_app_name(image: &ImageManifest) -> Result<ACName, RunnerError> {
    let last = image
        .name
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or(image.name.as_str());
    ACName::new(last).map_err(|e| {
        RunnerError::Invalid(format!(
            "cannot name the app of image {} after it ({e}); give it a --name",
            image.name
        ))
    })
}

/// rkt's precedence, later wins: the host's (`--inherit-env`), the image's, `--set-env`.
fn merge_env(inherited: &[EnvVar], image: &[EnvVar], explicit: &[EnvVar]) -> Vec<EnvVar> {
    let mut merged: Vec<EnvVar> = Vec::new();
    for var in inherited.iter().chain(image).chain(explicit) {
        match merged.iter_mut().find(|v| v.name == var.name) {
            Some(existing) => existing.value = var.value.clone(),
            None => merged.push(var.clone()),
        }
    }
    merged
}

/// Per-app mounts take precedence over global ones with the same target path.
fn merge_mounts(global: &[Mount], per_app: &[Mount]) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = global
        .iter()
        .filter(|g| !per_app.iter().any(|m| m.path == g.path))
        .cloned()
        .collect();
    mounts.extend(per_app.iter().cloned());
    mounts
}

/// Reads the stage1 a pod was prepared with.
pub fn pod_stage1(pod_dir: &Path) -> Result<Box<dyn Stage1>, RunnerError> {
    let path = pod_dir.join(layout::STAGE1);
    let bytes = std::fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
    let record: Stage1Record = serde_json::from_slice(&bytes)
        .map_err(|e| RunnerError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(record.restore()?)
}

/// The UUID `--uuid-file` names.
pub fn read_uuid_file(path: &Path) -> Result<Uuid, RunnerError> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!("cannot read {}", path.display())))?;
    Uuid::parse_str(text.trim())
        .map_err(|e| RunnerError::Invalid(format!("{} does not hold a pod UUID: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn env_precedence_is_host_then_image_then_explicit() {
        let merged = merge_env(
            &[var("A", "host"), var("B", "host")],
            &[var("B", "image"), var("C", "image")],
            &[var("C", "flag")],
        );
        assert_eq!(
            merged,
            vec![var("A", "host"), var("B", "image"), var("C", "flag")]
        );
    }

    #[test]
    fn per_app_mount_overrides_global_with_same_path() {
        let m = |v: &str, p: &str| Mount {
            volume: ACName::new(v).expect("name"),
            path: p.into(),
        };
        let merged = merge_mounts(&[m("a", "/data"), m("b", "/other")], &[m("c", "/data")]);
        assert_eq!(merged, vec![m("b", "/other"), m("c", "/data")]);
    }
}
