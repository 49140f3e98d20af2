//! kvm stage1: every pod in a lightweight VM. QEMU (`qemu-system-x86_64 -M
//! microvm`) boots Debian's kernel as an uncompressed vmlinux (PVH entry) with
//! an initramfs whose `/init` is the static `rkt` binary in the stage1 init's
//! VM role. The pod's stage1 rootfs is shared over virtio-9p; the init runs the
//! apps from it as in an nspawn pod, writes `rkt/status/<app>` there, and ends
//! the VM through isa-debug-exit. The apps' stdout and stderr come out on two
//! virtio-serial ports wired to rkt's own.
//!
//! `rkt run` (this process) holds the pod's lock and waits for QEMU; `pid` and
//! `ppid` name QEMU.

mod accel;
mod cache;
mod enter;
mod initramfs;
mod kernel;
mod net;
mod process;
mod qemu;
mod sandbox_relay;
mod setup;
mod snapshot;

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::layout;
use rkt_engine::pod::protocol::{self, InitReport, VmConfig};
use rkt_engine::pod::{Pod, PodInfo, PodState, Running};
use rkt_engine::schema::{IsolatorKind, PodManifest};
use rkt_engine::stage::{
    Availability, BackendError, PodExit, Registration, RunConfig, Stage1, Stage1Capabilities,
};

pub use accel::{Accel, tsc_khz};
pub use initramfs::Cpio;
pub use qemu::{APPS_DIR, Machine, Nic, QemuArgs};

/// Where QEMU, the kernel and the boot-file cache live; stored with each pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KvmConfig {
    pub qemu: PathBuf,
    /// A `vmlinuz-<release>`; None: the newest under /boot with its modules.
    pub kernel: Option<PathBuf>,
    pub machine: Machine,
    /// vmlinux and initramfs files, named by a hash of what they are made of;
    /// the snapshots pods start from.
    pub cache: PathBuf,
    /// Start pods from a snapshot of a booted guest ([`snapshot`]) rather
    /// than boot each: much faster, but the pods share the guest kernel's
    /// address-space layout.
    pub snapshots: bool,
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: None,
            machine: Machine::Microvm,
            cache: PathBuf::from("/var/cache/rkt-rs/kvm"),
            snapshots: snapshots_by_default(),
        }
    }
}

/// The environment variable that turns [`KvmConfig::snapshots`] off for the
/// pods a command starts (`0`, `off`, `false` or `no`): every pod then boots.
pub const SNAPSHOTS_ENV: &str = "RKT_STAGE1_KVM_SNAPSHOTS";

fn snapshots_by_default() -> bool {
    !std::env::var(SNAPSHOTS_ENV).is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false" | "no"))
}

/// rkt's kvm flavor: 128 MB for the guest itself, and per app its memory
/// isolator's limit or 128 MB.
const BASE_MEMORY_MB: u64 = 128;
const APP_MEMORY_MB: u64 = 128;

/// How long `rkt stop` lets the guest stop its apps before killing QEMU.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct KvmStage1 {
    config: KvmConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("kvm: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// What the init or the child before exec reported, shown as is.
    #[error("{0}")]
    Pod(String),
    #[error("kvm: {0}")]
    Invalid(String),
}

impl KvmError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        KvmError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rkt_engine::pod::mounts::PodMountError> for KvmError {
    fn from(e: rkt_engine::pod::mounts::PodMountError) -> Self {
        use rkt_engine::pod::mounts::PodMountError;
        match e {
            PodMountError::Io { context, source } => KvmError::Io { context, source },
            PodMountError::Invalid(msg) => KvmError::Invalid(msg),
        }
    }
}

impl From<KvmError> for BackendError {
    fn from(e: KvmError) -> Self {
        match e {
            KvmError::Io { context, source } => BackendError::io(format!("kvm: {context}"), source),
            KvmError::Pod(_) | KvmError::Invalid(_) => BackendError::Other(e.to_string()),
        }
    }
}

fn factory(de: &mut dyn erased_serde::Deserializer<'_>) -> Result<Box<dyn Stage1>, erased_serde::Error> {
    let config: KvmConfig = erased_serde::deserialize(de)?;
    Ok(Box::new(KvmStage1 { config }))
}

