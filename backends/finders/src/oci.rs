//! OCI image layouts (`oci:DIR[:TAG]`) and their tar archives (`oci-archive:FILE`),
//! plus the image-spec types the docker:// source shares: manifests, indexes,
//! platform choice, and turning an image config into an appc app.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rkt_engine::schema::{ImageId, ImageManifest};
use rkt_engine::stage::{BackendError, FetchPolicy, ImageFinder, ImageRef, Registration};
use rkt_engine::store::Store;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OciFinder {}

inventory::submit! {
    Registration::<dyn ImageFinder> {
        name: "oci",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<OciFinder>(config)?)),
    }
}

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// The parts of an image config that become the app.
#[derive(Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

pub fn check_digest(bytes: &[u8], digest: &str) -> Result<(), String> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got == digest {
        Ok(())
    } else {
        Err(format!("blob {digest}: the content's digest is {got}"))
    }
}

/// Whether a manifest document is a list of per-platform manifests.
pub fn is_index(bytes: &[u8], media_type: &str) -> bool {
    if media_type.contains("index") || media_type.contains("manifest.list") {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.get("manifests").is_some())
}

fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The digest of the manifest for this machine (linux/amd64 here) in an index.
pub fn pick_platform(bytes: &[u8]) -> Result<String, String> {
    let index: Index = serde_json::from_slice(bytes).map_err(|e| format!("manifest list: {e}"))?;
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == std::env::consts::OS && p.architecture == this_arch())
        })
        .map(|m| m.digest.clone())
        .ok_or_else(|| {
            format!(
                "the manifest list has no image for {}/{}",
                std::env::consts::OS,
                this_arch()
            )
        })
}

pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("image manifest: {e}"))?;
    for layer in &manifest.layers {
        if layer.media_type.contains("zstd") {
            return Err(format!(
                "layer {}: zstd-compressed layers are not supported",
                layer.digest
            ));
        }
    }
    Ok(manifest)
}

/// The ACI manifest for an image: Entrypoint+Cmd, Env, WorkingDir, User (uid or
/// name, and group), ExposedPorts.
pub fn aci_manifest(name: &str, tag: Option<&str>, config: &ImageConfig) -> Result<ImageManifest, String> {
    let name = sanitize_name(name);
    let empty = ContainerConfig::default();
    let c = config.config.as_ref().unwrap_or(&empty);
    let mut exec: Vec<String> = c.entrypoint.clone().unwrap_or_default();
    exec.extend(c.cmd.clone().unwrap_or_default());
    let environment: Vec<serde_json::Value> = c
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    let (user, group) = match c.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => match u.split_once(':') {
            Some((user, group)) => (user.to_string(), group.to_string()),
            None => (u.to_string(), "0".to_string()),
        },
        None => ("0".to_string(), "0".to_string()),
    };
    let mut ports = Vec::new();
    for key in c.exposed_ports.iter().flat_map(|m| m.keys()) {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let port: u16 = port
            .parse()
            .map_err(|_| format!("exposed port {key:?} is not a port"))?;
        ports.push(
            serde_json::json!({"name": format!("{port}-{protocol}"), "protocol": protocol, "port": port}),
        );
    }
    let mut labels = vec![
        serde_json::json!({"name": "os", "value": std::env::consts::OS}),
        serde_json::json!({"name": "arch", "value": this_arch()}),
    ];
    if let Some(tag) = tag {
        labels.push(serde_json::json!({"name": "version", "value": tag}));
    }
    let mut manifest = serde_json::json!({
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": labels,
    });
    if !exec.is_empty() {
        let mut app = serde_json::json!({
            "exec": exec,
            "user": user,
            "group": group,
            "environment": environment,
            "ports": ports,
        });
        if let Some(dir) = c.working_dir.as_deref().filter(|d| !d.is_empty()) {
            app["workingDirectory"] = serde_json::json!(dir);
        }
        manifest["app"] = app;
    }
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    ImageManifest::from_json(&bytes).map_err(|e| format!("image config does not make a valid app: {e}"))
}

/// An AC identifier from anything: lowercase, and `[a-z0-9._~/-]` only.
fn sanitize_name(name: &str) -> String {
    let cleaned: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '/' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `blobs/<alg>/<hex>` of a layout, for a digest checked to name nothing else.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
    Ok(layout.join("blobs").join("sha256").join(hex))
}

fn read_blob(layout: &Path, descriptor: &Descriptor) -> Result<Vec<u8>, String> {
    let path = blob_path(layout, &descriptor.digest)?;
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(crate::transport::SMALL_BODY_MAX).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    check_digest(&bytes, &descriptor.digest)?;
    Ok(bytes)
}

