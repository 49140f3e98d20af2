//! The CRI ImageService over rkt's image store: the images `rkt fetch` and
//! `rkt image list/rm` see, pulled through the same image finders.
//!
//! Kubernetes names images the way docker does (`busybox`,
//! `docker.io/library/busybox:1.36`, `127.0.0.1:5000/app:v1`,
//! `app@sha256:...`); [`Reference`] turns such a name into its canonical form
//! and into the `docker://` URL our docker finder fetches. An image's ID (the
//! `image_ref` PullImage returns and `Image.id`) is its rkt image ID.
//!
//! Tags and digests are not kept anywhere new: they come from what the store
//! already knows. An image fetched from a registry records its origin URL,
//! and the store's remote record for that URL holds the manifest digest it
//! yielded; a tag whose URL now yields another image has moved, and only the
//! newer image carries it.
//!
//! Plain-http registries are used only when the operator allows them
//! (`rkt cri-service --insecure-registry=HOST:PORT`, or `--insecure-options=http`
//! for every registry); credentials from the CRI's AuthConfig win over
//! `auth.d`.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use rkt_engine::image_gc::{self, ImageGcError};
use rkt_engine::runner::{RunnerError, Runtime};
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{
    BackendError, ConfigDirs, FetchPolicy, InsecureOptions, PullPolicy, RegistryCredentials,
};
use rkt_engine::store::{ImageInfo, Store, StoreError};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::runtime_v1::image_service_client::ImageServiceClient;
use crate::runtime_v1::image_service_server::{ImageService, ImageServiceServer};
use crate::runtime_v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest, ListImagesResponse,
    PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse, UInt64Value,
};

