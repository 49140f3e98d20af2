//! Downloading one ACI (and its detached signature) into the store: the part the
//! http(s) and discovery sources share.
//!
//! Unverified (`--insecure-options=image`), the body is streamed straight into the
//! store's import, which hashes it as it goes. Verified, it is first streamed into a
//! temp file under the store (the image's name, read from its manifest, decides
//! which keys may sign it), checked against the signature, and only then imported:
//! an image that fails verification never enters the store.

use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::time::SystemTime;

use rkt_engine::schema::ImageId;
use rkt_engine::stage::{BackendError, FetchPolicy, PullPolicy};
use rkt_engine::store::{RemoteRecord, Store, read_manifest};
use ureq::http::StatusCode;

use crate::keystore::{self, Keystore};
use crate::progress::Progress;
use crate::transport::{self, Transport, header};

/// Where an image and its signature are.
pub struct AciLocation {
    pub image: String,
    pub signature: String,
}

impl AciLocation {
    /// rkt's convention: the signature sits beside the image, `.asc` appended.
    pub fn beside(url: &str) -> Self {
        AciLocation {
            image: url.to_string(),
            signature: format!("{url}.asc"),
        }
    }
}

/// What the store already knows about `key` (a URL, or a discovered name shown to the
/// user as `shown`), when the pull policy allows using it without asking the server.
pub fn cached(
    store: &Store,
    key: &str,
    shown: &str,
    policy: &FetchPolicy,
) -> Result<Option<RemoteRecord>, BackendError> {
    let record = store
        .remote(key)
        .map_err(|e| BackendError::Other(format!("{shown}: {e}")))?;
    match policy.pull {
        PullPolicy::Never => match record {
            Some(record) => Ok(Some(record)),
            None => Err(BackendError::Other(format!(
                "image {shown} is not in the store, and the pull policy forbids fetching it"
            ))),
        },
        PullPolicy::New => Ok(record),
        PullPolicy::Update => Ok(record.filter(|r| r.is_fresh(SystemTime::now()))),
    }
}

/// Fetches the image at `location` (conditionally, when `previous` has an ETag),
/// verifies it unless the policy says not to, imports it, and records the answer
/// under `key`.
pub fn fetch(
    store: &Store,
    transport: &Transport,
    key: &str,
    location: &AciLocation,
    previous: Option<RemoteRecord>,
    policy: &FetchPolicy,
) -> Result<ImageId, BackendError> {
    let url = location.image.as_str();
    // The signature first: it is small, an unsigned image fails before its body is
    // opened, and servers that take one connection at a time are served in turn.
    let signature = if policy.insecure.image {
        None
    } else {
        let response = transport.get(&location.signature, &[])?;
        if response.status() != StatusCode::OK {
            return Err(BackendError::Other(format!(
                "image {url} has no signature (GET {} answered {}); pass --insecure-options=image to fetch it unverified",
                location.signature,
                response.status().as_u16()
            )));
        }
        Some(transport::read_small(&location.signature, response)?)
    };

    let etag = previous.as_ref().and_then(|p| p.etag.clone());
    let mut headers = Vec::new();
    if let Some(etag) = etag.as_deref() {
        headers.push(("If-None-Match", etag));
    }
    let response = transport.get(url, &headers)?;
    let max_age = transport::max_age(header(&response, "cache-control"));
    if response.status() == StatusCode::NOT_MODIFIED
        && let Some(previous) = previous
    {
        tracing::debug!(url, "not modified");
        let record = RemoteRecord {
            max_age,
            checked_at: SystemTime::now(),
            ..previous
        };
        store
            .set_remote(&record)
            .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        return Ok(record.id);
    }
    transport::expect_ok(url, &response)?;
    let etag = header(&response, "etag").map(str::to_string);
    let length = header(&response, "content-length").and_then(|n| n.parse().ok());

    let body = Interrupted {
        inner: Progress::new(response.into_body().into_reader(), url, length),
        url,
    };
    let id = match signature {
        None => import(store, &mut { body }, url)?,
        Some(signature) => import_verified(store, body, url, &signature, policy)?,
    };
    store
        .set_remote(&RemoteRecord {
            url: key.to_string(),
            id: id.clone(),
            etag,
            max_age,
            checked_at: SystemTime::now(),
        })
        .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
    Ok(id)
}

