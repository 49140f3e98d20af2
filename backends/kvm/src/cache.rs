//! The boot files, built once and kept in a cache directory under names that
//! carry a hash of everything they are made from: a new kernel or a new `rkt`
//! binary gets new files, concurrent builders write temps and rename (the
//! loser's rename replaces an identical file), a crash leaves at most a temp.
//!
//! A memo per set of inputs (keyed by their [`fsutil::stat_key`]) names the files, and
//! its mtime says when a run last used it. [`prune`] removes what no run has
//! used for [`UNUSED_GRACE`]: memos, the files no memo names any more, temps.
//! The cache's lock keeps it from racing a run: a run holds it shared from
//! reading its memo until it has both files open ([`BootFiles`] keeps them
//! open, and QEMU opens them through rkt's descriptors, so an unlink after
//! that cannot touch the pod); [`prune`] takes it exclusively, without waiting.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use rkt_engine::fsutil;
use sha2::{Digest, Sha256};

use crate::KvmError;
use crate::initramfs;
use crate::kernel::{self, Kernel};
use crate::snapshot;

/// How long a build's entries stay after their last use: a machine running
/// two rkt builds by turns (a developer's) does not rebuild at each switch.
pub const UNUSED_GRACE: Duration = Duration::from_secs(60 * 60);

const LOCK: &str = "lock";
const MEMO_PREFIX: &str = "memo-";
const CONTENT_PREFIXES: [&str; 2] = ["vmlinux-", "initramfs-"];
const TEMP_PREFIX: &str = ".tmp-";

/// The files QEMU boots, open: the cache may drop their names, the pod keeps
/// them.
#[derive(Debug)]
pub struct BootFiles {
    /// Where they are in the cache.
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The memo that named them (None: the inputs could not be stat'ed).
    memo: Option<PathBuf>,
    vmlinux_file: File,
    initramfs_file: File,
}

impl BootFiles {
    /// Paths for QEMU to open: this process's descriptors, valid while it
    /// lives (rkt waits for QEMU), whatever happens to the cache.
    pub fn qemu_paths(&self) -> (PathBuf, PathBuf) {
        let fd_path = |f: &File| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()));
        (fd_path(&self.vmlinux_file), fd_path(&self.initramfs_file))
    }
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

/// `dir/<name>`, built by `build` when absent.
fn cached(
    dir: &Path,
    name: &str,
    build: impl FnOnce() -> Result<Vec<u8>, KvmError>,
) -> Result<PathBuf, KvmError> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let bytes = build()?;
    fsutil::atomic_write(&path, &bytes)
        .map_err(|e| KvmError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

fn lock(dir: &Path, how: FlockArg) -> Result<Option<Flock<File>>, KvmError> {
    let path = dir.join(LOCK);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| KvmError::io(format!("opening {}", path.display()), e))?;
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(KvmError::io(format!("locking {}", path.display()), e.into())),
    }
}

/// The cache's lock held shared: [`prune`] leaves everything alone meanwhile.
pub(crate) fn hold_shared(dir: &Path) -> Result<Flock<File>, KvmError> {
    lock(dir, FlockArg::LockShared)?.ok_or_else(|| KvmError::Invalid("the boot-file cache's lock".into()))
}

fn open(path: &Path) -> Result<File, KvmError> {
    File::open(path).map_err(|e| KvmError::io(format!("opening {}", path.display()), e))
}

/// The names a memo holds, as paths in `dir`.
fn read_memo(dir: &Path, memo: &Path) -> Option<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(memo).ok()?;
    let (vmlinux, initramfs) = text.trim().split_once('\n')?;
    Some((dir.join(vmlinux), dir.join(initramfs)))
}

