//! critest-style cases for the CRI ImageService of `rkt cri-service`: a Rust
//! CRI client over the unix socket against a real registry (Debian's
//! docker-registry on 127.0.0.1, images pushed with skopeo). Pull by tag,
//! without a tag, by digest; status by every kind of reference; list with
//! filters; remove (idempotent); a missing image is NotFound; a plain-http
//! registry the operator did not allow is refused; credentials from the
//! AuthConfig; ImageFsInfo.
//!
//! The kit runs them as one check (`cri-image-service`); `cargo test` runs
//! them case by case (cli/tests/cri_images.rs).

use std::path::Path;

use rkt_cri::runtime_v1::image_service_client::ImageServiceClient;
use rkt_cri::runtime_v1::{
    AuthConfig, FilesystemUsage, Image, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::checks::Outcome;
use crate::cri_runtime::{self, CriServer};
use crate::harness::Rkt;
use crate::registry::{self, BASIC_AUTH, Layer, Registry};

/// A synchronous ImageService client: each call runs on a private
/// current-thread runtime.
pub struct ImageClient {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    })
}

fn shown(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl ImageClient {
    pub fn connect(socket: &Path) -> Result<ImageClient, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let client = runtime
            .block_on(rkt_cri::images::connect(socket))
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        Ok(ImageClient { runtime, client })
    }

    /// PullImage: the image ID, or the service's status (boxed: it is large).
    pub fn pull(&self, image: &str, auth: Option<AuthConfig>) -> Result<String, Box<tonic::Status>> {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.pull_image(PullImageRequest {
                image: spec(image),
                auth,
            }))
            .map(|r| r.into_inner().image_ref)
            .map_err(Box::new)
    }

    /// ImageStatus: None when the service says the image is not there.
    pub fn status(&self, image: &str) -> Result<Option<Image>, String> {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.image_status(ImageStatusRequest {
                image: spec(image),
                verbose: false,
            }))
            .map(|r| r.into_inner().image)
            .map_err(|s| format!("ImageStatus {image}: {}", shown(&s)))
    }

    pub fn verbose_info(&self, image: &str) -> Result<String, String> {
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.image_status(ImageStatusRequest {
                image: spec(image),
                verbose: true,
            }))
            .map_err(|s| format!("ImageStatus {image}: {}", shown(&s)))?;
        Ok(response.into_inner().info.remove("info").unwrap_or_default())
    }

    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>, String> {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.list_images(ListImagesRequest {
                filter: filter.map(|image| ImageFilter { image: spec(image) }),
            }))
            .map(|r| r.into_inner().images)
            .map_err(|s| format!("ListImages: {}", shown(&s)))
    }

    pub fn remove(&self, image: &str) -> Result<(), String> {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.remove_image(RemoveImageRequest { image: spec(image) }))
            .map(|_| ())
            .map_err(|s| format!("RemoveImage {image}: {}", shown(&s)))
    }

    pub fn fs_info(&self) -> Result<Vec<FilesystemUsage>, String> {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.image_fs_info(ImageFsInfoRequest {}))
            .map(|r| r.into_inner().image_filesystems)
            .map_err(|s| format!("ImageFsInfo: {}", shown(&s)))
    }
}

/// Everything a case works with: an open registry and one behind Basic auth,
/// both allowed as insecure, each holding `cri/busybox:{v1,latest}` and
/// `cri/other:v1` (different content); the service on the harness's --dir.
pub struct Session<'a> {
    pub rkt: &'a Rkt,
    pub registry: Registry,
    pub auth_registry: Registry,
    pub server: CriServer,
    pub client: ImageClient,
}

impl Session<'_> {
    /// `127.0.0.1:PORT/cri/NAME`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/cri/{name}", self.registry.addr)
    }

    /// The manifest digest the registry holds for `cri/NAME:TAG`.
    fn digest(&self, name: &str, tag: &str) -> Result<String, String> {
        self.registry.tag_digest(&format!("cri/{name}"), tag)
    }
}

