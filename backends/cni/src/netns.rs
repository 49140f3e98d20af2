//! A network namespace per pod, bind-mounted on a file under /run/netns (where
//! `ip netns` finds it too), so it outlives the processes in it and a crashed
//! `rkt run`: gc tears the networks down inside it, then unmounts it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

pub const NETNS_DIR: &str = "/run/netns";

pub fn path_for(container_id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("rkt-{container_id}"))
}

/// Creates a fresh network namespace with `lo` up and pins it at `path`.
/// rkt ran the CNI loopback plugin for `lo` (ADD here, DEL at gc): two plugin
/// executions per pod for one interface flag, done here in-process instead.
pub fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let target = path.to_path_buf();
    // A short-lived thread enters the new namespace, so this process never does.
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        bring_loopback_up()?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Sets `lo` up in the calling thread's network namespace.
fn bring_loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the fd is owned at once below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    let flags = |request, req: &mut libc::ifreq| {
        // SAFETY: both requests take a pointer to an ifreq, alive for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req)) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    flags(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    flags(libc::SIOCSIFFLAGS, &mut req)
}

/// Unpins the namespace (it ends with its last process) and removes the file.
/// Succeeds when there is nothing to remove.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a pinned namespace (a mount point), not a leftover file.
pub fn is_pinned(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(wanted.as_ref()))
}