/// The vmlinux and initramfs for `kernel` with `init` (the rkt binary's bytes)
/// as /init, loading the virtio `transport` module, open. A memo keyed by the
/// inputs' [`fsutil::stat_key`] names the content-keyed files, so a run with unchanged
/// inputs reads and hashes nothing (~100 ms less per pod); using it marks it
/// used (its mtime) for [`prune`].
pub fn boot_files(
    dir: &Path,
    kernel: &Kernel,
    init_exe: &Path,
    transport: &str,
) -> Result<BootFiles, KvmError> {
    std::fs::create_dir_all(dir).map_err(|e| KvmError::io(format!("creating {}", dir.display()), e))?;
    let _shared = lock(dir, FlockArg::LockShared)?;
    let modules_dep = kernel.modules.join("modules.dep");
    let kernel_config = kernel.config();
    let key = fsutil::stat_key(
        &[&kernel.image, init_exe, &modules_dep, &kernel_config],
        &format!("{}:{transport}", kernel.release),
    )
    .or_else(|| {
        fsutil::stat_key(
            &[&kernel.image, init_exe, &modules_dep],
            &format!("{}:{transport}:no config", kernel.release),
        )
    });
    let memo = key.map(|k| dir.join(format!("{MEMO_PREFIX}{k}")));
    if let Some(memo) = &memo
        && let Some((vmlinux, initramfs)) = read_memo(dir, memo)
        && let (Ok(vmlinux_file), Ok(initramfs_file)) = (File::open(&vmlinux), File::open(&initramfs))
    {
        // Best effort: a memo not marked may be pruned early and rebuilt.
        if let Ok(f) = File::open(memo) {
            let _ = f.set_modified(SystemTime::now());
        }
        return Ok(BootFiles {
            vmlinux,
            initramfs,
            memo: Some(memo.clone()),
            vmlinux_file,
            initramfs_file,
        });
    }
    let (vmlinux, initramfs) = build_boot_files(dir, kernel, init_exe, transport)?;
    if let Some(memo) = &memo {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let text = format!("{}\n{}\n", name(&vmlinux), name(&initramfs));
        fsutil::atomic_write(memo, text.as_bytes())
            .map_err(|e| KvmError::io(format!("writing {}", memo.display()), e))?;
    }
    Ok(BootFiles {
        vmlinux_file: open(&vmlinux)?,
        initramfs_file: open(&initramfs)?,
        vmlinux,
        initramfs,
        memo,
    })
}

/// Removes from `dir` what no run has used for [`UNUSED_GRACE`], keeping
/// `current`'s entries: memos, the vmlinux and initramfs files no remaining
/// memo names, and temps of builds that died. Returns how many files went;
/// 0 at once when a run holds the cache's lock (the next run prunes).
pub fn prune(dir: &Path, current: &BootFiles) -> Result<usize, KvmError> {
    prune_unused(dir, current.memo.as_deref(), SystemTime::now(), UNUSED_GRACE)
}

fn prune_unused(
    dir: &Path,
    keep_memo: Option<&Path>,
    now: SystemTime,
    grace: Duration,
) -> Result<usize, KvmError> {
    let Some(_exclusive) = lock(dir, FlockArg::LockExclusiveNonblock)? else {
        return Ok(0);
    };
    let entries: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| KvmError::io(format!("reading {}", dir.display()), e))?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    let unused = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|used| now.duration_since(used).is_ok_and(|age| age > grace))
    };
    let mut removed = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for (name, path) in &entries {
        if !name.starts_with(MEMO_PREFIX) {
            continue;
        }
        if Some(path.as_path()) != keep_memo && unused(path) {
            removed.push(path.clone());
        } else if let Some((vmlinux, initramfs)) = read_memo(dir, path) {
            named.insert(vmlinux);
            named.insert(initramfs);
        }
    }
    for (name, path) in &entries {
        // A snapshot's files go with its state file, whose mtime each restore
        // sets; a lock or a failure record without one, an hour after it was
        // written.
        if let Some(rest) = name.strip_prefix(snapshot::FILE_PREFIX) {
            let key = rest.split('.').next().unwrap_or(rest);
            let state = dir.join(format!("{}{key}.state", snapshot::FILE_PREFIX));
            if unused(path) && (!state.exists() || unused(&state)) {
                removed.push(path.clone());
            }
            continue;
        }
        let content = CONTENT_PREFIXES.iter().any(|p| name.starts_with(p));
        // No run is building (they hold the lock shared while they do): a
        // temp is a dead build's.
        if (content && !named.contains(path)) || name.starts_with(TEMP_PREFIX) {
            removed.push(path.clone());
        }
    }
    let mut count = 0;
    for path in removed {
        match std::fs::remove_file(&path) {
            Ok(()) => count += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KvmError::io(format!("removing {}", path.display()), e)),
        }
    }
    Ok(count)
}

