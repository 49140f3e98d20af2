//! Picks the decompressor for an ACI by its first bytes, never by its file name:
//! images arrive through pipes and URLs as often as through `.aci` files.

use std::io::{self, Cursor, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

pub(super) fn detect(head: &[u8]) -> Compression {
    if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(BZIP2_MAGIC) {
        Compression::Bzip2
    } else if head.starts_with(XZ_MAGIC) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// The uncompressed byte stream of `input`. The sniffed bytes are put back in front
/// so nothing is lost, whatever the format turns out to be.
pub(super) fn uncompressed<'a>(input: &'a mut dyn Read) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; XZ_MAGIC.len()];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let head = &head[..filled];
    let whole = Cursor::new(head.to_vec()).chain(input);
    Ok(match detect(head) {
        // Multi-member/multi-stream decoders: `cat a.gz b.gz` is one valid stream, and
        // a single-member decoder would silently stop after the first part.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(whole)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
        Compression::None => Box::new(whole),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_pick_the_format() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Compression::Xz);
        assert_eq!(detect(b"rootfs/\0\0"), Compression::None);
        assert_eq!(detect(b""), Compression::None);
        assert_eq!(detect(&[0x1f]), Compression::None);
    }

    #[test]
    fn short_plain_input_is_passed_through_whole() {
        let mut input: &[u8] = b"abc";
        let mut out = Vec::new();
        uncompressed(&mut input)
            .expect("open")
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, b"abc");
    }
}
