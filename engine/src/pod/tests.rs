//! One test per transition and per observed state of `load`/`list`/`info`.
//!
//! "Locked by another process" is simulated by a second open of the pod directory:
//! flock belongs to the open file description, so it conflicts in-process too.

#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::*;

fn setup() -> (tempfile::TempDir, PodsDir) {
    let tmp = tempfile::tempdir().unwrap();
    let pods = PodsDir::open(tmp.path()).unwrap();
    (tmp, pods)
}

fn state_of(pods: &PodsDir, uuid: Uuid) -> PodState {
    let list = pods.list().unwrap();
    let info = list.iter().find(|i| i.uuid == uuid).unwrap();
    assert_eq!(pods.info(&uuid).unwrap(), *info, "info() agrees with list()");
    info.state
}

/// Holds the pod's lock through a separate open file description.
fn lock_elsewhere(path: &Path) -> OwnedFd {
    let fd = lock::open_dir(path).unwrap();
    assert!(lock::try_exclusive_once(fd.as_fd()).unwrap(), "lock was free");
    fd
}

fn is_free(path: &Path) -> bool {
    let fd = lock::open_dir(path).unwrap();
    !lock::is_locked(fd.as_fd()).unwrap()
}

fn prepared_at_rest(pods: &PodsDir) -> Uuid {
    let pod = pods.create().unwrap().prepare().unwrap().prepared().unwrap();
    pod.uuid()
}

fn exited_at_rest(pods: &PodsDir) -> Uuid {
    let pod = pods.create().unwrap().prepare().unwrap().run().unwrap();
    pod.uuid()
}

#[test]
fn pods_open_creates_state_dirs_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("not/yet");
    let pods = PodsDir::open(&data).unwrap();
    for dir in StateDir::ALL {
        assert!(pods.root().join(dir.name()).is_dir(), "{}", dir.name());
    }
    let uuid = prepared_at_rest(&pods);
    let again = PodsDir::open(&data).unwrap();
    assert_eq!(again.info(&uuid).unwrap().state, PodState::Prepared);
}

#[test]
fn pod_create_is_a_locked_embryo() {
    let (_tmp, pods) = setup();
    let pod = pods.create().unwrap();
    assert_eq!(pod.uuid().get_version_num(), 4);
    assert_eq!(
        pod.path(),
        pods.root().join("embryo").join(pod.uuid().to_string())
    );
    assert_eq!(state_of(&pods, pod.uuid()), PodState::Embryo);
    assert!(!is_free(pod.path()), "the creator holds the lock");
    assert!(created_at(&pod.info()).is_some());
    match pods.load(&pod.uuid()).unwrap() {
        AnyPod::Embryo(info) => assert_eq!(info, pod.info()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pod_prepare_keeps_the_lock() {
    let (_tmp, pods) = setup();
    let pod = pods.create().unwrap().prepare().unwrap();
    assert_eq!(pod.path().parent().unwrap(), pods.root().join("prepare"));
    assert_eq!(state_of(&pods, pod.uuid()), PodState::Preparing);
    assert!(matches!(pods.load(&pod.uuid()).unwrap(), AnyPod::Preparing(_)));
    assert!(!pods.root().join("embryo").join(pod.uuid().to_string()).exists());
}

#[test]
fn pod_dropped_while_preparing_is_an_aborted_prepare() {
    let (_tmp, pods) = setup();
    let uuid = pods.create().unwrap().prepare().unwrap().uuid();
    assert_eq!(state_of(&pods, uuid), PodState::AbortedPrepare);
    let AnyPod::AbortedPrepare(pod) = pods.load(&uuid).unwrap() else {
        panic!("not an aborted prepare")
    };
    assert_eq!(pod.info().state, PodState::AbortedPrepare);
    assert_eq!(state_of(&pods, uuid), PodState::Preparing, "load holds the lock");
    let garbage = pod.abort().unwrap();
    assert_eq!(garbage.path().parent().unwrap(), pods.root().join("garbage"));
    assert!(gc_marked_at(&garbage.info()).is_some());
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Deleting(i) if i.state == PodState::Garbage));
    drop(garbage);
    assert_eq!(state_of(&pods, uuid), PodState::Garbage);
}

#[test]
fn pod_prepared_releases_the_lock_and_relocks_to_run() {
    let (_tmp, pods) = setup();
    let pod = pods.create().unwrap().prepare().unwrap().prepared().unwrap();
    assert!(is_free(pod.path()), "prepared rests unlocked");
    assert_eq!(state_of(&pods, pod.uuid()), PodState::Prepared);
    let running = pod.run().unwrap();
    assert_eq!(running.path().parent().unwrap(), pods.root().join("run"));
    assert!(!is_free(running.path()));
    assert_eq!(state_of(&pods, running.uuid()), PodState::Running);
}

#[test]
fn pod_run_prepared_through_load() {
    let (_tmp, pods) = setup();
    let uuid = prepared_at_rest(&pods);
    let AnyPod::Prepared(pod) = pods.load(&uuid).unwrap() else {
        panic!("not prepared")
    };
    assert!(matches!(pods.load(&uuid), Err(PodError::Busy(u)) if u == uuid));
    let running = pod.run().unwrap();
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Running(_)));
    drop(running);
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Exited(_)));
}