fn build_boot_files(
    dir: &Path,
    kernel: &Kernel,
    init_exe: &Path,
    transport: &str,
) -> Result<(PathBuf, PathBuf), KvmError> {
    let bzimage = std::fs::read(&kernel.image)
        .map_err(|e| KvmError::io(format!("reading {}", kernel.image.display()), e))?;
    let vmlinux = cached(
        dir,
        &format!("vmlinux-{}-{}", kernel.release, short_hash(&[&bzimage])),
        || kernel::extract_vmlinux(&bzimage),
    )?;

    let exe =
        std::fs::read(init_exe).map_err(|e| KvmError::io(format!("reading {}", init_exe.display()), e))?;
    let init = initramfs::loadable_prefix(&exe)?;
    drop(exe);
    let read = |name: &str| {
        let path = kernel.modules.join(name);
        std::fs::read_to_string(&path).map_err(|e| KvmError::io(format!("reading {}", path.display()), e))
    };
    let dep = initramfs::ModulesDep::parse(&read("modules.dep")?);
    let builtin = initramfs::parse_builtin(&read("modules.builtin").unwrap_or_default());
    let base = dep.load_order(&initramfs::base_modules(transport), &builtin)?;
    let net = dep.load_order_after(&initramfs::net_modules(), &builtin, &base)?;
    let config = std::fs::read_to_string(kernel.config()).ok();
    let deps = base
        .iter()
        .chain(&net)
        .map(|path| (path.clone(), dep.direct_deps(path).to_vec()))
        .collect();
    let modules = initramfs::ModuleLists {
        base,
        net,
        strip_signatures: initramfs::loads_unsigned_modules(config.as_deref()),
        deps,
    };
    let mut module_bytes = Vec::new();
    for path in modules.all() {
        let full = kernel.modules.join(path);
        module_bytes
            .push(std::fs::read(&full).map_err(|e| KvmError::io(format!("reading {}", full.display()), e))?);
    }
    let layout = format!(
        "base {:?} net {:?} strip {} deps {:?}",
        modules.base, modules.net, modules.strip_signatures, modules.deps
    );
    let mut parts: Vec<&[u8]> = vec![&init, kernel.release.as_bytes(), layout.as_bytes()];
    for bytes in &module_bytes {
        parts.push(bytes);
    }
    let initramfs = cached(dir, &format!("initramfs-{}.cpio", short_hash(&parts)), || {
        initramfs::build(&init, &kernel.modules, &modules)
    })?;
    Ok((vmlinux, initramfs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn write_aged(path: &Path, text: &str, age: Duration) {
        std::fs::write(path, text).unwrap();
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    /// Two builds' entries, one current and one unused for two hours, a third
    /// build's used a minute ago, an orphan and a dead build's temp.
    #[test]
    fn pruning_keeps_the_current_and_recent_builds_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hour = Duration::from_secs(3600);
        let old = Duration::from_secs(2 * 3600);
        for name in [
            "vmlinux-k",
            "initramfs-cur.cpio",
            "initramfs-old.cpio",
            "initramfs-recent.cpio",
        ] {
            write_aged(&d.join(name), "bytes", old);
        }
        write_aged(&d.join("initramfs-orphan.cpio"), "bytes", Duration::ZERO);
        write_aged(&d.join(".tmp-initramfs-x.cpio-1-2"), "half", Duration::ZERO);
        write_aged(&d.join("memo-cur"), "vmlinux-k\ninitramfs-cur.cpio\n", old);
        write_aged(&d.join("memo-old"), "vmlinux-k\ninitramfs-old.cpio\n", old);
        write_aged(
            &d.join("memo-recent"),
            "vmlinux-k\ninitramfs-recent.cpio\n",
            Duration::from_secs(60),
        );

        let removed = prune_unused(d, Some(&d.join("memo-cur")), SystemTime::now(), hour).unwrap();
        let left = names_in(d);
        assert_eq!(
            left,
            [
                "initramfs-cur.cpio",
                "initramfs-recent.cpio",
                "lock",
                "memo-cur",
                "memo-recent",
                "vmlinux-k"
            ]
        );
        assert_eq!(removed, 4);
    }

    /// A snapshot restored a minute ago keeps its RAM file (however old) and
    /// lock; one unused for two hours goes whole; a failure record stays
    /// its hour.
    #[test]
    fn pruning_keeps_used_snapshots_and_fresh_failure_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = Duration::from_secs(2 * 3600);
        write_aged(&d.join("snapshot-used.ram"), "ram", old);
        write_aged(&d.join("snapshot-used.lock"), "", old);
        write_aged(&d.join("snapshot-used.state"), "state", Duration::from_secs(60));
        write_aged(&d.join("snapshot-stale.ram"), "ram", old);
        write_aged(&d.join("snapshot-stale.state"), "state", old);
        write_aged(&d.join("snapshot-bad.failed"), "no qemu", Duration::from_secs(60));
        write_aged(&d.join("snapshot-worse.failed"), "no qemu", old);
        let removed = prune_unused(d, None, SystemTime::now(), Duration::from_secs(3600)).unwrap();
        let left = names_in(d);
        assert_eq!(
            left,
            [
                "lock",
                "snapshot-bad.failed",
                "snapshot-used.lock",
                "snapshot-used.ram",
                "snapshot-used.state"
            ]
        );
        assert_eq!(removed, 3);
    }

    /// A run between reading its memo and opening its files holds the lock
    /// shared: pruning then removes nothing and does not wait.
    #[test]
    fn pruning_never_races_a_run_looking_up_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_aged(
            &d.join("memo-old"),
            "vmlinux-k\ninitramfs-old.cpio\n",
            Duration::from_secs(7200),
        );
        write_aged(&d.join("initramfs-old.cpio"), "bytes", Duration::from_secs(7200));
        let run = lock(d, FlockArg::LockShared).unwrap().unwrap();
        assert_eq!(prune_unused(d, None, SystemTime::now(), UNUSED_GRACE).unwrap(), 0);
        assert!(d.join("memo-old").exists() && d.join("initramfs-old.cpio").exists());
        drop(run);
        assert_eq!(prune_unused(d, None, SystemTime::now(), UNUSED_GRACE).unwrap(), 2);
    }

    /// A file the cache no longer names stays readable through an open
    /// descriptor: what a running pod's QEMU was given.
    #[test]
    fn a_pruned_file_stays_readable_through_the_runs_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_aged(&d.join("vmlinux-k"), "kernel", Duration::ZERO);
        write_aged(&d.join("initramfs-a.cpio"), "initramfs", Duration::ZERO);
        let files = BootFiles {
            vmlinux: d.join("vmlinux-k"),
            initramfs: d.join("initramfs-a.cpio"),
            memo: None,
            vmlinux_file: File::open(d.join("vmlinux-k")).unwrap(),
            initramfs_file: File::open(d.join("initramfs-a.cpio")).unwrap(),
        };
        assert_eq!(prune(d, &files).unwrap(), 2);
        assert!(!d.join("initramfs-a.cpio").exists());
        let (vmlinux, initramfs) = files.qemu_paths();
        assert_eq!(std::fs::read(vmlinux).unwrap(), b"kernel");
        assert_eq!(std::fs::read(initramfs).unwrap(), b"initramfs");
    }
}
