//! What a CRI container uses and may use, through its app's cgroups:
//! ContainerStats/ListContainerStats read them, UpdateContainerResources
//! writes new limits into them, ReopenContainerLog checks the log link.
//!
//! Where the cgroups are: a container pod's stage1 (nspawn) makes one
//! directory per app below the pod's in every hierarchy it uses and lists
//! them all, one absolute path a line, in the pod directory's `cgroups`
//! file. Which hierarchy a directory belongs to is told by the files in it,
//! so a hybrid machine (memory and cpu on v1, an empty cgroup2 beside) and
//! a pure cgroup2 one read the same way. A VM pod's apps have their cgroups
//! inside the guest: no stats, no updates, said so.

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::{PodError, PodsDir, protocol};
use uuid::Uuid;

use crate::containers::{ContainerError, ContainerRecord, ContainerView, Phase, phase_name};
use crate::sandboxes::Engine;

/// The pod directory's list of its cgroups (written by the nspawn stage1).
const CGROUP_RECORD: &str = "cgroups";

/// The most cgroup v1 takes for "no limit" (rounded to the page size it
/// reports back); anything at or above means none.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// One app's cgroup directories, by what they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppCgroups {
    /// v1 memory controller.
    pub memory_v1: Option<PathBuf>,
    /// v1 cpu controller (with cpuacct, when they are mounted together).
    pub cpu_v1: Option<PathBuf>,
    /// cgroup2: the CPU time is there even without controllers; memory and
    /// cpu limits only when those controllers are enabled in it.
    pub unified: Option<PathBuf>,
}

impl AppCgroups {
    /// The directories of `app` in the pod at `pod_dir`; None when the pod
    /// recorded none (a VM pod, a fly pod, one already collected).
    pub fn of(pod_dir: &Path, app: &str) -> Option<Self> {
        let record = std::fs::read_to_string(pod_dir.join(CGROUP_RECORD)).ok()?;
        let pod_cgroup = format!("rkt-{}", pod_dir.file_name()?.to_str()?);
        let mut found = AppCgroups::default();
        for line in record.lines() {
            let dir = Path::new(line);
            let mine = dir.file_name().is_some_and(|n| n == app)
                && dir
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n.to_str() == Some(pod_cgroup.as_str()))
                && dir.starts_with("/sys/fs/cgroup")
                && !line.contains("/../");
            if !mine {
                continue;
            }
            if dir.join("cgroup.controllers").exists() {
                found.unified = Some(dir.to_path_buf());
            } else if dir.join("memory.usage_in_bytes").exists() {
                found.memory_v1 = Some(dir.to_path_buf());
            } else if dir.join("cpu.cfs_quota_us").exists() {
                found.cpu_v1 = Some(dir.to_path_buf());
            }
        }
        (found != AppCgroups::default()).then_some(found)
    }

    fn unified_has(&self, controller: &str) -> Option<&Path> {
        let dir = self.unified.as_deref()?;
        let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
        controllers
            .split_whitespace()
            .any(|c| c == controller)
            .then_some(dir)
    }

    /// Cumulative CPU time in nanoseconds.
    pub fn cpu_nanos(&self) -> Option<u64> {
        if let Some(dir) = &self.unified
            && let Some(usec) = stat_value(&dir.join("cpu.stat"), "usage_usec")
        {
            return Some(usec.saturating_mul(1000));
        }
        read_u64(&self.cpu_v1.as_ref()?.join("cpuacct.usage"))
    }

    pub fn memory(&self) -> Option<Memory> {
        if let Some(dir) = &self.memory_v1 {
            let stat = dir.join("memory.stat");
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
            return Some(Memory {
                usage,
                working_set: usage.saturating_sub(inactive),
                limit: read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED),
                rss: stat_value(&stat, "total_rss"),
                page_faults: stat_value(&stat, "total_pgfault"),
                major_page_faults: stat_value(&stat, "total_pgmajfault"),
            });
        }
        let dir = self.unified_has("memory")?;
        let stat = dir.join("memory.stat");
        let usage = read_u64(&dir.join("memory.current"))?;
        let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
        Some(Memory {
            usage,
            working_set: usage.saturating_sub(inactive),
            limit: read_u64(&dir.join("memory.max")),
            rss: stat_value(&stat, "anon"),
            page_faults: stat_value(&stat, "pgfault"),
            major_page_faults: stat_value(&stat, "pgmajfault"),
        })
    }

    /// The processes in the app's cgroups.
    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = [&self.memory_v1, &self.cpu_v1, &self.unified]
            .into_iter()
            .flatten()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Memory use in bytes (faults counted), as cAdvisor reads it: the working