#[test]
fn pod_prepared_value_loses_to_another_owner() {
    let (_tmp, pods) = setup();
    let mine = pods.create().unwrap().prepare().unwrap().prepared().unwrap();
    let uuid = mine.uuid();
    let AnyPod::Prepared(theirs) = pods.load(&uuid).unwrap() else {
        panic!("not prepared")
    };
    let other = pods.create().unwrap().prepare().unwrap().prepared().unwrap();
    let AnyPod::Prepared(holder) = pods.load(&other.uuid()).unwrap() else {
        panic!("not prepared")
    };
    assert!(
        matches!(other.run(), Err(PodError::Busy(_))),
        "lock held elsewhere"
    );
    drop(holder);
    theirs.expire().unwrap().destroy().unwrap();
    assert!(matches!(mine.run(), Err(PodError::Moved { uuid: u, .. }) if u == uuid));
    assert!(matches!(pods.info(&uuid), Err(PodError::NotFound(_))));
}

#[test]
fn pod_expire_moves_prepared_to_garbage() {
    let (_tmp, pods) = setup();
    let uuid = prepared_at_rest(&pods);
    let AnyPod::Prepared(pod) = pods.load(&uuid).unwrap() else {
        panic!("not prepared")
    };
    let garbage = pod.expire().unwrap();
    assert_eq!(garbage.info().state, PodState::Garbage);
    assert!(garbage.path().join(layout::GC_MARKED).is_file());
    drop(garbage);
    assert_eq!(state_of(&pods, uuid), PodState::Garbage);
}

#[test]
fn pod_running_dropped_is_exited() {
    let (_tmp, pods) = setup();
    let running = pods.create().unwrap().prepare().unwrap().run().unwrap();
    let uuid = running.uuid();
    let path = running.path().to_path_buf();
    assert_eq!(state_of(&pods, uuid), PodState::Running);
    // Another open of the directory sees the lock held through `lock_fd`.
    let fd = lock::open_dir(&path).unwrap();
    assert!(!lock::try_exclusive_once(fd.as_fd()).unwrap());
    let same = nix::sys::stat::fstat(running.lock_fd()).unwrap();
    assert_eq!(
        same.st_ino,
        nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino,
        "lock_fd is the pod dir"
    );
    drop(running);
    assert!(lock::try_exclusive_once(fd.as_fd()).unwrap());
    lock::unlock(fd.as_fd()).unwrap();
    assert_eq!(state_of(&pods, uuid), PodState::Exited);
    let AnyPod::Exited(pod) = pods.load(&uuid).unwrap() else {
        panic!("not exited")
    };
    assert_eq!(pod.info().state, PodState::Exited);
}

#[test]
fn pod_exited_value_keeps_the_lock_until_dropped() {
    let (_tmp, pods) = setup();
    let exited = pods.create().unwrap().prepare().unwrap().run().unwrap().exited();
    assert_eq!(exited.info().state, PodState::Exited);
    assert_eq!(
        state_of(&pods, exited.uuid()),
        PodState::Running,
        "still locked on disk"
    );
    let uuid = exited.uuid();
    drop(exited);
    assert_eq!(state_of(&pods, uuid), PodState::Exited);
}