inventory::submit! {
    Registration::<dyn Stage1> { name: "kvm", factory }
}

fn find_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The vmlinux and initramfs a pod started by the rkt binary at `rkt` boots
/// with the default configuration (built when absent): what a benchmark's bare
/// QEMU peer boots.
pub fn default_boot_files(rkt: &Path) -> Result<(PathBuf, PathBuf), KvmError> {
    let stage1 = KvmStage1::default();
    let boot = cache::boot_files(
        &stage1.config.cache,
        &stage1.kernel()?,
        rkt,
        stage1.config.machine.transport_module(),
    )?;
    Ok((boot.vmlinux, boot.initramfs))
}

impl KvmStage1 {
    fn kernel(&self) -> Result<kernel::Kernel, KvmError> {
        kernel::Kernel::find(
            self.config.kernel.as_deref(),
            Path::new("/boot"),
            Path::new("/lib/modules"),
        )
    }
}

impl Stage1 for KvmStage1 {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn capabilities(&self) -> Stage1Capabilities {
        Stage1Capabilities {
            multi_app: true,
            network_namespace: true,
            host_network: false,
            interactive: false,
            // Memory and cpu isolators size the VM and limit each app's
            // cgroup in the guest, whose init confines each app as nspawn's.
            isolators: true,
        }
    }

    fn availability(&self) -> Availability {
        if find_in_path(&self.config.qemu).is_none() {
            return Availability::Unavailable(format!(
                "{} not found (apt-get install qemu-system-x86)",
                self.config.qemu.display()
            ));
        }
        match self.kernel() {
            Ok(_) => Availability::Available,
            Err(e) => Availability::Unavailable(e.to_string()),
        }
    }

    fn config(&self) -> &dyn erased_serde::Serialize {
        &self.config
    }

    fn run(&self, pod: Pod<Running>, cfg: &RunConfig) -> Result<PodExit, BackendError> {
        let exit = self.run_pod(pod.path(), &pod.uuid().to_string(), cfg)?;
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
        if argv.is_empty() {
            return Err(KvmError::Invalid("enter: no command given".into()).into());
        }
        let manifest_path = layout::manifest(&pod.path);
        let manifest = std::fs::read(&manifest_path)
            .map_err(|e| KvmError::io(format!("reading {}", manifest_path.display()), e))
            .and_then(|b| {
                PodManifest::from_json(&b)
                    .map_err(|e| KvmError::Invalid(format!("{}: {e}", manifest_path.display())))
            })?;
        if manifest.app(app).is_none() {
            return Err(KvmError::Invalid(format!("app {app:?} is not in this pod")).into());
        }
        let pid = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        Ok(enter::run(&pod.path, pid, app, argv)?)
    }

    fn stop(&self, pod: &PodInfo, force: bool) -> Result<(), BackendError> {
        if pod.state != PodState::Running {
            return Ok(());
        }
        let pid = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        if !force {
            // The guest's init stops the apps (SIGTERM, post-stop handlers,
            // exit codes) and ends the VM; QEMU is killed only if it has not
            // ended within the grace period.
            let request = protocol::vm_stop_request().on_host(&pod.path);
            fsutil::replace_file(&request, b"")
                .map_err(|e| KvmError::io(format!("writing {}", request.display()), e))?;
            if process::wait_exit(pid, STOP_GRACE) {
                return Ok(());
            }
        }
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(BackendError::io(
                format!("kvm: signalling qemu (pid {pid})"),
                e.into(),
            )),
        }
    }

    /// `rkt app` requests reach the guest's init through [`sandbox_relay`].
    fn supports_mutable_pods(&self) -> bool {
        true
    }

    /// The app's cgroup (with its limits) lives in the guest, made by its
    /// init; its confinement is planned as for an app present from the start.
    fn prepare_added_app(
        &self,
        pod: &PodInfo,
        manifest: &PodManifest,
        app: &str,
        insecure: rkt_engine::stage::InsecureOptions,
    ) -> Result<Option<protocol::AppIsolation>, BackendError> {
        // QEMU's private mount namespace holds the pod's volumes; the 9p
        // share serves what is bound there.
        let qemu = rkt_engine::stage::process::read_pid_file(&pod.path)?;
        rkt_engine::pod::inject::bind_added_volumes(&pod.path, manifest, app, qemu, &|name| {
            protocol::volume(name).on_host(&pod.path)
        })
        .map_err(KvmError::from)?;
        let isolation = setup::plan_isolation(manifest, insecure)?;
        let added = isolation.into_iter().find(|i| i.app == app);
        if let Some(iso) = &added {
            setup::record_added_isolation(&pod.path, iso)?;
        }
        Ok(added)
    }

    /// QEMU died with `rkt run` (or before it); its mounts lived in its own
    /// namespace and the taps in the pod's network namespace, which the
    /// Networker removes.
    fn gc(&self, _pod_dir: &Path) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Guest memory (MB) and vCPUs from the apps' memory and cpu isolators.
