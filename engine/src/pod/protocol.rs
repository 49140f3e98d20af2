//! The pod-side protocol between stage0 and the stage1 init (nspawn pods, later
//! VMs): what stage0 puts into the stage1 rootfs before the pod starts, what the
//! init reads there, and what it writes back. One typed definition, so the two
//! sides cannot drift apart.
//!
//! Inside the pod the stage1 rootfs is `/`; on the host it is
//! `layout::stage1_rootfs(pod)`. Every path here is relative to that root and is
//! turned into either view by [`Stage1Path::inside`] or [`Stage1Path::on_host`].

use std::path::{Path, PathBuf};

use super::layout;

/// The argument that makes the `rkt` binary act as the stage1 init
/// (`/rkt/init stage1-init`): the multi-call role stage1s launch.
pub const INIT_ROLE_ARG: &str = "stage1-init";

/// A path below the stage1 rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage1Path(PathBuf);

impl Stage1Path {
    pub(super) fn new(relative: impl AsRef<Path>) -> Self {
        Stage1Path(relative.as_ref().to_path_buf())
    }
    /// As the init sees it (absolute, from the pod's root).
    pub fn inside(&self) -> PathBuf {
        Path::new("/").join(&self.0)
    }
    /// As stage0 sees it.
    pub fn on_host(&self, pod: &Path) -> PathBuf {
        layout::stage1_rootfs(pod).join(&self.0)
    }
}

/// Directories every stage1 mounts over in an app's rootfs (the host's or a
/// fresh /dev, /proc and /sys, a tmpfs on /tmp), with the mode each gets where
/// the image lacks it. The tree store adds them to a rendered tree once, so a
/// pod's overlay finds them in its lower layer instead of creating them in its
/// upper dir on every start.
pub const APP_MOUNT_POINTS: [(&str, u32); 4] =
    [("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777)];

/// The init binary: a read-only copy of `rkt` (never the host's own file, which
/// a pod's root could otherwise rewrite: CVE-2019-5736).
pub fn init_binary() -> Stage1Path {
    Stage1Path::new("rkt/init")
}

/// A copy of the pod manifest.
pub fn pod_manifest() -> Stage1Path {
    Stage1Path::new("rkt/pod")
}

/// [`InitConfig`] as JSON.
pub fn init_config() -> Stage1Path {
    Stage1Path::new("rkt/init.json")
}

/// Where stage0 binds each volume's source (host directory or the pod's empty
/// volume) before the pod starts; the init binds it on into each app.
pub fn volume(name: &str) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/volumes").join(name))
}

/// `/etc/hosts` and `/etc/resolv.conf` for the apps, when stage0 provides them.
pub fn etc_file(name: EtcFile) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/etc").join(name.file_name()))
}

/// Each app's stdout and stderr, line by line, as the init relayed them.
pub fn app_log(app: &str) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/logs").join(app))
}

/// Each app's exit code (the same file as `layout::app_status`).
pub fn app_status(app: &str) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/status").join(app))
}

/// A FIFO stage0 reads one [`InitReport`] line from: the init writes it once
/// every app runs, or when starting them failed.
pub fn report_fifo() -> Stage1Path {
    Stage1Path::new("rkt/report")
}

/// Where stage0 binds the pod's cgroup of one hierarchy (`memory`, `cpu`,
/// `unified`); each app's cgroup is a directory named after the app below it.
pub fn cgroup(hierarchy: &str) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/cgroup").join(hierarchy))
}

/// The app's root inside the pod (`/opt/stage2/<app>/rootfs`).
pub fn app_rootfs(app: &str) -> Stage1Path {
    Stage1Path::new(Path::new("opt/stage2").join(app).join("rootfs"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcFile {
    Hosts,
    ResolvConf,
}

impl EtcFile {
    pub const ALL: [EtcFile; 2] = [EtcFile::Hosts, EtcFile::ResolvConf];
    pub fn file_name(self) -> &'static str {
        match self {
            EtcFile::Hosts => "hosts",
            EtcFile::ResolvConf => "resolv.conf",
        }
    }
    /// Where the app sees it.
    pub fn app_path(self) -> &'static str {
        match self {
            EtcFile::Hosts => "/etc/hosts",
            EtcFile::ResolvConf => "/etc/resolv.conf",
        }
    }
}

/// What the init needs besides the pod manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitConfig {
    /// The single app gets the pod's console (a terminal) instead of log pipes.
    pub interactive: bool,
    pub debug: bool,
    /// How each app is confined, in manifest order; an app not listed runs with
    /// the init's own privileges (stage0s before isolators).
    #[serde(default)]
    pub apps: Vec<AppIsolation>,
    /// `AC_METADATA_URL` for every app and event handler (`--mds-register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
}