#[test]
fn pod_locked_by_someone_else_reads_as_snapshots() {
    let (_tmp, pods) = setup();
    let uuid = exited_at_rest(&pods);
    let holder = lock_elsewhere(&pods.info(&uuid).unwrap().path);
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Running(i) if i.state == PodState::Running));
    drop(holder);

    let AnyPod::Exited(pod) = pods.load(&uuid).unwrap() else {
        panic!("not exited")
    };
    let garbage = pod.mark_garbage().unwrap();
    assert_eq!(garbage.info().state, PodState::ExitedGarbage);
    assert_eq!(
        garbage.path().parent().unwrap(),
        pods.root().join("exited-garbage")
    );
    let marked = gc_marked_at(&garbage.info()).unwrap();
    assert!(marked <= SystemTime::now());
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Deleting(i) if i.state == PodState::ExitedGarbage));
    drop(garbage);
    assert_eq!(state_of(&pods, uuid), PodState::ExitedGarbage);
    let AnyPod::Garbage(garbage) = pods.load(&uuid).unwrap() else {
        panic!("not garbage")
    };
    garbage.destroy().unwrap();
    assert!(pods.list().unwrap().is_empty());
    assert!(matches!(pods.load(&uuid), Err(PodError::NotFound(_))));
}

#[test]
fn pod_prepare_locked_elsewhere_is_preparing() {
    let (_tmp, pods) = setup();
    let uuid = pods.create().unwrap().prepare().unwrap().uuid();
    let holder = lock_elsewhere(&pods.info(&uuid).unwrap().path);
    assert_eq!(state_of(&pods, uuid), PodState::Preparing);
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Preparing(_)));
    drop(holder);
}

#[test]
fn pod_load_waits_out_a_passing_reader() {
    let (_tmp, pods) = setup();
    let uuid = exited_at_rest(&pods);
    let path = pods.info(&uuid).unwrap().path;
    let reader = lock::open_dir(&path).unwrap();
    // `list`'s probe, held much longer than `list` would hold it.
    assert!(lock::try_shared_for_test(reader.as_fd()));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2));
        lock::unlock(reader.as_fd()).unwrap();
    });
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Exited(_)));
    release.join().unwrap();
}

#[test]
fn pod_timestamps_come_from_their_files() {
    let (_tmp, pods) = setup();
    let running = pods.create().unwrap().prepare().unwrap().run().unwrap();
    let info = running.info();
    assert!(started_at(&info).is_none());
    assert!(gc_marked_at(&info).is_none(), "not garbage");
    std::fs::write(info.path.join(layout::PID), b"1\n").unwrap();
    assert!(started_at(&info).is_some());
    assert!(created_at(&info).unwrap() <= started_at(&info).unwrap());
}

#[test]
fn pod_resolve_by_prefix() {
    let (_tmp, pods) = setup();
    let mut uuids: Vec<Uuid> = Vec::new();
    // 17 pods: two must share their first hex digit.
    for i in 0..17 {
        let pod = pods.create().unwrap().prepare().unwrap();
        uuids.push(pod.uuid());
        if i % 2 == 0 {
            pod.prepared().unwrap();
        }
    }
    let target = uuids[3];
    let full = target.to_string();
    assert_eq!(pods.resolve(&full).unwrap(), target);
    assert_eq!(pods.resolve(&full.to_uppercase()).unwrap(), target);
    let unique = (1..=full.len())
        .map(|n| &full[..n])
        .find(|p| uuids.iter().filter(|u| u.to_string().starts_with(p)).count() == 1)
        .unwrap();
    assert_eq!(pods.resolve(unique).unwrap(), target);
    let shared = uuids
        .iter()
        .map(|u| u.to_string()[..1].to_string())
        .find(|p| uuids.iter().filter(|u| u.to_string().starts_with(p)).count() > 1)
        .unwrap();
    match pods.resolve(&shared) {
        Err(PodError::Ambiguous { matches, .. }) => assert!(matches.contains(", ")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(pods.resolve(""), Err(PodError::NotFound(_))));
    assert!(matches!(pods.resolve("xyz"), Err(PodError::NotFound(_))));
    assert!(matches!(
        pods.resolve(&Uuid::new_v4().to_string()),
        Err(PodError::NotFound(_))
    ));
}

#[test]
fn pod_list_ignores_what_is_not_a_pod() {
    let (tmp, pods) = setup();
    let uuid = prepared_at_rest(&pods);
    let stray = Uuid::new_v4();
    std::fs::write(pods.root().join("run").join(stray.to_string()), b"").unwrap();
    std::os::unix::fs::symlink(
        tmp.path(),
        pods.root().join("garbage").join(Uuid::new_v4().to_string()),
    )
    .unwrap();
    std::fs::create_dir(pods.root().join("run").join("not-a-uuid")).unwrap();
    std::fs::create_dir(pods.root().join("run").join(Uuid::new_v4().simple().to_string())).unwrap();
    let list = pods.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].uuid, uuid);
    assert!(matches!(pods.load(&stray), Err(PodError::NotFound(_))));
}

