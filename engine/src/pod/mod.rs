//! The typed pod state machine over rkt's on-disk layout.
//!
//! `$dir/pods/{embryo,prepare,prepared,run,exited-garbage,garbage}/<uuid>`: the state
//! is the directory a pod sits in plus whether its flock is held. Every transition is
//! a rename(2) between state directories; a
//! transition consumes the old typed value, so an illegal one does not compile.
//!
//! The lock is `flock(LOCK_EX)` on the pod directory's own fd. It lives on the open
//! file description, so it follows the pod through renames, and a second `open` of
//! the same directory (another process, or another `Pod` value in this process)
//! conflicts with it.
//!
//! | directory        | locked (by anyone)         | unlocked                |
//! |------------------|----------------------------|-------------------------|
//! | `embryo`         | embryo (lock not probed)   | embryo                  |
//! | `prepare`        | preparing                  | aborted prepare         |
//! | `prepared`       | prepared (lock not probed) | prepared                |
//! | `run`            | running                    | exited                  |
//! | `exited-garbage` | exited garbage, deleting   | exited garbage          |
//! | `garbage`        | garbage, deleting          | garbage                 |
//!
//! Pods only ever move forward through the directories in that order. Lookups scan
//! them in the same order, so a pod that moves while we look is found in its new
//! place (it cannot slip behind the scan); only a destroyed pod can be missed.
//!
//! Readers (`list`, `info`) probe locks with a momentary `LOCK_SH`; writers (`load`
//! and transitions that need the lock) take `LOCK_EX` without blocking and retry a
//! few times, for a few milliseconds in all, when only such a probe is in the way.
//! Nothing here ever waits without bound.

