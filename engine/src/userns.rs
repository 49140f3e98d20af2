//! `--private-users`: each such pod gets its own range of host uids and gids,
//! `0..COUNT` inside mapped to `SHIFT..SHIFT+COUNT` outside, as rkt did: SHIFT
//! a random multiple of 65536 below 2^31 (devpts reads uids as signed ints),
//! COUNT 65536.
//!
//! Beyond rkt, which drew the shift at random and hoped, ranges are allocated
//! under a lock in one machine-wide table ([`ALLOCATIONS`]), so two pods never
//! share one, whatever `--dir` they live in. A pod's range is recorded in its
//! directory ([`RANGE_FILE`], rkt's `SHIFT:COUNT`) and released by gc; an entry
//! whose pod directory is gone (a crash between allocation and gc) is
//! reclaimed by the next allocation.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// The machine-wide allocation table: `SHIFT PODS-DIR UUID` per line.
pub const ALLOCATIONS: &str = "/run/rkt-rs/uid-ranges";

/// In the pod directory: the pod's range as `SHIFT:COUNT` (rkt's format).
pub const RANGE_FILE: &str = "private-users";

/// Host ids per pod: a full 16-bit range, as rkt and systemd-nspawn use.
pub const COUNT: u32 = 0x10000;

/// Shifts are `n << 16` for n in 1..=MAX_BLOCK.
const MAX_BLOCK: u32 = 0x7fff;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("--private-users: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--private-users: every uid range is taken ({0} pods hold one)")]
    Exhausted(usize),
    #[error("--private-users: {0}")]
    Invalid(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> UsernsError {
    let context = context.into();
    move |source| UsernsError::Io { context, source }
}

/// A pod's id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub shift: u32,
    pub count: u32,
}

impl UidRange {
    /// The host id of `id` inside the pod; None past the range.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.shift + id)
    }
    /// Whether `id` (a host id) is already one of the pod's.
    pub fn contains_host_id(&self, id: u32) -> bool {
        id >= self.shift && id - self.shift < self.count
    }
    pub fn to_record(self) -> String {
        format!("{}:{}", self.shift, self.count)
    }
    pub fn parse(text: &str) -> Option<Self> {
        let (shift, count) = text.trim().split_once(':')?;
        let range = UidRange {
            shift: shift.parse().ok()?,
            count: count.parse().ok()?,
        };
        (range.shift > 0 && range.count > 0 && range.shift.checked_add(range.count).is_some())
            .then_some(range)
    }
}

