//! The typed pod state machine over rkt's on-disk layout.
//!
//! `$dir/pods/{embryo,prepare,prepared,run,exited-garbage,garbage}/<uuid>`: the state
//! is the directory a pod sits in plus whether its flock is held. Every transition is
//! a rename(2) between state directories followed by an fsync of both parents; a
//! transition consumes the old typed value, so an illegal one does not compile.
//!
//! SKELETON: signatures are fixed; bodies are being filled in.

pub mod layout;

use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use uuid::Uuid;

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
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
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
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
#[derive(Debug)]
pub struct Pod<S> {
    uuid: Uuid,
    path: PathBuf,
    pods: PodsDir,
    _state: PhantomData<S>,
}

/// A pod read from disk: one variant per state, carrying the typed pod where this
/// process could take the lock the state needs, a snapshot where another holds it.
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

impl PodsDir {
    pub fn open(_data_dir: &Path) -> Result<Self, PodError> {
        unimplemented!("skeleton")
    }
    pub fn create(&self) -> Result<Pod<Embryo>, PodError> {
        unimplemented!("skeleton")
    }
    pub fn list(&self) -> Result<Vec<PodInfo>, PodError> {
        unimplemented!("skeleton")
    }
    pub fn info(&self, _uuid: &Uuid) -> Result<PodInfo, PodError> {
        unimplemented!("skeleton")
    }
    pub fn load(&self, _uuid: &Uuid) -> Result<AnyPod, PodError> {
        unimplemented!("skeleton")
    }
    pub fn resolve(&self, _prefix: &str) -> Result<Uuid, PodError> {
        unimplemented!("skeleton")
    }
}

impl<S> Pod<S> {
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn info(&self) -> PodInfo {
        unimplemented!("skeleton")
    }
}

impl Pod<Embryo> {
    pub fn prepare(self) -> Result<Pod<Preparing>, PodError> {
        unimplemented!("skeleton")
    }
}

impl Pod<Preparing> {
    pub fn prepared(self) -> Result<Pod<Prepared>, PodError> {
        unimplemented!("skeleton")
    }
    /// `rkt run` owns the pod it prepared and skips the prepared state.
    pub fn run(self) -> Result<Pod<Running>, PodError> {
        unimplemented!("skeleton")
    }
    pub fn abort(self) -> Result<Pod<Garbage>, PodError> {
        unimplemented!("skeleton")
    }
}

impl Pod<Prepared> {
    pub fn run(self) -> Result<Pod<Running>, PodError> {
        unimplemented!("skeleton")
    }
    pub fn expire(self) -> Result<Pod<Garbage>, PodError> {
        unimplemented!("skeleton")
    }
}

impl Pod<Running> {
    /// The lock fd; a stage1 that outlives this process inherits it, so "running" is
    /// exactly "the lock holder is alive".
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        unimplemented!("skeleton")
    }
    pub fn exited(self) -> Pod<Exited> {
        unimplemented!("skeleton")
    }
}

impl Pod<Exited> {
    pub fn mark_garbage(self) -> Result<Pod<Garbage>, PodError> {
        unimplemented!("skeleton")
    }
}

impl Pod<Garbage> {
    pub fn destroy(self) -> Result<(), PodError> {
        unimplemented!("skeleton")
    }
}
