//! The pod's cgroups: resource limits of `resource/memory`, `resource/cpu` and
//! `os/linux/cpu-shares`, and a place that holds every process of the pod.
//!
//! Who does what, and why. No systemd runs here, so nothing would create a
//! scope for the pod, and systemd-nspawn 252 with `--keep-unit --register=no`
//! creates no cgroup of its own for a container without systemd inside: it
//! stays in the cgroup it was started in (it splits itself into `payload` and
//! `supervisor` only when the container is to get a unified hierarchy), and
//! `--slice`/`--property` need machined. So stage0 makes the cgroups:
//! - `<own cgroup>/rkt-<uuid>` in each hierarchy it uses (the memory and cpu v1
//!   controllers and cgroup2, or cgroup2 alone), and below it one directory per
//!   app with that app's limits written before the pod starts;
//! - nspawn joins the pod's cgroups between fork and exec, so the container and
//!   everything in it are born inside (the cgroup namespace nspawn creates is
//!   rooted there);
//! - the pod's cgroup directories are bound into the stage1 rootfs
//!   ([`protocol::cgroup`]) and the init puts each app into its own directory
//!   before exec. Limits are per app, as appc's isolators are.
//!
//! Every directory made is recorded in the pod first ([`RECORD`]); gc and a
//! failed start remove exactly those.

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::protocol;
use rkt_engine::schema::PodManifest;
pub use rkt_engine::stage::limits::AppLimits;
use rkt_engine::stage::limits::{CFS_PERIOD_US, cfs_quota_us};

use crate::NspawnError;

/// The cgroup directories of the pod, one absolute path a line, parents first.
pub const RECORD: &str = "cgroups";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One mounted hierarchy the pod uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The name the init sees it under (`memory`, `cpu`, `unified`).
    name: &'static str,
    version: Version,
    /// The pod's directory in it.
    pod_dir: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCgroups {
    hierarchies: Vec<Hierarchy>,
    apps: Vec<String>,
    /// What nspawn makes itself: on a v1 `name=systemd` hierarchy it creates a
    /// cgroup named after the machine and leaves it behind when it exits.
    nspawn_made: Vec<PathBuf>,
}