pub mod applog;
pub mod inject;
pub mod layout;
mod lock;
pub mod mounts;
pub mod protocol;
pub mod sandbox;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::DirBuilder;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::fsutil;
use lock::Acquired;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {0} not found")]
    NotFound(String),
    #[error("pod UUID prefix {prefix:?} is ambiguous: matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error("pod {uuid} is {state}, cannot {action}")]
    WrongState {
        uuid: Uuid,
        state: PodState,
        action: &'static str,
    },
    #[error("pod {0} is in use by another rkt process")]
    Busy(Uuid),
    /// Lost a race: another process moved (or removed) the pod first. Normal when
    /// two rkt commands act on one pod; the loser reports it and stops.
    #[error("pod {uuid} was moved by another rkt process, cannot {action}")]
    Moved { uuid: Uuid, action: &'static str },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl PodError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        PodError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Every state a pod on disk can be observed in, with rkt's names for `rkt list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodState {
    Embryo,
    Preparing,
    AbortedPrepare,
    Prepared,
    Running,
    Exited,
    ExitedGarbage,
    Garbage,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Embryo => "embryo",
            PodState::Preparing => "preparing",
            PodState::AbortedPrepare => "aborted prepare",
            PodState::Prepared => "prepared",
            PodState::Running => "running",
            PodState::Exited => "exited",
            PodState::ExitedGarbage => "exited garbage",
            PodState::Garbage => "garbage",
        }
    }

    /// The name of the directory under `$dir/pods` a pod in this state sits in.
    pub fn dir_name(self) -> &'static str {
        StateDir::of(self).name()
    }
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The six state directories, in the only order pods ever move through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StateDir {
    Embryo,
    Prepare,
    Prepared,
    Run,
    ExitedGarbage,
    Garbage,
}

impl StateDir {
    const ALL: [StateDir; 6] = [
        StateDir::Embryo,
        StateDir::Prepare,
        StateDir::Prepared,
        StateDir::Run,
        StateDir::ExitedGarbage,
        StateDir::Garbage,
    ];

    fn name(self) -> &'static str {
        match self {
            StateDir::Embryo => "embryo",
            StateDir::Prepare => "prepare",
            StateDir::Prepared => "prepared",
            StateDir::Run => "run",
            StateDir::ExitedGarbage => "exited-garbage",
            StateDir::Garbage => "garbage",
        }
    }

    fn of(state: PodState) -> StateDir {
        match state {
            PodState::Embryo => StateDir::Embryo,
            PodState::Preparing | PodState::AbortedPrepare => StateDir::Prepare,
            PodState::Prepared => StateDir::Prepared,
            PodState::Running | PodState::Exited => StateDir::Run,
            PodState::ExitedGarbage => StateDir::ExitedGarbage,
            PodState::Garbage => StateDir::Garbage,
        }
    }

    /// Whether the lock carries meaning here (embryo and prepared: none).
    fn lock_matters(self) -> bool {
        !matches!(self, StateDir::Embryo | StateDir::Prepared)
    }

    /// What an observer reports for a pod here, given whether its lock is held.
    /// In the garbage directories the lock only says "being deleted", which
    /// `PodState` does not distinguish (`AnyPod::Deleting` does).
    fn observed(self, locked: bool) -> PodState {
        match (self, locked) {
            (StateDir::Embryo, _) => PodState::Embryo,
            (StateDir::Prepare, true) => PodState::Preparing,
            (StateDir::Prepare, false) => PodState::AbortedPrepare,
            (StateDir::Prepared, _) => PodState::Prepared,
            (StateDir::Run, true) => PodState::Running,
            (StateDir::Run, false) => PodState::Exited,
            (StateDir::ExitedGarbage, _) => PodState::ExitedGarbage,
            (StateDir::Garbage, _) => PodState::Garbage,
        }
    }
}

/// How many times a lookup follows a pod that moved under it. A pod moves at most
/// four times in its life, so this is never the limit in practice.
const MOVE_RETRIES: usize = 8;

/// Pods are private to root and the rkt group, as in rkt.
const DIR_MODE: u32 = 0o750;

/// State markers for `Pod<S>`.
#[derive(Debug)]
pub struct Embryo;
#[derive(Debug)]
pub struct Preparing;
#[derive(Debug)]
pub struct Prepared;
#[derive(Debug)]
pub struct Running;
#[derive(Debug)]
pub struct Exited;
#[derive(Debug)]
pub struct Garbage;

/// `$dir/pods`.
#[derive(Debug, Clone)]
pub struct PodsDir {
    root: PathBuf,
}

/// A read-only snapshot of one pod: where it was and in which state, no lock held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uuid: Uuid,
    pub state: PodState,
    pub path: PathBuf,
}

/// A pod in state `S`, with whatever lock that state requires held by this value.
///
/// Dropping it closes the pod directory's fd, which releases the lock unless a
/// child process (stage1) inherited that fd; it never unlocks explicitly.
#[derive(Debug)]
pub struct Pod<S> {
    uuid: Uuid,
    path: PathBuf,
    pods: PodsDir,
    _state: PhantomData<S>,
    dir: StateDir,
    /// The pod directory's own fd; the flock lives on its open file description.
    fd: OwnedFd,
    /// Whether this value holds `LOCK_EX` (all do except a `Pod<Prepared>` returned
    /// by `Pod<Preparing>::prepared`, which takes it again in `run`/`expire`).
    locked: bool,
    /// The state `info()` reports: the one this value was created or loaded as.
    state: PodState,
}

/// A pod read from disk: one variant per state, carrying the typed pod where this
/// process could take the lock the state needs, a snapshot where another holds it.
///
/// Locks: the `Pod` variants hold `LOCK_EX` (taken by `load`); the `PodInfo`
/// variants hold nothing. `Embryo` is never locked by `load`. A prepared pod whose
/// lock is held elsewhere (someone is about to run or expire it) is
/// `Err(PodError::Busy)` rather than a variant.
#[derive(Debug)]
pub enum AnyPod {
    Embryo(PodInfo),
    Preparing(PodInfo),
    AbortedPrepare(Pod<Preparing>),
    Prepared(Pod<Prepared>),
    Running(PodInfo),
    Exited(Pod<Exited>),
    Garbage(Pod<Garbage>),
    /// In a garbage directory but locked by another process (being deleted).
    Deleting(PodInfo),
}

impl AnyPod {
    pub fn uuid(&self) -> Uuid {
        self.info().uuid
    }

    /// The snapshot, or the typed pod's `info()`.
    pub fn info(&self) -> PodInfo {
        match self {
            AnyPod::Embryo(i) | AnyPod::Preparing(i) | AnyPod::Running(i) | AnyPod::Deleting(i) => i.clone(),
            AnyPod::AbortedPrepare(p) => p.info(),
            AnyPod::Prepared(p) => p.info(),
            AnyPod::Exited(p) => p.info(),
            AnyPod::Garbage(p) => p.info(),
        }
    }
}

impl PodsDir {
    /// Opens `$data_dir/pods`, creating it and the state directories if missing.
    /// Runs on every rkt command: when they exist this is seven mkdir calls.
    /// The pods directory as it is, creating nothing: for commands that only read
    /// (`list`, `status`), which must work on a read-only or not yet used `--dir`.
    /// A missing state directory reads as empty.
    pub fn existing(data_dir: &Path) -> Self {
        PodsDir {
            root: data_dir.join("pods"),
        }
    }

    pub fn open(data_dir: &Path) -> Result<Self, PodError> {
        let root = data_dir.join("pods");
        let mut builder = DirBuilder::new();
        builder.mode(DIR_MODE);
        let ctx = |p: &Path| format!("cannot create pods directory {}", p.display());
        let created_root = match builder.create(&root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| PodError::io(ctx(data_dir), e))?;
                match builder.create(&root) {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(PodError::io(ctx(&root), e)),
                }
            }
            Err(e) => return Err(PodError::io(ctx(&root), e)),
        };
        let mut created_any = false;
        for dir in StateDir::ALL {
            let path = root.join(dir.name());
            match builder.create(&path) {
                Ok(()) => created_any = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PodError::io(ctx(&path), e)),
            }
        }
        // A transition renamed into a state directory that a crash then lost would
        // lose the pod with it.
        if created_any {
            fsutil::fsync_dir(&root).map_err(|e| PodError::io(ctx(&root), e))?;
        }
        if created_root {
            fsutil::fsync_dir(data_dir).map_err(|e| PodError::io(ctx(data_dir), e))?;
        }
        Ok(PodsDir { root })
    }

    /// `$dir/pods`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state_dir(&self, dir: StateDir) -> PathBuf {
        self.root.join(dir.name())
    }

    fn pod_path(&self, dir: StateDir, uuid: &Uuid) -> PathBuf {
        self.state_dir(dir).join(uuid.hyphenated().to_string())
    }

    fn snapshot(&self, dir: StateDir, uuid: &Uuid, state: PodState) -> PodInfo {
        PodInfo {
            uuid: *uuid,
            state,
            path: self.pod_path(dir, uuid),
        }
    }

    fn typed<S>(&self, dir: StateDir, uuid: &Uuid, fd: OwnedFd, state: PodState) -> Pod<S> {
        Pod {
            uuid: *uuid,
            path: self.pod_path(dir, uuid),
            pods: self.clone(),
            _state: PhantomData,
            dir,
            fd,
            locked: true,
            state,
        }
    }

    /// A new pod in `embryo/`, locked, with `pod-created` written (its mtime is the
    /// creation time `created_at` reports).
    pub fn create(&self) -> Result<Pod<Embryo>, PodError> {
        let embryo = self.state_dir(StateDir::Embryo);
        // Between mkdir and flock a new embryo is unlocked, like one whose creator
        // crashed. Creators hold embryo/ shared across that window and
        // `collect_abandoned_embryos` holds it exclusive, so gc never takes the one
        // for the other. Dropping the fd releases it.
        let _creating = lock::open_dir(&embryo)
            .and_then(|fd| lock::lock_blocking(fd.as_fd(), false).map(|()| fd))
            .map_err(|e| PodError::io(format!("cannot lock {}", embryo.display()), e))?;
        let mut builder = DirBuilder::new();
        builder.mode(DIR_MODE);
        let mut made = None;
        // A v4 collision is astronomically unlikely; the retry only keeps it harmless.
        for _ in 0..3 {
            let uuid = Uuid::new_v4();
            let path = self.pod_path(StateDir::Embryo, &uuid);
            match builder.create(&path) {
                Ok(()) => {
                    made = Some((uuid, path));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(PodError::io(
                        format!("cannot create pod directory {}", path.display()),
                        e,
                    ));
                }
            }
        }
        let Some((uuid, path)) = made else {
            return Err(PodError::io(
                format!("cannot create a pod directory in {}", embryo.display()),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        };
        let finish = || -> Result<OwnedFd, PodError> {
            let fd = lock::open_dir(&path)
                .map_err(|e| PodError::io(format!("pod {uuid}: cannot open {}", path.display()), e))?;
            let locked = lock::try_exclusive_once(fd.as_fd())
                .map_err(|e| PodError::io(format!("pod {uuid}: cannot lock {}", path.display()), e))?;
            if !locked {
                return Err(PodError::Busy(uuid));
            }
            // Not synced: a pod is made durable as a whole when it becomes prepared
            // (see `Durability`); an embryo lost in a crash was never anyone's pod.
            fsutil::replace_file(&path.join(layout::POD_CREATED), b"")
                .map_err(|e| PodError::io(format!("pod {uuid}: cannot write {}", layout::POD_CREATED), e))?;
            Ok(fd)
        };
        match finish() {
            Ok(fd) => Ok(self.typed(StateDir::Embryo, &uuid, fd, PodState::Embryo)),
            Err(e) => {
                // Best effort: an empty embryo nobody holds is only clutter.
                let _ = fsutil::remove_tree(&path);
                Err(e)
            }
        }
    }

    /// The first state directory (in move order) holding `uuid` as a directory.
    fn locate(&self, uuid: &Uuid) -> Result<Option<StateDir>, PodError> {
        for dir in StateDir::ALL {
            let path = self.pod_path(dir, uuid);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => return Ok(Some(dir)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PodError::io(
                        format!("pod {uuid}: cannot stat {}", path.display()),
                        e,
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Opens the pod at `dir`; `None` if it is gone (moved on or destroyed).
    fn open_pod(&self, dir: StateDir, uuid: &Uuid) -> Result<Option<OwnedFd>, PodError> {
        let path = self.pod_path(dir, uuid);
        match lock::open_dir(&path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PodError::io(
                format!("pod {uuid}: cannot open {}", path.display()),
                e,
            )),
        }
    }

    fn still_at(&self, fd: &OwnedFd, dir: StateDir, uuid: &Uuid) -> Result<bool, PodError> {
        let path = self.pod_path(dir, uuid);
        lock::still_at(fd.as_fd(), &path)
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot stat {}", path.display()), e))
    }

    /// UUIDs of the pod directories in one state directory. Names that are not a
    /// canonical hyphenated UUID, and non-directories, are not pods.
    fn scan(&self, dir: StateDir) -> Result<Vec<Uuid>, PodError> {
        let path = self.state_dir(dir);
        let ctx = || format!("cannot read {}", path.display());
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(PodError::io(ctx(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| PodError::io(ctx(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(uuid) = Uuid::try_parse(name) else { continue };
            if uuid.hyphenated().to_string() != name {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => found.push(uuid),
                _ => {}
            }
        }
        Ok(found)
    }

    /// A read-only snapshot of every pod, sorted by UUID.
    ///
    /// Never fails because a pod moved or vanished during the scan: a pod that moved
    /// is read again where it went, a destroyed one is left out, and a pod met twice
    /// (it moved forward into a directory scanned later) is reported once, as last
    /// seen. Lock states come from a momentary `LOCK_SH` probe; for those two
    /// syscalls a concurrent non-blocking `LOCK_EX` on that pod fails, which writers
    /// here absorb by retrying (see `load`).
    /// Moves every embryo whose creator died before locking it (a crash inside
    /// `create`) to garbage, and returns them locked, ready for `destroy`.
    pub fn collect_abandoned_embryos(&self) -> Result<Vec<Pod<Garbage>>, PodError> {
        let embryo = self.state_dir(StateDir::Embryo);
        let _no_creators = lock::open_dir(&embryo)
            .and_then(|fd| lock::lock_blocking(fd.as_fd(), true).map(|()| fd))
            .map_err(|e| PodError::io(format!("cannot lock {}", embryo.display()), e))?;
        let mut collected = Vec::new();
        for uuid in self.scan(StateDir::Embryo)? {
            let path = self.pod_path(StateDir::Embryo, &uuid);
            let fd = match lock::open_dir(&path) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(PodError::io(
                        format!("pod {uuid}: cannot open {}", path.display()),
                        e,
                    ));
                }
            };
            let free = lock::try_exclusive_once(fd.as_fd())
                .map_err(|e| PodError::io(format!("pod {uuid}: cannot lock {}", path.display()), e))?;
            if !free {
                continue;
            }
            let pod: Pod<Embryo> = self.typed(StateDir::Embryo, &uuid, fd, PodState::Embryo);
            let garbage: Pod<Garbage> = pod.move_to(
                StateDir::Garbage,
                PodState::Garbage,
                "collect it",
                Durability::Deferred,
            )?;
            garbage.mark_gc()?;
            collected.push(garbage);
        }
        Ok(collected)
    }

    pub fn list(&self) -> Result<Vec<PodInfo>, PodError> {
        let mut seen: BTreeMap<Uuid, PodInfo> = BTreeMap::new();
        for dir in StateDir::ALL {
            for uuid in self.scan(dir)? {
                if let Some(info) = self.observe(dir, &uuid)? {
                    seen.insert(uuid, info);
                }
            }
        }
        Ok(seen.into_values().collect())
    }

    /// The state of a pod just seen in `dir`, following it if it has moved since.
    fn observe(&self, dir: StateDir, uuid: &Uuid) -> Result<Option<PodInfo>, PodError> {
        if !dir.lock_matters() {
            return Ok(Some(self.snapshot(dir, uuid, dir.observed(false))));
        }
        if let Some(fd) = self.open_pod(dir, uuid)?
            && let Some(info) = self.probe_at(dir, uuid, &fd)?
        {
            return Ok(Some(info));
        }
        match self.info(uuid) {
            Ok(info) => Ok(Some(info)),
            Err(PodError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Probes the lock of the pod opened as `fd` from `dir`; `None` if by then it is
    /// no longer in `dir` (the probe would describe the wrong state).
    fn probe_at(&self, dir: StateDir, uuid: &Uuid, fd: &OwnedFd) -> Result<Option<PodInfo>, PodError> {
        let locked = lock::is_locked(fd.as_fd())
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot probe its lock"), e))?;
        Ok(self
            .still_at(fd, dir, uuid)?
            .then(|| self.snapshot(dir, uuid, dir.observed(locked))))
    }

    /// A snapshot of one pod; takes no lock beyond a momentary `LOCK_SH` probe.
    pub fn info(&self, uuid: &Uuid) -> Result<PodInfo, PodError> {
        for _ in 0..MOVE_RETRIES {
            let Some(dir) = self.locate(uuid)? else {
                return Err(PodError::NotFound(uuid.to_string()));
            };
            if !dir.lock_matters() {
                return Ok(self.snapshot(dir, uuid, dir.observed(false)));
            }
            if let Some(fd) = self.open_pod(dir, uuid)?
                && let Some(info) = self.probe_at(dir, uuid, &fd)?
            {
                return Ok(info);
            }
        }
        Err(PodError::Moved {
            uuid: *uuid,
            action: "inspect it",
        })
    }

    /// Reads a pod from disk, taking `LOCK_EX` where its state needs it (see
    /// `AnyPod`). After locking it checks the pod is still where it was found and
    /// follows it if not, a bounded number of times.
    pub fn load(&self, uuid: &Uuid) -> Result<AnyPod, PodError> {
        for _ in 0..MOVE_RETRIES {
            let Some(dir) = self.locate(uuid)? else {
                return Err(PodError::NotFound(uuid.to_string()));
            };
            if dir == StateDir::Embryo {
                return Ok(AnyPod::Embryo(self.snapshot(dir, uuid, PodState::Embryo)));
            }
            if let Some(fd) = self.open_pod(dir, uuid)?
                && let Some(any) = self.lock_at(dir, uuid, fd)?
            {
                return Ok(any);
            }
        }
        Err(PodError::Moved {
            uuid: *uuid,
            action: "load it",
        })
    }

    /// Takes the lock of the pod opened as `fd` from `dir` and types it; `None` if
    /// by then it is no longer in `dir` (dropping `fd` releases what we took).
    fn lock_at(&self, dir: StateDir, uuid: &Uuid, fd: OwnedFd) -> Result<Option<AnyPod>, PodError> {
        let acquired = lock::try_exclusive(fd.as_fd())
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot lock it"), e))?;
        if !self.still_at(&fd, dir, uuid)? {
            return Ok(None);
        }
        let held = acquired == Acquired::HeldElsewhere;
        Ok(Some(match dir {
            StateDir::Embryo => AnyPod::Embryo(self.snapshot(dir, uuid, PodState::Embryo)),
            StateDir::Prepare if held => AnyPod::Preparing(self.snapshot(dir, uuid, PodState::Preparing)),
            StateDir::Prepare => AnyPod::AbortedPrepare(self.typed(dir, uuid, fd, PodState::AbortedPrepare)),
            StateDir::Prepared if held => return Err(PodError::Busy(*uuid)),
            StateDir::Prepared => AnyPod::Prepared(self.typed(dir, uuid, fd, PodState::Prepared)),
            StateDir::Run if held => AnyPod::Running(self.snapshot(dir, uuid, PodState::Running)),
            StateDir::Run => AnyPod::Exited(self.typed(dir, uuid, fd, PodState::Exited)),
            StateDir::ExitedGarbage | StateDir::Garbage if held => {
                AnyPod::Deleting(self.snapshot(dir, uuid, dir.observed(true)))
            }
            StateDir::ExitedGarbage | StateDir::Garbage => {
                AnyPod::Garbage(self.typed(dir, uuid, fd, dir.observed(false)))
            }
        }))
    }

    /// The one pod whose UUID starts with `prefix` (hyphenated, case-insensitive),
    /// across all state directories. A full UUID is accepted as is.
    pub fn resolve(&self, prefix: &str) -> Result<Uuid, PodError> {
        let wanted = prefix.trim().to_ascii_lowercase();
        if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(PodError::NotFound(prefix.to_string()));
        }
        if let Ok(uuid) = Uuid::try_parse(&wanted) {
            return match self.locate(&uuid)? {
                Some(_) => Ok(uuid),
                None => Err(PodError::NotFound(prefix.to_string())),
            };
        }
        // A pod moving during the scan may be met twice; the set counts it once.
        let mut matches = BTreeSet::new();
        for dir in StateDir::ALL {
            for uuid in self.scan(dir)? {
                if uuid.hyphenated().to_string().starts_with(&wanted) {
                    matches.insert(uuid);
                }
            }
        }
        let mut iter = matches.iter();
        match (iter.next(), iter.next()) {
            (None, _) => Err(PodError::NotFound(prefix.to_string())),
            (Some(uuid), None) => Ok(*uuid),
            (Some(_), Some(_)) => Err(PodError::Ambiguous {
                prefix: prefix.to_string(),
                matches: matches.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

/// When the pod was created: mtime of `pod-created`.
pub fn created_at(info: &PodInfo) -> Option<SystemTime> {
    mtime(&info.path.join(layout::POD_CREATED))
}

/// When the pod started: mtime of `pid` (written by stage1).
pub fn started_at(info: &PodInfo) -> Option<SystemTime> {
    mtime(&info.path.join(layout::PID))
}

/// When the pod was marked garbage: mtime of `gc-marked`. A crash between the move
/// and writing that file leaves the directory's ctime, which the move set (rkt's
/// own clock for this). `None` outside the garbage states.
pub fn gc_marked_at(info: &PodInfo) -> Option<SystemTime> {
    if !matches!(info.state, PodState::ExitedGarbage | PodState::Garbage) {
        return None;
    }
    mtime(&info.path.join(layout::GC_MARKED)).or_else(|| {
        let meta = std::fs::symlink_metadata(&info.path).ok()?;
        let secs = u64::try_from(meta.ctime()).ok()?;
        let nanos = u32::try_from(meta.ctime_nsec()).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// rename(2) that refuses to replace anything: a plain rename would silently
/// replace an empty directory of the same name in the target state.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // Filesystems without RENAME_NOREPLACE; UUIDs are never reused, so the check
        // below only guards against leftovers, not against a concurrent writer.
        Err(nix::errno::Errno::EINVAL) => match std::fs::symlink_metadata(to) {
            Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(from, to),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    }
}

impl<S> Pod<S> {
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The state this value was created or loaded as; does not touch the disk.
    /// (A `Pod<Exited>` still holds the lock, so other processes see it running.)
    pub fn info(&self) -> PodInfo {
        PodInfo {
            uuid: self.uuid,
            state: self.state,
            path: self.path.clone(),
        }
    }

    /// Renames the pod into `to`; with `Durability::Durable`, first flushes the
    /// pod's own files, then syncs both state directories after the rename. `Moved`
    /// if the pod is no longer where this value left it.
    fn move_to<T>(
        self,
        to: StateDir,
        state: PodState,
        action: &'static str,
        durability: Durability,
    ) -> Result<Pod<T>, PodError> {
        let uuid = self.uuid;
        let from_dir = self.pods.state_dir(self.dir);
        let to_dir = self.pods.state_dir(to);
        let new_path = self.pods.pod_path(to, &uuid);
        if durability == Durability::Durable {
            fsutil::sync_filesystem(self.fd.as_fd())
                .map_err(|e| PodError::io(format!("pod {uuid}: cannot sync its files"), e))?;
        }
        if let Err(e) = rename_noreplace(&self.path, &new_path) {
            let gone = e.kind() == io::ErrorKind::NotFound
                && matches!(std::fs::symlink_metadata(&self.path), Err(m) if m.kind() == io::ErrorKind::NotFound);
            return Err(if gone {
                PodError::Moved { uuid, action }
            } else {
                PodError::io(
                    format!(
                        "pod {uuid}: cannot move it from {}/ to {}/",
                        self.dir.name(),
                        to.name()
                    ),
                    e,
                )
            });
        }
        let synced = match durability {
            Durability::Durable => fsutil::fsync_dir(&from_dir).and_then(|()| fsutil::fsync_dir(&to_dir)),
            Durability::Deferred => Ok(()),
        };
        synced.map_err(|e| {
            PodError::io(
                format!(
                    "pod {uuid}: moved to {}/ but syncing the state directories failed",
                    to.name()
                ),
                e,
            )
        })?;
        let Pod { pods, fd, locked, .. } = self;
        Ok(Pod {
            uuid,
            path: new_path,
            pods,
            _state: PhantomData,
            dir: to,
            fd,
            locked,
            state,
        })
    }

    fn retype<T>(self, state: PodState) -> Pod<T> {
        let Pod {
            uuid,
            path,
            pods,
            dir,
            fd,
            locked,
            ..
        } = self;
        Pod {
            uuid,
            path,
            pods,
            _state: PhantomData,
            dir,
            fd,
            locked,
            state,
        }
    }

    /// Takes `LOCK_EX` again if this value gave it up (`Busy` if someone else has it).
    fn relock(&mut self) -> Result<(), PodError> {
        if self.locked {
            return Ok(());
        }
        let uuid = self.uuid;
        match lock::try_exclusive(self.fd.as_fd())
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot lock it"), e))?
        {
            Acquired::Locked => {
                self.locked = true;
                Ok(())
            }
            Acquired::HeldElsewhere => Err(PodError::Busy(uuid)),
        }
    }

    /// Starts gc's grace period; written after the move into a garbage directory.
    /// Not synced: if a crash loses it, gc falls back to the directory's ctime.
    fn mark_gc(&self) -> Result<(), PodError> {
        fsutil::replace_file(&self.path.join(layout::GC_MARKED), b"").map_err(|e| {
            PodError::io(
                format!(
                    "pod {}: moved to {}/ but cannot write {}",
                    self.uuid,
                    self.dir.name(),
                    layout::GC_MARKED
                ),
                e,
            )
        })
    }
}

/// Which transitions must survive a crash. Only `prepared` does: a prepared pod
/// is a promise to `run-prepared` later, so its files and its move are flushed as
/// one group. Every other state is either re-derived after a crash (a running pod
/// whose lock holder died reads as exited) or is garbage either way (an embryo or a
/// preparing pod becomes an aborted prepare; a lost garbage mark is made again), so
/// paying ~20 fsyncs per `rkt run` for them would buy nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Durable,
    Deferred,
}

impl Pod<Embryo> {
    pub fn prepare(self) -> Result<Pod<Preparing>, PodError> {
        self.move_to(
            StateDir::Prepare,
            PodState::Preparing,
            "start preparing it",
            Durability::Deferred,
        )
    }
}

impl Pod<Preparing> {
    /// Moves to `prepared/` and releases the lock: a prepared pod rests unlocked
    /// until `run-prepared` or gc locks it. The returned value can still `run` or
    /// `expire`; it locks again first and fails with `Busy` or `Moved` if another
    /// process got there in between.
    pub fn prepared(self) -> Result<Pod<Prepared>, PodError> {
        let mut pod: Pod<Prepared> = self.move_to(
            StateDir::Prepared,
            PodState::Prepared,
            "mark it prepared",
            Durability::Durable,
        )?;
        lock::unlock(pod.fd.as_fd())
            .map_err(|e| PodError::io(format!("pod {}: prepared but cannot unlock it", pod.uuid), e))?;
        pod.locked = false;
        Ok(pod)
    }
    /// `rkt run` owns the pod it prepared and skips the prepared state.
    pub fn run(self) -> Result<Pod<Running>, PodError> {
        self.move_to(StateDir::Run, PodState::Running, "run it", Durability::Deferred)
    }
    pub fn abort(self) -> Result<Pod<Garbage>, PodError> {
        let pod: Pod<Garbage> = self.move_to(
            StateDir::Garbage,
            PodState::Garbage,
            "abort it",
            Durability::Deferred,
        )?;
        pod.mark_gc()?;
        Ok(pod)
    }
}

impl Pod<Prepared> {
    pub fn run(mut self) -> Result<Pod<Running>, PodError> {
        self.relock()?;
        self.move_to(StateDir::Run, PodState::Running, "run it", Durability::Deferred)
    }
    pub fn expire(mut self) -> Result<Pod<Garbage>, PodError> {
        self.relock()?;
        let pod: Pod<Garbage> = self.move_to(
            StateDir::Garbage,
            PodState::Garbage,
            "expire it",
            Durability::Deferred,
        )?;
        pod.mark_gc()?;
        Ok(pod)
    }
}

impl Pod<Running> {
    /// The lock fd; a stage1 that outlives this process inherits it, so "running" is
    /// exactly "the lock holder is alive".
    ///
    /// It is `O_CLOEXEC`: the launcher must clear that flag (or dup2 it) in the
    /// child. Never `flock(LOCK_UN)` it: that would unlock every copy at once.
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    /// The pod's processes are gone. The lock is still held by this value; dropping
    /// it (and any inherited copy of the fd being closed) is what makes the pod
    /// "exited" on disk.
    pub fn exited(self) -> Pod<Exited> {
        self.retype(PodState::Exited)
    }
}

impl Pod<Exited> {
    /// Moves to `exited-garbage/` (lock kept) and writes `gc-marked`.
    pub fn mark_garbage(self) -> Result<Pod<Garbage>, PodError> {
        let pod: Pod<Garbage> = self.move_to(
            StateDir::ExitedGarbage,
            PodState::ExitedGarbage,
            "mark it garbage",
            Durability::Deferred,
        )?;
        pod.mark_gc()?;
        Ok(pod)
    }
}

impl Pod<Garbage> {
    /// Unmounts everything under the pod and deletes it, never crossing a mount
    /// point or following a symlink; the lock is held until the tree is gone.
    pub fn destroy(self) -> Result<(), PodError> {
        let uuid = self.uuid;
        let still_here = lock::still_at(self.fd.as_fd(), &self.path)
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot stat {}", self.path.display()), e))?;
        if !still_here {
            return Err(PodError::Moved {
                uuid,
                action: "destroy it",
            });
        }
        fsutil::remove_tree(&self.path)
            .map_err(|e| PodError::io(format!("pod {uuid}: cannot remove {}", self.path.display()), e))?;
        let parent = self.pods.state_dir(self.dir);
        fsutil::fsync_dir(&parent).map_err(|e| {
            PodError::io(
                format!("pod {uuid}: removed but cannot sync {}", parent.display()),
                e,
            )
        })
    }
}