/// Records that `key` (a discovered name) yielded `id`, so `--pull-policy=new` finds
/// it again without discovery. No max-age: `update` always rediscovers.
pub fn remember(store: &Store, key: &str, id: &ImageId) -> Result<(), BackendError> {
    store
        .set_remote(&RemoteRecord {
            url: key.to_string(),
            id: id.clone(),
            etag: None,
            max_age: None,
            checked_at: SystemTime::now(),
        })
        .map_err(|e| BackendError::Other(format!("{key}: {e}")))
}

fn import(store: &Store, archive: &mut dyn Read, origin: &str) -> Result<ImageId, BackendError> {
    store
        .import(archive, origin)
        .map_err(|e| BackendError::Other(format!("{origin}: {e}")))
}

fn import_verified(
    store: &Store,
    mut body: impl Read,
    url: &str,
    signature: &[u8],
    policy: &FetchPolicy,
) -> Result<ImageId, BackendError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| BackendError::Other(format!("{url}: {what}: {e}"));
    let dir = store.download_dir().map_err(|e| fail("download", &e))?;
    // Deleted when dropped: a failed or refused download leaves nothing behind. The
    // pid in the name (`<what>-<pid>-<suffix>`, the store's convention for temps)
    // lets a store sweep remove it if this process is killed.
    let mut download = tempfile::Builder::new()
        .prefix(&format!(".download-{}-", std::process::id()))
        .tempfile_in(&dir)
        .map_err(|e| fail("create temp file", &e))?;
    // The signature is checked as the bytes arrive (one pass over the network
    // stream, teed into the temp file) with whichever trusted key made it; whether
    // that key may sign this image depends on the name in its manifest, known
    // only afterwards.
    let keystore = Keystore::new(&policy.config);
    let unverified =
        |e: &dyn std::fmt::Display| BackendError::Other(format!("image {url} cannot be verified: {e}"));
    let keys = keystore.all_keys().map_err(|e| unverified(&e))?;
    if keys.is_empty() {
        return Err(unverified(
            &"no keys are trusted at all (add one with `rkt trust --prefix=NAME KEY`)",
        ));
    }
    let fingerprint = {
        let mut tee = Tee {
            inner: &mut body,
            out: std::io::BufWriter::with_capacity(256 << 10, download.as_file_mut()),
            error: None,
        };
        let verdict = keystore::verify_with(&keys, None, &mut tee, signature);
        if let Some(e) = tee.error.take() {
            return Err(fail("write download", &e));
        }
        // The verifier reads to the end; make sure nothing is left unread either way.
        std::io::copy(&mut tee, &mut std::io::sink()).map_err(|e| fail("download", &e))?;
        tee.out.flush().map_err(|e| fail("write download", &e))?;
        verdict.map_err(|e| unverified(&e))?
    };
    let file = download.as_file_mut();
    file.seek(SeekFrom::Start(0)).map_err(|e| fail("rewind", &e))?;
    let manifest = read_manifest(&mut BufReader::new(&mut *file)).map_err(|e| fail("image", &e))?;
    let name = manifest.name.as_str();
    if !keystore.trusts(name, &fingerprint).map_err(|e| unverified(&e))? {
        return Err(BackendError::Other(format!(
            "image {url} ({name}) cannot be verified: signed by key {fingerprint}, which is not trusted for {name:?}"
        )));
    }
    tracing::debug!(url, name, fingerprint, "signature verified");
    file.seek(SeekFrom::Start(0)).map_err(|e| fail("rewind", &e))?;
    import(store, &mut BufReader::with_capacity(256 << 10, file), url)
}

/// Copies what is read into `out`; a write error is kept (and reading stops).
struct Tee<R, W> {
    inner: R,
    out: W,
    error: Option<std::io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.error = Some(e);
            return Err(std::io::Error::new(kind, "cannot write the download"));
        }
        Ok(n)
    }
}

/// Names the URL when the connection breaks mid-body (truncated download).
struct Interrupted<'a, R> {
    inner: R,
    url: &'a str,
}

impl<R: Read> Read for Interrupted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("download of {} broke off: {e}", self.url)))
    }
}
