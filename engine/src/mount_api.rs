//! The mount API of Linux 5.12+ (open_tree, mount_setattr, move_mount), which
//! nix does not wrap yet: a tree cloned as a detached mount in one place (a
//! namespace, a root) and attached by descriptor in another.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(rc: libc::c_long) -> nix::Result<libc::c_long> {
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

fn recursive_flag(recursive: bool) -> libc::c_uint {
    if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    }
}

/// A detached copy of the mount at `source` (with the mounts below it when
/// `recursive`), seen from the calling thread's namespace and root.
pub fn clone_tree(source: &Path, recursive: bool) -> nix::Result<OwnedFd> {
    let source = CString::new(source.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive_flag(recursive);
    // SAFETY: open_tree reads the NUL-terminated `source` and returns a new fd.
    let fd = check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source.as_ptr(), flags) })?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes a detached tree read-only (all of it when `recursive`).
pub fn set_read_only(tree: BorrowedFd<'_>, recursive: bool) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    let at_flags = libc::AT_EMPTY_PATH as libc::c_uint | recursive_flag(recursive);
    // SAFETY: `attr` is a live `struct mount_attr` of the size passed; `empty`
    // is NUL-terminated; `tree` is an open fd.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches a detached tree on the directory or file `target` is open on, in
/// the calling thread's mount namespace.
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    let empty = c"";
    // SAFETY: both fds are open; both paths are the NUL-terminated empty string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}
