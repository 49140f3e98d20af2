//! The blob store: importing an archive (decompress, hash, find the manifest, publish),
//! and the operations on stored blobs (export, remove, verify).
//!
//! An import reads its input exactly once. The uncompressed stream is hashed and
//! written to a temp file as the tar reader pulls it, so the manifest is found and
//! the ID computed in the same pass; only a complete, well-formed archive with a
//! valid manifest is renamed into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use sha2::{Digest, Sha512};

use super::extract::StreamingUnpack;
use super::layout::{self, Scratch, create_durable_dir};
use super::{IoContext, Store, StoreError, VerifyReport, decompress, index, tree};
use crate::schema::{ImageId, ImageManifest};

/// A manifest is a few KiB; anything this large is an attack or a mistake, and is
/// refused before it is read into memory.
pub(super) const MANIFEST_MAX: u64 = 4 << 20;

const BLOCK: usize = 512;

#[cfg(test)]
thread_local! {
    /// How many archives this thread has hashed: lets tests prove a fast path hashed
    /// nothing. Thread-local so tests running in parallel do not see each other.
    pub(super) static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// How many stored blobs this thread has read back to hash.
    static BLOBS_REHASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The manifest of an archive being imported, as stored bytes and parsed.
struct Found {
    bytes: Vec<u8>,
    manifest: ImageManifest,
}

pub(super) fn import(store: &Store, archive: &mut dyn Read, origin: &str) -> Result<ImageId, StoreError> {
    import_limited(store, archive, origin, size_limit()?)
}

fn import_limited(
    store: &Store,
    archive: &mut dyn Read,
    origin: &str,
    limit: u64,
) -> Result<ImageId, StoreError> {
    #[cfg(test)]
    HASHED.with(|n| n.set(n.get() + 1));

    store.ensure_dirs(&[store.tmp_dir()])?;
    // The tree the image will be run from, extracted from the same read of the
    // archive (see `tree::publish_pending`); a failure here only costs the
    // separate render later.
    let pending = if store.render_on_import {
        tree::PendingTree::new(store, "import")
            .inspect_err(|e| tracing::debug!(error = %e, "no tree rendered while importing"))
            .ok()
    } else {
        None
    };
    let mut unpack = pending.as_ref().map(|p| StreamingUnpack::new(p.root()));
    let scratch = Scratch::new(store, "import");
    let tmp_shown = scratch.path().display().to_string();
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(scratch.path())
        .ctx(|| format!("create {tmp_shown}"))?;
    crate::failpoint::failpoint("fetch.temp-created");

    let stream = decompress::uncompressed(archive).ctx(|| "read image archive".to_string())?;
    let mut tee = HashingTee::new(stream, BufWriter::with_capacity(256 << 10, file));
    tee.limit = limit;
    let scanned = scan(&mut tee, &mut unpack);
    if let Some(reason) = tee.too_large.take() {
        return Err(StoreError::TooLarge(reason));
    }
    // A failed write to our temp file surfaces to the tar reader as a read error;
    // report it as what it is (disk full, ...), not as a corrupt archive.
    if let Some(e) = tee.write_error.take() {
        return Err(StoreError::io(format!("write {tmp_shown}"), e));
    }
    let found = scanned?;

    let size = tee.total;
    let digest = tee.hasher.finish();
    let file = tee
        .out
        .into_inner()
        .map_err(|e| StoreError::io(format!("write {tmp_shown}"), e.into_error()))?;
    crate::failpoint::failpoint("fetch.temp-written");
    // For a run, the archive is published unsynced, stamped with this boot (as the
    // tree extracted beside it is): an fsync of the whole image cost the first run
    // more than writing it. See `durable_blob` for what a later boot does.
    let unsynced_boot = if store.render_on_import {
        super::boot::current()
    } else {
        None
    };
    if unsynced_boot.is_none() {
        file.sync_all().ctx(|| format!("fsync {tmp_shown}"))?;
    }
    drop(file);
    crate::failpoint::failpoint("fetch.temp-synced");

    let id = ImageId::from_sha512_hex(&hex::encode(digest));
    publish(
        store,
        scratch,
        &id,
        &found,
        size,
        origin,
        unsynced_boot.as_deref(),
    )?;
    crate::failpoint::failpoint("fetch.index-written");
    let extracted = unpack.map(StreamingUnpack::finish).is_some();
    if let Some(pending) = pending.filter(|_| extracted) {
        // The image is stored: a tree that cannot be published is rendered later.
        if let Err(e) = tree::publish_pending(store, pending, &id, &found.manifest) {
            tracing::debug!(%id, error = %e, "tree rendered while importing not published");
        }
    }
    tracing::debug!(%id, size, origin, "imported image");
    Ok(id)
}

/// The largest uncompressed image an import accepts, in bytes: `RKT_MAX_IMAGE_SIZE`
/// (a number with an optional K, M, G or T suffix, powers of 1024), else 16 GiB.
pub const MAX_IMAGE_SIZE_ENV: &str = "RKT_MAX_IMAGE_SIZE";
const DEFAULT_MAX_IMAGE_SIZE: u64 = 16 << 30;
/// Whatever the limit, an import stops before it leaves less than this free on the
/// store's filesystem: a bomb must not fill the disk the host runs on.
const FREE_SPACE_RESERVE: u64 = 256 << 20;
/// How often (in bytes written) the free space is looked at.
const FREE_SPACE_CHECK_EVERY: u64 = 64 << 20;

fn size_limit() -> Result<u64, StoreError> {
    let Some(raw) = std::env::var_os(MAX_IMAGE_SIZE_ENV) else {
        return Ok(DEFAULT_MAX_IMAGE_SIZE);
    };
    let text = raw.to_string_lossy();
    parse_size(&text).ok_or_else(|| {
        StoreError::io(
            format!("{MAX_IMAGE_SIZE_ENV}={text}"),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "want a size in bytes, optionally with K, M, G or T",
            ),
        )
    })
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        b'T' | b't' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Walks the tar to its end, keeping the manifest, then drains whatever follows the
/// end-of-archive marker so the hash covers every byte of the uncompressed stream.
/// With `unpack`, the rootfs is extracted on the way; it is dropped (set to None)
/// at the first entry it refuses or when the manifest names dependencies, which
/// must lie below the image: either way the image is still imported, and a later
/// render extracts it the usual way (and reports what it refuses).
fn scan<R: Read, W: Write + FreeSpace>(
    tee: &mut HashingTee<R, W>,
    unpack: &mut Option<StreamingUnpack<'_>>,
) -> Result<Found, StoreError> {
    let corrupt = |e: io::Error| StoreError::Corrupt(e.to_string());
    let mut found: Option<Found> = None;
    {
        let mut archive = tar::Archive::new(&mut *tee);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            if !is_manifest(&entry.path_bytes()) {
                if let Some(extract) = unpack.as_mut()
                    && let Err(e) = extract.entry(entry)
                {
                    tracing::debug!(error = %e, "not rendering the tree while importing");
                    *unpack = None;
                }
                continue;
            }
            if found.is_some() {
                return Err(StoreError::Corrupt("more than one `manifest` entry".into()));
            }
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(StoreError::InvalidManifest(format!(
                    "not a regular file (tar entry type {:?})",
                    kind
                )));
            }
            let size = entry.size();
            if size > MANIFEST_MAX {
                return Err(StoreError::InvalidManifest(format!(
                    "{size} bytes, larger than the {} MiB limit",
                    MANIFEST_MAX >> 20
                )));
            }
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            let manifest =
                ImageManifest::from_json(&bytes).map_err(|e| StoreError::InvalidManifest(e.to_string()))?;
            if !manifest.dependencies.is_empty() {
                *unpack = None;
            }
            found = Some(Found { bytes, manifest });
        }
    }
    // The tar reader stops at the first zero block, or silently at EOF if the
    // stream ends on a block boundary. The latter is a truncated archive: a real
    // one has at least the second zero block (and usually record padding) left.
    let ended_on_zero_block = tee.last_block_is_zero();
    let trailing = io::copy(tee, &mut io::sink()).map_err(corrupt)?;
    if tee.total == 0 {
        return Err(StoreError::Corrupt("empty input".into()));
    }
    if trailing == 0 && !ended_on_zero_block {
        return Err(StoreError::Corrupt(
            "truncated: the tar stream ends without an end-of-archive marker".into(),
        ));
    }
    found.ok_or_else(|| StoreError::InvalidManifest("missing: the archive has no `manifest` entry".into()))
}

