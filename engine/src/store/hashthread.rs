//! A SHA-512 whose compression runs on its own thread while the caller goes on
//! reading and writing: imports and tree digests hash every byte they touch.

use std::io;

use sha2::{Digest, Sha512};

/// SHA-512 computed on a helper thread, fed in 1 MiB batches. Hashing a large
/// image costs about as much CPU as decompressing, parsing and writing it (the
/// 200 MB image of benches/ spent 30% of its first run in `sha512_compress`);
/// this way the two overlap instead of adding up. Hashes inline when no thread
/// can be started.
pub(super) struct ThreadedSha512 {
    batch: Vec<u8>,
    worker: Option<HashWorker>,
    inline: Sha512,
}

struct HashWorker {
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Sha512>,
}

const HASH_BATCH: usize = 1 << 20;

impl ThreadedSha512 {
    pub(super) fn new() -> Self {
        let (full, to_hash) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (give_back, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("import-sha512".into())
            .spawn(move || {
                let mut hasher = Sha512::new();
                for mut batch in to_hash {
                    hasher.update(&batch);
                    batch.clear();
                    // The importer may be gone already; the buffer is then freed here.
                    let _ = give_back.send(batch);
                }
                hasher
            })
            .ok()
            .map(|thread| HashWorker { full, empty, thread });
        Self {
            batch: Vec::new(),
            worker,
            inline: Sha512::new(),
        }
    }

    pub(super) fn update(&mut self, bytes: impl AsRef<[u8]>) {
        let mut bytes = bytes.as_ref();
        if self.worker.is_none() {
            self.inline.update(bytes);
            return;
        }
        while !bytes.is_empty() {
            if self.batch.capacity() == 0 {
                let recycled = self.worker.as_ref().and_then(|w| w.empty.try_recv().ok());
                self.batch = recycled.unwrap_or_else(|| Vec::with_capacity(HASH_BATCH));
            }
            let take = bytes.len().min(HASH_BATCH - self.batch.len());
            self.batch.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.batch.len() == HASH_BATCH {
                self.send_batch();
            }
        }
    }

    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Some(worker) = &self.worker {
            // Fails only if the worker panicked; `finish` re-raises that panic,
            // so a digest missing this batch is never returned.
            let _ = worker.full.send(batch);
        }
    }

    pub(super) fn finish(mut self) -> sha2::digest::Output<Sha512> {
        self.send_batch();
        match self.worker.take() {
            Some(HashWorker { full, thread, .. }) => {
                drop(full);
                match thread.join() {
                    Ok(hasher) => hasher.finalize(),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            None => self.inline.finalize(),
        }
    }
}

impl io::Write for ThreadedSha512 {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_inline_for_any_split() {
        let data: Vec<u8> = (0..3 * HASH_BATCH + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let want = Sha512::digest(&data);
        for piece in [1, 511, HASH_BATCH - 1, HASH_BATCH, 2 * HASH_BATCH + 3] {
            let mut threaded = ThreadedSha512::new();
            for chunk in data.chunks(piece) {
                threaded.update(chunk);
            }
            assert_eq!(threaded.finish(), want, "pieces of {piece}");
        }
        assert_eq!(ThreadedSha512::new().finish(), Sha512::digest(b""), "empty");
    }
}
