//! Stage0's reading of each app's security isolators into the init's
//! [`AppIsolation`]: what the init applies between fork and exec. Shared by
//! every stage1 that runs the stage1 init (nspawn, and kvm inside its guest).

use std::path::PathBuf;

use crate::pod::protocol::{AppIsolation, SeccompFilter, SeccompMode};
use crate::schema::{IsolatorKind, PodManifest, SchemaError, app_capabilities};
use crate::stage::InsecureOptions;

/// An isolator that does not parse; `what` names the app or the isolator.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IsolatorError {
    pub what: String,
    #[source]
    pub source: SchemaError,
}

/// Without a seccomp isolator an app gets this group refused (EPERM, as
/// docker's profile does); `--insecure-options=seccomp` lifts it.
pub const DEFAULT_SECCOMP_GROUP: &str = "@rkt/default-blacklist";

impl From<IsolatorError> for crate::stage::BackendError {
    fn from(e: IsolatorError) -> Self {
        crate::stage::BackendError::Other(e.to_string())
    }
}

/// Each app's isolation; `app_procs` names the `cgroup.procs` files the init
/// puts the app's processes in (cgroups stage0 made; none when the init makes
/// them itself).
pub fn plan(
    manifest: &PodManifest,
    insecure: InsecureOptions,
    app_procs: &dyn Fn(&str) -> Vec<PathBuf>,
) -> Result<Vec<AppIsolation>, IsolatorError> {
    manifest
        .apps
        .iter()
        .map(|runtime| {
            let name = runtime.name.as_str();
            let isolators = runtime
                .app
                .as_ref()
                .map(|a| a.isolators.as_slice())
                .unwrap_or(&[]);
            let bad = |source: SchemaError| IsolatorError {
                what: format!("app {name:?}"),
                source,
            };
            let capabilities = if insecure.capabilities {
                None
            } else {
                Some(
                    app_capabilities(isolators)
                        .map_err(bad)?
                        .iter()
                        .map(|c| c.number())
                        .collect(),
                )
            };
            let mut isolation = AppIsolation {
                app: name.to_string(),
                capabilities,
                read_only_rootfs: runtime.read_only_root_fs,
                cgroup_procs: app_procs(name),
                ..AppIsolation::default()
            };
            let mut own_read_only = Vec::new();
            let mut own_masked = Vec::new();
            for iso in isolators {
                match iso.kind().map_err(bad)? {
                    IsolatorKind::ReadOnlyPaths(paths) => own_read_only.extend(paths),
                    IsolatorKind::MaskedPaths(paths) => own_masked.extend(paths),
                    IsolatorKind::NoNewPrivileges(on) => isolation.no_new_privileges = on,
                    IsolatorKind::OomScoreAdj(score) => isolation.oom_score_adj = Some(score),
                    IsolatorKind::SeccompRetain(set) => {
                        isolation.seccomp = Some(SeccompFilter {
                            mode: SeccompMode::Retain,
                            syscalls: set.syscalls,
                            errno: set.errno,
                        })
                    }
                    IsolatorKind::SeccompRemove(set) => {
                        isolation.seccomp = Some(SeccompFilter {
                            mode: SeccompMode::Remove,
                            syscalls: set.syscalls,
                            errno: set.errno,
                        })
                    }
                    _ => {}
                }
            }
            if insecure.seccomp {
                isolation.seccomp = None;
            } else if isolation.seccomp.is_none() {
                isolation.seccomp = Some(SeccompFilter {
                    mode: SeccompMode::Remove,
                    syscalls: vec![DEFAULT_SECCOMP_GROUP.to_string()],
                    errno: Some("EPERM".to_string()),
                });
            }
            if !insecure.paths {
                isolation.read_only_paths = PROTECTED_READ_ONLY.iter().map(|s| s.to_string()).collect();
                isolation.masked_paths = PROTECTED_HIDDEN.iter().map(|s| s.to_string()).collect();
            }
            // The app's own paths apply even under --insecure-options=paths,
            // which lifts only rkt's defaults.
            isolation.read_only_paths.extend(own_read_only);
            isolation.masked_paths.extend(own_masked);
            Ok(isolation)
        })
        .collect()
}