fn resources(manifest: &PodManifest) -> Result<(u64, u32), KvmError> {
    let mut memory = BASE_MEMORY_MB;
    let mut millicores = 0u64;
    for app in &manifest.apps {
        let mut app_memory = APP_MEMORY_MB;
        for iso in app.app.as_ref().map(|a| a.isolators.as_slice()).unwrap_or(&[]) {
            match iso
                .kind()
                .map_err(|e| KvmError::Invalid(format!("isolator {}: {e}", iso.name)))?
            {
                IsolatorKind::Memory(m) => {
                    if let Some(bytes) = m.limit.or(m.request) {
                        app_memory = bytes.div_ceil(1024 * 1024);
                    }
                }
                IsolatorKind::Cpu(c) => millicores += c.limit.or(c.request).unwrap_or(0),
                _ => {}
            }
        }
        memory += app_memory;
    }
    Ok((memory, vcpus(millicores)))
}

/// rkt's rule: a pod whose apps name no CPU isolator gets every host CPU (a
/// multi-app pod's apps and event handlers would otherwise share one vCPU);
/// otherwise the isolators' sum, rounded up, at most the host's count.
pub fn vcpus(millicores: u64) -> u32 {
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let cpus = if millicores == 0 {
        host
    } else {
        millicores.div_ceil(1000).clamp(1, host)
    };
    u32::try_from(cpus).unwrap_or(u32::MAX)
}

