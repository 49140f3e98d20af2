//! A real container registry for the checks that pull: Debian's
//! `docker-registry` on 127.0.0.1 (optionally behind htpasswd Basic auth),
//! images pushed into it with `skopeo` from OCI layouts built here.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One image layer: regular files (path, contents, mode), symlinks (path,
/// target), hard links (path, target); an empty file named `.wh.NAME` is a
/// whiteout.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub symlinks: Vec<(String, String)>,
    pub hardlinks: Vec<(String, String)>,
}

impl Layer {
    /// The layer as an uncompressed tar, parents of files created first.
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        // Every numeric field set: an unset uid is not "0" to a tar reader.
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        };
        let mut tar = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _, _) in &self.files {
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(p.to_path_buf());
                parent = p.parent();
            }
        }
        for dir in dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, &dir, io::empty())?;
        }
        for (path, data, mode) in &self.files {
            let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
            tar.append_data(&mut h, path, data.as_slice())?;
        }
        for (path, target) in &self.symlinks {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, path, target)?;
        }
        for (path, target) in &self.hardlinks {
            let mut h = header(tar::EntryType::Link, 0o755, 0);
            tar.append_link(&mut h, path, target)?;
        }
        tar.into_inner()
    }
}

/// A layer with the static busybox as /bin/busybox (and the applets the ACI
/// test images have), root
/// in /etc/passwd and /etc/group, and /bin/linked hard-linked to busybox.
pub fn busybox_layer() -> io::Result<Layer> {
    let busybox = crate::busybox_path()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no static busybox (busybox-static)"))?;
    let mut layer = Layer::default();
    layer
        .files
        .push(("bin/busybox".into(), std::fs::read(busybox)?, 0o755));
    layer.files.push((
        "etc/passwd".into(),
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    ));
    layer
        .files
        .push(("etc/group".into(), b"root:x:0:\n".to_vec(), 0o644));
    for applet in crate::image::APPLETS {
        layer.symlinks.push((format!("bin/{applet}"), "busybox".into()));
    }
    layer.hardlinks.push(("bin/linked".into(), "bin/busybox".into()));
    Ok(layer)
}

/// `sha256:` and the hex digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Each tag's layer digests, in order.
pub type LayerDigests = BTreeMap<String, Vec<String>>;

/// Writes (or adds to) an OCI image layout at `dir` holding one image per
/// (tag, layers) pair, all with the same config: `script` run by `/bin/sh -c`,
/// GREETING=hello in the env, /data as the working directory.
pub fn oci_layout(dir: &Path, images: &[(&str, Vec<&Layer>)], script: &str) -> io::Result<LayerDigests> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<(String, usize)> {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes)?;
        Ok((digest, bytes.len()))
    };
    let mut manifests = Vec::new();
    let mut layer_digests = LayerDigests::new();
    for (tag, layers) in images {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let (digest, size) = put(&layer.tar()?)?;
            diff_ids.push(digest.clone());
            layer_digests
                .entry(tag.to_string())
                .or_default()
                .push(digest.clone());
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest, "size": size}));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sh", "-c"], "Cmd": [script],
                "Env": ["GREETING=hello", "PATH=/bin"], "WorkingDir": "/data",
                "ExposedPorts": {"8080/tcp": {}}
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": descriptors
        });
        let (digest, size) = put(&serde_json::to_vec(&manifest)?)?;
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
    }
    // Images already in the layout under other tags stay.
    let index_path = dir.join("index.json");
    if let Ok(bytes) = std::fs::read(&index_path) {
        let old: serde_json::Value = serde_json::from_slice(&bytes)?;
        let tags: Vec<&str> = images.iter().map(|(tag, _)| *tag).collect();
        for entry in old["manifests"].as_array().into_iter().flatten() {
            let tag = entry["annotations"]["org.opencontainers.image.ref.name"].as_str();
            if !tag.is_some_and(|t| tags.contains(&t)) {
                manifests.push(entry.clone());
            }
        }
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        &index_path,
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))?,
    )?;
    Ok(layer_digests)
}

/// User "u", password "p", as a bcrypt htpasswd line (cost 5): what
/// [`Registry::start_with_basic_auth`] accepts.
pub const BASIC_AUTH: (&str, &str) = ("u", "p");
const HTPASSWD: &str = "u:$2b$05$abcdefghijklmnopqrstuuqwWMzKt5N8p.u2GX5MuH1t19BMWuLOW\n";

/// Why the registry checks cannot run here (a tool missing), or None.
pub fn unavailable() -> Option<String> {
    for tool in ["docker-registry", "skopeo"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs {tool} (apt-get install docker-registry skopeo)"));
        }
    }
    None
}

/// Debian's docker-registry on 127.0.0.1, its log collected; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    basic_auth: bool,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry on a free port, ready when this returns.
    pub fn start() -> Result<Registry, String> {
        Self::start_inner(false)
    }

    /// A registry that wants [`BASIC_AUTH`] on every request.
    pub fn start_with_basic_auth() -> Result<Registry, String> {
        Self::start_inner(true)
    }

    fn start_inner(basic_auth: bool) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if basic_auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).map_err(|e| format!("htpasswd: {e}"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rkt-conformance\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("config.yml: {e}"))?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start docker-registry: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("docker-registry: no stderr".into());
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut ready = Some(ready_tx);
                for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening on")
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        // Ready when it says so; the channel closes (and this fails) if it died.
        if ready_rx.recv().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let said = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            return Err(format!("docker-registry did not start: {said}"));
        }
        Ok(Registry {
            child,
            addr,
            log,
            basic_auth,
            dir,
        })
    }

    fn skopeo_auth(&self) -> Vec<String> {
        if self.basic_auth {
            vec![format!("--creds={}:{}", BASIC_AUTH.0, BASIC_AUTH.1)]
        } else {
            Vec::new()
        }
    }

    /// Pushes the layout's image `tag` as `REPO:TAG`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<(), String> {
        let dest_creds: Vec<String> = self
            .skopeo_auth()
            .into_iter()
            .map(|c| c.replace("--creds", "--dest-creds"))
            .collect();
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .args(&dest_creds)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .map_err(|e| format!("skopeo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "skopeo copy: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// GETs of a blob so far, from the registry's own log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let wanted = format!("/blobs/{digest}");
        self.log
            .lock()
            .map(|log| {
                log.iter()
                    .filter(|l| l.contains("http.request.method=GET") && l.contains(&wanted))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The manifest digest a tag points to, from the registry's own storage.
    pub fn tag_digest(&self, repo: &str, tag: &str) -> Result<String, String> {
        let link = self.dir.path().join(format!(
            "data/docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
        ));
        std::fs::read_to_string(&link)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e}", link.display()))
    }

    /// The layer digests of an image as the registry holds it (skopeo
    /// compresses layers on push, so they differ from the layout's).
    pub fn layers(&self, repo: &str, tag: &str) -> Result<Vec<String>, String> {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.skopeo_auth())
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .map_err(|e| format!("skopeo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "skopeo inspect: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("manifest: {e}"))?;
        Ok(manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str().map(str::to_string))
            .collect())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
