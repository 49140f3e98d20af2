//! The appc spec's own executor validator (`github.com/appc/spec/ace`): one Go
//! binary that runs as `prestart`, `main`, `sidekick` or `poststop` inside a pod
//! and checks the pod from the app's side (PATH, cwd, env, mount points, the
//! metadata service, the order of event handlers, a volume shared by two apps).
//!
//! It is built from Debian's packaged Go source, offline, once per machine and
//! source version: parallel checks (and parallel test binaries) wait on one lock
//! and reuse the binary; a build goes to a temporary name and is renamed in.
//! The two images are ours, written with the kit's image builder.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::json;

use crate::image::AciSpec;

pub const MAIN_IMAGE: &str = "coreos.com/ace-validator-main";
pub const SIDEKICK_IMAGE: &str = "coreos.com/ace-validator-sidekick";
/// The validator's phases, in the order they finish in a good pod.
pub const PHASES: [&str; 4] = ["prestart", "sidekick", "main", "poststop"];

const GOPATH: &str = "/usr/share/gocode";
const PACKAGE: &str = "github.com/appc/spec/ace";

/// Why the validator cannot be had on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// A package is missing: the check is skipped with this reason.
    Missing(String),
    /// The build itself failed: the check fails.
    BuildFailed(String),
}

/// The validator binary, built on first use.
pub fn validator() -> Result<PathBuf, Unavailable> {
    static BUILT: OnceLock<Result<PathBuf, Unavailable>> = OnceLock::new();
    BUILT.get_or_init(build_cached).clone()
}

fn build_cached() -> Result<PathBuf, Unavailable> {
    let source = Path::new(GOPATH).join("src").join(PACKAGE);
    if !source.join("validator.go").is_file() {
        return Err(Unavailable::Missing(
            "no appc ACE validator source: apt-get install golang-github-appc-spec-dev".into(),
        ));
    }
    let go_version = Command::new("go")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok_or_else(|| Unavailable::Missing("no Go toolchain: apt-get install golang-go".into()))?;
    let key = format!("{go_version}\n{}", source_stamp(&source));

    let failed = |what: &str, e: io::Error| Unavailable::BuildFailed(format!("{what}: {e}"));
    let dir = cache_dir().map_err(|e| failed("ACE validator cache", e))?;
    let lock = std::fs::File::create(dir.join("lock")).map_err(|e| failed("cache lock", e))?;
    lock.lock().map_err(|e| failed("cache lock", e))?;
    let binary = dir.join("ace-validator");
    let key_file = dir.join("ace-validator.key");
    if binary.is_file() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(binary);
    }
    let temp = dir.join(format!("ace-validator.tmp-{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&temp)
        .arg(PACKAGE)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("gocache"))
        .env_remove("GOFLAGS")
        .output()
        .map_err(|e| failed("go build", e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&temp);
        return Err(Unavailable::BuildFailed(format!(
            "go build {PACKAGE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&temp, &binary).map_err(|e| failed("installing the validator", e))?;
    let key_temp = dir.join(format!("ace-validator.key.tmp-{}", std::process::id()));
    std::fs::write(&key_temp, &key)
        .and_then(|()| std::fs::rename(&key_temp, &key_file))
        .map_err(|e| failed("recording the validator's build key", e))?;
    Ok(binary)
}

/// Sizes and mtimes of the package's Go files: a new Debian package rebuilds.
fn source_stamp(source: &Path) -> String {
    let mut entries: Vec<String> = std::fs::read_dir(source)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "go"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(format!("{:?} {} {}", e.file_name(), m.len(), m.mtime()))
        })
        .collect();
    entries.sort();
    entries.join("\n")
}

/// A directory only this user can write, in the temp dir: a binary found there
/// is one this user built.
fn cache_dir() -> io::Result<PathBuf> {
    let uid = std::fs::metadata("/proc/self")?.uid();
    let dir = std::env::temp_dir().join(format!("rkt-ace-validator-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of uid {uid}",
            dir.display()
        )));
    }
    Ok(dir)
}

fn common(name: &str, exec: &str, validator: &Path) -> AciSpec {
    let mut spec = AciSpec::busybox(name);
    spec.exec = vec!["/ace-validator".into(), exec.into()];
    spec.env = vec![("IN_ACE_VALIDATOR".into(), "correct".into())];
    spec.mount_points = vec![("database".into(), "/db".into(), false)];
    spec.host_files = vec![("/ace-validator".into(), validator.to_path_buf(), 0o755)];
    spec.dirs = vec!["/db".into()];
    spec
}

/// `coreos.com/ace-validator-main`: the main phase, with the pre-start and
/// post-stop phases as its event handlers.
pub fn main_image(validator: &Path) -> AciSpec {
    let mut spec = common(MAIN_IMAGE, "main", validator);
    spec.working_directory = Some("/opt/acvalidator".into());
    spec.dirs.extend(["/opt".into(), "/opt/acvalidator".into()]);
    spec.app_extra.insert(
        "eventHandlers".into(),
        json!([
            {"name": "pre-start", "exec": ["/ace-validator", "prestart"]},
            {"name": "post-stop", "exec": ["/ace-validator", "poststop"]},
        ]),
    );
    spec.app_extra.insert(
        "ports".into(),
        json!([{"name": "www", "protocol": "tcp", "port": 80}]),
    );
    spec.app_extra.insert(
        "isolators".into(),
        json!([{"name": "resource/memory", "value": {"limit": "1G"}}]),
    );
    spec.annotations = vec![
        ("created".into(), "2026-11-29T00:00:00Z".into()),
        ("authors".into(), "rkt-rs conformance kit".into()),
        ("homepage".into(), "https://github.com/appc/spec".into()),
        (
            "documentation".into(),
            "https://github.com/appc/spec/blob/master/spec/ace.md".into(),
        ),
    ];
    spec
}

/// `coreos.com/ace-validator-sidekick`: the second app sharing `database`.
pub fn sidekick_image(validator: &Path) -> AciSpec {
    common(SIDEKICK_IMAGE, "sidekick", validator)
}

/// Which phases printed "<phase> OK" in `output`.
pub fn phases_ok(output: &str) -> Vec<&'static str> {
    PHASES
        .into_iter()
        .filter(|phase| {
            output
                .lines()
                .any(|l| l.trim_end().ends_with(&format!("{phase} OK")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_found_in_relayed_output() {
        let out = "prestart OK\n[ace-validator-sidekick] sidekick OK\nmain FAIL\n";
        assert_eq!(phases_ok(out), vec!["prestart", "sidekick"]);
    }

    #[test]
    fn the_main_image_carries_what_the_validator_expects() {
        let m = main_image(Path::new("/x")).manifest();
        assert_eq!(m["app"]["workingDirectory"], "/opt/acvalidator");
        assert_eq!(m["app"]["eventHandlers"][0]["exec"][1], "prestart");
        assert_eq!(m["app"]["mountPoints"][0]["path"], "/db");
        assert_eq!(m["app"]["isolators"][0]["value"]["limit"], "1G");
        assert_eq!(m["app"]["environment"][0]["value"], "correct");
        let s = sidekick_image(Path::new("/x")).manifest();
        assert_eq!(s["app"]["exec"][1], "sidekick");
    }
}