fn is_manifest(path: &[u8]) -> bool {
    let mut path = path;
    while let Some(rest) = path.strip_prefix(b"./") {
        path = rest;
    }
    path == b"manifest"
}

/// Moves the hashed temp file into place as the blob and writes the index record.
/// Both happen under the store lock so a concurrent `remove` of the same image can
/// never leave a record without its blob; the lock is held for a rename and a few
/// small writes only.
///
/// `unsynced_boot` names this boot when the temp file was not synced: that is
/// recorded durably before the rename, so a record never names an unsynced blob
/// without saying so.
fn publish(
    store: &Store,
    scratch: Scratch,
    id: &ImageId,
    found: &Found,
    size: u64,
    origin: &str,
    unsynced_boot: Option<&str>,
) -> Result<(), StoreError> {
    let key = layout::key(id)?;
    let blob = store.blob_path(key);
    let Some(fanout) = blob.parent() else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    store.ensure_dirs(&[store.blob_root(), store.index_dir()])?;
    let _lock = store.lock_store()?;
    create_durable_dir(fanout)?;
    // A blob already there has the same content, by its name, unless it was stored
    // unsynced in an earlier boot: then the fresh copy replaces it.
    let stored_before = index::unsynced_boot(store, key)?;
    let keep_existing = std::fs::symlink_metadata(&blob).is_ok()
        && stored_before
            .as_deref()
            .is_none_or(|before| super::boot::current().as_deref() == Some(before));
    if !keep_existing {
        if let Some(boot) = unsynced_boot {
            index::mark_unsynced(store, key, boot)?;
        }
        std::fs::rename(scratch.path(), &blob).ctx(|| format!("store blob {}", blob.display()))?;
        scratch.keep();
        crate::failpoint::failpoint("fetch.blob-renamed");
        crate::fsutil::fsync_dir(fanout).ctx(|| format!("fsync {}", fanout.display()))?;
        if unsynced_boot.is_none() && stored_before.is_some() {
            index::mark_synced(store, key)?;
        }
    }
    // Otherwise the scratch copy is dropped and deleted.
    index::write_record(store, id, &found.manifest, &found.bytes, size, origin)
}