/// Imports the image `tag` (or the only one) of the OCI layout at `layout`.
fn import_layout(
    store: &Store,
    layout: &Path,
    tag: Option<&str>,
    name: &str,
    origin: &str,
) -> Result<ImageId, String> {
    let index_path = layout.join("index.json");
    let index = std::fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let index: Index =
        serde_json::from_slice(&index).map_err(|e| format!("{}: {e}", index_path.display()))?;
    const REF_NAME: &str = "org.opencontainers.image.ref.name";
    let chosen = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).is_some_and(|r| r == tag))
            .ok_or_else(|| format!("{}: no image tagged {tag:?}", layout.display()))?,
        None => match index.manifests.as_slice() {
            [only] => only,
            [] => return Err(format!("{}: the layout holds no image", layout.display())),
            _ => {
                return Err(format!(
                    "{}: the layout holds several images; name one with :TAG",
                    layout.display()
                ));
            }
        },
    };
    let mut bytes = read_blob(layout, chosen)?;
    if is_index(&bytes, &chosen.media_type) {
        let digest = pick_platform(&bytes)?;
        bytes = read_blob(
            layout,
            &Descriptor {
                media_type: String::new(),
                digest,
                size: 0,
                platform: None,
                annotations: BTreeMap::new(),
            },
        )?;
    }
    let manifest = parse_manifest(&bytes)?;
    let config: ImageConfig = serde_json::from_slice(&read_blob(layout, &manifest.config)?)
        .map_err(|e| format!("image config: {e}"))?;
    let mut digests = Vec::new();
    for layer in &manifest.layers {
        if store.layer(&layer.digest).map_err(|e| e.to_string())?.is_none() {
            let path = blob_path(layout, &layer.digest)?;
            let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            store
                .put_layer(&layer.digest, &mut file)
                .map_err(|e| e.to_string())?;
        }
        digests.push(layer.digest.clone());
    }
    let aci = aci_manifest(name, tag, &config)?;
    store
        .import_layers(&aci, &digests, origin)
        .map_err(|e| e.to_string())
}

/// Unpacks an OCI archive (regular files and directories only, names checked) into
/// a temp directory under the store.
fn unpack_archive(store: &Store, file: &Path) -> Result<tempfile::TempDir, String> {
    let dir = store.download_dir().map_err(|e| e.to_string())?;
    let out = tempfile::Builder::new()
        .prefix(&format!(".oci-archive-{}-", std::process::id()))
        .tempdir_in(dir)
        .map_err(|e| e.to_string())?;
    let input = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(input));
    for entry in archive
        .entries()
        .map_err(|e| format!("{}: {e}", file.display()))?
    {
        let mut entry = entry.map_err(|e| format!("{}: {e}", file.display()))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        // unpack_in refuses names that would land outside `out`.
        let inside = entry
            .unpack_in(out.path())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if !inside {
            return Err(format!(
                "{}: an entry names a path outside the archive",
                file.display()
            ));
        }
    }
    Ok(out)
}

/// `oci:PATH[:TAG]` -> (PATH, TAG): the tag follows the last `:` after the last `/`,
/// unless the whole string names an existing directory.
fn split_tag(spec: &str) -> (&str, Option<&str>) {
    if Path::new(spec).is_dir() {
        return (spec, None);
    }
    let last_slash = spec.rfind('/').map_or(0, |i| i + 1);
    match spec[last_slash..].rfind(':') {
        Some(i) => (&spec[..last_slash + i], Some(&spec[last_slash + i + 1..])),
        None => (spec, None),
    }
}

fn image_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = sanitize_name(&stem);
    if name.is_empty() {
        "oci/image".to_string()
    } else {
        format!("oci/{name}")
    }
}

#[async_trait]
impl ImageFinder for OciFinder {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn handles(&self, reference: &ImageRef) -> bool {
        matches!(reference, ImageRef::Url(url) if url.starts_with("oci:") || url.starts_with("oci-archive:"))
    }

    fn needs_runtime(&self) -> bool {
        false
    }

    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError> {
        let ImageRef::Url(spec) = reference else {
            return Err(BackendError::Other(format!("{reference} is not an OCI image")));
        };
        if !policy.insecure.image {
            return Err(BackendError::Other(format!(
                "{spec}: OCI images carry no signature rkt can verify; pass --insecure-options=image to use it"
            )));
        }
        let fail = |e: String| BackendError::Other(format!("{spec}: {e}"));
        if let Some(rest) = spec.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            let file = Path::new(file);
            let unpacked = unpack_archive(store, file).map_err(fail)?;
            return import_layout(store, unpacked.path(), tag, &image_name(file), spec).map_err(fail);
        }
        let rest = spec.strip_prefix("oci:").unwrap_or(spec);
        let (dir, tag) = split_tag(rest);
        let dir = Path::new(dir);
        import_layout(store, dir, tag, &image_name(dir), spec).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_becomes_the_app() {
        let config: ImageConfig = serde_json::from_str(
            r#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["A=1","PATH=/bin"],
                "WorkingDir":"/srv","User":"1000:2000","ExposedPorts":{"80/tcp":{},"53/udp":{}}}}"#,
        )
        .expect("config");
        let m = aci_manifest("127.0.0.1-5000/team/app", Some("v1"), &config).expect("manifest");
        let json = serde_json::to_value(&m).expect("json");
        assert_eq!(json["name"], "127.0.0.1-5000/team/app");
        assert_eq!(
            json["app"]["exec"],
            serde_json::json!(["/bin/sh", "-c", "echo hi"])
        );
        assert_eq!(json["app"]["user"], "1000");
        assert_eq!(json["app"]["group"], "2000");
        assert_eq!(json["app"]["workingDirectory"], "/srv");
        assert_eq!(json["app"]["environment"][0]["name"], "A");
        assert_eq!(json["app"]["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn platform_is_picked_from_a_list() {
        let list = r#"{"manifests":[
            {"digest":"sha256:arm","platform":{"os":"linux","architecture":"arm64"}},
            {"digest":"sha256:amd","platform":{"os":"linux","architecture":"amd64"}}]}"#;
        if this_arch() == "amd64" {
            assert_eq!(pick_platform(list.as_bytes()).expect("pick"), "sha256:amd");
        }
        assert!(pick_platform(br#"{"manifests":[]}"#).is_err());
    }

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("/no/such/dir:v1"), ("/no/such/dir", Some("v1")));
        assert_eq!(split_tag("/no/such:dir/x"), ("/no/such:dir/x", None));
    }
}
