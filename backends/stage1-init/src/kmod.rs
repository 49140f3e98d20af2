//! Kernel modules of the VM role: stage0 put them in the initramfs with two
//! lists, each in load order (dependencies first): what every pod needs (the
//! virtio transport, the 9p share, the console ports) and what only a pod with
//! a network needs ([`protocol::VM_NET_MODULES_ORDER`]), loaded only then.
//!
//! Under TCG a module costs what the guest's CPU spends relocating it (stage0
//! stripped the signatures, whose check cost more); the lists are loaded one
//! module after the other: with one vCPU, threads would only interleave the
//! same work.
//!
//! [`protocol::VM_NET_MODULES_ORDER`]: rkt_engine::pod::protocol::VM_NET_MODULES_ORDER

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::InitError;

/// The initramfs's modules directory, held open: the lists are read after
/// the init has chrooted into the pod's share.
pub struct ModulesDir(std::fs::File);

impl ModulesDir {
    pub fn open(dir: &Path) -> Result<ModulesDir, InitError> {
        std::fs::File::open(dir)
            .map(ModulesDir)
            .map_err(|e| InitError::io(format!("opening {}", dir.display()), e))
    }

    /// Loads every module named in the list `name`, in that order; one
    /// already loaded or built in is fine.
    pub fn load_list(&self, name: &str) -> Result<(), InitError> {
        let list = std::fs::read_to_string(self.path(name))
            .map_err(|e| InitError::io(format!("reading the modules list {name}"), e))?;
        for module in module_order(&list) {
            load(&self.path(module))?;
        }
        Ok(())
    }

    /// `name` in the directory through its descriptor, wherever `/` is now.
    fn path(&self, name: &str) -> std::path::PathBuf {
        Path::new(&format!("/proc/self/fd/{}", self.0.as_raw_fd())).join(name)
    }
}

fn load(path: &Path) -> Result<(), InitError> {
    let file =
        std::fs::File::open(path).map_err(|e| InitError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: finit_module reads the module from the open fd; the parameter
    // string is a valid NUL-terminated empty string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(InitError::io(format!("loading {}", path.display()), err));
        }
    }
    Ok(())
}

/// The non-empty, non-comment lines of a modules list.
fn module_order(list: &str) -> impl Iterator<Item = &str> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn module_order_skips_blanks_and_comments() {
        let list = "# deps first\nvirtio.ko\n\n virtio_ring.ko \n";
        assert_eq!(
            module_order(list).collect::<Vec<_>>(),
            ["virtio.ko", "virtio_ring.ko"]
        );
    }

    #[test]
    fn lists_are_read_through_the_directorys_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net.order"), "# nothing\n").unwrap();
        let modules = ModulesDir::open(dir.path()).unwrap();
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        modules.load_list("net.order").unwrap();
        assert!(modules.load_list("missing.order").is_err());
        std::fs::rename(&moved, dir.path()).unwrap();
    }
}