impl KvmStage1 {
    fn run_pod(&self, dir: &Path, uuid: &str, cfg: &RunConfig) -> Result<PodExit, KvmError> {
        let Some(netns) = cfg.net.netns.as_deref() else {
            return Err(KvmError::Invalid(
                "a VM pod has its own network: --net=host is not supported by stage1 kvm".into(),
            ));
        };
        if cfg.interactive {
            return Err(KvmError::Invalid(
                "--interactive is not supported by stage1 kvm".into(),
            ));
        }
        let manifest_bytes = std::fs::read(layout::manifest(dir))
            .map_err(|e| KvmError::io(format!("reading {}", layout::manifest(dir).display()), e))?;
        let manifest = PodManifest::from_json(&manifest_bytes)
            .map_err(|e| KvmError::Invalid(format!("{}: {e}", layout::manifest(dir).display())))?;
        let qemu = find_in_path(&self.config.qemu)
            .ok_or_else(|| KvmError::Invalid(format!("{} not found", self.config.qemu.display())))?;
        let (accel, why) = Accel::detect();
        tracing::debug!(accel = accel.as_str(), reason = %why, "kvm: accelerator");
        let kernel = self.kernel()?;
        let boot = cache::boot_files(
            &self.config.cache,
            &kernel,
            Path::new("/proc/self/exe"),
            self.config.machine.transport_module(),
        )?;
        let (vmlinux, initramfs) = boot.qemu_paths();
        tracing::debug!(vmlinux = %boot.vmlinux.display(), initramfs = %boot.initramfs.display(), "kvm: boot files");
        let (memory_mb, cpus) = resources(&manifest)?;
        let guest_net = net::attach(netns, &cfg.net.networks)?;
        let sandbox = rkt_engine::pod::sandbox::is_mutable(&manifest);
        let vm = VmConfig {
            hostname: cfg.hostname.clone().unwrap_or_else(|| format!("rkt-{uuid}")),
            interfaces: guest_net.interfaces,
            routes: guest_net.routes,
            sandbox,
        };
        setup::prepare_stage1_rootfs(dir, &manifest_bytes, &manifest, cfg, &vm)?;
        let mounts = setup::PodMounts::plan(dir, &manifest)?;
        let mut args = QemuArgs {
            machine: self.config.machine,
            accel,
            memory_mb,
            cpus,
            vmlinux,
            initramfs,
            share: layout::stage1_rootfs(dir),
            nics: guest_net.nics,
            debug: cfg.debug,
            tsc_khz: accel::tsc_khz(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
            snapshot: false,
        };
        let channel = sandbox.then(sandbox_relay::Channel::new).transpose()?;
        let argv_of = |args: &QemuArgs| {
            let mut argv = args.to_argv();
            if let Some(channel) = &channel {
                argv.extend(QemuArgs::sandbox_channel_argv(channel.qemu_fd()));
            }
            argv
        };
        let spawn_with = |argv: &[std::ffi::OsString], mounts: &setup::PodMounts| {
            tracing::debug!(?argv, "kvm: starting qemu");
            process::spawn(&qemu, argv, net::open_netns(netns)?, mounts)
        };
        let spawn = |argv: &[std::ffi::OsString]| spawn_with(argv, &mounts);
        // The guest that is saved never looks into the share: its QEMU needs
        // none of the pod's mounts (which the restored one then mounts anew).
        let spawn_to_save = |argv: &[std::ffi::OsString]| spawn_with(argv, &setup::PodMounts::default());
        let restored = match self.snapshot_for(&qemu, &boot, &args, sandbox) {
            Ok(snapshot) => {
                args.snapshot = true;
                start_from_snapshot(&snapshot, &argv_of(&args), &spawn_to_save, &spawn).map_err(
                    |Stopped| {
                        KvmError::Pod("kvm: stopped by a signal before the pod's VM had started".into())
                    },
                )?
            }
            Err(why) => {
                tracing::debug!("kvm: booting: {why}");
                None
            }
        };
        let vm_process = match restored {
            Some(vm) => vm,
            None => {
                if args.snapshot {
                    // A failed restore's QEMU had mounted the overlays.
                    rkt_engine::pod::mounts::allow_volatile_remount(dir, &manifest)
                        .map_err(|e| KvmError::io("clearing the overlays' volatile marks", e))?;
                }
                args.snapshot = false;
                spawn(&argv_of(&args))?
            }
        };
        let _relay = channel.map(|c| c.start(dir)).transpose()?;
        for name in [layout::PID, layout::PPID] {
            let path = dir.join(name);
            fsutil::replace_file(&path, vm_process.pid().to_string().as_bytes())
                .map_err(|e| KvmError::io(format!("writing {}", path.display()), e))?;
        }
        // While the guest boots: QEMU has its files through our descriptors.
        match cache::prune(&self.config.cache, &boot) {
            Ok(removed) => tracing::debug!(removed, "kvm: boot-file cache pruned"),
            Err(e) => tracing::debug!(error = %e, "kvm: boot-file cache not pruned"),
        }
        let qemu_code = vm_process.wait()?;
        tracing::debug!(code = qemu_code, "kvm: qemu exited");
        match setup::read_report(dir) {
            Some(InitReport::Running) => {}
            Some(InitReport::Failed { message }) => return Err(KvmError::Pod(message)),
            None => {
                return Err(KvmError::Pod(format!(
                    "kvm: the VM ended (qemu exit code {qemu_code}) before the pod's apps started; \
                     `rkt run --debug` shows the guest's console"
                )));
            }
        }
        Ok(protocol::recorded_pod_exit(dir, &manifest))
    }

    /// The snapshot this pod can start from (made by it when absent), or why
    /// it boots.
    fn snapshot_for(
        &self,
        qemu: &Path,
        boot: &cache::BootFiles,
        args: &QemuArgs,
        sandbox: bool,
    ) -> Result<snapshot::Snapshot, String> {
        if !self.config.snapshots {
            return Err("snapshots are off in the stage1 config".into());
        }
        let mut shaped = args.clone();
        shaped.snapshot = true;
        let snapshot = snapshot::Snapshot::key(
            &self.config.cache,
            qemu,
            (&boot.vmlinux, &boot.initramfs),
            &shaped,
            sandbox,
        )
        .ok_or("the snapshot's inputs cannot be stat'ed")?;
        match snapshot.failure() {
            Some(why) => Err(format!("making this snapshot failed within the hour: {why}")),
            None => Ok(snapshot),
        }
    }
}

/// rkt was told to stop while it made or restored a snapshot.
struct Stopped;

/// The pod's VM restored from `snapshot`, which is made first when absent;
/// None: the pod boots (why is logged).
fn start_from_snapshot(
    snapshot: &snapshot::Snapshot,
    argv: &[std::ffi::OsString],
    spawn_to_save: &dyn Fn(&[std::ffi::OsString]) -> Result<process::Qemu, KvmError>,
    spawn: &dyn Fn(&[std::ffi::OsString]) -> Result<process::Qemu, KvmError>,
) -> Result<Option<process::Qemu>, Stopped> {
    let signals = rkt_engine::stage::signals::stop_signals_seen();
    // A VM that ended because rkt was told to stop says nothing about the
    // snapshot: the pod is not started either.
    let stopped = || rkt_engine::stage::signals::stop_signals_seen() != signals;
    if !snapshot.exists() {
        match snapshot.create(argv, spawn_to_save) {
            Ok(()) => tracing::debug!(state = %snapshot.state_path().display(), "kvm: snapshot made"),
            Err(snapshot::CreateError::Busy) => {
                tracing::debug!("kvm: booting: another pod is making the snapshot");
                return Ok(None);
            }
            Err(snapshot::CreateError::Failed(_)) if stopped() => return Err(Stopped),
            Err(snapshot::CreateError::Failed(e)) => {
                tracing::warn!("kvm: booting: making a snapshot failed (not tried again for an hour): {e}");
                snapshot.record_failure(&e);
                return Ok(None);
            }
        }
    }
    match snapshot.restore(argv, spawn) {
        Ok(vm) => {
            tracing::debug!(state = %snapshot.state_path().display(), "kvm: restored from a snapshot");
            Ok(Some(vm))
        }
        Err(_) if stopped() => Err(Stopped),
        Err(e) => {
            tracing::warn!("kvm: booting: the snapshot did not restore ({e}); it is dropped");
            snapshot.remove();
            Ok(None)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rkt_engine::stage::registry;

    #[test]
    fn registers_as_kvm_with_its_capabilities() {
        let s = registry::create::<dyn Stage1>("kvm").unwrap();
        assert_eq!(s.name(), "kvm");
        let record = registry::Stage1Record::of(s.as_ref()).unwrap();
        assert_eq!(record.config["machine"], "microvm");
        let caps = s.capabilities();
        assert!(caps.multi_app && caps.network_namespace && !caps.interactive);
    }

    #[test]
    fn a_missing_qemu_is_unavailable_with_the_package_named() {
        let s = KvmStage1 {
            config: KvmConfig {
                qemu: "/nonexistent/qemu-system-x86_64".into(),
                ..KvmConfig::default()
            },
        };
        match s.availability() {
            Availability::Unavailable(why) => assert!(why.contains("qemu-system-x86"), "{why}"),
            Availability::Available => panic!("available without qemu"),
        }
    }

    #[test]
    fn memory_and_cpus_follow_rkts_defaults_and_the_isolators() {
        let manifest: PodManifest = serde_json::from_value(serde_json::json!({
            "acVersion": "0.8.11", "acKind": "PodManifest",
            "apps": [
                {"name": "a", "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
                 "app": {"exec": ["/bin/true"], "user": "0", "group": "0", "isolators": [
                    {"name": "resource/memory", "value": {"limit": "300Mi"}},
                    {"name": "resource/cpu", "value": {"limit": "1500m"}}]}},
                {"name": "b", "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},
            ],
        }))
        .unwrap();
        let (memory, cpus) = resources(&manifest).unwrap();
        assert_eq!(memory, 128 + 300 + 128);
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(cpus, 2.min(host));
        assert_eq!(vcpus(0), host, "no CPU isolator: every host CPU, as in rkt");
        assert_eq!(vcpus(1), 1);
        assert_eq!(vcpus(u64::MAX / 2), host);
    }
}