/// What the init applies to an app's processes between fork and exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppIsolation {
    pub app: String,
    /// Capability numbers for the bounding, permitted, effective, inheritable
    /// and ambient sets; None keeps the init's (`--insecure-options=capabilities`).
    pub capabilities: Option<Vec<u8>>,
    pub no_new_privileges: bool,
    pub seccomp: Option<SeccompFilter>,
    pub oom_score_adj: Option<i32>,
    /// The app's root is remounted read-only after its volumes are bound.
    pub read_only_rootfs: bool,
    /// Paths (inside the app) bound read-only over themselves.
    pub read_only_paths: Vec<String>,
    /// Paths (inside the app) made inaccessible.
    pub masked_paths: Vec<String>,
    /// `cgroup.procs` files, as the init sees them, each process of the app joins.
    pub cgroup_procs: Vec<PathBuf>,
    /// A cgroup the init makes for the app itself and puts it in: in a VM
    /// pod's guest no stage0 can reach the cgroups (a container pod's are
    /// stage0's, in `cgroup_procs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_cgroup: Option<Box<OwnCgroup>>,
}

/// A cgroup2 directory, as the init sees it, and the limit files written in it
/// before the app joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnCgroup {
    pub dir: PathBuf,
    pub files: Vec<(String, String)>,
}

/// A seccomp filter by syscall names and `@group`s; the init compiles it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFilter {
    pub mode: SeccompMode,
    pub syscalls: Vec<String>,
    /// The errno name filtered syscalls fail with; None kills the process (rkt).
    pub errno: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompMode {
    /// Only the listed syscalls are allowed.
    Retain,
    /// The listed syscalls are refused.
    Remove,
}

/// The init's one message to stage0, a JSON line on [`report_fifo`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "report")]
pub enum InitReport {
    /// Every app has been started.
    Running,
    /// The pod could not start; the message is the one line rkt shows.
    Failed { message: String },
}

impl InitReport {
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{\"report\":\"failed\"}".to_vec());
        line.push(b'\n');
        line
    }
    pub fn parse(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line.trim_ascii()).ok()
    }
}

/// The second argument that puts the init in its VM role (`/init stage1-init vm`,
/// from the kernel command line): it first brings up the guest (modules, the
/// pod's share, consoles, network), then runs the pod as in a container.
pub const VM_ROLE_ARG: &str = "vm";

/// The third argument of the VM role (`/init stage1-init vm snapshot`): the
/// guest stops at [`VM_BOOT_PORT`] once its kernel is up and its modules are
/// loaded, so stage0 can snapshot it there and start later pods from that
/// point instead of booting them.
pub const VM_SNAPSHOT_ARG: &str = "snapshot";

/// The virtio-serial port of a snapshotting guest: it writes
/// [`VM_BOOT_READY`], then reads one [`VmResume`] line, which every pod
/// restored from the snapshot receives instead, applies it and answers
/// [`VM_BOOT_RESUMED`].
pub const VM_BOOT_PORT: &str = "rkt.boot";
pub const VM_BOOT_READY: &str = "ready";
pub const VM_BOOT_RESUMED: &str = "resumed";

/// What a guest restored from a snapshot must not share with the others
/// restored from it: the wall clock (its own stopped at the snapshot) and
/// its random number generator's state (reseeded with these bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmResume {
    pub realtime_secs: i64,
    pub realtime_nanos: i64,
    /// From the host's random number generator.
    pub seed: Vec<u8>,
}

/// The 9p mount tag under which the stage1 rootfs is shared into a VM.
pub const VM_SHARE_TAG: &str = "rkt";

/// The 9p mount tag of a second share of the stage1 rootfs's `opt/stage2` (the
/// apps' roots), which the guest mounts with its own cache mode.
pub const VM_APPS_SHARE_TAG: &str = "rkt.apps";

/// virtio-serial port names carrying the apps' stdout and stderr out of a VM.
pub const VM_STDOUT_PORT: &str = "rkt.stdout";
pub const VM_STDERR_PORT: &str = "rkt.stderr";

/// Where the guest's init mounts cgroup2 (inside the share it chroots into),
/// the parent of each app's [`OwnCgroup`].
pub const VM_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// In the VM's initramfs: the kernel modules to load, one file name (relative to
/// this file's directory) per line, dependencies first.
pub const VM_MODULES_ORDER: &str = "/modules/order";

/// As [`VM_MODULES_ORDER`], the modules only a pod with a network needs (those
/// already in the first list left out), loaded only for such a pod.
pub const VM_NET_MODULES_ORDER: &str = "/modules/net.order";

/// [`VmConfig`] as JSON, written by stage0 for the VM init.
pub fn vm_config() -> Stage1Path {
    Stage1Path::new("rkt/vm.json")
}

/// Created by stage0 to ask a VM pod to stop (`rkt stop`): the VM init looks
/// for it a few times a second and stops every app as on SIGTERM.
pub fn vm_stop_request() -> Stage1Path {
    Stage1Path::new("rkt/stop")
}