#[test]
fn pod_list_is_sorted_by_uuid() {
    let (_tmp, pods) = setup();
    let mut uuids = vec![
        prepared_at_rest(&pods),
        exited_at_rest(&pods),
        pods.create().unwrap().uuid(),
    ];
    uuids.push(prepared_at_rest(&pods));
    uuids.sort();
    let listed: Vec<Uuid> = pods.list().unwrap().iter().map(|i| i.uuid).collect();
    assert_eq!(listed, uuids);
}

#[test]
fn pod_destroy_does_not_follow_symlinks() {
    let (tmp, pods) = setup();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/keep"), b"keep").unwrap();
    let pod = pods.create().unwrap().prepare().unwrap();
    std::fs::create_dir_all(pod.path().join("stage1/rootfs")).unwrap();
    std::fs::write(pod.path().join("stage1/rootfs/file"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, pod.path().join("stage1/rootfs/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub/keep"), pod.path().join("keep-link")).unwrap();
    let garbage = pod.abort().unwrap();
    let path = garbage.path().to_path_buf();
    garbage.destroy().unwrap();
    assert!(!path.exists());
    assert_eq!(std::fs::read(outside.join("sub/keep")).unwrap(), b"keep");
    assert!(pods.list().unwrap().is_empty());
}

#[test]
fn pod_destroy_refuses_a_pod_that_moved() {
    let (tmp, pods) = setup();
    let garbage = pods.create().unwrap().prepare().unwrap().abort().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::rename(garbage.path(), &elsewhere).unwrap();
    std::fs::create_dir(garbage.path()).unwrap();
    std::fs::write(garbage.path().join("impostor"), b"").unwrap();
    assert!(matches!(garbage.destroy(), Err(PodError::Moved { .. })));
    assert!(elsewhere.join(layout::GC_MARKED).exists());
}

#[test]
fn pod_transition_never_replaces_an_existing_directory() {
    let (_tmp, pods) = setup();
    let pod = pods.create().unwrap().prepare().unwrap();
    let clash = pods.root().join("run").join(pod.uuid().to_string());
    std::fs::create_dir(&clash).unwrap();
    let from = pod.path().to_path_buf();
    assert!(matches!(pod.run(), Err(PodError::Io { .. })));
    assert!(from.is_dir(), "pod stays where it was");
    assert!(clash.is_dir());
}

#[test]
fn pod_errors_name_the_pod() {
    let uuid = Uuid::nil();
    let moved = PodError::Moved {
        uuid,
        action: "run it",
    }
    .to_string();
    assert_eq!(
        moved,
        format!("pod {uuid} was moved by another rkt process, cannot run it")
    );
    assert!(PodError::Busy(uuid).to_string().contains(&uuid.to_string()));
}

/// What `load` does when the pod moves between its lookup and its lock: the fd was
/// opened at the old place, so the lock (or its absence) describes the wrong state.
#[test]
fn pod_load_rechecks_the_place_after_locking() {
    let (_tmp, pods) = setup();
    let uuid = exited_at_rest(&pods);
    let stale = lock::open_dir(&pods.pod_path(StateDir::Run, &uuid)).unwrap();
    let AnyPod::Exited(pod) = pods.load(&uuid).unwrap() else {
        panic!("not exited")
    };
    let garbage = pod.mark_garbage().unwrap();
    // Locked elsewhere and moved: without the re-check this would read "running".
    assert!(pods.lock_at(StateDir::Run, &uuid, stale).unwrap().is_none());
    assert!(matches!(pods.load(&uuid).unwrap(), AnyPod::Deleting(_)));
    let stale = lock::open_dir(garbage.path()).unwrap();
    drop(garbage);
    let AnyPod::Garbage(garbage) = pods.load(&uuid).unwrap() else {
        panic!("not garbage")
    };
    garbage.destroy().unwrap();
    // Free and gone: the lock succeeds on the orphaned directory, the re-check refuses.
    assert!(
        pods.lock_at(StateDir::ExitedGarbage, &uuid, stale)
            .unwrap()
            .is_none()
    );
}

/// What `list`/`info` do when a pod moves between readdir (or lookup) and the probe.
#[test]
fn pod_list_follows_a_pod_that_moved_after_readdir() {
    let (_tmp, pods) = setup();
    let uuid = exited_at_rest(&pods);
    let stale = lock::open_dir(&pods.pod_path(StateDir::Run, &uuid)).unwrap();
    let AnyPod::Exited(pod) = pods.load(&uuid).unwrap() else {
        panic!("not exited")
    };
    let garbage = pod.mark_garbage().unwrap();
    assert!(pods.probe_at(StateDir::Run, &uuid, &stale).unwrap().is_none());
    let seen = pods.observe(StateDir::Run, &uuid).unwrap().unwrap();
    assert_eq!(seen.state, PodState::ExitedGarbage);
    assert_eq!(seen.path, garbage.path());
    garbage.destroy().unwrap();
    assert_eq!(
        pods.observe(StateDir::Run, &uuid).unwrap(),
        None,
        "destroyed: skipped"
    );
    assert_eq!(pods.observe(StateDir::ExitedGarbage, &uuid).unwrap(), None);
}

#[test]
fn pod_destroy_unmounts_what_is_mounted_inside() {
    let (_tmp, pods) = setup();
    let pod = pods.create().unwrap().prepare().unwrap();
    let mnt = pod.path().join("stage1/rootfs/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if let Err(e) = mounted {
        eprintln!("skipping: cannot mount tmpfs ({e}); needs root");
        return;
    }
    std::fs::write(mnt.join("inside"), b"x").unwrap();
    let garbage = pod.abort().unwrap();
    let path = garbage.path().to_path_buf();
    garbage.destroy().unwrap();
    assert!(!path.exists());
    assert!(crate::fsutil::mounts_under(pods.root()).unwrap().is_empty());
}

#[test]
fn abandoned_embryos_are_collected_and_live_ones_are_not() {
    let (_tmp, pods) = setup();
    let live = pods.create().unwrap();
    // What a crash between mkdir and flock (or right after create) leaves behind.
    let abandoned = Uuid::new_v4();
    let abandoned_path = pods.root().join("embryo").join(abandoned.to_string());
    std::fs::create_dir(&abandoned_path).unwrap();

    let collected = pods.collect_abandoned_embryos().unwrap();
    assert_eq!(
        collected.iter().map(Pod::uuid).collect::<Vec<_>>(),
        vec![abandoned]
    );
    assert_eq!(state_of(&pods, abandoned), PodState::Garbage);
    assert_eq!(
        state_of(&pods, live.uuid()),
        PodState::Embryo,
        "a locked embryo is left alone"
    );
    for pod in collected {
        pod.destroy().unwrap();
    }
    assert!(!abandoned_path.exists());
    assert!(pods.info(&abandoned).is_err());
    // The live one goes on as if nothing happened.
    live.prepare().unwrap().run().unwrap();
}

#[test]
fn create_waits_while_gc_holds_the_embryo_dir() {
    let (_tmp, pods) = setup();
    let embryo_dir = lock::open_dir(&pods.root().join("embryo")).unwrap();
    lock::lock_blocking(embryo_dir.as_fd(), true).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let creator = {
        let pods = pods.clone();
        std::thread::spawn(move || {
            let pod = pods.create().unwrap();
            tx.send(()).unwrap();
            pod
        })
    };
    // Still blocked after a generous wait: creation cannot slip into gc's scan.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    drop(embryo_dir);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("create finishes once gc lets go");
    let pod = creator.join().unwrap();
    assert_eq!(state_of(&pods, pod.uuid()), PodState::Embryo);
}