/// Docker Hub, as image names spell it.
const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Runner(#[from] RunnerError),
    #[error("{0}")]
    Gc(#[from] ImageGcError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        match e {
            ImageError::Invalid(m) => Status::invalid_argument(m),
            ImageError::NotFound(m) => Status::not_found(m),
            ImageError::Unsupported(m) => Status::unimplemented(m),
            ImageError::Unreachable(m) => Status::unavailable(m),
            ImageError::Runner(RunnerError::Backend(BackendError::NotFound(m))) => Status::not_found(m),
            ImageError::Runner(RunnerError::Backend(BackendError::Unauthorized(m))) => {
                Status::unauthenticated(m)
            }
            ImageError::Runner(RunnerError::Invalid(m)) => Status::invalid_argument(m),
            ImageError::Store(StoreError::Ambiguous { .. }) => Status::invalid_argument(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

/// How the image service fetches.
#[derive(Debug, Clone, Default)]
pub struct ImageServiceConfig {
    /// Registries (`HOST[:PORT]`) that may be reached over plain http or
    /// unverified TLS.
    pub insecure_registries: Vec<String>,
    /// rkt's global `--insecure-options`: `http` and `tls` there apply to
    /// every registry.
    pub insecure: InsecureOptions,
    /// Where `auth.d` lives.
    pub config_dirs: ConfigDirs,
}

/// A docker-style image name, parsed and normalised as the docker client does:
/// Docker Hub when no registry is named, `library/` for its official images,
/// `latest` when neither tag nor digest is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io` for Docker Hub.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:` and 64 hex digits.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, String> {
        let name = input.strip_prefix("docker://").unwrap_or(input);
        let bad = |why: &str| format!("image {input:?}: {why}");
        if name.is_empty() {
            return Err(bad("empty image name"));
        }
        let (name, digest) = match name.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_string())),
            None => (name, None),
        };
        if let Some(digest) = &digest {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("only sha256 digests are supported"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad("a digest is \"sha256:\" and 64 lowercase hex digits"));
            }
        }
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        if let Some(tag) = &tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(bad("a tag is 1 to 128 letters, digits, '.', '_' or '-'"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        // HOST[:PORT]; a bracketed IPv6 address keeps its colons.
        let (host, port) = match registry.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (registry.as_str(), None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("not a registry HOST[:PORT]"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "a repository is lowercase letters, digits, '.', '_' and '-' between slashes",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `REGISTRY/REPOSITORY:TAG`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}/{}:{tag}", self.registry, self.repository))
    }

    /// `REGISTRY/REPOSITORY@DIGEST`, when there is a digest.
    pub fn digested(&self) -> Option<String> {
        self.digest.as_ref().map(|digest| self.with_digest(digest))
    }

    fn with_digest(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// The URL the docker finder fetches: by digest when there is one. Docker
    /// Hub is left unnamed, so the finder picks its API host.
    pub fn pull_url(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            self.repository.clone()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("docker://{name}@{digest}"),
            (None, Some(tag)) => format!("docker://{name}:{tag}"),
            (None, None) => format!("docker://{name}"),
        }
    }
}

/// Whether `image` names an OCI layout or archive on this machine, which the
/// OCI finder takes as it is.
fn is_oci(image: &str) -> bool {
    image.starts_with("oci:") || image.starts_with("oci-archive:")
}

/// An image in the store with the names the CRI knows it by.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub info: ImageInfo,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// Every image in the store with its tags and digests. A tag two images claim
/// (fetched under two spellings at different times) stays with the newer.
pub fn catalog(store: &Store) -> Result<Vec<CatalogEntry>, ImageError> {
    let mut entries = Vec::new();
    for info in store.list()? {
        let (repo_tags, repo_digests) = names_of(store, &info)?;
        entries.push(CatalogEntry {
            info,
            repo_tags,
            repo_digests,
        });
    }
    entries.sort_by(|a, b| {
        b.info
            .imported_at
            .cmp(&a.info.imported_at)
            .then_with(|| a.info.id.cmp(&b.info.id))
    });
    let mut claimed = HashSet::new();
    for entry in &mut entries {
        entry.repo_tags.retain(|tag| claimed.insert(tag.clone()));
    }
    Ok(entries)
}

/// The tags and digests an image's origin gives it.
fn names_of(store: &Store, info: &ImageInfo) -> Result<(Vec<String>, Vec<String>), ImageError> {
    if is_oci(&info.origin) {
        return Ok((vec![info.origin.clone()], Vec::new()));
    }
    if !info.origin.starts_with("docker://") {
        return Ok((Vec::new(), Vec::new()));
    }
    let Ok(reference) = Reference::parse(&info.origin) else {
        return Ok((Vec::new(), Vec::new()));
    };
    if let Some(digested) = reference.digested() {
        return Ok((Vec::new(), vec![digested]));
    }
    match store.remote(&info.origin)? {
        Some(record) if record.id == info.id => Ok((
            reference.tagged().into_iter().collect(),
            record
                .etag
                .iter()
                .filter(|etag| etag.starts_with("sha256:"))
                .map(|digest| reference.with_digest(digest))
                .collect(),
        )),
        // The tag has moved to another image since.
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// The store's image for a CRI image name: an image ID (or unambiguous ID
/// prefix), a docker-style reference matched against the tags and digests the
/// store knows, or an OCI location matched against the images' origins. None
/// when no image in the store has that name. CreateContainer resolves its
/// ImageSpec with this.
pub fn find_image(store: &Store, image: &str) -> Result<Option<ImageId>, ImageError> {
    if image.is_empty() {
        return Err(ImageError::Invalid(
            "no image named (ImageSpec.image is empty)".into(),
        ));
    }
    if image.starts_with("sha512-") {
        return match store.resolve(image) {
            Ok(id) => Ok(Some(id)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(StoreError::InvalidReference { reason, .. }) => {
                Err(ImageError::Invalid(format!("image {image:?}: {reason}")))
            }
            Err(e) => Err(e.into()),
        };
    }
    let entries = catalog(store)?;
    if is_oci(image) {
        return Ok(entries
            .into_iter()
            .find(|e| e.info.origin == image)
            .map(|e| e.info.id));
    }
    let reference = Reference::parse(image).map_err(ImageError::Invalid)?;
    let found = match (reference.digested(), reference.tagged()) {
        (Some(digested), _) => entries.into_iter().find(|e| e.repo_digests.contains(&digested)),
        (None, Some(tagged)) => entries.into_iter().find(|e| e.repo_tags.contains(&tagged)),
        (None, None) => None,
    };
    Ok(found.map(|e| e.info.id))
}

/// Credentials from an AuthConfig: username and password, or `auth`
/// (base64 of `user:password`). Tokens are refused rather than ignored.
fn credentials_of(auth: Option<AuthConfig>) -> Result<Option<RegistryCredentials>, ImageError> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Some(RegistryCredentials {
            user: auth.username,
            password: auth.password,
        }));
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ImageError::Invalid("AuthConfig.auth is not base64 of \"user:password\"".into())
            })?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            ImageError::Invalid("AuthConfig.auth is not base64 of \"user:password\"".into())
        })?;
        return Ok(Some(RegistryCredentials {
            user: user.to_string(),
            password: password.to_string(),
        }));
    }
    if !auth.identity_token.is_empty() || !auth.registry_token.is_empty() {
        return Err(ImageError::Unsupported(
            "AuthConfig identity_token and registry_token are not supported; give username and password"
                .into(),
        ));
    }
    Ok(None)
}

