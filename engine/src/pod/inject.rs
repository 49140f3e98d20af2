//! Host paths bound into a pod that is already running (`rkt app add
//! --mnt-volume`). The pod's mounts live in a mount namespace of its own
//! where host paths cannot be named, so the source is cloned here, in the
//! host's namespace, as a detached mount (`open_tree`), and a forked child
//! that joined the pod's namespace attaches it (`move_mount`) at the
//! volume's pod-side path. From there the stage1 init binds it into the app
//! like any volume the pod had from the start.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::fsutil;
use crate::pod::mounts::{self, PodMountError};
use crate::pod::protocol;
use crate::schema::{PodManifest, VolumeKind};

/// Binds the host's `source` at `target`, a path as seen from the root of
/// `holder`, a process in the pod's mount namespace. `target` must exist
/// and be of the source's kind (directory or file); it is resolved inside
/// the holder's root, so it cannot lead out of it.
pub fn bind_into_namespace(holder: Pid, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
    let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let tree =
        open_tree(source, recursive).map_err(|e| context(&format!("cloning {}", source.display()), e))?;
    let proc_path = |what: &str| format!("/proc/{holder}/{what}");
    let open = |path: String, flags: OFlag| {
        nix::fcntl::open(path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| context(&format!("opening {path}"), e.into()))
    };
    let namespace = open(proc_path("ns/mnt"), OFlag::O_RDONLY)?;
    let root = open(proc_path("root"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let target_fd = fsutil::open_in_root(root.as_fd(), target, OFlag::O_PATH, Mode::empty())
        .map_err(|e| context(&format!("opening {} in the pod", target.display()), e))?;
    let (errors_read, errors_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // setns into a mount namespace needs a process that shares its
    // filesystem context with no other thread: a fresh child.
    // SAFETY: the child only makes system calls and ends with _exit, so
    // nothing the parent's other threads held (locks, allocator) is touched.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let code = match attach(namespace.as_fd(), tree.as_fd(), target_fd.as_fd()) {
                Ok(()) => 0,
                Err((step, errno)) => {
                    let _ = nix::unistd::write(&errors_write, step.as_bytes());
                    errno as i32
                }
            };
            // SAFETY: _exit has no preconditions and flushes nothing of the parent's.
            unsafe { libc::_exit(code.clamp(0, 255)) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(errors_write);
            let status = loop {
                match nix::sys::wait::waitpid(child, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other.map_err(io::Error::from)?,
                }
            };
            let mut step = [0u8; 64];
            let n = nix::unistd::read(&errors_read, &mut step).unwrap_or(0);
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, code) => Err(context(
                    &format!(
                        "{} {} at {} in the pod",
                        String::from_utf8_lossy(&step[..n]),
                        source.display(),
                        target.display()
                    ),
                    io::Error::from_raw_os_error(code),
                )),
                other => Err(io::Error::other(format!(
                    "binding {} into the pod: the helper ended with {other:?}",
                    source.display()
                ))),
            }
        }
    }
}

fn open_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    crate::mount_api::clone_tree(source, recursive).map_err(io::Error::from)
}

/// In the forked child: joins the namespace and attaches the tree.
fn attach(
    namespace: BorrowedFd<'_>,
    tree: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
) -> Result<(), (&'static str, Errno)> {
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| ("joining the pod's mount namespace for", e))?;
    crate::mount_api::attach(tree, target).map_err(|e| ("attaching", e))
}

/// The host volumes `app` mounts that the running pod did not have yet
/// (their pod-side path does not exist: every volume of the pod's start got
/// one, and a volume name is never reused in a pod): each gets its pod-side
/// path on the host and is bound there in the pod's mount namespace, held by
/// `holder`. `seen_from_holder` maps a volume's name to its pod-side path as
/// the holder names it.
pub fn bind_added_volumes(
    pod: &Path,
    manifest: &PodManifest,
    app: &str,
    holder: Pid,
    seen_from_holder: &dyn Fn(&str) -> PathBuf,
) -> Result<(), PodMountError> {
    let Some(runtime) = manifest.app(app) else {
        return Ok(());
    };
    for mount in &runtime.mounts {
        let Some(volume) = manifest.volumes.iter().find(|v| v.name == mount.volume) else {
            continue;
        };
        let name = volume.name.as_str();
        let on_host = protocol::volume(name).on_host(pod);
        if volume.kind != VolumeKind::Host || on_host.symlink_metadata().is_ok() {
            continue;
        }
        let source = volume
            .source
            .as_deref()
            .ok_or_else(|| PodMountError::Invalid(format!("host volume {name:?} has no source")))?;
        mounts::create_volume_target(pod, volume)?;
        let recursive = volume.recursive.unwrap_or(true);
        bind_into_namespace(holder, Path::new(source), &seen_from_holder(name), recursive).map_err(
            |source| PodMountError::Io {
                context: format!("volume {name:?}"),
                source,
            },
        )?;
    }
    Ok(())
}