impl PodCgroups {
    /// The hierarchies of this machine, each with the pod's directory below
    /// the cgroup this process is in (limits of the caller's cgroup still hold).
    pub fn plan(uuid: &str, manifest: &PodManifest) -> Result<Self, NspawnError> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| NspawnError::io("reading /proc/self/cgroup", e))?;
        let pure_v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        let wanted: &[(&'static str, Version)] = if pure_v2 {
            &[("unified", Version::V2)]
        } else {
            &[
                ("memory", Version::V1),
                ("cpu", Version::V1),
                ("unified", Version::V2),
            ]
        };
        let mut hierarchies = Vec::new();
        for (name, version) in wanted {
            let mount = match (pure_v2, *name) {
                (true, _) => PathBuf::from(CGROUP_ROOT),
                (false, name) => Path::new(CGROUP_ROOT).join(name),
            };
            if !mount.join("cgroup.procs").exists() {
                continue;
            }
            let Some(own_path) = own_cgroup(&own, name, *version) else {
                continue;
            };
            let pod_dir = mount
                .join(own_path.trim_start_matches('/'))
                .join(format!("rkt-{uuid}"));
            hierarchies.push(Hierarchy {
                name,
                version: *version,
                pod_dir,
            });
        }
        let named = Path::new(CGROUP_ROOT).join("systemd");
        let nspawn_made = match own_cgroup(&own, "name=systemd", Version::V1) {
            Some(path) if !pure_v2 && named.join("cgroup.procs").exists() => {
                vec![
                    named
                        .join(path.trim_start_matches('/'))
                        .join(format!("rkt-{uuid}")),
                ]
            }
            _ => Vec::new(),
        };
        Ok(PodCgroups {
            nspawn_made,
            hierarchies,
            apps: manifest
                .apps
                .iter()
                .map(|a| a.name.as_str().to_string())
                .collect(),
        })
    }

    /// Every directory, parents first.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.nspawn_made.clone();
        for h in &self.hierarchies {
            dirs.push(h.pod_dir.clone());
            dirs.extend(self.apps.iter().map(|a| h.pod_dir.join(a)));
        }
        dirs
    }

    /// Records, then makes every directory and writes each app's limits.
    pub fn create(&self, pod: &Path, limits: &[(String, AppLimits)]) -> Result<(), NspawnError> {
        let mut record = String::new();
        for d in self.dirs() {
            record.push_str(&d.to_string_lossy());
            record.push('\n');
        }
        let record_path = pod.join(RECORD);
        fsutil::replace_file(&record_path, record.as_bytes())
            .map_err(|e| NspawnError::io(format!("writing {}", record_path.display()), e))?;
        for d in self.dirs().iter().filter(|d| !self.nspawn_made.contains(d)) {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(NspawnError::io(format!("creating cgroup {}", d.display()), e)),
            }
        }
        for (app, l) in limits {
            self.write_limits(app, l)?;
        }
        Ok(())
    }

    fn write_limits(&self, app: &str, limits: &AppLimits) -> Result<(), NspawnError> {
        let find = |name: &str| self.hierarchies.iter().find(|h| h.name == name);
        let need = |name: &str, what: &str| {
            find(name).ok_or_else(|| {
                NspawnError::Invalid(format!(
                    "app {app:?}: {what} needs the {name} cgroup controller, which this machine does not mount"
                ))
            })
        };
        let memory = limits.limits_memory();
        let cpu = limits.limits_cpu();
        if self.hierarchies.iter().any(|h| h.version == Version::V1) {
            if memory {
                let dir = need("memory", "a memory isolator")?.pod_dir.join(app);
                if let Some(limit) = limits.memory.limit {
                    write(&dir, "memory.limit_in_bytes", limit)?;
                    // Without a swap limit the kernel swaps the app instead of
                    // killing it; the file exists only with swap accounting.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(&dir, "memory.memsw.limit_in_bytes", limit)?;
                    }
                }
                if let Some(request) = limits.memory.request {
                    write(&dir, "memory.soft_limit_in_bytes", request)?;
                }
            }
            if cpu {
                let dir = need("cpu", "a cpu isolator")?.pod_dir.join(app);
                if let Some(millis) = limits.cpu.limit {
                    write(&dir, "cpu.cfs_period_us", CFS_PERIOD_US)?;
                    write(&dir, "cpu.cfs_quota_us", cfs_quota_us(millis))?;
                }
                if let Some(shares) = limits.cpu_shares {
                    write(&dir, "cpu.shares", u64::from(shares))?;
                }
            }
        } else if memory || cpu {
            let dir = need("unified", "a resource isolator")?.pod_dir.join(app);
            for (file, value) in limits.cgroup2_files() {
                write_str(&dir, &file, &value)?;
            }
        }
        Ok(())
    }

    /// A user-namespaced pod's root (host uid `owner`) may move its processes
    /// between the pod's cgroups: it gets the membership files of the pod's
    /// and each app's directory, never the limit files.
    pub fn delegate(&self, owner: u32) -> Result<(), NspawnError> {
        let id = nix::unistd::Uid::from_raw(owner);
        let gid = nix::unistd::Gid::from_raw(owner);
        for h in &self.hierarchies {
            let dirs = std::iter::once(h.pod_dir.clone()).chain(self.apps.iter().map(|a| h.pod_dir.join(a)));
            for dir in dirs {
                for file in ["cgroup.procs", "tasks", "cgroup.threads"] {
                    let path = dir.join(file);
                    match nix::unistd::chown(&path, Some(id), Some(gid)) {
                        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                        Err(e) => {
                            return Err(NspawnError::io(format!("chown {}", path.display()), e.into()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of the pod's directories: nspawn joins them before exec.
    pub fn pod_procs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.pod_dir.join("cgroup.procs"))
            .collect()
    }

    /// (pod directory, where the init sees it) for each hierarchy.
    pub fn binds(&self, pod: &Path) -> Vec<(PathBuf, PathBuf, &'static str)> {
        self.hierarchies
            .iter()
            .map(|h| (h.pod_dir.clone(), protocol::cgroup(h.name).on_host(pod), h.name))
            .collect()
    }

    /// The `cgroup.procs` files an app's processes join, as the init sees them.
    pub fn app_procs(&self, app: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| protocol::cgroup(h.name).inside().join(app).join("cgroup.procs"))
            .collect()
    }
}

/// Removes every cgroup directory the pod recorded, children first. Gone
/// already is fine; one still holding a process is an error naming it.
pub fn remove(pod: &Path) -> Result<(), NspawnError> {
    let record_path = pod.join(RECORD);
    let record = match std::fs::read_to_string(&record_path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(NspawnError::io(format!("reading {}", record_path.display()), e)),
    };
    // Only this pod's cgroups: a tampered record must not make gc remove, or
    // kill the processes of, anything else.
    let own = pod
        .file_name()
        .and_then(|uuid| uuid.to_str())
        .map(|uuid| format!("rkt-{uuid}"));
    let dirs: Vec<&Path> = record
        .lines()
        .filter(|l| !l.is_empty() && !l.contains("/../"))
        .map(Path::new)
        .filter(|dir| {
            dir.starts_with(CGROUP_ROOT)
                && own
                    .as_deref()
                    .is_some_and(|own| dir.components().any(|c| c.as_os_str() == own))
        })
        .collect();
    // The pod is no longer running (nobody holds its lock), but its processes
    // die asynchronously: when its init is SIGKILLed, the kernel kills the
    // rest of its pid namespace and they exit after the lock is released. Kill
    // any straggler and wait, on cgroup2's populated flag, until none is left:
    // rmdir of a cgroup that still holds a task fails with EBUSY.
    for dir in &dirs {
        kill_members(dir);
    }
    for dir in dirs.iter().filter(|d| d.join("cgroup.events").exists()) {
        wait_unpopulated(dir, EMPTY_TIMEOUT);
    }
    let mut first_error = None;
    for line in dirs.iter().rev().filter_map(|d| d.to_str()) {
        let dir = Path::new(line);
        match remove_cgroup(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(NspawnError::io(format!("removing cgroup {line}"), e));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            let _ = std::fs::remove_file(&record_path);
            Ok(())
        }
    }
}

/// How long gc waits for a killed pod's processes to leave its cgroups.
const EMPTY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// SIGKILLs every process in `dir` and the cgroups below it.
fn kill_members(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_members(&entry.path());
        }
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits until the cgroup2 directory `dir` holds no process (its `populated`
/// flag is 0), woken by the kernel's notification on `cgroup.events`; gives
/// up after `timeout` (the rmdir that follows then reports what is left).
fn wait_unpopulated(dir: &Path, timeout: std::time::Duration) {
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let Ok(mut events) = std::fs::File::open(dir.join("cgroup.events")) else {
        return;
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut text = String::new();
        if events.rewind().is_err() || events.read_to_string(&mut text).is_err() {
            return;
        }
        if text.lines().any(|l| l.trim() == "populated 0") {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            events.as_fd(),
            nix::poll::PollFlags::POLLPRI | nix::poll::PollFlags::POLLERR,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)).is_err() {
            return;
        }
    }
}

/// A cgroup and the ones nspawn made below it (it splits itself into
/// `payload` and `supervisor` on the unified hierarchy), deepest first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The cgroup of this process in one hierarchy, from /proc/self/cgroup.
fn own_cgroup(proc_cgroup: &str, name: &str, version: Version) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V2 => controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == name),
        };
        matches.then(|| path.to_string())
    })
}

