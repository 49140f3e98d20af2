//! Stage0's half of a VM pod's start: the stage1 rootfs, shared into the guest,
//! gets what the init reads (the same files an nspawn pod gets, plus
//! [`protocol::vm_config`]), and the mounts QEMU's private mount namespace
//! holds: each app's overlay and each volume's source, so the 9p share sees
//! them and nothing is ever mounted on the host.

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::layout;
use rkt_engine::pod::mounts::{self, PlannedMount, plan_pod_mounts};
use rkt_engine::pod::protocol::{self, AppIsolation, EtcFile, InitConfig, OwnCgroup, VmConfig};
use rkt_engine::schema::PodManifest;
use rkt_engine::stage::isolation::{self, IsolatorError};
use rkt_engine::stage::limits::AppLimits;
use rkt_engine::stage::{DnsMode, HostsMode, InsecureOptions, RunConfig};

use crate::KvmError;

/// Writes everything the VM init reads into the pod's stage1 rootfs.
pub fn prepare_stage1_rootfs(
    pod: &Path,
    manifest_bytes: &[u8],
    manifest: &PodManifest,
    cfg: &RunConfig,
    vm: &VmConfig,
) -> Result<(), KvmError> {
    let root = layout::stage1_rootfs(pod);
    // The guest mounts its kernel filesystems here before it chroots.
    for dir in [
        "dev",
        "proc",
        "sys",
        "rkt/etc",
        "rkt/logs",
        "rkt/volumes",
        "rkt/status",
        crate::qemu::APPS_DIR,
    ] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|e| KvmError::io(format!("creating {}", path.display()), e))?;
    }
    let write = |path: PathBuf, bytes: &[u8]| {
        fsutil::replace_file(&path, bytes).map_err(|e| KvmError::io(format!("writing {}", path.display()), e))
    };
    write(protocol::pod_manifest().on_host(pod), manifest_bytes)?;
    let init = InitConfig {
        interactive: false,
        debug: cfg.debug,
        apps: plan_isolation(manifest, cfg.insecure)?,
        metadata_url: cfg.metadata_url.clone(),
    };
    let json =
        |v: &dyn erased_serde::Serialize| serde_json::to_vec(v).map_err(|e| KvmError::Invalid(e.to_string()));
    write(protocol::init_config().on_host(pod), &json(&init)?)?;
    write(protocol::vm_config().on_host(pod), &json(vm)?)?;
    for file in EtcFile::ALL {
        if let Some(bytes) = etc_file(file, cfg, &vm.hostname) {
            write(protocol::etc_file(file).on_host(pod), &bytes)?;
        }
    }
    mounts::create_volume_targets(pod, manifest)?;
    let _ = std::fs::remove_file(protocol::vm_stop_request().on_host(pod));
    // Across the share a FIFO cannot carry the init's report: a plain file
    // does, read once QEMU has exited.
    write(protocol::report_fifo().on_host(pod), b"")
}

/// Each app's isolation as an nspawn pod's, and its own cgroup in the guest
/// with its resource limits (the guest's init makes it: stage0 cannot).
pub fn plan_isolation(
    manifest: &PodManifest,
    insecure: InsecureOptions,
) -> Result<Vec<AppIsolation>, KvmError> {
    let invalid = |e: IsolatorError| KvmError::Invalid(e.to_string());
    let mut apps = isolation::plan(manifest, insecure, &|_| Vec::new()).map_err(invalid)?;
    for (iso, runtime) in apps.iter_mut().zip(&manifest.apps) {
        let isolators = runtime
            .app
            .as_ref()
            .map(|a| a.isolators.as_slice())
            .unwrap_or(&[]);
        iso.own_cgroup = Some(Box::new(OwnCgroup {
            dir: Path::new(protocol::VM_CGROUP_ROOT).join(&iso.app),
            files: AppLimits::of(isolators).map_err(invalid)?.cgroup2_files(),
        }));
    }
    Ok(apps)
}

/// `rkt enter` and `rkt app exec` in the guest confine a command as the
/// init's config says: an app added to a running sandbox is recorded there
/// too (replacing a removed app of the same name). The init itself takes the
/// added app's isolation from the request.
pub fn record_added_isolation(pod: &Path, iso: &AppIsolation) -> Result<(), KvmError> {
    let path = protocol::init_config().on_host(pod);
    let bytes = std::fs::read(&path).map_err(|e| KvmError::io(format!("reading {}", path.display()), e))?;
    let mut config: InitConfig =
        serde_json::from_slice(&bytes).map_err(|e| KvmError::Invalid(format!("{}: {e}", path.display())))?;
    config.apps.retain(|a| a.app != iso.app);
    config.apps.push(iso.clone());
    let json = serde_json::to_vec(&config).map_err(|e| KvmError::Invalid(e.to_string()))?;
    fsutil::replace_file(&path, &json).map_err(|e| KvmError::io(format!("writing {}", path.display()), e))
}

/// The init's report, once the VM has ended: None when it never wrote one.
pub fn read_report(pod: &Path) -> Option<protocol::InitReport> {
    let bytes = std::fs::read(protocol::report_fifo().on_host(pod)).ok()?;
    protocol::InitReport::parse(&bytes)
}

/// rkt's precedence, as for nspawn pods: the `--dns*` / `--hosts-entry`
/// flags, then the network's DNS result; a VM pod is always in a pod network.
fn etc_file(file: EtcFile, cfg: &RunConfig, hostname: &str) -> Option<Vec<u8>> {
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
            HostsMode::Default => generated_hosts(&[]),
        },
        EtcFile::ResolvConf => match &cfg.dns {
            DnsMode::Host => std::fs::read(file.app_path()).ok(),
            DnsMode::None => None,
            DnsMode::Explicit(dns) => Some(dns.to_resolv_conf().into_bytes()),
            DnsMode::Default => cfg.net.dns.as_ref().map(|dns| dns.to_resolv_conf().into_bytes()),
        },
    }
}

/// The pod's overlays and volumes, mounted in QEMU's own mount namespace
/// before exec: the 9p share serves them, and they die with QEMU.
#[derive(Debug, Clone, Default)]
pub struct PodMounts {
    pub mounts: Vec<PlannedMount>,
}

impl PodMounts {
    pub fn plan(pod: &Path, manifest: &PodManifest) -> Result<Self, KvmError> {
        Ok(PodMounts {
            mounts: plan_pod_mounts(pod, manifest)?,
        })
    }

    /// In the forked child, before exec: a private mount namespace (a slave of
    /// the host's), then every planned mount. Returns the step that failed.
    pub fn make(&self) -> Result<(), String> {
        let step = |msg: String| format!("kvm: {msg}");
        mounts::enter_private_mount_namespace().map_err(step)?;
        for m in &self.mounts {
            m.make().map_err(step)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_pod_gets_generated_hosts_and_the_networks_dns() {
        let mut cfg = RunConfig::default();
        let hosts = String::from_utf8(etc_file(EtcFile::Hosts, &cfg, "web").unwrap()).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost web\n"));
        assert_eq!(etc_file(EtcFile::ResolvConf, &cfg, "web"), None);
        cfg.net.dns = Some(rkt_engine::stage::DnsSettings {
            nameservers: vec!["10.0.0.1".into()],
            ..Default::default()
        });
        assert_eq!(
            etc_file(EtcFile::ResolvConf, &cfg, "web").unwrap(),
            b"nameserver 10.0.0.1\n"
        );
    }
}