/// The path of the blob of `id`, once it can be trusted: a blob stored unsynced in
/// an earlier boot may have lost data in a crash, so it is hashed first (once: a
/// match is synced and the stamp dropped) and, if it no longer matches, the image
/// is removed and reported missing, to be fetched again. A blob stored unsynced in
/// this boot is read as it is: the page cache holds what was written.
pub(super) fn durable_blob(store: &Store, id: &ImageId) -> Result<std::path::PathBuf, StoreError> {
    let key = layout::key(id)?;
    let blob = store.blob_path(key);
    let Some(stored_in) = index::unsynced_boot(store, key)? else {
        return Ok(blob);
    };
    let this_boot = super::boot::current();
    if this_boot.as_deref() == Some(stored_in.as_str()) {
        return Ok(blob);
    }
    // Hashed without the lock (it is held for renames only); whoever published or
    // removed the blob meanwhile changed the stamp, which is looked at again below.
    let intact = match hash_blob(&blob) {
        Ok(hex) => id.as_str() == format!("sha512-{hex}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::io(format!("read {}", blob.display()), e)),
    };
    let _lock = store.lock_store()?;
    if index::unsynced_boot(store, key)?.as_deref() != Some(stored_in.as_str()) {
        return if index::has_record(store, key) {
            Ok(blob)
        } else {
            Err(StoreError::NotFound(id.to_string()))
        };
    }
    if intact {
        File::open(&blob)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("fsync {}", blob.display()))?;
        index::mark_synced(store, key)?;
        tracing::debug!(%id, "blob stored unsynced in an earlier boot checked and synced");
        return Ok(blob);
    }
    tracing::warn!(%id, "image archive damaged by a crash after it was imported; removing the image");
    index::remove_record(store, key)?;
    match std::fs::remove_file(&blob) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(StoreError::io(format!("remove {}", blob.display()), e));
        }
        _ => {}
    }
    Err(StoreError::NotFound(id.to_string()))
}

/// Reads the uncompressed stream for the tar reader while hashing it, copying it to
/// the temp file, and remembering its last block.
struct HashingTee<R, W> {
    inner: R,
    out: W,
    hasher: super::hashthread::ThreadedSha512,
    total: u64,
    tail: [u8; BLOCK],
    write_error: Option<io::Error>,
    /// Uncompressed bytes accepted at most.
    limit: u64,
    /// Why the import was stopped for its size, if it was.
    too_large: Option<String>,
}

impl<R: Read, W: Write + FreeSpace> HashingTee<R, W> {
    fn new(inner: R, out: W) -> Self {
        Self {
            inner,
            out,
            hasher: super::hashthread::ThreadedSha512::new(),
            total: 0,
            tail: [0xff; BLOCK],
            write_error: None,
            limit: u64::MAX,
            too_large: None,
        }
    }