/// The pod's recorded range; None when the pod was not asked to be private.
pub fn read(pod_dir: &Path) -> Result<Option<UidRange>, UsernsError> {
    let path = pod_dir.join(RANGE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => UidRange::parse(&text)
            .map(Some)
            .ok_or_else(|| UsernsError::Invalid(format!("{}: not SHIFT:COUNT", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// The allocation table, for tests and for machines with another /run.
#[derive(Debug, Clone)]
pub struct Allocator {
    table: PathBuf,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            table: PathBuf::from(ALLOCATIONS),
        }
    }
}

struct Entry {
    shift: u32,
    pods: PathBuf,
    uuid: Uuid,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let (shift, rest) = line.split_once(' ')?;
        // The pods dir sits between; a path may hold spaces, a uuid not.
        let (pods, uuid) = rest.rsplit_once(' ')?;
        Some(Entry {
            shift: shift.parse().ok()?,
            pods: PathBuf::from(pods),
            uuid: uuid.parse().ok()?,
        })
    }
    fn line(&self) -> String {
        format!("{} {} {}\n", self.shift, self.pods.display(), self.uuid)
    }
    /// Its pod still exists in some state directory of its `--dir`.
    fn live(&self) -> bool {
        let uuid = self.uuid.to_string();
        std::fs::read_dir(&self.pods)
            .map(|states| states.flatten().any(|state| state.path().join(&uuid).exists()))
            .unwrap_or(false)
    }
}

impl Allocator {
    pub fn at(table: impl Into<PathBuf>) -> Self {
        Allocator { table: table.into() }
    }

    /// Under the table's lock: `edit` gets the entries and returns them changed.
    fn with_table<T>(
        &self,
        edit: impl FnOnce(&mut Vec<Entry>) -> Result<T, UsernsError>,
    ) -> Result<T, UsernsError> {
        if let Some(dir) = self.table.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let what = || format!("{}", self.table.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.table)
            .map_err(io(format!("opening {}", what())))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(format!("locking {}", what()))(e.into()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io(format!("reading {}", what())))?;
        let mut entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
        let result = edit(&mut entries)?;
        let text: String = entries.iter().map(Entry::line).collect();
        // Rewritten in place under the lock: readers take the same lock.
        file.set_len(0).map_err(io(format!("truncating {}", what())))?;
        file.rewind().map_err(io(format!("rewinding {}", what())))?;
        file.write_all(text.as_bytes())
            .map_err(io(format!("writing {}", what())))?;
        file.sync_data().map_err(io(format!("syncing {}", what())))?;
        Ok(result)
    }

    /// Allocates a range for the pod `uuid` of `pods` (the `--dir`'s pods
    /// directory) and records it in `pod_dir`.
    pub fn allocate(&self, pods: &Path, uuid: Uuid, pod_dir: &Path) -> Result<UidRange, UsernsError> {
        let range = self.with_table(|entries| {
            entries.retain(|e| e.uuid == uuid || e.live());
            if let Some(mine) = entries.iter().find(|e| e.uuid == uuid) {
                return Ok(UidRange {
                    shift: mine.shift,
                    count: COUNT,
                });
            }
            let taken: std::collections::HashSet<u32> = entries.iter().map(|e| e.shift >> 16).collect();
            if taken.len() >= MAX_BLOCK as usize {
                return Err(UsernsError::Exhausted(taken.len()));
            }
            // A random start, then the next free block: random as rkt, never shared.
            let start = random_u32() % MAX_BLOCK;
            let block = (0..MAX_BLOCK)
                .map(|i| (start + i) % MAX_BLOCK + 1)
                .find(|b| !taken.contains(b))
                .ok_or(UsernsError::Exhausted(taken.len()))?;
            entries.push(Entry {
                shift: block << 16,
                pods: pods.to_path_buf(),
                uuid,
            });
            Ok(UidRange {
                shift: block << 16,
                count: COUNT,
            })
        })?;
        let path = pod_dir.join(RANGE_FILE);
        crate::fsutil::replace_file(&path, range.to_record().as_bytes())
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(range)
    }

    /// Gives the pod's range back. Idempotent; a pod without one is fine.
    pub fn release(&self, uuid: Uuid) -> Result<(), UsernsError> {
        if !self.table.exists() {
            return Ok(());
        }
        self.with_table(|entries| {
            entries.retain(|e| e.uuid != uuid);
            Ok(())
        })
    }

    /// Shifts held now (for tests and diagnostics).
    pub fn held(&self) -> Result<Vec<(u32, Uuid)>, UsernsError> {
        self.with_table(|entries| Ok(entries.iter().map(|e| (e.shift, e.uuid)).collect()))
    }
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        // No entropy: the clock's nanoseconds still spread pods out, and the
        // table, not chance, is what keeps ranges apart.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }
}

/// Whether this kernel has user namespaces at all.
pub fn supported() -> bool {
    Path::new("/proc/self/ns/user").exists()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_recorded_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::at(dir.path().join("run/uid-ranges"));
        let pods = dir.path().join("pods");
        let mut shifts = Vec::new();
        let mut uuids = Vec::new();
        for _ in 0..50 {
            let uuid = Uuid::new_v4();
            let pod = pods.join("prepared").join(uuid.to_string());
            std::fs::create_dir_all(&pod).unwrap();
            let r = alloc.allocate(&pods, uuid, &pod).unwrap();
            assert_eq!(r.count, COUNT);
            assert_eq!(r.shift % COUNT, 0);
            assert!(r.shift >= COUNT && r.shift < 1 << 31, "{}", r.shift);
            assert_eq!(read(&pod).unwrap(), Some(r));
            // Asking again for the same pod gives the same range.
            assert_eq!(alloc.allocate(&pods, uuid, &pod).unwrap(), r);
            shifts.push(r.shift);
            uuids.push(uuid);
        }
        let mut unique = shifts.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), shifts.len());
        alloc.release(uuids[0]).unwrap();
        alloc.release(uuids[0]).unwrap();
        let held = alloc.held().unwrap();
        assert_eq!(held.len(), 49);
        assert!(!held.iter().any(|(_, u)| *u == uuids[0]));
    }

    #[test]
    fn a_vanished_pods_range_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::at(dir.path().join("uid-ranges"));
        let pods = dir.path().join("my pods");
        let gone = Uuid::new_v4();
        let pod = pods.join("run").join(gone.to_string());
        std::fs::create_dir_all(&pod).unwrap();
        alloc.allocate(&pods, gone, &pod).unwrap();
        std::fs::remove_dir_all(&pod).unwrap();
        let other = Uuid::new_v4();
        let pod = pods.join("run").join(other.to_string());
        std::fs::create_dir_all(&pod).unwrap();
        alloc.allocate(&pods, other, &pod).unwrap();
        let held: Vec<Uuid> = alloc.held().unwrap().into_iter().map(|(_, u)| u).collect();
        assert_eq!(held, [other]);
    }

    #[test]
    fn ranges_map_and_parse() {
        let r = UidRange {
            shift: 0x20000,
            count: COUNT,
        };
        assert_eq!(r.host_id(0), Some(0x20000));
        assert_eq!(r.host_id(COUNT), None);
        assert!(r.contains_host_id(0x2ffff) && !r.contains_host_id(0x30000));
        assert_eq!(UidRange::parse(&r.to_record()), Some(r));
        for bad in ["", "1", "0:5", "x:1", "4294967295:2"] {
            assert_eq!(UidRange::parse(bad), None, "{bad}");
        }
    }
}