/// rkt's kernel tunables an app may read but not change.
const PROTECTED_READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys/block",
    "/sys/bus",
    "/sys/class",
    "/sys/dev",
    "/sys/devices",
    "/sys/kernel",
];

/// rkt's kernel paths an app does not see at all.
const PROTECTED_HIDDEN: &[&str] = &[
    "/sys/firmware",
    "/sys/fs",
    "/sys/hypervisor",
    "/sys/module",
    "/sys/power",
    "/proc/config.gz",
    "/proc/kallsyms",
    "/proc/sched_debug",
    "/proc/kcore",
    "/proc/kmem",
    "/proc/mem",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest(isolators: serde_json::Value) -> PodManifest {
        serde_json::from_value(serde_json::json!({
            "acVersion": "0.8.11", "acKind": "PodManifest",
            "apps": [{"name": "a", "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
                      "app": {"exec": ["/x"], "user": "0", "group": "0", "isolators": isolators},
                      "readOnlyRootFS": true}],
        }))
        .unwrap()
    }

    #[test]
    fn defaults_confine_and_insecure_options_lift() {
        let m = manifest(serde_json::json!([]));
        let a = &plan(&m, InsecureOptions::default(), &|_: &str| Vec::new()).unwrap()[0];
        assert_eq!(a.capabilities.as_ref().unwrap().len(), 14);
        assert_eq!(a.seccomp.as_ref().unwrap().syscalls, [DEFAULT_SECCOMP_GROUP]);
        assert!(a.read_only_rootfs && !a.masked_paths.is_empty());
        let all = InsecureOptions {
            capabilities: true,
            paths: true,
            seccomp: true,
            ..InsecureOptions::default()
        };
        let a = &plan(&m, all, &|_: &str| Vec::new()).unwrap()[0];
        assert!(a.capabilities.is_none() && a.seccomp.is_none() && a.masked_paths.is_empty());
    }

    #[test]
    fn the_apps_own_paths_join_the_defaults_and_survive_insecure_paths() {
        let m = manifest(serde_json::json!([
            {"name": "os/linux/read-only-paths", "value": {"paths": ["/etc"]}},
            {"name": "os/linux/masked-paths", "value": {"paths": ["/etc/shadow", "/root"]}},
        ]));
        let a = &plan(&m, InsecureOptions::default(), &|_: &str| Vec::new()).unwrap()[0];
        assert!(a.read_only_paths.contains(&"/proc/sys".to_string()));
        assert_eq!(a.read_only_paths.last().map(String::as_str), Some("/etc"));
        assert!(
            a.masked_paths
                .ends_with(&["/etc/shadow".to_string(), "/root".to_string()])
        );
        let insecure = InsecureOptions {
            paths: true,
            ..InsecureOptions::default()
        };
        let a = &plan(&m, insecure, &|_: &str| Vec::new()).unwrap()[0];
        assert_eq!(a.read_only_paths, ["/etc"]);
        assert_eq!(a.masked_paths, ["/etc/shadow", "/root"]);
    }

    #[test]
    fn isolators_set_the_filter_nnp_and_oom_score() {
        let m = manifest(serde_json::json!([
            {"name": "os/linux/seccomp-retain-set", "value": {"set": ["read", "write"], "errno": "ENOSYS"}},
            {"name": "os/linux/no-new-privileges", "value": true},
            {"name": "os/linux/oom-score-adj", "value": 500},
        ]));
        let a = &plan(&m, InsecureOptions::default(), &|_: &str| Vec::new()).unwrap()[0];
        let f = a.seccomp.as_ref().unwrap();
        assert_eq!(f.mode, SeccompMode::Retain);
        assert_eq!(f.errno.as_deref(), Some("ENOSYS"));
        assert!(a.no_new_privileges);
        assert_eq!(a.oom_score_adj, Some(500));
    }
}
