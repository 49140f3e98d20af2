//! The seam between fly's launch logic and the kernel: every mount, namespace,
//! root and credential change goes through [`Syscall`], so the exact sequence a
//! launch performs can be asserted by a unit test that needs no root
//! ([`Recording`]) while production uses [`Nix`].

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

pub trait Syscall {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Binds `source` onto `target` read-only (with every submount when
    /// `recursive`) without looking anything up by path after the bind: the source
    /// tree is cloned detached, made read-only while detached, then moved onto the
    /// target fd. A bind plus `MS_REMOUNT|MS_RDONLY` would cover only the top mount
    /// and would have to find it again by path.
    fn bind_read_only(&self, source: &Path, target: BorrowedFd<'_>, recursive: bool) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    fn setgroups(&self, gids: &[u32]) -> nix::Result<()>;
    fn setresgid(&self, gid: u32) -> nix::Result<()>;
    fn setresuid(&self, uid: u32) -> nix::Result<()>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nix;

impl Syscall for Nix {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(fd, nstype)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn bind_read_only(&self, source: &Path, target: BorrowedFd<'_>, recursive: bool) -> nix::Result<()> {
        new_mount_api::bind_read_only(source, target, recursive)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }

    fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
        let gids: Vec<Gid> = gids.iter().copied().map(Gid::from_raw).collect();
        nix::unistd::setgroups(&gids)
    }

    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        let g = Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g)
    }

    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u)
    }
}

/// One recorded call, with paths as strings so tests can compare literally.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Unshare(CloneFlags),
    Setns(CloneFlags),
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    BindReadOnly {
        source: String,
        target: String,
        recursive: bool,
    },
    Umount2(String, MntFlags),
    PivotRoot(String, String),
    Chdir(String),
    Chroot(String),
    Setgroups(Vec<u32>),
    Setresgid(u32),
    Setresuid(u32),
}

/// Records every call and succeeds. Mount targets given as `/proc/self/fd/N` are
/// recorded as the path the fd resolves to, so a test sees where a mount would land.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: std::cell::RefCell<Vec<Call>>,
}

#[cfg(test)]
impl Recording {
    fn push(&self, call: Call) -> nix::Result<()> {
        self.calls.borrow_mut().push(call);
        Ok(())
    }

    fn show(path: &Path) -> String {
        if path.starts_with("/proc/self/fd")
            && let Ok(real) = std::fs::read_link(path)
        {
            return real.display().to_string();
        }
        path.display().to_string()
    }
}

#[cfg(test)]
impl Syscall for Recording {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.push(Call::Unshare(flags))
    }
    fn setns(&self, _fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        self.push(Call::Setns(nstype))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.push(Call::Mount {
            source: source.map(Self::show),
            target: Self::show(target),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn bind_read_only(&self, source: &Path, target: BorrowedFd<'_>, recursive: bool) -> nix::Result<()> {
        self.push(Call::BindReadOnly {
            source: Self::show(source),
            target: Self::show(&rkt_engine::fsutil::proc_fd_path(target)),
            recursive,
        })
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.push(Call::Umount2(Self::show(target), flags))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.push(Call::PivotRoot(Self::show(new_root), Self::show(put_old)))
    }
    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.push(Call::Chdir(Self::show(path)))
    }
    fn chroot(&self, path: &Path) -> nix::Result<()> {
        self.push(Call::Chroot(Self::show(path)))
    }
    fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
        self.push(Call::Setgroups(gids.to_vec()))
    }
    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        self.push(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        self.push(Call::Setresuid(uid))
    }
}

/// Clone, make read-only, attach: the engine's wrapper of the new mount API.
mod new_mount_api {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::path::Path;

    use rkt_engine::mount_api;

    pub fn bind_read_only(source: &Path, target: BorrowedFd<'_>, recursive: bool) -> nix::Result<()> {
        let tree = mount_api::clone_tree(source, recursive)?;
        mount_api::set_read_only(tree.as_fd(), recursive)?;
        mount_api::attach(tree.as_fd(), target)
    }
}
