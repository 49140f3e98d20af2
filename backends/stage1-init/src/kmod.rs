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

/// Loads every module named in the list at `order`, in that order; one already
/// loaded or built in is fine. A missing list means nothing to load.
pub fn load_listed(order: &Path) -> Result<(), InitError> {
    let list = match std::fs::read_to_string(order) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(InitError::io(format!("reading {}", order.display()), e)),
    };
    let dir = order.parent().unwrap_or(Path::new("/"));
    for name in module_order(&list) {
        load(&dir.join(name))?;
    }
    Ok(())
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
    fn a_missing_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        load_listed(&dir.path().join("net.order")).unwrap();
    }
}