    /// Why `more` bytes may not be added, if they may not.
    fn oversize(&self, more: u64) -> Option<String> {
        let total = self.total.saturating_add(more);
        if total > self.limit {
            return Some(format!(
                "its uncompressed archive is larger than the {} byte limit ({MAX_IMAGE_SIZE_ENV})",
                self.limit
            ));
        }
        if total / FREE_SPACE_CHECK_EVERY == self.total / FREE_SPACE_CHECK_EVERY {
            return None;
        }
        let free = self.out.free_space()?;
        (free < FREE_SPACE_RESERVE + more).then(|| {
            format!(
                "importing it would leave less than {} MiB free in the store ({total} bytes so far)",
                FREE_SPACE_RESERVE >> 20
            )
        })
    }

    fn last_block_is_zero(&self) -> bool {
        self.total >= BLOCK as u64
            && self.total.is_multiple_of(BLOCK as u64)
            && self.tail.iter().all(|b| *b == 0)
    }
}

impl<R: Read, W: Write + FreeSpace> Read for HashingTee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(reason) = self.oversize(n as u64) {
            self.too_large = Some(reason);
            return Err(io::Error::other("the image is too large"));
        }
        let chunk = &buf[..n];
        self.hasher.update(chunk);
        if let Err(e) = self.out.write_all(chunk) {
            self.write_error = Some(e);
            return Err(io::Error::other("cannot write the store's temp file"));
        }
        self.total += n as u64;
        if n >= BLOCK {
            self.tail.copy_from_slice(&chunk[n - BLOCK..]);
        } else {
            self.tail.copy_within(n.., 0);
            self.tail[BLOCK - n..].copy_from_slice(chunk);
        }
        Ok(n)
    }
}

/// Free bytes on the filesystem a sink writes to (None when it cannot tell).
trait FreeSpace {
    fn free_space(&self) -> Option<u64>;
}

impl FreeSpace for BufWriter<File> {
    fn free_space(&self) -> Option<u64> {
        let stat = nix::sys::statvfs::fstatvfs(self.get_ref()).ok()?;
        Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }
}

pub(super) fn export(store: &Store, id: &ImageId, out: &mut dyn Write) -> Result<u64, StoreError> {
    let info = index::info(store, id)?;
    let blob = durable_blob(store, &info.id)?;
    let mut file = File::open(&blob).ctx(|| format!("open {}", blob.display()))?;
    super::touch_on_read(store, &info.id);
    io::copy(&mut file, out).ctx(|| format!("export {}", info.id))
}

/// Removes the index record first (from then on the image is gone for every
/// reader), then the blob. Trees are the caller's business.
pub(super) fn remove(store: &Store, id: &ImageId) -> Result<(), StoreError> {
    let _lock = store.lock_store()?;
    let info = index::info(store, id)?;
    let key = layout::key(&info.id)?;
    index::remove_record(store, key)?;
    crate::failpoint::failpoint("image-rm.record-removed");
    let blob = store.blob_path(key);
    match std::fs::remove_file(&blob) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io(format!("remove {}", blob.display()), e))
        }
        _ => Ok(()),
    }
}

/// Removes what a killed import or removal left without its record: a blob no
/// record names (killed between the blob's rename and the record's write, or
/// between a record's removal and its blob's), and index files beside no record.
/// Under the store lock nobody is between those two steps, so every such file is
/// garbage. Returns the store keys cleaned up.
pub(super) fn remove_orphans(store: &Store) -> Result<Vec<String>, StoreError> {
    let _lock = store.lock_store()?;
    let mut removed = Vec::new();
    for (fanout, _) in layout::entries(&store.blob_root())? {
        let dir = store.blob_root().join(&fanout);
        for (key, _) in layout::entries(&dir)? {
            if index::has_record(store, &key) {
                continue;
            }
            let blob = dir.join(&key);
            match std::fs::remove_file(&blob) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::io(format!("remove {}", blob.display()), e));
                }
                _ => {}
            }
            index::remove_record(store, &key)?;
            removed.push(key);
        }
    }
    for key in index::keys_without_record(store)? {
        index::remove_record(store, &key)?;
        if !removed.contains(&key) {
            removed.push(key);
        }
    }
    Ok(removed)
}

