//! Stage0's half of a pod's start: fill the stage1 rootfs with what the init
//! reads ([`prepare_stage1_rootfs`]), and the mounts made in the private mount
//! namespace that systemd-nspawn is exec'd in ([`PodMounts`]).
//!
//! Why a private namespace made by stage0 rather than mounts made by the init:
//! app overlays sit on tree-store directories and volumes on host paths that the
//! container cannot see. Made in a namespace of their own (a slave of the host's,
//! so nothing propagates back) just before nspawn starts, they are visible to
//! nspawn's recursive bind of the stage1 rootfs, and they die with the pod's
//! last process: nothing is ever mounted on the host, nothing is left for gc.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use rkt_engine::fsutil;
use rkt_engine::pod::layout;
use rkt_engine::pod::mounts::{self, PlannedMount, plan_pod_mounts};
use rkt_engine::pod::protocol::{self, AppIsolation, EtcFile, InitConfig};
use rkt_engine::schema::PodManifest;
use rkt_engine::stage::{DnsMode, HostsMode, RunConfig};

use crate::NspawnError;
use crate::cgroups::PodCgroups;

/// Where nspawn keeps per-machine propagation directories. Without systemd's
/// tmpfs /run it cannot remove them on exit (and says so on stderr): a private
/// tmpfs there, in the pod's own namespace, keeps rkt's output clean.
pub const NSPAWN_RUNTIME_DIR: &str = "/run/systemd/nspawn";

/// Writes everything the init reads into the pod's stage1 rootfs.
pub fn prepare_stage1_rootfs(
    pod: &Path,
    manifest_bytes: &[u8],
    manifest: &PodManifest,
    cfg: &RunConfig,
    hostname: &str,
    isolation: Vec<AppIsolation>,
) -> Result<(), NspawnError> {
    let root = layout::stage1_rootfs(pod);
    // nspawn refuses a directory without /usr ("does not look like an OS tree").
    for dir in ["usr", "rkt/etc", "rkt/logs", "rkt/volumes"] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|e| NspawnError::io(format!("creating {}", path.display()), e))?;
    }
    create_init_mount_point(&protocol::init_binary().on_host(pod))?;
    let write = |path: PathBuf, bytes: &[u8]| {
        fsutil::replace_file(&path, bytes)
            .map_err(|e| NspawnError::io(format!("writing {}", path.display()), e))
    };
    write(protocol::pod_manifest().on_host(pod), manifest_bytes)?;
    let config = InitConfig {
        interactive: cfg.interactive,
        debug: cfg.debug,
        apps: isolation,
        metadata_url: cfg.metadata_url.clone(),
    };
    let config = serde_json::to_vec(&config).map_err(|e| NspawnError::Invalid(e.to_string()))?;
    write(protocol::init_config().on_host(pod), &config)?;

    for file in EtcFile::ALL {
        if let Some(bytes) = etc_file(file, cfg, hostname) {
            write(protocol::etc_file(file).on_host(pod), &bytes)?;
        }
    }
    mounts::create_volume_targets(pod, manifest)?;
    let fifo = protocol::report_fifo().on_host(pod);
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| NspawnError::io(format!("creating {}", fifo.display()), e.into()))?;
    Ok(())
}

/// rkt's precedence: the `--dns*` / `--hosts-entry` flags, then the network's
/// DNS result, then by network: on the host's network the host's files, in a pod
/// network a hosts file naming the pod and the image's own resolv.conf.
fn etc_file(file: EtcFile, cfg: &RunConfig, hostname: &str) -> Option<Vec<u8>> {
    let in_netns = cfg.net.netns.is_some();
    let generated_hosts = |extra: &[(String, String)]| {
        let mut text = format!(
            "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback {hostname}\n"
        );
        for (ip, host) in extra {
            text.push_str(&format!("{ip}\t{host}\n"));
        }
        Some(text.into_bytes())
    };
    match file {
        EtcFile::Hosts => match &cfg.hosts {
            HostsMode::Host => std::fs::read(file.app_path()).ok(),
            HostsMode::Entries(entries) => generated_hosts(entries),
            HostsMode::Default if in_netns => generated_hosts(&[]),
            HostsMode::Default => std::fs::read(file.app_path()).ok(),
        },
        EtcFile::ResolvConf => match &cfg.dns {
            DnsMode::Host => std::fs::read(file.app_path()).ok(),
            DnsMode::None => None,
            DnsMode::Explicit(dns) => Some(dns.to_resolv_conf().into_bytes()),
            DnsMode::Default => match &cfg.net.dns {
                Some(dns) => Some(dns.to_resolv_conf().into_bytes()),
                None if in_netns => None,
                None => std::fs::read(file.app_path()).ok(),
            },
        },
    }
}

