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

/// What identifies the inputs' content without reading it: path, device,
/// inode, size, mtime and ctime of each (ctime moves on every write and cannot
/// be set back). None when one cannot be stat'ed.
fn stat_key(paths: &[&Path], extra: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut text = extra.to_string();
    for path in paths {
        let m = std::fs::metadata(path).ok()?;
        text.push_str(&format!(
            "\n{}:{}:{}:{}:{}.{}:{}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ));
    }
    Some(short_hash(&[text.as_bytes()]))
}

/// The vmlinux and initramfs for `kernel` with `init` (the rkt binary's bytes)
/// as /init, loading the virtio `transport` module. A memo keyed by the
/// inputs' [`stat_key`] names the content-keyed files, so a run with unchanged
/// inputs reads and hashes nothing (~100 ms less per pod).
pub fn boot_files(
    dir: &Path,
    kernel: &Kernel,
    init_exe: &Path,
    transport: &str,
) -> Result<BootFiles, KvmError> {
    let modules_dep = kernel.modules.join("modules.dep");
    let key = stat_key(
        &[&kernel.image, init_exe, &modules_dep],
        &format!("{}:{transport}", kernel.release),
    );
    let memo = key.map(|k| dir.join(format!("memo-{k}")));
    if let Some(memo) = &memo
        && let Ok(text) = std::fs::read_to_string(memo)
        && let Some((vmlinux, initramfs)) = text.trim().split_once('\n')
    {
        let files = BootFiles {
            vmlinux: dir.join(vmlinux),
            initramfs: dir.join(initramfs),
        };
        if files.vmlinux.is_file() && files.initramfs.is_file() {
            return Ok(files);
        }
    }
    let files = build_boot_files(dir, kernel, init_exe, transport)?;
    if let Some(memo) = &memo {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let text = format!("{}\n{}\n", name(&files.vmlinux), name(&files.initramfs));
        fsutil::atomic_write(memo, text.as_bytes())
            .map_err(|e| KvmError::io(format!("writing {}", memo.display()), e))?;
    }
    Ok(files)
}

fn build_boot_files(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_key_changes_when_a_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"one").unwrap();
        let before = stat_key(&[&file], "x").unwrap();
        assert_eq!(stat_key(&[&file], "x").unwrap(), before);
        assert_ne!(stat_key(&[&file], "y").unwrap(), before);
        std::fs::write(&file, b"two").unwrap();
        // Same size, same second: ctime's nanoseconds tell.
        assert_ne!(stat_key(&[&file], "x").unwrap(), before);
        assert_eq!(stat_key(&[&dir.path().join("missing")], "x"), None);
    }
}