/// Why the cases cannot run here, or None.
pub fn unavailable() -> Option<String> {
    if crate::busybox_path().is_none() {
        return Some("needs busybox-static".into());
    }
    registry::unavailable()
}

/// Starts the registries (pushing the images) and the service.
pub fn session(rkt: &Rkt) -> Result<Session<'_>, String> {
    let layout = rkt.work().join("cri-images-layout");
    let mut base = registry::busybox_layer().map_err(|e| format!("busybox layer: {e}"))?;
    // The layouts' config names /data as the working directory.
    base.files.push(("data/keep".into(), Vec::new(), 0o644));
    let mut extra = Layer::default();
    extra.files.push(("etc/other".into(), b"other\n".to_vec(), 0o644));
    registry::oci_layout(
        &layout,
        &[("v1", vec![&base]), ("latest", vec![&base])],
        "echo busybox",
    )
    .map_err(|e| format!("layout: {e}"))?;
    let other = rkt.work().join("cri-images-other");
    registry::oci_layout(&other, &[("v1", vec![&base, &extra])], "echo other")
        .map_err(|e| format!("layout: {e}"))?;
    let registry = Registry::start()?;
    let auth_registry = Registry::start_with_basic_auth()?;
    for target in [&registry, &auth_registry] {
        target.push(&layout, "v1", "cri/busybox")?;
        target.push(&layout, "latest", "cri/busybox")?;
        target.push(&other, "v1", "cri/other")?;
    }
    let insecure = format!("--insecure-registry={},{}", registry.addr, auth_registry.addr);
    let server = CriServer::start(rkt, &rkt.work().join("cri.sock"), &[], &[&insecure])?;
    let client = ImageClient::connect(&server.socket)?;
    Ok(Session {
        rkt,
        registry,
        auth_registry,
        server,
        client,
    })
}

