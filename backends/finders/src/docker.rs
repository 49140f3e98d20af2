//! `docker://[REGISTRY/]REPO[:TAG|@sha256:...]`: the Docker Registry v2 / OCI
//! distribution protocol. Token (Bearer) and Basic auth with credentials from
//! `$local-config/auth.d` (rkt's `dockerAuth` files); manifest lists and OCI indexes
//! resolved to this machine's platform; each layer fetched only when the store does
//! not hold its digest yet; the image config turned into the ACI's app.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::SystemTime;

use async_trait::async_trait;
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{
    BackendError, ConfigDirs, FetchPolicy, ImageFinder, ImageRef, PullPolicy, Registration,
};
use rkt_engine::store::{RemoteRecord, Store};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use ureq::http::StatusCode;

use crate::oci::{self, Descriptor, ImageConfig};
use crate::progress::Progress;
use crate::transport::{self, Transport, header};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerFinder {}

inventory::submit! {
    Registration::<dyn ImageFinder> {
        name: "docker",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<DockerFinder>(config)?)),
    }
}

const DEFAULT_REGISTRY: &str = "registry-1.docker.io";

/// A parsed `docker://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    pub registry: String,
    pub repository: String,
    /// A tag, or a `sha256:` digest.
    pub reference: String,
}

impl DockerRef {
    pub fn parse(url: &str) -> Result<DockerRef, String> {
        let rest = url
            .strip_prefix("docker://")
            .ok_or_else(|| format!("{url:?} is not a docker:// reference"))?;
        let (first, path) = match rest.split_once('/') {
            // The first component is a registry when it looks like a host.
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), rest.to_string()),
        };
        let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
            (repo.to_string(), digest.to_string())
        } else {
            let last_slash = path.rfind('/').map_or(0, |i| i + 1);
            match path[last_slash..].rfind(':') {
                Some(i) => (
                    path[..last_slash + i].to_string(),
                    path[last_slash + i + 1..].to_string(),
                ),
                None => (path.clone(), "latest".to_string()),
            }
        };
        let repository = if first == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|p| {
                    !p.is_empty()
                        && p != ".."
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                        })
                })
        };
        if !valid(&repository) {
            return Err(format!("{url:?}: {repository:?} is not a repository name"));
        }
        let reference_ok = if let Some(hex) = reference.strip_prefix("sha256:") {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            !reference.is_empty()
                && reference.len() <= 128
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !reference_ok {
            return Err(format!("{url:?}: {reference:?} is not a tag or sha256 digest"));
        }
        Ok(DockerRef {
            registry: first,
            repository,
            reference,
        })
    }

    /// The ACI name docker2aci gives: registry/repository (`:` of a port becomes `-`).
    fn aci_name(&self) -> String {
        format!("{}/{}", self.registry.replace(':', "-"), self.repository)
    }
}

/// rkt's `auth.d/*.json` for registries.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerAuth {
    rkt_kind: String,
    #[serde(default)]
    registries: Vec<String>,
    credentials: Credentials,
}

#[derive(Debug, Clone, Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

/// Credentials for `registry` from the local, then the system config's auth.d.
fn credentials(dirs: &ConfigDirs, registry: &str) -> Option<Credentials> {
    for config in [&dirs.local, &dirs.system] {
        let Ok(listing) = std::fs::read_dir(config.join("auth.d")) else {
            continue;
        };
        let mut paths: Vec<_> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DockerAuth>(&b).ok());
            match parsed {
                Some(auth)
                    if auth.rkt_kind == "dockerAuth" && auth.registries.iter().any(|r| r == registry) =>
                {
                    return Some(auth.credentials);
                }
                Some(_) => {}
                None => tracing::warn!(path = %path.display(), "skipping unreadable auth file"),
            }
        }
    }
    None
}

