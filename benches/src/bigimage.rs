//! The 200 MB image of the "first run of a new image" scenario: the busybox image
//! plus 1,600 files of 125 kB of pseudo-random bytes (so compression or dedup
//! would not flatter anyone). Generated once and kept in the bench work dir.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rkt_conformance::AciSpec;

const DIRS: usize = 64;
const FILES_PER_DIR: usize = 25;
const FILE_BYTES: usize = 125_000;
pub const TOTAL_BYTES: usize = DIRS * FILES_PER_DIR * FILE_BYTES;

/// The cached image, written first if it is not there yet.
pub fn big_aci(work: &Path) -> Result<PathBuf> {
    // The name carries the shape, so a change of shape never reuses an old file.
    let path = work.join(format!("big-{DIRS}x{FILES_PER_DIR}x{FILE_BYTES}-v2.aci"));
    if path.exists() {
        return Ok(path);
    }
    eprintln!(
        "bench: writing the {} MB image once: {}",
        TOTAL_BYTES / 1_000_000,
        path.display()
    );
    let base = work.join("big-base.aci");
    AciSpec::busybox("example.com/big").write(&base)?;
    let partial = path.with_extension("aci.partial");
    write_big(&base, &partial).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::remove_file(&base)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

fn write_big(base: &Path, out: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(BufWriter::new(File::create(out)?));
    let mut archive = tar::Archive::new(File::open(base)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        if let Some(target) = entry.link_name()? {
            let target = target.into_owned();
            builder.append_link(&mut header, &path, &target)?;
        } else {
            builder.append_data(&mut header, &path, &mut entry)?;
        }
    }
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; FILE_BYTES];
    builder.append_data(&mut dir_header(), "rootfs/data", std::io::empty())?;
    for d in 0..DIRS {
        let dir = format!("rootfs/data/{d:02}");
        builder.append_data(&mut dir_header(), &dir, std::io::empty())?;
        for f in 0..FILES_PER_DIR {
            random.fill(&mut data);
            let mut header = tar::Header::new_gnu();
            header.set_size(FILE_BYTES as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, format!("{dir}/blob-{f:02}"), data.as_slice())?;
        }
    }
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .flush()?;
    Ok(())
}

fn dir_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// xorshift64: fast and incompressible enough for gzip/xz and for dedup.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}
