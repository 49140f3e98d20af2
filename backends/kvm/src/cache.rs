//! The boot files, built once and kept in a cache directory under names that
//! carry a hash of everything they are made from: a new kernel or a new `rkt`
//! binary gets new files, concurrent builders write temps and rename (the
//! loser's rename replaces an identical file), a crash leaves at most a temp.

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use sha2::{Digest, Sha256};

use crate::KvmError;
use crate::initramfs;
use crate::kernel::{self, Kernel};

/// The files QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

/// `dir/<name>`, built by `build` when absent.
fn cached(
    dir: &Path,
    name: &str,
    build: impl FnOnce() -> Result<Vec<u8>, KvmError>,
) -> Result<PathBuf, KvmError> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let bytes = build()?;
    fsutil::atomic_write(&path, &bytes)
        .map_err(|e| KvmError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// The vmlinux and initramfs for `kernel` with `init` (the rkt binary's bytes)
/// as /init, loading the virtio `transport` module.
pub fn boot_files(
    dir: &Path,
    kernel: &Kernel,
    init_exe: &Path,
    transport: &str,
) -> Result<BootFiles, KvmError> {
    std::fs::create_dir_all(dir).map_err(|e| KvmError::io(format!("creating {}", dir.display()), e))?;
    let bzimage = std::fs::read(&kernel.image)
        .map_err(|e| KvmError::io(format!("reading {}", kernel.image.display()), e))?;
    let vmlinux = cached(
        dir,
        &format!("vmlinux-{}-{}", kernel.release, short_hash(&[&bzimage])),
        || kernel::extract_vmlinux(&bzimage),
    )?;

    let exe =
        std::fs::read(init_exe).map_err(|e| KvmError::io(format!("reading {}", init_exe.display()), e))?;
    let init = initramfs::loadable_prefix(&exe)?;
    drop(exe);
    let read = |name: &str| {
        let path = kernel.modules.join(name);
        std::fs::read_to_string(&path).map_err(|e| KvmError::io(format!("reading {}", path.display()), e))
    };
    let dep = initramfs::ModulesDep::parse(&read("modules.dep")?);
    let builtin = initramfs::parse_builtin(&read("modules.builtin").unwrap_or_default());
    let order = dep.load_order(&initramfs::wanted_modules(transport), &builtin)?;
    let mut module_bytes = Vec::with_capacity(order.len());
    for path in &order {
        let full = kernel.modules.join(path);
        module_bytes
            .push(std::fs::read(&full).map_err(|e| KvmError::io(format!("reading {}", full.display()), e))?);
    }
    let mut parts: Vec<&[u8]> = vec![&init, kernel.release.as_bytes()];
    for (path, bytes) in order.iter().zip(&module_bytes) {
        parts.push(path.as_bytes());
        parts.push(bytes);
    }
    let initramfs = cached(dir, &format!("initramfs-{}.cpio", short_hash(&parts)), || {
        initramfs::build(&init, &kernel.modules, &order)
    })?;
    Ok(BootFiles { vmlinux, initramfs })
}