/// The mount point of the shared init copy that [`PodMounts`] binds (see
/// `init_copy`).
fn create_init_mount_point(target: &Path) -> Result<(), NspawnError> {
    match std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o555)
        .open(target)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(NspawnError::io(format!("creating {}", target.display()), e)),
    }
}

#[derive(Debug, Clone, Default)]
pub struct PodMounts {
    pub private_nspawn_runtime: bool,
    pub mounts: Vec<PlannedMount>,
    /// `cgroup.procs` of the pod's cgroups: nspawn joins them before exec, so
    /// the container is born inside.
    pub cgroup_procs: Vec<PathBuf>,
}

impl PodMounts {
    pub fn plan(
        pod: &Path,
        manifest: &PodManifest,
        private_nspawn_runtime: bool,
        cgroups: &PodCgroups,
        init: &Path,
    ) -> Result<Self, NspawnError> {
        let init_target = protocol::init_binary().on_host(pod);
        let mut mounts = vec![
            PlannedMount::bind(init, init_target.clone(), false, "the stage1 init".into())?,
            PlannedMount::remount_read_only(init_target, "the stage1 init read-only".into()),
        ];
        for (source, target, name) in cgroups.binds(pod) {
            std::fs::create_dir_all(&target)
                .map_err(|e| NspawnError::io(format!("creating {}", target.display()), e))?;
            mounts.push(PlannedMount::bind(
                &source,
                target,
                false,
                format!("the pod's {name} cgroup"),
            )?);
        }
        mounts.extend(plan_pod_mounts(pod, manifest)?);
        Ok(PodMounts {
            private_nspawn_runtime,
            mounts,
            cgroup_procs: cgroups.pod_procs(),
        })
    }

    /// In the forked child, before exec: a private mount namespace, then every
    /// planned mount. Returns the step that failed.
    pub fn make(&self) -> Result<(), String> {
        let step = |msg: String| format!("nspawn: {msg}");
        mounts::enter_private_mount_namespace().map_err(step)?;
        if self.private_nspawn_runtime {
            nix::mount::mount(
                Some("tmpfs"),
                NSPAWN_RUNTIME_DIR,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=755"),
            )
            .map_err(|e| step(format!("mounting a tmpfs on {NSPAWN_RUNTIME_DIR}: {}", e.desc())))?;
        }
        for m in &self.mounts {
            m.make().map_err(step)?;
        }
        for procs in &self.cgroup_procs {
            std::fs::write(procs, b"0").map_err(|e| step(format!("joining {}: {e}", procs.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_planned_for_overlays_and_every_volume() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        let manifest: PodManifest = serde_json::from_value(serde_json::json!({
            "acVersion": "0.8.11", "acKind": "PodManifest",
            "apps": [
                {"name": "a", "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},
                {"name": "b", "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},
            ],
            "volumes": [
                {"name": "shared", "kind": "empty"},
                {"name": "h", "kind": "host", "source": "/srv"},
            ],
        }))
        .unwrap();
        for (app, spec) in [
            ("a", r#"{"kind":"overlay","lower":"/cas/tree/x/rootfs"}"#),
            ("b", r#"{"kind":"copy"}"#),
        ] {
            std::fs::create_dir_all(layout::appsinfo(pod, app)).unwrap();
            std::fs::write(layout::app_rootfs_spec(pod, app), spec).unwrap();
        }
        let init = Path::new("/var/cache/rkt-rs/nspawn/init-x");
        let plan = PodMounts::plan(pod, &manifest, true, &PodCgroups::default(), init).unwrap();
        let (init_mounts, rest) = plan.mounts.split_at(2);
        let init_path = protocol::init_binary().on_host(pod);
        assert_eq!(init_mounts[0].target, init_path);
        assert_eq!(
            init_mounts[0].source.to_bytes(),
            init.as_os_str().as_encoded_bytes()
        );
        assert_eq!(init_mounts[1].target, init_path);
        assert!(
            init_mounts[1]
                .flags
                .contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID)
        );
        let targets: Vec<PathBuf> = rest.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            [
                layout::app_rootfs(pod, "a"),
                protocol::volume("shared").on_host(pod),
                protocol::volume("h").on_host(pod),
            ]
        );
        assert!(
            rest[0]
                .data
                .as_deref()
                .unwrap()
                .starts_with("lowerdir=/cas/tree/x/rootfs,upperdir=")
        );
        assert_eq!(
            rest[1].source.to_bytes(),
            layout::empty_volume(pod, "shared").as_os_str().as_encoded_bytes()
        );
        assert!(
            !rest[1].flags.contains(MsFlags::MS_REC),
            "empty volumes have nothing below"
        );
        assert!(
            rest[2].flags.contains(MsFlags::MS_REC),
            "host volumes are recursive by default"
        );
    }
}