fn basic(creds: &Credentials) -> String {
    format!(
        "Basic {}",
        base64(format!("{}:{}", creds.user, creds.password).as_bytes())
    )
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Bearer realm="...",service="...",scope="..."` -> its parameters.
fn challenge(value: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, a)) => (v.to_string(), a),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, a)) => (v.trim().to_string(), a),
                None => (after.trim().to_string(), ""),
            }
        };
        params.insert(key, value);
        rest = after.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// One registry session: base URL, and the Authorization header once we have one.
struct Registry<'a> {
    transport: &'a Transport,
    base: String,
    image: &'a DockerRef,
    creds: Option<Credentials>,
    auth: Option<String>,
}

impl Registry<'_> {
    /// GET `path` under /v2/, authenticating once when the registry asks.
    fn get(&mut self, path: &str, accept: &str) -> Result<ureq::http::Response<ureq::Body>, BackendError> {
        let url = format!("{}/v2/{path}", self.base);
        let mut retried = false;
        loop {
            let mut headers = vec![("Accept", accept)];
            if let Some(auth) = self.auth.as_deref() {
                headers.push(("Authorization", auth));
            }
            let response = self.transport.get(&url, &headers)?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                if response.status() == StatusCode::UNAUTHORIZED {
                    return Err(BackendError::Unauthorized(format!(
                        "{}: the registry refused our credentials (401){}",
                        self.image_shown(),
                        if self.creds.is_none() {
                            "; add them to auth.d"
                        } else {
                            ""
                        }
                    )));
                }
                return Ok(response);
            }
            retried = true;
            let value = header(&response, "www-authenticate")
                .unwrap_or_default()
                .to_string();
            self.authenticate(&value)?;
        }
    }

    fn image_shown(&self) -> String {
        format!(
            "docker://{}/{}:{}",
            self.image.registry, self.image.repository, self.image.reference
        )
    }

    fn authenticate(&mut self, challenge_value: &str) -> Result<(), BackendError> {
        let (scheme, params) = challenge(challenge_value);
        match scheme.as_str() {
            "basic" => match &self.creds {
                Some(creds) => {
                    self.auth = Some(basic(creds));
                    Ok(())
                }
                None => Err(BackendError::Unauthorized(format!(
                    "{}: the registry needs credentials (401); add them to auth.d",
                    self.image_shown()
                ))),
            },
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    BackendError::Other(format!(
                        "{}: a Bearer challenge without realm",
                        self.image_shown()
                    ))
                })?;
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                for key in ["service", "scope"] {
                    if let Some(value) = params.get(key) {
                        url.push(sep);
                        url.push_str(&format!("{key}={}", encode(value)));
                        sep = '&';
                    }
                }
                if !params.contains_key("scope") {
                    url.push(sep);
                    url.push_str(&format!(
                        "scope={}",
                        encode(&format!("repository:{}:pull", self.image.repository))
                    ));
                }
                let auth = self.creds.as_ref().map(basic);
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
                let body = self.transport.get_small(&url, &headers)?;
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let token: Token = serde_json::from_slice(&body)
                    .map_err(|e| BackendError::Other(format!("{url}: not a token answer: {e}")))?;
                let token = token
                    .token
                    .or(token.access_token)
                    .ok_or_else(|| BackendError::Other(format!("{url}: the token answer has no token")))?;
                self.auth = Some(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(BackendError::Other(format!(
                "{}: the registry needs authentication this client does not speak ({challenge_value:?})",
                self.image_shown()
            ))),
        }
    }

    /// The manifest for `reference`, its media type and digest.
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String, String), BackendError> {
        let path = format!("{}/manifests/{reference}", self.image.repository);
        let response = self.get(&path, oci::MANIFEST_ACCEPT)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(BackendError::NotFound(format!(
                "{}: no such image in the registry (404)",
                self.image_shown()
            )));
        }
        transport::expect_ok(&format!("{}/v2/{path}", self.base), &response)?;
        let media_type = header(&response, "content-type").unwrap_or_default().to_string();
        let bytes = transport::read_small(&path, response)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(BackendError::Other(format!(
                "{}: the manifest's digest is {digest}, not {reference}",
                self.image_shown()
            )));
        }
        Ok((bytes, media_type, digest))
    }

    fn blob(&mut self, digest: &str) -> Result<(Box<dyn Read + Send>, Option<u64>), BackendError> {
        let path = format!("{}/blobs/{digest}", self.image.repository);
        let response = self.get(&path, "*/*")?;
        transport::expect_ok(&format!("{}/v2/{path}", self.base), &response)?;
        let length = header(&response, "content-length").and_then(|n| n.parse().ok());
        Ok((Box::new(response.into_body().into_reader()), length))
    }
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fetches the image: manifest (through a list when there is one), config, the
/// layers not stored yet, then renders it into the store.
fn fetch(
    store: &Store,
    transport: &Transport,
    url: &str,
    image: &DockerRef,
    policy: &FetchPolicy,
    previous: Option<RemoteRecord>,
) -> Result<ImageId, BackendError> {
    let creds = match &policy.registry_credentials {
        Some(given) => Some(Credentials {
            user: given.user.clone(),
            password: given.password.clone(),
        }),
        None => credentials(&policy.config, &image.registry),
    };
    let base = registry_base(transport, &image.registry, policy.insecure.http)?;
    let mut registry = Registry {
        transport,
        base,
        image,
        creds,
        auth: None,
    };
    let manifest = registry.manifest(&image.reference)?;
    fetch_from(store, &mut registry, url, image, manifest, previous)
}

/// The registry's base URL: https when it answers there (any status: `/v2/` may
/// well want authentication), else plain http when the user allowed it — as the
/// docker client does, by pinging `/v2/`.
fn registry_base(transport: &Transport, host: &str, http_allowed: bool) -> Result<String, BackendError> {
    let https = format!("https://{host}");
    let refused = match transport.get(&format!("{https}/v2/"), &[]) {
        Ok(_) => return Ok(https),
        Err(e) => e,
    };
    if !http_allowed {
        return Err(refused);
    }
    let http = format!("http://{host}");
    transport.get(&format!("{http}/v2/"), &[])?;
    Ok(http)
}

fn fetch_from(
    store: &Store,
    registry: &mut Registry<'_>,
    url: &str,
    image: &DockerRef,
    (mut bytes, media_type, mut digest): (Vec<u8>, String, String),
    previous: Option<RemoteRecord>,
) -> Result<ImageId, BackendError> {
    if oci::is_index(&bytes, &media_type) {
        let chosen = oci::pick_platform(&bytes).map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        (bytes, _, digest) = registry.manifest(&chosen)?;
    }
    if let Some(previous) = previous
        && previous.etag.as_deref() == Some(digest.as_str())
    {
        tracing::debug!(url, digest, "manifest unchanged");
        return Ok(previous.id);
    }
    let manifest = oci::parse_manifest(&bytes).map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
    let (config, _) = registry.blob(&manifest.config.digest)?;
    let config = read_verified(config, &manifest.config)?;
    let config: ImageConfig = serde_json::from_slice(&config)
        .map_err(|e| BackendError::Other(format!("{url}: image config: {e}")))?;
    let mut digests = Vec::new();
    for layer in &manifest.layers {
        let stored = store
            .layer(&layer.digest)
            .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        if stored.is_none() {
            let (blob, length) = registry.blob(&layer.digest)?;
            let mut blob = Progress::new(blob, &layer.digest, length.or(Some(layer.size)));
            store
                .put_layer(&layer.digest, &mut blob)
                .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        }
        digests.push(layer.digest.clone());
    }
    let tag = (!image.reference.starts_with("sha256:")).then_some(image.reference.as_str());
    let aci = oci::aci_manifest(&image.aci_name(), tag, &config)
        .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
    let id = store
        .import_layers(&aci, &digests, url)
        .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
    store
        .set_remote(&RemoteRecord {
            url: url.to_string(),
            id: id.clone(),
            etag: Some(digest),
            max_age: None,
            checked_at: SystemTime::now(),
        })
        .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
    Ok(id)
}

/// Reads a small blob (a config) and checks its digest.
fn read_verified(mut blob: Box<dyn Read + Send>, descriptor: &Descriptor) -> Result<Vec<u8>, BackendError> {
    let mut bytes = Vec::new();
    blob.by_ref()
        .take(transport::SMALL_BODY_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::Other(format!("blob {}: {e}", descriptor.digest)))?;
    oci::check_digest(&bytes, &descriptor.digest).map_err(BackendError::Other)?;
    Ok(bytes)
}

#[async_trait]
impl ImageFinder for DockerFinder {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn handles(&self, reference: &ImageRef) -> bool {
        matches!(reference, ImageRef::Url(url) if url.starts_with("docker://"))
    }

    /// Blocking I/O on the calling thread (see `transport`).
    fn needs_runtime(&self) -> bool {
        false
    }

    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError> {
        let ImageRef::Url(url) = reference else {
            return Err(BackendError::Other(format!(
                "{reference} is not a docker:// reference"
            )));
        };
        let image = DockerRef::parse(url).map_err(BackendError::Other)?;
        if !policy.insecure.image {
            return Err(BackendError::Other(format!(
                "{url}: docker images carry no signature rkt can verify; pass --insecure-options=image to fetch it"
            )));
        }
        let previous = store
            .remote(url)
            .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        if let Some(record) = crate::aci::cached(store, url, url, policy)? {
            return Ok(record.id);
        }
        let previous = match policy.pull {
            PullPolicy::Update => previous,
            _ => None,
        };
        let transport = Transport::new(&policy.insecure);
        fetch(store, &transport, url, &image, policy, previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker() {
        let r = DockerRef::parse("docker://busybox").expect("parse");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            (DEFAULT_REGISTRY, "library/busybox", "latest")
        );
        let r = DockerRef::parse("docker://127.0.0.1:5000/team/app:v1").expect("parse");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/app", "v1")
        );
        assert_eq!(r.aci_name(), "127.0.0.1-5000/team/app");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = DockerRef::parse(&format!("docker://quay.io/app@{digest}")).expect("parse");
        assert_eq!(r.reference, digest);
        assert!(DockerRef::parse("docker://quay.io/App:v1").is_err());
        assert!(DockerRef::parse("docker://quay.io/app@sha256:abc").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let (scheme, params) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["scope"], "repository:a:pull");
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"user:pw"), "dXNlcjpwdw==");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
