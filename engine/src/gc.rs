//! Pod garbage collection, in rkt's two phases.
//!
//! Mark: exited pods move to exited-garbage (the grace period counts from then),
//! aborted prepares and prepared pods past their expiry move to garbage.
//! Sweep: each garbage pod past its grace period has its network torn down, its
//! stage1's `gc` run, everything mounted below it unmounted, and is deleted
//! without crossing a mount point; then its user-id range and its labels (an
//! SELinux MCS pair) are released. A failure on one pod is reported and the sweep
//! goes on with the next.

use std::path::Path;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::pod::layout;
use crate::pod::{AnyPod, Garbage, Pod, PodError, PodState, PodsDir};
use crate::runner::{NetRecord, pod_stage1};
use crate::stage::block_on::block_on;
use crate::stage::registry;
use crate::stage::{Labeler, Networker};

#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// How long an exited pod stays in exited-garbage before it is deleted.
    pub grace_period: Duration,
    /// How long a prepared pod may wait for `run-prepared` before it is discarded.
    pub expire_prepared: Duration,
    /// Only move pods to garbage; delete nothing.
    pub mark_only: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_period: Duration::from_secs(30 * 60),
            expire_prepared: Duration::from_secs(24 * 60 * 60),
            mark_only: false,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub marked: Vec<Uuid>,
    pub removed: Vec<Uuid>,
    /// One line per pod that could not be collected; the rest were.
    pub errors: Vec<String>,
}

pub fn collect(pods: &PodsDir, options: &GcOptions) -> Result<GcReport, crate::pod::PodError> {
    let mut report = GcReport::default();
    let now = SystemTime::now();
    for pod in pods.collect_abandoned_embryos()? {
        report.marked.push(pod.uuid());
    }
    for info in pods.list()? {
        let candidate = matches!(
            info.state,
            PodState::Exited | PodState::AbortedPrepare | PodState::Prepared
        );
        if !candidate {
            continue;
        }
        let marked = match pods.load(&info.uuid) {
            Ok(AnyPod::Exited(pod)) => pod.mark_garbage().map(Some),
            Ok(AnyPod::AbortedPrepare(pod)) => pod.abort().map(Some),
            Ok(AnyPod::Prepared(pod)) => {
                let created = crate::pod::created_at(&pod.info()).unwrap_or(now);
                if age(now, created) >= options.expire_prepared {
                    pod.expire().map(Some)
                } else {
                    Ok(None)
                }
            }
            // Changed state since the listing: someone else is acting on it.
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        };
        match marked {
            Ok(Some(_)) => report.marked.push(info.uuid),
            Ok(None) => {}
            Err(e) => report.errors.push(format!("pod {}: {e}", info.uuid)),
        }
    }
    crate::failpoint::failpoint("gc.marked");
    if options.mark_only {
        return Ok(report);
    }
    for info in pods.list()? {
        if !matches!(info.state, PodState::ExitedGarbage | PodState::Garbage) {
            continue;
        }
        let pod = match pods.load(&info.uuid) {
            Ok(AnyPod::Garbage(pod)) => pod,
            Ok(_) => continue,
            Err(e) => {
                report.errors.push(format!("pod {}: {e}", info.uuid));
                continue;
            }
        };
        if info.state == PodState::ExitedGarbage {
            let marked_at = crate::pod::gc_marked_at(&info).unwrap_or(now);
            if age(now, marked_at) < options.grace_period {
                continue;
            }
        }
        match sweep(pod) {
            Ok(()) => {
                report.removed.push(info.uuid);
                crate::failpoint::failpoint("gc.swept-one");
            }
            Err(e) => report.errors.push(format!("pod {}: {e}", info.uuid)),
        }
    }
    Ok(report)
}

/// Why `rkt rm` left a pod alone.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("pod {0} is running; stop it first (rkt stop)")]
    Running(Uuid),
    #[error("pod {0} is being prepared")]
    Preparing(Uuid),
    #[error("pod {0} is being deleted by another rkt process")]
    Deleting(Uuid),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("pod {uuid}: {message}")]
    Sweep { uuid: Uuid, message: String },
}

/// `rkt rm`: moves an exited, prepared or aborted pod to garbage and sweeps it at
/// once, the same way gc does (network, stage1 gc, unmount, delete without
/// crossing a mount point). A running or preparing pod is refused, untouched.
pub fn remove(pods: &PodsDir, uuid: &Uuid) -> Result<(), RemoveError> {
    let garbage = match pods.load(uuid)? {
        AnyPod::Running(_) => return Err(RemoveError::Running(*uuid)),
        AnyPod::Embryo(_) | AnyPod::Preparing(_) => return Err(RemoveError::Preparing(*uuid)),
        AnyPod::Deleting(_) => return Err(RemoveError::Deleting(*uuid)),
        AnyPod::AbortedPrepare(pod) => pod.abort()?,
        AnyPod::Prepared(pod) => pod.expire()?,
        AnyPod::Exited(pod) => pod.mark_garbage()?,
        AnyPod::Garbage(pod) => pod,
    };
    crate::failpoint::failpoint("rm.marked-garbage");
    sweep(garbage).map_err(|message| RemoveError::Sweep { uuid: *uuid, message })
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Releases everything a garbage pod holds, then deletes it.
fn sweep(pod: Pod<Garbage>) -> Result<(), String> {
    let dir = pod.path().to_path_buf();
    teardown_network(&dir);
    crate::mds::unregister_recorded(&dir, pod.uuid());
    // A pod that never got as far as choosing a stage1 has nothing for it to release.
    if dir.join(layout::STAGE1).exists() {
        match pod_stage1(&dir) {
            Ok(stage1) => stage1.gc(&dir).map_err(|e| format!("stage1 gc: {e}"))?,
            Err(e) => tracing::warn!("pod {}: {e}; skipping stage1 gc", pod.uuid()),
        }
    }
    crate::failpoint::failpoint("gc.unmounted");
    let uuid = pod.uuid();
    pod.destroy().map_err(|e| e.to_string())?;
    // After the files that carry its ids are gone, so no new pod shares them.
    if let Err(e) = crate::userns::Allocator::default().release(uuid) {
        tracing::warn!("pod {uuid}: {e}");
    }
    release_labels(uuid);
    Ok(())
}

/// Every labeler gives back what it reserved for the pod (the pod does not
/// record which one labelled it: one that holds nothing treats it as done).
fn release_labels(uuid: Uuid) {
    match registry::all::<dyn Labeler>() {
        Ok(labelers) => {
            for labeler in labelers {
                if let Err(e) = labeler.release(&uuid) {
                    tracing::warn!("pod {uuid}: labeler {}: {e}", labeler.name());
                }
            }
        }
        Err(e) => tracing::warn!("pod {uuid}: {e}; labels not released"),
    }
}

/// Runs the recorded networker's teardown; a failure is logged and gc goes on,
/// as a half-torn-down network must never keep the rest of the pod alive.
fn teardown_network(dir: &Path) {
    let path = dir.join(layout::NET_INFO);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let record: NetRecord = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{}: {e}; skipping network teardown", path.display());
            return;
        }
    };
    match registry::create::<dyn Networker>(&record.networker) {
        Ok(networker) => {
            if let Err(e) = block_on(networker.teardown(dir)) {
                tracing::warn!("network teardown of {}: {e}", dir.display());
            }
        }
        Err(e) => tracing::warn!("network teardown of {}: {e}", dir.display()),
    }
}