/// Hex SHA-512 of a stored blob.
fn hash_blob(path: &std::path::Path) -> io::Result<String> {
    #[cfg(test)]
    BLOBS_REHASHED.with(|n| n.set(n.get() + 1));
    let mut file = File::open(path)?;
    let mut hasher = Sha512::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Re-hashes the blob of every image (or of those in `only`); a full check also
/// reports blobs that no record names.
pub(super) fn verify(
    store: &Store,
    report: &mut VerifyReport,
    only: Option<&std::collections::HashSet<ImageId>>,
) -> Result<(), StoreError> {
    let images = index::list(store)?;
    let mut known = std::collections::HashSet::new();
    for info in &images {
        if only.is_some_and(|only| !only.contains(&info.id)) {
            continue;
        }
        report.images_checked += 1;
        let key = match layout::key(&info.id) {
            Ok(key) => key,
            Err(_) => {
                report
                    .problems
                    .push(format!("image {}: malformed image ID", info.id));
                continue;
            }
        };
        known.insert(key.to_string());
        let blob = store.blob_path(key);
        match hash_blob(&blob) {
            Ok(hex) if format!("sha512-{hex}") == info.id.as_str() => {}
            Ok(hex) => report
                .problems
                .push(format!("image {}: blob content hashes to sha512-{hex}", info.id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.problems.push(format!("image {}: blob missing", info.id))
            }
            Err(e) => report
                .problems
                .push(format!("image {}: {}: {e}", info.id, blob.display())),
        }
    }
    if only.is_some() {
        return Ok(());
    }
    // Blobs without a record are left by a crash between publishing the blob and
    // writing its record; they are harmless but take space.
    for (_, fanout) in layout::entries(&store.blob_root())? {
        for (name, blob) in layout::entries(&fanout)? {
            if !known.contains(&name) {
                report
                    .problems
                    .push(format!("blob {}: no index record", blob.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::testutil::{self, Aci, manifest, residue, simple};

    #[test]
    fn every_compression_gives_the_id_of_the_uncompressed_tar() {
        let (_dir, store) = testutil::store();
        let plain = simple("example.com/app", "1", "bin/app", b"hello");
        let expected = format!("sha512-{}", hex::encode(Sha512::digest(&plain)));
        for (what, bytes) in [
            ("plain", plain.clone()),
            ("gzip", testutil::gzip(&plain)),
            ("bzip2", testutil::bzip2(&plain)),
            ("xz", testutil::xz(&plain)),
        ] {
            let id = store.import(&mut &bytes[..], what).expect(what);
            assert_eq!(id.as_str(), expected, "{what}");
        }
        let id = ImageId::parse(&expected).expect("id");
        let mut exported = Vec::new();
        assert_eq!(
            store.export(&id, &mut exported).expect("export"),
            plain.len() as u64
        );
        assert_eq!(exported, plain, "the blob is the uncompressed tar");
        let images = store.list().expect("list");
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].size, plain.len() as u64);
        assert_eq!(images[0].origin, "xz", "a re-import refreshes the record");
        assert_eq!(images[0].name.as_str(), "example.com/app");
        assert!(store.dir().join("tmp").read_dir().expect("tmp").next().is_none());
    }

    #[test]
    fn concatenated_gzip_members_are_one_stream() {
        let (_dir, store) = testutil::store();
        let plain = simple("example.com/app", "1", "f", b"x");
        let (a, b) = plain.split_at(700);
        let mut two = testutil::gzip(a);
        two.extend(testutil::gzip(b));
        let id = store.import(&mut &two[..], "t").expect("import");
        assert_eq!(
            id.as_str(),
            format!("sha512-{}", hex::encode(Sha512::digest(&plain)))
        );
    }

    #[test]
    fn trailing_bytes_after_the_tar_are_hashed() {
        let (_dir, store) = testutil::store();
        let mut plain = simple("example.com/app", "1", "f", b"x");
        plain.extend([0u8; 4096]);
        let id = testutil::import(&store, &plain);
        assert_eq!(
            id.as_str(),
            format!("sha512-{}", hex::encode(Sha512::digest(&plain)))
        );
        assert_eq!(store.info(&id).expect("info").size, plain.len() as u64);
    }

    fn assert_fails_cleanly(bytes: &[u8], expect: &str) {
        let (_dir, store) = testutil::store();
        let err = store.import(&mut &bytes[..], "t").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains(expect), "{msg:?} should mention {expect:?}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
        assert_eq!(residue(&store), Vec::<std::path::PathBuf>::new(), "after {msg}");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn missing_manifest_leaves_nothing() {
        let aci = Aci::bare().dir("rootfs", 0o755).file("rootfs/x", b"x").finish();
        assert_fails_cleanly(&aci, "manifest: missing");
        assert_fails_cleanly(&testutil::gzip(&aci), "manifest: missing");
        assert_fails_cleanly(b"", "corrupt image archive: empty");
    }

    #[test]
    fn bad_manifest_leaves_nothing() {
        let aci = Aci::new(b"{ not json").finish();
        assert_fails_cleanly(&aci, "manifest: invalid JSON");
        let aci = Aci::bare().dir("manifest", 0o755).finish();
        assert_fails_cleanly(&aci, "manifest: not a regular file");
        let big = vec![b' '; (MANIFEST_MAX + 1) as usize];
        let aci = Aci::bare().manifest(&big).finish();
        assert_fails_cleanly(&aci, "larger than the 4 MiB limit");
        let m = manifest("example.com/app", &[], json!({}));
        let aci = Aci::new(&m).manifest(&m).finish();
        assert_fails_cleanly(&aci, "more than one `manifest` entry");
    }

    #[test]
    fn truncated_archives_leave_nothing() {
        let plain = Aci::new(&manifest("example.com/app", &[], json!({})))
            .file("rootfs/big", &[7u8; 10_000])
            .finish();
        // Inside the file's data.
        assert_fails_cleanly(&plain[..plain.len() / 2], "corrupt image archive");
        // On a block boundary after the last entry: no end-of-archive marker.
        let data_end = plain.len() - 1024;
        assert_fails_cleanly(&plain[..data_end], "truncated");
        // Inside a header.
        assert_fails_cleanly(&plain[..1024 + 100], "corrupt image archive");
        let gz = testutil::gzip(&plain);
        assert_fails_cleanly(&gz[..gz.len() - 10], "corrupt image archive");
        let xz = testutil::xz(&plain);
        assert_fails_cleanly(&xz[..xz.len() / 2], "corrupt image archive");
        let mut garbage = plain.clone();
        garbage[1100] ^= 0xff; // in the header of `rootfs/`: checksum mismatch
        assert_fails_cleanly(&garbage, "corrupt image archive");
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit_and_leaves_nothing() {
        // 64 MiB of zeros in one file: ~64 KiB of gzip.
        let aci = Aci::new(&manifest("example.com/bomb", &[], json!({})))
            .file("rootfs/zeros", &vec![0u8; 64 << 20])
            .finish();
        let gz = testutil::gzip(&aci);
        assert!(gz.len() < 1 << 20, "{} bytes", gz.len());
        let (_dir, store) = testutil::store();
        let err = import_limited(&store, &mut &gz[..], "t", 1 << 20).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.starts_with("image too large: ") && msg.contains("1048576 byte limit"),
            "{msg}"
        );
        assert_eq!(residue(&store), Vec::<std::path::PathBuf>::new());
        // The same archive under the default limit is fine.
        import_limited(&store, &mut &gz[..], "t", DEFAULT_MAX_IMAGE_SIZE).expect("import");
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in ["", "M", "-1", "1.5G", "99999999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn eight_concurrent_imports_agree() {
        let (_dir, store) = testutil::store();
        let aci = testutil::gzip(&simple("example.com/app", "1", "f", &[1u8; 300_000]));
        let ids: Vec<ImageId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.import(&mut &aci[..], "t").expect("import")))
                .collect();
            handles.into_iter().map(|h| h.join().expect("join")).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        assert_eq!(store.list().expect("list").len(), 1);
        let files = residue(&store);
        let records = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .count();
        assert_eq!(records, 1, "{files:?}");
        assert!(!files.iter().any(|p| p.starts_with("tmp")), "{files:?}");
    }

    #[test]
    fn orphans_of_a_killed_import_or_removal_are_removed_and_nothing_else() {
        let (_dir, store) = testutil::store();
        let kept = testutil::import(&store, &simple("example.com/kept", "1", "f", b"k"));
        let blob_only = testutil::import(&store, &simple("example.com/blob", "1", "f", b"b"));
        let manifest_only = testutil::import(&store, &simple("example.com/manifest", "1", "f", b"m"));
        // As a kill between the blob's rename and the record's write leaves it.
        let key = layout::key(&blob_only).expect("key").to_string();
        std::fs::remove_file(store.index_path(&key, ".json")).expect("drop record");
        // As a kill after the manifest's write, with the blob removed since.
        let mkey = layout::key(&manifest_only).expect("key").to_string();
        std::fs::remove_file(store.index_path(&mkey, ".json")).expect("drop record");
        std::fs::remove_file(store.blob_path(&mkey)).expect("drop blob");

        let mut removed = store.remove_orphans().expect("remove orphans");
        removed.sort();
        let mut want = vec![key.clone(), mkey.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!store.blob_path(&key).exists());
        assert!(!store.index_path(&mkey, ".manifest").exists());
        assert!(store.verify().expect("verify").is_ok());
        assert_eq!(store.list().expect("list").len(), 1);
        assert!(store.info(&kept).is_ok());
        assert_eq!(store.remove_orphans().expect("again"), Vec::<String>::new());
    }

    #[test]
    fn remove_deletes_blob_and_index_and_leaves_trees_to_the_caller() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let keep = testutil::import(&store, &simple("example.com/other", "1", "f", b"y"));
        let tree = store.render(&id).expect("render");
        let other_tree = store.render(&keep).expect("render");
        store.remove(&id).expect("remove");
        assert!(matches!(store.info(&id), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove(&id), Err(StoreError::NotFound(_))));
        assert!(tree.rootfs.join("f").exists(), "a pod may still use it");
        assert!(
            store.verify().expect("verify").is_ok(),
            "a tree whose image is gone is not damage"
        );
        store.remove_tree(&tree.tree_id).expect("remove tree");
        store
            .remove_tree(&tree.tree_id)
            .expect("removing it twice is fine");
        assert!(!tree.rootfs.exists());
        assert!(other_tree.rootfs.join("f").exists());
        let left: Vec<_> = residue(&store)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&id.as_str()[7..40]) || p.starts_with("tmp/"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(store.list().expect("list").len(), 1);
        let trees = store.trees().expect("trees");
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].images, vec![keep]);
        assert_eq!(trees[0].size, 1, "the one-byte file");
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn verify_finds_a_damaged_blob() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        store.render(&id).expect("render");
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.images_checked, report.trees_checked), (1, 1));
        let blob = store.blob_path(layout::key(&id).expect("key"));
        let mut bytes = std::fs::read(&blob).expect("read");
        bytes[700] ^= 1;
        std::fs::write(&blob, bytes).expect("write");
        let report = store.verify().expect("verify");
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(report.problems[0].contains("hashes to"), "{report:?}");
    }

    #[test]
    fn verify_finds_a_changed_tree_and_can_be_limited_to_some_images() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let other = testutil::import(&store, &simple("example.com/other", "1", "f", b"y"));
        let tree = store.render(&id).expect("render");
        store.render(&other).expect("render");
        std::fs::write(tree.rootfs.join("planted"), b"").expect("plant");
        let report = store.verify().expect("verify");
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(report.problems[0].contains("content changed"), "{report:?}");
        assert!(report.problems[0].contains(&tree.tree_id), "{report:?}");
        let only_other = store.verify_images(std::slice::from_ref(&other)).expect("verify");
        assert!(only_other.is_ok(), "{only_other:?}");
        assert_eq!((only_other.images_checked, only_other.trees_checked), (1, 1));
        assert!(!store.verify_images(&[id]).expect("verify").is_ok());
    }

    /// An image imported for a run, its blob then stamped as stored unsynced in an
    /// earlier boot: what a machine that crashed and rebooted finds.
    fn stored_unsynced_before_a_reboot(store: &Store) -> Option<(ImageId, std::path::PathBuf)> {
        let aci = simple("example.com/app", "1", "bin/app", &[3u8; 100_000]);
        let id = store
            .rendering_on_import()
            .import(&mut &aci[..], "t")
            .expect("import");
        let key = layout::key(&id).expect("key").to_string();
        index::unsynced_boot(store, &key).expect("stamp")?;
        {
            let _lock = store.lock_store().expect("lock");
            index::mark_unsynced(store, &key, "an-earlier-boot").expect("restamp");
        }
        // Its tree (also unsynced) counts as unrendered then; drop it outright.
        for tree in store.trees().expect("trees") {
            store.remove_tree(&tree.tree_id).expect("rm tree");
        }
        Some((id, store.blob_path(&key)))
    }

    #[test]
    fn an_import_for_a_run_stores_the_blob_unsynced_and_a_plain_import_syncs_it() {
        let (_dir, store) = testutil::store();
        let aci = simple("example.com/app", "1", "f", b"x");
        let run = store
            .rendering_on_import()
            .import(&mut &aci[..], "t")
            .expect("import");
        let key = layout::key(&run).expect("key").to_string();
        assert_eq!(
            index::unsynced_boot(&store, &key).expect("stamp"),
            super::super::boot::current(),
            "stamped with this boot (synced only with no boot ID)"
        );
        // In the same boot, the blob is used as it is: nothing is read back.
        BLOBS_REHASHED.with(|n| n.set(0));
        for tree in store.trees().expect("trees") {
            store.remove_tree(&tree.tree_id).expect("rm tree");
        }
        store.render(&run).expect("render");
        let mut out = Vec::new();
        store.export(&run, &mut out).expect("export");
        assert_eq!(out, aci);
        assert_eq!(
            BLOBS_REHASHED.with(|n| n.get()),
            0,
            "re-hashed in the boot that wrote it"
        );

        let (_dir, plain_store) = testutil::store();
        let plain = testutil::import(&plain_store, &aci);
        let key = layout::key(&plain).expect("key").to_string();
        assert_eq!(index::unsynced_boot(&plain_store, &key).expect("stamp"), None);
    }

    #[test]
    fn an_unsynced_blob_from_an_earlier_boot_is_hashed_once_then_trusted() {
        let (_dir, store) = testutil::store();
        let Some((id, _blob)) = stored_unsynced_before_a_reboot(&store) else {
            eprintln!(
                "an_unsynced_blob_from_an_earlier_boot_is_hashed_once_then_trusted: skipped: no boot ID"
            );
            return;
        };
        BLOBS_REHASHED.with(|n| n.set(0));
        let tree = store.render(&id).expect("render");
        assert_eq!(
            std::fs::read(tree.rootfs.join("bin/app")).expect("read"),
            vec![3u8; 100_000]
        );
        assert_eq!(BLOBS_REHASHED.with(|n| n.get()), 1);
        let key = layout::key(&id).expect("key");
        assert_eq!(
            index::unsynced_boot(&store, key).expect("stamp"),
            None,
            "synced now"
        );
        store.remove_tree(&tree.tree_id).expect("rm tree");
        store.render(&id).expect("render again");
        assert_eq!(BLOBS_REHASHED.with(|n| n.get()), 1, "checked once only");
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn an_unsynced_blob_damaged_by_a_crash_removes_its_image_and_a_fetch_brings_it_back() {
        let (_dir, store) = testutil::store();
        let Some((id, blob)) = stored_unsynced_before_a_reboot(&store) else {
            eprintln!(
                "an_unsynced_blob_damaged_by_a_crash_removes_its_image_and_a_fetch_brings_it_back: skipped: no boot ID"
            );
            return;
        };
        // What ext4 leaves of a renamed, never-synced file after a power cut.
        std::fs::File::options()
            .write(true)
            .open(&blob)
            .and_then(|f| f.set_len(0))
            .expect("truncate");
        let err = store.render(&id).expect_err("damaged");
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        assert!(!blob.exists(), "the damaged blob is gone");
        assert!(matches!(store.info(&id), Err(StoreError::NotFound(_))));
        assert_eq!(residue(&store), Vec::<std::path::PathBuf>::new());
        let mut out = Vec::new();
        assert!(matches!(
            store.export(&id, &mut out),
            Err(StoreError::NotFound(_))
        ));

        let aci = simple("example.com/app", "1", "bin/app", &[3u8; 100_000]);
        assert_eq!(
            store
                .rendering_on_import()
                .import(&mut &aci[..], "t")
                .expect("refetch"),
            id
        );
        store.render(&id).expect("render");
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn a_fresh_import_replaces_an_unsynced_blob_from_an_earlier_boot() {
        let (_dir, store) = testutil::store();
        let Some((id, blob)) = stored_unsynced_before_a_reboot(&store) else {
            eprintln!("a_fresh_import_replaces_an_unsynced_blob_from_an_earlier_boot: skipped: no boot ID");
            return;
        };
        std::fs::write(&blob, b"lost in a crash").expect("damage");
        // A plain (synced) import: the blob is replaced and the stamp dropped.
        let aci = simple("example.com/app", "1", "bin/app", &[3u8; 100_000]);
        assert_eq!(testutil::import(&store, &aci), id);
        let key = layout::key(&id).expect("key");
        assert_eq!(index::unsynced_boot(&store, key).expect("stamp"), None);
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn a_stamp_left_by_a_crash_before_its_blob_was_renamed_is_an_orphan() {
        let (_dir, store) = testutil::store();
        let id = testutil::import(&store, &simple("example.com/app", "1", "f", b"x"));
        let key = layout::key(&id).expect("key").to_string();
        let mut other = key.clone();
        other.replace_range(70..71, if &other[70..71] == "0" { "1" } else { "0" });
        {
            let _lock = store.lock_store().expect("lock");
            index::mark_unsynced(&store, &other, "a-boot").expect("stamp");
        }
        assert_eq!(store.remove_orphans().expect("orphans"), vec![other.clone()]);
        assert!(!store.index_path(&other, ".unsynced").exists());
        assert!(store.info(&id).is_ok());
    }
}
