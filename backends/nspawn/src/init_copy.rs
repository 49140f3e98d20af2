//! The stage1 init every nspawn pod runs: one read-only copy of the running
//! `rkt` binary per build, shared by all pods and bound read-only onto each
//! pod's `/rkt/init` in the pod's private mount namespace.
//!
//! Why a copy and not the host's own file: a bind of the host's binary would
//! let a pod's root that can remount it rewrite the host's rkt
//! (CVE-2019-5736). Why one shared copy and not one per pod: a copy per pod
//! costs the binary's size in disk writes on every start (12 MB released,
//! ~250 MB debug: fifty concurrent test pods filled a CI disk). A pod cannot
//! change the shared copy: the bind is read-only and nosuid, and while any pod
//! runs, its init executes the file, so the kernel refuses to open it for
//! writing (ETXTBSY) even after a remount.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rkt_engine::fsutil;

use crate::NspawnError;

const PREFIX: &str = "init-";

/// Copies of other builds unused this long are removed when a new one is
/// made; a pod still running one keeps its bind (the mount holds the file).
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The shared copy of the running binary in `cache`, made when absent. Its
/// mtime says when a pod last used it, which keeps a prune from removing it
/// between here and the bind (the bind takes a path: an fd opened outside the
/// pod's new mount namespace cannot be bound from inside it).
pub fn prepare(cache: &Path) -> Result<PathBuf, NspawnError> {
    copy_of(Path::new("/proc/self/exe"), cache)
}

fn copy_of(binary: &Path, cache: &Path) -> Result<PathBuf, NspawnError> {
    let key = fsutil::stat_key(&[binary], "nspawn init")
        .ok_or_else(|| NspawnError::Invalid(format!("cannot stat {}", binary.display())))?;
    let path = cache.join(format!("{PREFIX}{key}"));
    match File::open(&path) {
        // A copy of another size was damaged after it was made (a disk that
        // lost its tail, a hand that truncated it): made again, not run.
        Ok(file) if same_size(&file, binary) => {
            file.set_modified(SystemTime::now())
                .map_err(|e| NspawnError::io(format!("touching {}", path.display()), e))?;
            return Ok(path);
        }
        Ok(_) => tracing::warn!("{} is damaged; copying rkt again", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NspawnError::io(format!("opening {}", path.display()), e)),
    }
    let err = |e| NspawnError::io(format!("copying {} to {}", binary.display(), path.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache)
        .map_err(err)?;
    copy_durably(binary, &path).map_err(err)?;
    prune_stale(cache, &path);
    Ok(path)
}

fn same_size(copy: &File, binary: &Path) -> bool {
    let size = |m: io::Result<std::fs::Metadata>| m.ok().map(|m| m.len());
    size(copy.metadata()).is_some_and(|len| Some(len) == size(std::fs::metadata(binary)))
}

/// Temp file, fsync, rename: a crash never leaves a truncated init that every
/// later pod of this build would run. Concurrent makers each rename a whole copy.
fn copy_durably(binary: &Path, path: &Path) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        std::fs::copy(binary, &tmp)?;
        let file = File::open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o555))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsutil::fsync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}-{}", std::process::id(), fsutil::unique_suffix()));
    PathBuf::from(tmp)
}

/// Best effort: removes other builds' copies (and leftover temp files) older
/// than [`STALE_AFTER`].
fn prune_stale(cache: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX));
        if !ours || path == current {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn age(path: &Path, by: Duration) {
        let file = File::open(path).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn one_read_only_copy_serves_every_pod_of_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("rkt");
        std::fs::write(&binary, b"build one").unwrap();
        let cache = dir.path().join("cache");
        let first = copy_of(&binary, &cache).unwrap();
        let inode = first.metadata().unwrap().ino();
        age(&first, STALE_AFTER * 2);
        let second = copy_of(&binary, &cache).unwrap();
        let meta = second.metadata().unwrap();
        assert_eq!(meta.ino(), inode, "the second pod reuses the copy");
        assert_ne!(
            meta.ino(),
            binary.metadata().unwrap().ino(),
            "never the binary itself"
        );
        assert_eq!(meta.mode() & 0o7777, 0o555);
        assert!(
            meta.modified().unwrap().elapsed().unwrap() < STALE_AFTER,
            "a use renews it"
        );
        assert_eq!(std::fs::read(&second).unwrap(), b"build one");
        assert_eq!(names(&cache).len(), 1, "no temp file left");
    }

    #[test]
    fn pods_starting_together_all_get_one_whole_copy() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("rkt");
        let content: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&binary, &content).unwrap();
        let cache = dir.path().join("cache");
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..8)
                .map(|_| s.spawn(|| copy_of(&binary, &cache).unwrap()))
                .collect();
            starts.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
        assert!(std::fs::read(&paths[0]).unwrap() == content, "a whole copy");
        assert_eq!(names(&cache).len(), 1, "no temp file left: {:?}", names(&cache));
    }

    #[test]
    fn a_truncated_copy_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("rkt");
        std::fs::write(&binary, b"the whole binary").unwrap();
        let cache = dir.path().join("cache");
        let path = copy_of(&binary, &cache).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_mode(0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, b"the wh").unwrap();
        assert_eq!(copy_of(&binary, &cache).unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"the whole binary");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o555);
    }

    #[test]
    fn a_new_build_gets_its_own_copy_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("rkt");
        let cache = dir.path().join("cache");
        std::fs::write(&binary, b"build one").unwrap();
        let one = copy_of(&binary, &cache).unwrap();
        std::fs::write(&binary, b"build two").unwrap();
        let two = copy_of(&binary, &cache).unwrap();
        assert_eq!(std::fs::read(&two).unwrap(), b"build two");
        assert!(one.exists(), "a recent copy may still be starting a pod");

        age(&one, STALE_AFTER * 2);
        std::fs::write(cache.join("unrelated"), b"").unwrap();
        age(&cache.join("unrelated"), STALE_AFTER * 2);
        std::fs::write(&binary, b"build three").unwrap();
        let three = copy_of(&binary, &cache).unwrap();
        assert!(!one.exists(), "the stale copy is gone: {:?}", names(&cache));
        assert!(two.exists() && three.exists());
        assert!(cache.join("unrelated").exists(), "only copies are pruned");
    }
}