/// `rkt enter` on a VM pod: stage0 makes `rkt/enter/<id>/` and renames
/// [`VmEnterRequest`] JSON into it as `request`; the VM init claims it (renames
/// it to `claimed`) and runs the command, which writes its output to `stdout`
/// and `stderr` there; `exit` (the exit code) or `error` (why it could not
/// run) is renamed into place last.
pub fn vm_enter_dir() -> Stage1Path {
    Stage1Path::new("rkt/enter")
}

pub const VM_ENTER_REQUEST: &str = "request";
pub const VM_ENTER_CLAIMED: &str = "claimed";
pub const VM_ENTER_STDOUT: &str = "stdout";
pub const VM_ENTER_STDERR: &str = "stderr";
pub const VM_ENTER_EXIT: &str = "exit";
pub const VM_ENTER_ERROR: &str = "error";

/// The third argument of the init role for one `rkt enter` command in a VM
/// (`/proc/self/exe stage1-init vm-enter <dir>`), started by the VM init.
pub const VM_ENTER_ROLE_ARG: &str = "vm-enter";

/// What `rkt enter` asks a VM pod to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmEnterRequest {
    pub app: String,
    pub argv: Vec<String>,
}

/// What the VM init sets up in the guest before the apps start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmConfig {
    pub hostname: String,
    /// One per pod network, in `--net` order (the guest's eth0, eth1...).
    #[serde(default)]
    pub interfaces: Vec<VmInterface>,
    #[serde(default)]
    pub routes: Vec<VmRoute>,
    /// A mutable pod (`rkt app sandbox`): its requests arrive on the
    /// virtio-serial port `sandbox::VM_PORT`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

/// A guest network interface, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmInterface {
    pub name: String,
    pub mac: String,
    /// IPv4 address and prefix length: the CNI result's address for this network.
    pub address: String,
    pub prefix_len: u8,
}

/// An IPv4 route: `destination` is `a.b.c.d/n` (`0.0.0.0/0` for the default).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRoute {
    pub destination: String,
    pub gateway: Option<String>,
    /// The interface (a [`VmInterface::name`]).
    pub device: String,
}

/// `rkt run`'s exit code from the apps' codes in manifest order: the first
/// failing app's, 0 when all succeeded.
pub fn pod_exit_code(codes: &[(String, i32)]) -> i32 {
    codes.iter().map(|(_, c)| *c).find(|c| *c != 0).unwrap_or(0)
}

/// The pod's exit as the stage1 init recorded it in `rkt/status/<app>`, for
/// stage1s whose init runs the apps (nspawn, kvm). An app with no status was
/// killed with its init (`rkt stop --force`, QEMU killed) before it ended: it
/// is recorded as SIGKILL'd so later readers agree.
pub fn recorded_pod_exit(pod: &Path, manifest: &crate::schema::PodManifest) -> crate::stage::PodExit {
    let mut apps = Vec::with_capacity(manifest.apps.len());
    for app in &manifest.apps {
        let name = app.name.as_str();
        let status = layout::app_status(pod, name);
        let code = match std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(code) => code,
            None => {
                let killed = 128 + nix::sys::signal::Signal::SIGKILL as i32;
                let _ = crate::fsutil::replace_file(&status, killed.to_string().as_bytes());
                killed
            }
        };
        apps.push((name.to_string(), code));
    }
    let code = pod_exit_code(&apps);
    crate::stage::PodExit { apps, code }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_a_host_and_an_inside_view() {
        let pod = Path::new("/var/lib/rkt/pods/run/u");
        assert_eq!(app_status("web").on_host(pod), layout::app_status(pod, "web"));
        assert_eq!(app_rootfs("web").on_host(pod), layout::app_rootfs(pod, "web"));
        assert_eq!(volume("data").inside(), Path::new("/rkt/volumes/data"));
        assert_eq!(
            etc_file(EtcFile::ResolvConf).inside(),
            Path::new("/rkt/etc/resolv.conf")
        );
    }

    #[test]
    fn reports_round_trip_as_lines() {
        for r in [
            InitReport::Running,
            InitReport::Failed {
                message: "x: y".into(),
            },
        ] {
            let line = r.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(InitReport::parse(&line), Some(r));
        }
        assert_eq!(InitReport::parse(b"garbage"), None);
    }

    #[test]
    fn the_first_failing_app_decides() {
        let c = |v: &[i32]| v.iter().map(|c| ("a".to_string(), *c)).collect::<Vec<_>>();
        assert_eq!(pod_exit_code(&c(&[0, 0])), 0);
        assert_eq!(pod_exit_code(&c(&[0, 3, 5])), 3);
        assert_eq!(pod_exit_code(&c(&[])), 0);
    }
}