/// PullImage: fetches `image` through the image finders (asking the registry
/// whether a tag moved, downloading only layers the store lacks) and returns
/// its image ID.
pub fn pull(
    runtime: &Runtime,
    config: &ImageServiceConfig,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<ImageId, ImageError> {
    if image.is_empty() {
        return Err(ImageError::Invalid("PullImage: no image named".into()));
    }
    if image.starts_with("sha512-") {
        return find_image(&runtime.store, image)?.ok_or_else(|| {
            ImageError::NotFound(format!(
                "image {image} is not in the store, and an image ID cannot be pulled"
            ))
        });
    }
    let mut insecure = InsecureOptions {
        // Registry and OCI images carry no signature rkt could check.
        image: true,
        http: config.insecure.http,
        tls: config.insecure.tls,
        ..InsecureOptions::default()
    };
    let (url, registry) = if is_oci(image) {
        (image.to_string(), None)
    } else {
        let reference = Reference::parse(image).map_err(ImageError::Invalid)?;
        if config.insecure_registries.contains(&reference.registry) {
            insecure.http = true;
            insecure.tls = true;
        }
        (reference.pull_url(), Some(reference.registry))
    };
    let policy = FetchPolicy {
        pull: PullPolicy::Update,
        insecure,
        config: config.config_dirs.clone(),
        registry_credentials: credentials_of(auth)?,
        ..FetchPolicy::default()
    };
    match runtime.find_image(&url, &policy) {
        Ok(id) => {
            tracing::debug!(image, url, %id, "pulled");
            Ok(id)
        }
        // The registry did not speak https, and plain http was not allowed.
        Err(RunnerError::Backend(BackendError::Other(m)))
            if !policy.insecure.http
                && registry
                    .as_ref()
                    .is_some_and(|r| m.contains(&format!("https://{r}/v2/"))) =>
        {
            Err(ImageError::Unreachable(format!(
                "pulling {image}: {m} (a plain-http registry needs rkt cri-service --insecure-registry={})",
                registry.unwrap_or_default()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// RemoveImage: as `rkt image rm` (a tree a pod still uses stays until image
/// gc); an image that is not there is already removed.
pub fn remove(runtime: &Runtime, image: &str) -> Result<(), ImageError> {
    let Some(id) = find_image(&runtime.store, image)? else {
        return Ok(());
    };
    let results = image_gc::remove_images(&runtime.store, &runtime.pods, std::slice::from_ref(&id))?;
    for result in results {
        match result {
            Ok(removed) => {
                for tree in removed.trees_kept {
                    tracing::info!(%id, tree, "kept a tree a pod still uses");
                }
            }
            // Removed by someone else meanwhile: gone is what was asked.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes (allocated blocks) and inodes under `root`, hard links counted once,
/// without crossing into other filesystems.
pub fn usage(root: &Path) -> Result<(u64, u64), ImageError> {
    let io = |path: &Path| {
        let context = format!("cannot measure {}", path.display());
        move |source| ImageError::Io { context, source }
    };
    let top = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(root)(e)),
    };
    let device = top.dev();
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![(root.to_path_buf(), top)];
    while let Some((path, meta)) = pending.pop() {
        if meta.dev() != device || !seen.insert(meta.ino()) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if !meta.is_dir() {
            continue;
        }
        let listing = match std::fs::read_dir(&path) {
            Ok(listing) => listing,
            // Removed while we walk (a finished import's temp dir): not used any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        for entry in listing {
            let entry = entry.map_err(io(&path))?;
            match entry.metadata() {
                Ok(meta) => pending.push((entry.path(), meta)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&entry.path())(e)),
            }
        }
    }
    Ok((bytes, inodes))
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The CRI's view of a catalog entry; the image's default user is the app's.
fn image_of(store: &Store, entry: CatalogEntry) -> Image {
    let user = store
        .manifest(&entry.info.id)
        .ok()
        .and_then(|m| m.app)
        .map(|app| app.user)
        .unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user),
    };
    let id = entry.info.id.as_str().to_string();
    Image {
        spec: Some(ImageSpec {
            image: id.clone(),
            ..ImageSpec::default()
        }),
        id,
        repo_tags: entry.repo_tags,
        repo_digests: entry.repo_digests,
        size: entry.info.size.max(1),
        uid,
        username,
        pinned: false,
    }
}

/// `ImageStatus` with `verbose`: what rkt knows beyond the CRI fields.
fn verbose_info(store: &Store, info: &ImageInfo) -> HashMap<String, String> {
    let manifest = store
        .manifest(&info.id)
        .ok()
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(serde_json::Value::Null);
    let seconds = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let info = serde_json::json!({
        "name": info.name.to_string(),
        "origin": info.origin,
        "importedAt": seconds(info.imported_at),
        "lastUsed": seconds(info.last_used),
        "manifest": manifest,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// The ImageService on one `--dir`.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
    config: Arc<ImageServiceConfig>,
}

impl Images {
    pub fn new(dir: &Path, config: ImageServiceConfig) -> Self {
        Images {
            dir: dir.to_path_buf(),
            config: Arc::new(config),
        }
    }

    /// The tonic service to register next to the RuntimeService.
    pub fn server(dir: &Path, config: ImageServiceConfig) -> ImageServiceServer<Images> {
        ImageServiceServer::new(Images::new(dir, config))
    }

    /// Runs store work (which blocks: hashing, extracting, registry I/O) off the
    /// async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime, &ImageServiceConfig) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, Status> {
        let dir = self.dir.clone();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let runtime = Runtime::open(&dir)?;
            f(&runtime, &config)
        })
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(Status::from)
    }
}

fn image_named(spec: Option<ImageSpec>, call: &str) -> Result<String, Status> {
    match spec {
        Some(spec) if !spec.image.is_empty() => Ok(spec.image),
        _ => Err(Status::invalid_argument(format!(
            "{call}: image.image is required"
        ))),
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let wanted = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|image| !image.is_empty());
        let images = self
            .blocking(move |runtime, _| {
                let only = match &wanted {
                    Some(image) => match find_image(&runtime.store, image)? {
                        Some(id) => Some(id),
                        None => return Ok(Vec::new()),
                    },
                    None => None,
                };
                Ok(catalog(&runtime.store)?
                    .into_iter()
                    .filter(|e| only.as_ref().is_none_or(|id| *id == e.info.id))
                    .map(|e| image_of(&runtime.store, e))
                    .collect())
            })
            .await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let image = image_named(request.image, "ImageStatus")?;
        let verbose = request.verbose;
        let response = self
            .blocking(move |runtime, _| {
                let Some(id) = find_image(&runtime.store, &image)? else {
                    return Ok(ImageStatusResponse::default());
                };
                let Some(entry) = catalog(&runtime.store)?.into_iter().find(|e| e.info.id == id) else {
                    return Ok(ImageStatusResponse::default());
                };
                let info = if verbose {
                    verbose_info(&runtime.store, &entry.info)
                } else {
                    HashMap::new()
                };
                Ok(ImageStatusResponse {
                    image: Some(image_of(&runtime.store, entry)),
                    info,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_named(request.image, "PullImage")?;
        let auth = request.auth;
        let id = self
            .blocking(move |runtime, config| pull(runtime, config, &image, auth))
            .await?;
        Ok(Response::new(PullImageResponse {
            image_ref: id.as_str().to_string(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let image = image_named(request.into_inner().image, "RemoveImage")?;
        self.blocking(move |runtime, _| remove(runtime, &image)).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let usage = self
            .blocking(|runtime, _| {
                let root = runtime.store.dir().to_path_buf();
                let (bytes, inodes) = usage(&root)?;
                Ok(FilesystemUsage {
                    timestamp: now_nanos(),
                    fs_id: Some(FilesystemIdentifier {
                        mountpoint: root.display().to_string(),
                    }),
                    used_bytes: Some(UInt64Value { value: bytes }),
                    inodes_used: Some(UInt64Value { value: inodes }),
                })
            })
            .await?;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}

/// An ImageService client over the unix socket at `socket`.
pub async fn connect(socket: &Path) -> Result<ImageServiceClient<Channel>, tonic::transport::Error> {
    Ok(ImageServiceClient::new(crate::unix_channel(socket).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).expect(s);
        (r.registry, r.repository, r.tag, r.digest)
    }

    #[test]
    fn kubernetes_names_normalise_like_docker() {
        let latest = (
            "docker.io".to_string(),
            "library/busybox".to_string(),
            Some("latest".to_string()),
            None,
        );
        assert_eq!(parsed("busybox"), latest);
        assert_eq!(parsed("docker.io/library/busybox:latest"), latest);
        assert_eq!(parsed("index.docker.io/busybox"), latest);
        assert_eq!(parsed("docker://busybox"), latest);
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").expect("parse");
        assert_eq!(r.tagged().as_deref(), Some("127.0.0.1:5000/team/app:v1"));
        assert_eq!(r.pull_url(), "docker://127.0.0.1:5000/team/app:v1");
        let r = Reference::parse("localhost/app").expect("parse");
        assert_eq!(r.tagged().as_deref(), Some("localhost/app:latest"));
        let r = Reference::parse("busybox:1.36").expect("parse");
        assert_eq!(r.pull_url(), "docker://library/busybox:1.36");
        assert_eq!(r.tagged().as_deref(), Some("docker.io/library/busybox:1.36"));
    }

    #[test]
    fn digests_win_over_tags_and_are_checked() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("127.0.0.1:5000/app@{digest}")).expect("parse");
        assert_eq!(r.tag, None);
        assert_eq!(r.digested(), Some(format!("127.0.0.1:5000/app@{digest}")));
        assert_eq!(r.pull_url(), format!("docker://127.0.0.1:5000/app@{digest}"));
        let r = Reference::parse(&format!("quay.io/app:v1@{digest}")).expect("parse");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.pull_url(), format!("docker://quay.io/app@{digest}"));
        for bad in [
            "",
            "app@sha256:abc",
            "app@md5:0123",
            "Upper/case",
            "app:",
            "a//b",
            "quay.io/../x",
            "app:bad/tag",
            ":5000/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn auth_configs_give_credentials() {
        let given = credentials_of(Some(AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..AuthConfig::default()
        }))
        .expect("credentials");
        assert_eq!(
            given.map(|c| (c.user, c.password)),
            Some(("u".into(), "p".into()))
        );
        let encoded = credentials_of(Some(AuthConfig {
            auth: "dTpwOnc=".into(), // "u:p:w"
            ..AuthConfig::default()
        }))
        .expect("credentials");
        assert_eq!(
            encoded.map(|c| (c.user, c.password)),
            Some(("u".into(), "p:w".into()))
        );
        assert!(credentials_of(None).expect("none").is_none());
        assert!(
            credentials_of(Some(AuthConfig {
                auth: "not base64!".into(),
                ..AuthConfig::default()
            }))
            .is_err()
        );
        assert!(matches!(
            credentials_of(Some(AuthConfig {
                registry_token: "t".into(),
                ..AuthConfig::default()
            })),
            Err(ImageError::Unsupported(_))
        ));
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, vec![1u8; 10_000]).expect("write");
        let (bytes_before, inodes_before) = usage(dir.path()).expect("usage");
        assert_eq!(inodes_before, 2, "the directory and the file");
        assert!(bytes_before >= 10_000);
        std::fs::hard_link(&file, dir.path().join("b")).expect("link");
        assert_eq!(usage(dir.path()).expect("usage"), (bytes_before, inodes_before));
        assert_eq!(usage(&dir.path().join("missing")).expect("usage"), (0, 0));
    }
}