fn write(dir: &Path, file: &str, value: u64) -> Result<(), NspawnError> {
    write_str(dir, file, &value.to_string())
}

fn write_str(dir: &Path, file: &str, value: &str) -> Result<(), NspawnError> {
    let path = dir.join(file);
    std::fs::write(&path, value)
        .map_err(|e| NspawnError::io(format!("writing {value} to {}", path.display()), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HYBRID: &str = "9:name=systemd:/\n4:memory:/jobs/a\n2:cpuacct:/\n1:cpu:/\n0::/x\n";

    #[test]
    fn own_cgroups_are_read_per_hierarchy() {
        assert_eq!(
            own_cgroup(HYBRID, "memory", Version::V1).as_deref(),
            Some("/jobs/a")
        );
        assert_eq!(own_cgroup(HYBRID, "cpu", Version::V1).as_deref(), Some("/"));
        assert_eq!(own_cgroup(HYBRID, "unified", Version::V2).as_deref(), Some("/x"));
        assert_eq!(
            own_cgroup("1:cpu,cpuacct:/y\n", "cpu", Version::V1).as_deref(),
            Some("/y")
        );
        assert_eq!(own_cgroup(HYBRID, "pids", Version::V1), None);
    }

    #[test]
    fn removal_reads_the_record_and_touches_only_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(
            dir.path().join(RECORD),
            format!(
                "{}\n/sys/fs/cgroup/memory/nonexistent-rkt-test\n",
                victim.display()
            ),
        )
        .unwrap();
        remove(dir.path()).unwrap();
        assert!(victim.is_dir(), "a path outside /sys/fs/cgroup is never removed");
        // A cgroup that is not the pod's own (`rkt-<uuid>`) is neither drained
        // nor removed: this one would hold every process of the machine.
        std::fs::write(dir.path().join(RECORD), "/sys/fs/cgroup/unified\n").unwrap();
        remove(dir.path()).unwrap();
        assert!(Path::new("/sys/fs/cgroup/unified").is_dir() || !Path::new("/sys/fs/cgroup").exists());
        assert!(!dir.path().join(RECORD).exists());
        remove(dir.path()).unwrap();
    }
}
