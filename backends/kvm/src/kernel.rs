//! The guest kernel: Debian's `/boot/vmlinuz-<release>` with its modules under
//! `/lib/modules/<release>`, booted as the uncompressed ELF vmlinux through its
//! PVH entry point (QEMU then skips the real-mode setup and the kernel's own
//! decompressor, seconds under TCG).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::KvmError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub image: PathBuf,
    pub release: String,
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel at `image` (its release from the file name), or the newest
    /// `vmlinuz-*` under `boot` whose modules are installed.
    pub fn find(image: Option<&Path>, boot: &Path, modules_root: &Path) -> Result<Kernel, KvmError> {
        let with_modules = |image: PathBuf| {
            let name = image.file_name()?.to_str()?;
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            let modules = modules_root.join(&release);
            modules.join("modules.dep").is_file().then_some(Kernel {
                image,
                release,
                modules,
            })
        };
        if let Some(image) = image {
            return with_modules(image.to_path_buf()).ok_or_else(|| {
                KvmError::Invalid(format!(
                    "kernel {}: want a vmlinuz-<release> with {}/<release>/modules.dep",
                    image.display(),
                    modules_root.display()
                ))
            });
        }
        let mut found: Vec<Kernel> = std::fs::read_dir(boot)
            .map_err(|e| KvmError::io(format!("reading {}", boot.display()), e))?
            .flatten()
            .filter_map(|e| with_modules(e.path()))
            .collect();
        found.sort_by_key(|k| version_key(&k.release));
        found.pop().ok_or_else(|| {
            KvmError::Invalid(format!(
                "no kernel under {} with its modules (apt-get install linux-image-amd64)",
                boot.display()
            ))
        })
    }
}

impl Kernel {
    /// The kernel's build configuration, beside its image (`config-<release>`).
    pub fn config(&self) -> PathBuf {
        self.image.with_file_name(format!("config-{}", self.release))
    }
}

/// "6.1.0-57-amd64" -> [6, 1, 0, 57]: numeric parts compare as numbers.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// The ELF vmlinux inside a bzImage: the protected-mode part starts after the
/// setup sectors; the boot protocol (2.08+) gives the compressed payload's
/// offset and length within it. The kernel build appends the uncompressed size
/// (4 bytes) to the xz stream; a single-stream decoder stops before it.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KvmError> {
    let bad = |why: &str| KvmError::Invalid(format!("kernel image: {why}"));
    if bzimage.starts_with(b"\x7fELF") {
        return Ok(bzimage.to_vec());
    }
    let u32_at = |off: usize| -> Option<usize> {
        let b = bzimage.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("not a bzImage (no HdrS signature)"));
    }
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) => 4,
        Some(n) => usize::from(*n),
        None => return Err(bad("truncated")),
    };
    let protected = (setup_sects + 1) * 512;
    let (offset, length) = u32_at(0x248)
        .zip(u32_at(0x24c))
        .ok_or_else(|| bad("truncated header"))?;
    let payload = protected
        .checked_add(offset)
        .and_then(|start| bzimage.get(start..start.checked_add(length)?))
        .ok_or_else(|| bad("payload outside the file"))?;
    if !payload.starts_with(XZ_MAGIC) {
        return Err(bad(
            "payload is not xz-compressed (only CONFIG_KERNEL_XZ kernels are supported)",
        ));
    }
    let mut vmlinux = Vec::with_capacity(length * 4);
    liblzma::read::XzDecoder::new(payload)
        .read_to_end(&mut vmlinux)
        .map_err(|e| bad(&format!("decompressing the payload: {e}")))?;
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(bad("the payload is not an ELF vmlinux"));
    }
    Ok(vmlinux)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn releases_sort_numerically() {
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.0-9-amd64"));
        assert!(version_key("6.1.0-57-amd64") > version_key("6.1.0-9-amd64"));
    }

    #[test]
    fn the_newest_kernel_with_modules_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let lib = dir.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for release in ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.2.0-1-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{release}")), b"").unwrap();
        }
        for release in ["6.1.0-9-amd64", "6.1.0-57-amd64"] {
            std::fs::create_dir_all(lib.join(release)).unwrap();
            std::fs::write(lib.join(release).join("modules.dep"), b"").unwrap();
        }
        let k = Kernel::find(None, &boot, &lib).unwrap();
        assert_eq!(k.release, "6.1.0-57-amd64");
        assert!(Kernel::find(Some(&boot.join("vmlinuz-6.2.0-1-amd64")), &boot, &lib).is_err());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = Kernel::find(None, &empty, &lib).unwrap_err().to_string();
        assert!(err.contains("linux-image-amd64"), "{err}");
    }

    /// A synthetic bzImage: header fields, one setup sector, an xz payload and
    /// the size the kernel build appends.
    #[test]
    fn the_xz_payload_is_extracted() {
        let elf = b"\x7fELF and the rest of a kernel".repeat(100);
        let mut xz = Vec::new();
        {
            let mut enc = liblzma::write::XzEncoder::new(&mut xz, 6);
            enc.write_all(&elf).unwrap();
            enc.finish().unwrap();
        }
        xz.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut image = vec![0u8; 2 * 512];
        image[0x1f1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(xz.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(&xz);
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);

        let mut not_xz = image.clone();
        not_xz[2 * 512 + 16] = 0x1f;
        assert!(extract_vmlinux(&not_xz).unwrap_err().to_string().contains("xz"));
        assert!(extract_vmlinux(b"MZ not a kernel").is_err());
    }
}
