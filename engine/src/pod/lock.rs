//! flock(2) on a pod directory's own fd.
//!
//! The lock lives on the open file description, so it follows the directory through
//! renames and is shared with every process that inherits the fd (stage1). That is
//! also why nothing here ever unlocks on drop: an explicit `LOCK_UN` by rkt would
//! release the lock a still-running stage1 holds through the same description;
//! closing our fd only releases it once every copy is closed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// How often a writer retries `LOCK_EX` while only readers hold the lock, and the
/// first pause; the pause doubles each time (about 13 ms in all). Readers hold their
/// shared lock for a couple of syscalls, so this only matters on a loaded machine.
const EXCLUSIVE_ATTEMPTS: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_micros(100);

/// Outcome of trying to take the exclusive lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acquired {
    Locked,
    /// Another open file description holds it (another rkt, a stage1, or another
    /// `Pod` value in this process).
    HeldElsewhere,
}

/// Opens a pod directory for locking. `O_NOFOLLOW`: a symlink planted where a pod
/// should be is not a pod.
pub(super) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// `Ok(false)` when the lock is held elsewhere; other errors are real.
fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock(2) only reads the descriptor number, and `fd` borrows an open
        // descriptor for the whole call; no memory is passed to the kernel.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Waits for `LOCK_SH` (or `LOCK_EX`) on a state directory; see `PodsDir::create`.
pub(super) fn lock_blocking(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    flock(fd, op).map(drop)
}

/// One non-blocking `LOCK_EX` attempt.
pub(super) fn try_exclusive_once(fd: BorrowedFd<'_>) -> io::Result<bool> {
    flock(fd, libc::LOCK_EX | libc::LOCK_NB)
}

/// Non-blocking `LOCK_EX` that tells a real owner from a passing reader.
///
/// When the exclusive attempt fails, a shared attempt tells who is in the way: if it
/// fails too, some description holds `LOCK_EX` (an owner) and we give up at once; if
/// it succeeds, only readers (`list`/`info` probes) hold it for a moment, so we drop
/// our shared lock and retry after a short, growing pause. Bounded: after
/// `EXCLUSIVE_ATTEMPTS` the pod is reported as held.
pub(super) fn try_exclusive(fd: BorrowedFd<'_>) -> io::Result<Acquired> {
    let mut pause = FIRST_PAUSE;
    for attempt in 0..EXCLUSIVE_ATTEMPTS {
        if try_exclusive_once(fd)? {
            return Ok(Acquired::Locked);
        }
        if !flock(fd, libc::LOCK_SH | libc::LOCK_NB)? {
            return Ok(Acquired::HeldElsewhere);
        }
        // Not a conversion to LOCK_EX: Linux drops the old lock before trying the new
        // one, so holding on to it would buy nothing.
        unlock(fd)?;
        if attempt + 1 < EXCLUSIVE_ATTEMPTS {
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
    Ok(Acquired::HeldElsewhere)
}

/// Whether some description holds `LOCK_EX`, probed by taking `LOCK_SH` and
/// releasing it at once. While the probe holds it (two syscalls), a concurrent
/// non-blocking `LOCK_EX` fails; `try_exclusive` retries exactly that case.
pub(super) fn is_locked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if flock(fd, libc::LOCK_SH | libc::LOCK_NB)? {
        unlock(fd)?;
        Ok(false)
    } else {
        Ok(true)
    }
}

/// Releases this description's lock. Only for descriptions no other process shares.
pub(super) fn unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    flock(fd, libc::LOCK_UN).map(drop)
}

/// Whether `path` still names the directory `fd` was opened from. `Ok(false)` if it
/// names something else or nothing: the pod moved after we looked it up.
pub(super) fn still_at(fd: BorrowedFd<'_>, path: &Path) -> io::Result<bool> {
    let held = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.st_dev && now.ino() == held.st_ino),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes `LOCK_SH` and keeps it, to stand in for a slow reader.
#[cfg(test)]
pub(super) fn try_shared_for_test(fd: BorrowedFd<'_>) -> bool {
    matches!(flock(fd, libc::LOCK_SH | libc::LOCK_NB), Ok(true))
}