pub type CaseFn = fn(&Session<'_>) -> Result<(), String>;

/// A case's name and how it went.
pub type CaseResult = (&'static str, Result<(), String>);

/// Every case, in a stable order; each leaves the store as it found it.
pub fn cases() -> Vec<(&'static str, CaseFn)> {
    vec![
        ("pull-by-tag", pull_by_tag),
        ("pull-without-tag", pull_without_tag),
        ("pull-by-digest", pull_by_digest),
        ("status-by-every-reference", status_by_every_reference),
        ("list-with-filter", list_with_filter),
        ("remove-is-idempotent", remove_is_idempotent),
        ("missing-image-is-not-found", missing_image_is_not_found),
        ("plain-http-needs-the-operator", plain_http_needs_the_operator),
        ("auth-config-credentials", auth_config_credentials),
        ("image-fs-info", image_fs_info),
        ("pulled-image-runs-containers", pulled_image_runs_containers),
    ]
}

/// Runs every case (or those whose name contains `filter`) on one session.
pub fn run_cases(rkt: &Rkt, filter: Option<&str>) -> Result<Vec<CaseResult>, String> {
    let session = session(rkt)?;
    Ok(cases()
        .into_iter()
        .filter(|(name, _)| filter.is_none_or(|f| name.contains(f)))
        .map(|(name, case)| (name, case(&session)))
        .collect())
}

/// The kit's check: every case, one outcome.
/// How a case that cannot run on this stage1 begins its error.
pub const SKIP: &str = "skip: ";

pub fn check(rkt: &Rkt) -> Outcome {
    if let Some(why) = unavailable() {
        return Outcome::Skipped(why);
    }
    match run_cases(rkt, None) {
        Err(e) => Outcome::Failed(format!("cannot set up: {e}")),
        Ok(results) => {
            let failed: Vec<String> = results
                .into_iter()
                .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
                .filter(|e| !e.contains(&format!(": {SKIP}")))
                .collect();
            if failed.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed(failed.join("; "))
            }
        }
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn pulled(s: &Session<'_>, image: &str) -> Result<String, String> {
    let id = s
        .client
        .pull(image, None)
        .map_err(|e| format!("PullImage {image}: {}", shown(&e)))?;
    ensure(id.starts_with("sha512-"), || {
        format!("PullImage {image}: image_ref {id:?} is not an image ID")
    })?;
    Ok(id)
}

/// The image's status, which must be there and carry `id`.
fn present(s: &Session<'_>, reference: &str, id: &str) -> Result<Image, String> {
    let image = s
        .client
        .status(reference)?
        .ok_or_else(|| format!("ImageStatus {reference}: no image"))?;
    ensure(image.id == id, || {
        format!("ImageStatus {reference}: id {} (pulled {id})", image.id)
    })?;
    Ok(image)
}

fn gone(s: &Session<'_>, reference: &str) -> Result<(), String> {
    match s.client.status(reference)? {
        None => Ok(()),
        Some(image) => Err(format!("ImageStatus {reference}: still there: {image:?}")),
    }
}

fn pull_by_tag(s: &Session<'_>) -> Result<(), String> {
    let image = format!("{}:v1", s.image("busybox"));
    let id = pulled(s, &image)?;
    let status = present(s, &image, &id)?;
    ensure(status.repo_tags == [image.clone()], || {
        format!("repo_tags {:?}, want [{image}]", status.repo_tags)
    })?;
    let digest = format!("{}@{}", s.image("busybox"), s.digest("busybox", "v1")?);
    ensure(status.repo_digests == [digest.clone()], || {
        format!("repo_digests {:?}, want [{digest}]", status.repo_digests)
    })?;
    ensure(status.size > 0, || "size 0".into())?;
    ensure(status.uid.as_ref().is_some_and(|u| u.value == 0), || {
        format!("uid {:?}, want 0 (the image runs as root)", status.uid)
    })?;
    // Pulling again yields the same image (the tag did not move).
    let again = pulled(s, &image)?;
    ensure(again == id, || format!("second pull: {again}, first {id}"))?;
    let listed = s.client.list(None)?;
    ensure(listed.iter().any(|i| i.id == id), || {
        format!("ListImages lacks {id}: {listed:?}")
    })?;
    s.client.remove(&image)?;
    gone(s, &image)
}

/// What the kubelet pulls is what its containers run: the runtime suite's
/// container lifecycle and ExecSync cases, on the image pulled by tag.
fn pulled_image_runs_containers(s: &Session<'_>) -> Result<(), String> {
    let stage1 = rkt_engine::stage::registry::create::<dyn rkt_engine::stage::Stage1>(&s.rkt.stage1)
        .map_err(|e| e.to_string())?;
    if !stage1.supports_mutable_pods() {
        return Err(format!(
            "{SKIP}stage1 {} has no mutable pods (sandboxes)",
            s.rkt.stage1
        ));
    }
    let image = format!("{}:v1", s.image("busybox"));
    pulled(s, &image)?;
    let logs = s.rkt.work().join("cri-images-pod-logs");
    let outcomes = {
        let mut ctx = cri_runtime::Ctx::new(&s.server.socket, &image, &logs, None)?;
        let mut outcomes = cri_runtime::run_cases(&mut ctx, Some("container-lifecycle"));
        outcomes.extend(cri_runtime::run_cases(&mut ctx, Some("exec-sync")));
        outcomes
    };
    s.client.remove(&image)?;
    ensure(outcomes.len() == 2, || format!("ran {outcomes:?}"))?;
    for (name, outcome) in outcomes {
        ensure(outcome == Outcome::Passed, || {
            format!("{name} on {image}: {outcome:?}")
        })?;
    }
    gone(s, &image)
}

fn pull_without_tag(s: &Session<'_>) -> Result<(), String> {
    let image = s.image("busybox");
    let id = pulled(s, &image)?;
    let status = present(s, &format!("{image}:latest"), &id)?;
    ensure(status.repo_tags == [format!("{image}:latest")], || {
        format!("repo_tags {:?}", status.repo_tags)
    })?;
    s.client.remove(&image)?;
    gone(s, &format!("{image}:latest"))
}

fn pull_by_digest(s: &Session<'_>) -> Result<(), String> {
    let image = format!("{}@{}", s.image("other"), s.digest("other", "v1")?);
    let id = pulled(s, &image)?;
    let status = present(s, &image, &id)?;
    ensure(status.repo_digests == [image.clone()], || {
        format!("repo_digests {:?}, want [{image}]", status.repo_digests)
    })?;
    ensure(status.repo_tags.is_empty(), || {
        format!("repo_tags {:?}: pulled by digest, no tag", status.repo_tags)
    })?;
    s.client.remove(&image)?;
    gone(s, &image)?;
    gone(s, &id)
}

fn status_by_every_reference(s: &Session<'_>) -> Result<(), String> {
    let image = format!("{}:v1", s.image("other"));
    let id = pulled(s, &image)?;
    let digest = format!("{}@{}", s.image("other"), s.digest("other", "v1")?);
    for reference in [
        image.clone(),
        format!("docker://{image}"),
        id.clone(),
        id[..20].to_string(),
        digest,
    ] {
        present(s, &reference, &id)?;
    }
    let info = s.client.verbose_info(&image)?;
    ensure(
        info.contains("\"manifest\"") && info.contains(&s.registry.addr),
        || format!("verbose info {info:?}"),
    )?;
    // A tag the store does not hold, and a repository it does not hold.
    gone(s, &format!("{}:v2", s.image("other")))?;
    gone(s, "docker.io/library/not-pulled:v1")?;
    s.client.remove(&id)?;
    gone(s, &image)
}

fn list_with_filter(s: &Session<'_>) -> Result<(), String> {
    let busybox = format!("{}:v1", s.image("busybox"));
    let other = format!("{}:v1", s.image("other"));
    let busybox_id = pulled(s, &busybox)?;
    let other_id = pulled(s, &other)?;
    let ids = |images: Vec<Image>| images.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let all = ids(s.client.list(None)?);
    ensure(all.contains(&busybox_id) && all.contains(&other_id), || {
        format!("ListImages {all:?}")
    })?;
    let only = ids(s.client.list(Some(&other))?);
    ensure(only == [other_id.clone()], || {
        format!("ListImages filtered by {other}: {only:?}")
    })?;
    let none = ids(s.client.list(Some(&format!("{}:nope", s.image("other"))))?);
    ensure(none.is_empty(), || {
        format!("ListImages of a missing tag: {none:?}")
    })?;
    s.client.remove(&busybox)?;
    s.client.remove(&other)?;
    let left = ids(s.client.list(None)?);
    ensure(!left.contains(&busybox_id) && !left.contains(&other_id), || {
        format!("ListImages after RemoveImage: {left:?}")
    })
}

fn remove_is_idempotent(s: &Session<'_>) -> Result<(), String> {
    let image = format!("{}:v1", s.image("busybox"));
    let id = pulled(s, &image)?;
    s.client.remove(&id)?;
    gone(s, &image)?;
    s.client.remove(&id)?;
    s.client.remove(&image)?;
    s.client.remove("docker.io/library/never-pulled:v1")
}

fn missing_image_is_not_found(s: &Session<'_>) -> Result<(), String> {
    let before = s.client.list(None)?.len();
    let image = format!("{}:v1", s.image("nope"));
    match s.client.pull(&image, None) {
        Ok(id) => Err(format!("PullImage {image}: pulled {id}")),
        Err(e) if e.code() == Code::NotFound && e.message().contains("cri/nope") => Ok(()),
        Err(e) => Err(format!(
            "PullImage {image}: {}, want NotFound naming it",
            shown(&e)
        )),
    }?;
    let invalid = "UPPER/case:v1";
    match s.client.pull(invalid, None) {
        Err(e) if e.code() == Code::InvalidArgument => Ok(()),
        other => Err(format!("PullImage {invalid}: {other:?}, want InvalidArgument")),
    }?;
    let after = s.client.list(None)?.len();
    ensure(before == after, || {
        format!("{before} images before, {after} after")
    })
}

fn plain_http_needs_the_operator(s: &Session<'_>) -> Result<(), String> {
    let strict = CriServer::start(s.rkt, &s.rkt.work().join("cri-strict.sock"), &[], &[])?;
    let client = ImageClient::connect(&strict.socket)?;
    let image = format!("{}:v1", s.image("busybox"));
    match client.pull(&image, None) {
        Ok(id) => Err(format!(
            "PullImage {image} without --insecure-registry: pulled {id}"
        )),
        Err(e) if e.message().contains("--insecure-registry") => Ok(()),
        Err(e) => Err(format!(
            "PullImage {image} without --insecure-registry: {}, want the flag named",
            shown(&e)
        )),
    }?;
    gone(s, &image)
}

fn auth_config_credentials(s: &Session<'_>) -> Result<(), String> {
    let image = format!("{}/cri/busybox:v1", s.auth_registry.addr);
    match s.client.pull(&image, None) {
        Ok(id) => return Err(format!("PullImage {image} without credentials: pulled {id}")),
        Err(e) if e.code() == Code::Unauthenticated && e.message().contains("401") => {}
        Err(e) => {
            return Err(format!(
                "PullImage {image} without credentials: {}, want Unauthenticated naming the 401",
                shown(&e)
            ));
        }
    }
    let (user, password) = BASIC_AUTH;
    let wrong = AuthConfig {
        username: user.into(),
        password: "wrong".into(),
        ..AuthConfig::default()
    };
    match s.client.pull(&image, Some(wrong)) {
        Ok(id) => return Err(format!("PullImage {image} with a wrong password: pulled {id}")),
        Err(e) if e.code() == Code::Unauthenticated => {}
        Err(e) => {
            return Err(format!(
                "PullImage {image} with a wrong password: {}, want Unauthenticated",
                shown(&e)
            ));
        }
    }
    let given = AuthConfig {
        username: user.into(),
        password: password.into(),
        ..AuthConfig::default()
    };
    let id = s
        .client
        .pull(&image, Some(given))
        .map_err(|e| format!("PullImage {image} with credentials: {}", shown(&e)))?;
    present(s, &image, &id)?;
    s.client.remove(&image)?;
    // The same credentials as AuthConfig.auth: base64 of "u:p".
    let encoded = AuthConfig {
        auth: "dTpw".into(),
        ..AuthConfig::default()
    };
    let id = s
        .client
        .pull(&image, Some(encoded))
        .map_err(|e| format!("PullImage {image} with AuthConfig.auth: {}", shown(&e)))?;
    present(s, &image, &id)?;
    s.client.remove(&image)?;
    gone(s, &image)
}

fn image_fs_info(s: &Session<'_>) -> Result<(), String> {
    let usage = |what: &str| -> Result<(u64, u64), String> {
        let filesystems = s.client.fs_info()?;
        let [fs] = filesystems.as_slice() else {
            return Err(format!("{what}: {} image filesystems, want 1", filesystems.len()));
        };
        let mountpoint = fs
            .fs_id
            .as_ref()
            .map(|f| f.mountpoint.clone())
            .unwrap_or_default();
        let store = s.rkt.dir.join("cas");
        let store = std::fs::canonicalize(&store).unwrap_or(store);
        ensure(Path::new(&mountpoint) == store, || {
            format!("{what}: mountpoint {mountpoint:?}, want {}", store.display())
        })?;
        ensure(fs.timestamp > 0, || format!("{what}: timestamp {}", fs.timestamp))?;
        Ok((
            fs.used_bytes.as_ref().map_or(0, |v| v.value),
            fs.inodes_used.as_ref().map_or(0, |v| v.value),
        ))
    };
    let image = format!("{}:v1", s.image("other"));
    let before = usage("before the pull")?;
    pulled(s, &image)?;
    let after = usage("after the pull")?;
    // The image holds a static busybox: far more than a megabyte, and files.
    ensure(after.0 > before.0 + (1 << 20) && after.1 > before.1, || {
        format!("usage before {before:?}, after pulling {image} {after:?}")
    })?;
    s.client.remove(&image)?;
    let removed = usage("after the removal")?;
    ensure(removed.0 < after.0, || {
        format!("usage after pulling {after:?}, after removing {removed:?}")
    })
}