/// set is what is in use minus the page cache the kernel may drop first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    pub working_set: u64,
    pub limit: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn stat_value(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What one container uses now.
#[derive(Debug, Clone)]
pub struct Usage {
    pub view: ContainerView,
    /// Nanoseconds since the epoch, when it was read.
    pub timestamp: i64,
    pub cpu_nanos: Option<u64>,
    pub memory: Option<Memory>,
}

/// New limits for a container, as the CRI's LinuxContainerResources gives
/// them; zero leaves a value as it is (as runc's update does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceUpdate {
    pub memory_limit: i64,
    pub memory_swap_limit: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub cpu_shares: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub unified: Vec<(String, String)>,
}

/// The default CFS period (µs) when an update gives a quota alone.
const CFS_PERIOD_US: i64 = 100_000;

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn invalid(id: &str, what: String) -> ContainerError {
    ContainerError::Invalid(format!("UpdateContainerResources {id}: {what}"))
}

impl Engine {
    fn pod_dir_of(&self, record: &ContainerRecord) -> Result<Option<PathBuf>, ContainerError> {
        let uuid = Uuid::parse_str(&record.sandbox_id)
            .map_err(|_| ContainerError::Invalid(format!("bad sandbox id {:?}", record.sandbox_id)))?;
        match PodsDir::existing(&self.dir).info(&uuid) {
            Ok(info) => Ok(Some(info.path)),
            Err(PodError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn usage_of(&self, view: ContainerView) -> Result<Usage, ContainerError> {
        let cgroups = match view.phase {
            Phase::Running => self
                .pod_dir_of(&view.record)?
                .and_then(|dir| AppCgroups::of(&dir, &view.record.app)),
            _ => None,
        };
        Ok(Usage {
            timestamp: now_nanos(),
            cpu_nanos: cgroups.as_ref().and_then(AppCgroups::cpu_nanos),
            memory: cgroups.as_ref().and_then(AppCgroups::memory),
            view,
        })
    }

    /// One container's usage; a container that does not run has none.
    pub fn container_usage(&self, id: &str) -> Result<Usage, ContainerError> {
        let view = self.container_status(id)?;
        self.usage_of(view)
    }

    /// The usage of every running container `keep` selects.
    pub fn list_usage(&self, keep: impl Fn(&ContainerView) -> bool) -> Result<Vec<Usage>, ContainerError> {
        self.list_containers()?
            .into_iter()
            .filter(|v| v.phase == Phase::Running && keep(v))
            .map(|v| self.usage_of(v))
            .collect()
    }

    /// Writes new limits into the app's cgroups, then into the container's
    /// record (so ContainerStatus shows them). What the app's cgroups cannot
    /// hold (cpusets, hugepages, unified keys, swap apart from memory) is
    /// refused before anything is written.
    pub fn update_resources(&self, id: &str, update: &ResourceUpdate) -> Result<(), ContainerError> {
        let view = self.container_status(id)?;
        if !matches!(view.phase, Phase::Created | Phase::Running) {
            return Err(ContainerError::Precondition(format!(
                "UpdateContainerResources: container {id} is {}",
                phase_name(view.phase)
            )));
        }
        if !update.cpuset_cpus.is_empty() || !update.cpuset_mems.is_empty() {
            return Err(invalid(
                id,
                "cpusets are not supported: apps get no cpuset cgroup".into(),
            ));
        }
        if let Some((key, _)) = update.unified.first() {
            return Err(invalid(
                id,
                format!("unified cgroup key {key:?} is not supported"),
            ));
        }
        if update.memory_limit < 0 || update.cpu_period < 0 || update.cpu_quota < -1 || update.cpu_shares < 0
        {
            return Err(invalid(id, "negative resource limits".into()));
        }
        if update.memory_swap_limit != 0 && update.memory_swap_limit != update.memory_limit {
            return Err(invalid(
                id,
                "a swap limit other than the memory limit is not supported (apps get no swap beyond it)"
                    .into(),
            ));
        }
        if !(-1000..=1000).contains(&update.oom_score_adj) {
            return Err(invalid(
                id,
                format!("oom_score_adj {} is out of -1000..=1000", update.oom_score_adj),
            ));
        }
        let pod_dir = self.pod_dir_of(&view.record)?;
        let Some(cgroups) = pod_dir
            .as_deref()
            .and_then(|d| AppCgroups::of(d, &view.record.app))
        else {
            return Err(ContainerError::Precondition(format!(
                "UpdateContainerResources: container {id} has no cgroups rkt-rs can reach (a VM pod keeps them inside the guest)"
            )));
        };
        let writes = plan_writes(&cgroups, update).map_err(|m| invalid(id, m))?;
        for (path, value) in &writes {
            std::fs::write(path, value).map_err(|e| {
                ContainerError::Sandbox(crate::sandboxes::SandboxError::Rkt(format!(
                    "UpdateContainerResources {id}: writing {value} to {}: {e}",
                    path.display()
                )))
            })?;
        }
        if update.oom_score_adj != 0 {
            for pid in cgroups.pids() {
                // A process that exited meanwhile has nothing left to adjust.
                let _ = std::fs::write(
                    format!("/proc/{pid}/oom_score_adj"),
                    update.oom_score_adj.to_string(),
                );
            }
        }
        let mut record = view.record;
        if update.memory_limit > 0 {
            record.memory_limit = update.memory_limit;
        }
        if update.cpu_quota != 0 {
            record.cpu_quota = update.cpu_quota;
            record.cpu_period = if update.cpu_period > 0 {
                update.cpu_period
            } else {
                record.cpu_period.max(CFS_PERIOD_US)
            };
        }
        self.rewrite_container_record(&record)
    }

    /// The record containers.rs keeps in `<dir>/cri/containers/<id>.json`,
    /// replaced atomically.
    fn rewrite_container_record(&self, record: &ContainerRecord) -> Result<(), ContainerError> {
        let path = self
            .dir
            .join("cri")
            .join("containers")
            .join(format!("{}.json", record.id));
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ContainerError::Invalid(format!("cannot encode the container record: {e}")))?;
        fsutil::atomic_write(&path, &bytes).map_err(|e| {
            ContainerError::Sandbox(crate::sandboxes::SandboxError::Io {
                context: format!("cannot write {}", path.display()),
                source: e,
            })
        })
    }

    /// The kubelet rotates a log by renaming it and asking the runtime to
    /// reopen. The pod's init writes each app's log through one descriptor
    /// it keeps, and the kubelet's path is a link to that file: while the
    /// link is in place there is nothing to reopen; once it was renamed away
    /// the init cannot be made to write elsewhere, which is said (the kubelet
    /// then moves its file back).
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let view = self.container_status(id)?;
        if view.phase != Phase::Running {
            return Err(ContainerError::Precondition(format!(
                "ReopenContainerLog: container {id} is {}, not running",
                phase_name(view.phase)
            )));
        }
        if view.record.log_path.is_empty() {
            return Ok(());
        }
        let Some(pod_dir) = self.pod_dir_of(&view.record)? else {
            return Err(ContainerError::Precondition(format!(
                "ReopenContainerLog: the pod of container {id} is gone"
            )));
        };
        let app_log = protocol::app_log(&view.record.app).on_host(&pod_dir);
        if same_file(&app_log, Path::new(&view.record.log_path)) {
            return Ok(());
        }
        Err(ContainerError::Precondition(format!(
            "ReopenContainerLog: {} no longer names container {id}'s log, and rkt-rs cannot reopen it: the pod's init keeps writing the file it opened",
            view.record.log_path
        )))
    }
}

/// Whether `link` (a hard link, or a symlink across filesystems) is `file`.
fn same_file(file: &Path, link: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(file), std::fs::metadata(link)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The files and values an update writes, in a safe order; an error names
/// what the app's cgroups cannot take.
fn plan_writes(cgroups: &AppCgroups, update: &ResourceUpdate) -> Result<Vec<(PathBuf, String)>, String> {
    let mut writes = Vec::new();
    let wants_cpu = update.cpu_quota != 0 || update.cpu_period != 0 || update.cpu_shares != 0;
    if update.memory_limit > 0 {
        if let Some(dir) = &cgroups.memory_v1 {
            let limit = update.memory_limit.to_string();
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let current = read_u64(&dir.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
            let raising = u64::try_from(update.memory_limit).unwrap_or(u64::MAX) > current;
            // memsw may never be below the memory limit: raise it first, lower it last.
            let mut pair = vec![(dir.join("memory.limit_in_bytes"), limit.clone())];
            if memsw.exists() {
                if raising {
                    pair.insert(0, (memsw, limit));
                } else {
                    pair.push((memsw, limit));
                }
            }
            writes.extend(pair);
        } else if let Some(dir) = cgroups.unified_has("memory") {
            writes.push((dir.join("memory.max"), update.memory_limit.to_string()));
        } else {
            return Err("the app's cgroups have no memory controller".into());
        }
    }
    if wants_cpu {
        if let Some(dir) = &cgroups.cpu_v1 {
            if update.cpu_period > 0 {
                writes.push((dir.join("cpu.cfs_period_us"), update.cpu_period.to_string()));
            }
            if update.cpu_quota != 0 {
                writes.push((dir.join("cpu.cfs_quota_us"), update.cpu_quota.to_string()));
            }
            if update.cpu_shares > 0 {
                writes.push((dir.join("cpu.shares"), update.cpu_shares.max(2).to_string()));
            }
        } else if let Some(dir) = cgroups.unified_has("cpu") {
            if update.cpu_quota != 0 || update.cpu_period != 0 {
                let period = if update.cpu_period > 0 {
                    update.cpu_period
                } else {
                    CFS_PERIOD_US
                };
                let quota = match update.cpu_quota {
                    q if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                writes.push((dir.join("cpu.max"), format!("{quota} {period}")));
            }
            if update.cpu_shares > 0 {
                // cgroup2's weight (1..=10000) for cgroup v1's shares (2..=262144).
                let shares = update.cpu_shares.clamp(2, 262_144);
                let weight = 1 + ((shares - 2) * 9999) / 262_142;
                writes.push((dir.join("cpu.weight"), weight.to_string()));
            }
        } else {
            return Err("the app's cgroups have no cpu controller".into());
        }
    }
    Ok(writes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) -> AppCgroups {
        let memory = root.join("memory");
        let cpu = root.join("cpu");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "1000000\n").unwrap();
        std::fs::write(memory.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            memory.join("memory.stat"),
            "cache 5\ntotal_rss 600000\ntotal_inactive_file 250000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        )
        .unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "123456789\n").unwrap();
        AppCgroups {
            memory_v1: Some(memory),
            cpu_v1: Some(cpu),
            unified: None,
        }
    }

    #[test]
    fn stats_from_v1_files_subtract_the_inactive_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = fake_v1(dir.path());
        assert_eq!(cgroups.cpu_nanos(), Some(123_456_789));
        let memory = cgroups.memory().unwrap();
        assert_eq!(memory.usage, 1_000_000);
        assert_eq!(memory.working_set, 750_000);
        assert_eq!(memory.limit, None, "v1's huge default is no limit");
        assert_eq!((memory.rss, memory.page_faults), (Some(600_000), Some(7)));
    }

    #[test]
    fn app_cgroups_are_found_by_pod_and_app_only() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("0b3cbd6a-2f35-4b6e-9a3b-1f4e44d1c2aa");
        std::fs::create_dir(&pod).unwrap();
        std::fs::write(
            pod.join(CGROUP_RECORD),
            "/sys/fs/cgroup/memory/rkt-0b3cbd6a-2f35-4b6e-9a3b-1f4e44d1c2aa\n\
             /sys/fs/cgroup/memory/rkt-0b3cbd6a-2f35-4b6e-9a3b-1f4e44d1c2aa/other\n\
             /sys/fs/cgroup/memory/rkt-someone-else/web\n",
        )
        .unwrap();
        // None of the directories exist here, so none is classified.
        assert_eq!(AppCgroups::of(&pod, "web"), None);
        assert_eq!(AppCgroups::of(&dir.path().join("missing"), "web"), None);
    }

    #[test]
    fn updates_raise_memsw_first_and_refuse_what_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut cgroups = fake_v1(dir.path());
        let memory = cgroups.memory_v1.clone().unwrap();
        std::fs::write(memory.join("memory.limit_in_bytes"), "1000\n").unwrap();
        std::fs::write(memory.join("memory.memsw.limit_in_bytes"), "1000\n").unwrap();
        let update = ResourceUpdate {
            memory_limit: 4096,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..ResourceUpdate::default()
        };
        let writes = plan_writes(&cgroups, &update).unwrap();
        let names: Vec<String> = writes
            .iter()
            .map(|(p, v)| format!("{}={v}", p.file_name().unwrap().to_string_lossy()))
            .collect();
        assert_eq!(
            names,
            [
                "memory.memsw.limit_in_bytes=4096",
                "memory.limit_in_bytes=4096",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=50000"
            ]
        );
        cgroups.cpu_v1 = None;
        let err = plan_writes(&cgroups, &update).unwrap_err();
        assert!(err.contains("no cpu controller"), "{err}");
    }
}
