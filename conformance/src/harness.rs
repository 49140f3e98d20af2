//! Runs the real `rkt` binary against a private `--dir`, and cleans up after
//! itself even when a check fails: garbage-collects its pods, unmounts anything
//! left below its work directory (deepest first), and deletes the directory only
//! when nothing is mounted there any more.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use crate::image::AciSpec;

/// One `rkt` invocation's result.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    fn from(out: Output) -> Self {
        RunOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// For failure messages: everything rkt said.
    pub fn describe(&self) -> String {
        format!(
            "exit {}; stdout {:?}; stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub struct Rkt {
    bin: PathBuf,
    pub stage1: String,
    /// The `--net` every check runs with unless it names one.
    default_net: &'static str,
    work: PathBuf,
    pub dir: PathBuf,
    images: Mutex<BTreeMap<String, PathBuf>>,
}

impl Rkt {
    /// A fresh `--dir` in its own temporary work directory.
    pub fn new(bin: &Path, stage1: &str) -> io::Result<Self> {
        let work = tempfile::Builder::new()
            .prefix("rkt-conformance-")
            .tempdir()?
            .keep();
        let dir = work.join("data");
        std::fs::create_dir(&dir)?;
        Ok(Rkt {
            bin: bin.to_path_buf(),
            stage1: stage1.to_string(),
            default_net: default_net(stage1),
            work,
            dir,
            images: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn work(&self) -> &Path {
        &self.work
    }

    /// `rkt --dir=<private dir> ARGS...`, stdin closed.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--dir={}", self.dir.display()))
            .args(args)
            .stdin(Stdio::null())
            .env_remove("RKT_STAGE1")
            .env_remove("RKT_DIR");
        cmd
    }

    pub fn rkt(&self, args: &[&str]) -> RunOutput {
        match self.command(args).output() {
            Ok(out) => RunOutput::from(out),
            Err(e) => RunOutput {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot start {}: {e}", self.bin.display()),
            },
        }
    }

    /// The `--net` flag checks use when they need no particular network: the
    /// host's where the backend can share it (cheapest), else none.
    pub fn default_net(&self) -> &'static str {
        self.default_net
    }

    /// Whether pods share the host's network (`--net=host`).
    pub fn host_network(&self) -> bool {
        self.default_net == "--net=host"
    }

    /// A pod registered with the metadata service must reach it: off the
    /// host's network, that is the CNI default network's gateway.
    fn net_for(&self, args: &[&str]) -> &'static str {
        if !self.host_network() && args.contains(&"--mds-register") {
            "--net=default"
        } else {
            self.default_net
        }
    }

    /// `rkt run --insecure-options=image --stage1=<backend> [--net=...] ARGS...`:
    /// [`Self::default_net`] unless ARGS name one (no check is about networks).
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let stage1 = format!("--stage1={}", self.stage1);
        let mut all = vec!["run", "--insecure-options=image", stage1.as_str()];
        if !args.iter().any(|a| a.starts_with("--net")) {
            all.push(self.net_for(args));
        }
        all.extend_from_slice(args);
        self.rkt(&all)
    }

    /// Builds the image once per spec name and returns its path.
    pub fn image(&self, spec: &AciSpec) -> io::Result<PathBuf> {
        let mut images = self
            .images
            .lock()
            .map_err(|_| io::Error::other("image cache poisoned"))?;
        if let Some(path) = images.get(&spec_key(spec)) {
            return Ok(path.clone());
        }
        let path = self.work.join(format!("image-{}.aci", images.len()));
        spec.write(&path)?;
        images.insert(spec_key(spec), path.clone());
        Ok(path)
    }

    /// Mount points at or below the work directory, from this process's view.
    pub fn mounts_left(&self) -> Vec<PathBuf> {
        mounts_under(&self.work)
    }
}

/// From the backend's capabilities; an unknown name gets the host's network
/// (its runs fail with rkt's own error anyway).
fn default_net(stage1: &str) -> &'static str {
    match crate::backends::find(stage1) {
        Ok(b) if !b.capabilities.host_network => "--net=none",
        _ => "--net=host",
    }
}

fn spec_key(spec: &AciSpec) -> String {
    spec.manifest().to_string() + &format!("{:?}{:?}{:?}", spec.files, spec.dirs, spec.host_files)
}

pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

impl Rkt {
    /// Force-stops every pod still running in this harness's `--dir`, then
    /// collects them all: a test that failed half way must not leave a pod
    /// (and its netns, CNI chains and leases) behind, as gc skips running pods.
    pub fn stop_and_collect_all(&self) {
        let list = self.rkt(&["list", "--no-legend", "--full"]);
        for line in list.stdout.lines() {
            // UUID, app, image name, image ID, state, ...: tab-separated, empty
            // columns kept (a sandbox without apps).
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if let (Some(&uuid), Some(&"running")) = (fields.first(), fields.get(4)) {
                let _ = self.rkt(&["stop", "--force", uuid]);
                let _ = self.rkt(&["status", "--wait=60s", uuid]);
            }
        }
        let _ = self.rkt(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
    }
}

impl Drop for Rkt {
    fn drop(&mut self) {
        self.stop_and_collect_all();
        for point in mounts_under(&self.work) {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
        let left = mounts_under(&self.work);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.work);
        } else {
            // Deleting now could wipe whatever is mounted there: leave it.
            eprintln!(
                "conformance: leaving {} in place, still mounted: {left:?}",
                self.work.display()
            );
        }
    }
}
