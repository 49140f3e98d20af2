//! Temp entries left by a crashed `rkt`: an import's or render's scratch under
//! `cas/tmp/`, an `atomic_write` temp (`.tmp-*`) beside an index or file record.
//!
//! A live writer deletes its own temps (see `Scratch`); only a killed one leaves
//! them. Every temp name carries its creator's pid (`<what>-<pid>-<suffix>`), so an
//! entry whose creator is gone is removed, and one whose pid is alive (its creator,
//! or an unrelated process that reused the pid) is left for a later sweep.

use std::path::Path;

use super::{IoContext, Store, StoreError};

/// Removes abandoned temps; returns how many it removed.
pub(super) fn remove_abandoned(store: &Store) -> Result<usize, StoreError> {
    let mut removed = 0;
    for (dir, only_dot_tmp) in [
        (store.tmp_dir(), false),
        (store.index_dir(), true),
        (store.files_dir(), true),
    ] {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(format!("list {}", dir.display()), e)),
        };
        for entry in listing {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if only_dot_tmp && !name.starts_with(".tmp-") {
                continue;
            }
            if creator_pid(&name).is_some_and(|pid| !is_alive(pid)) {
                remove(&entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// `<anything>-<pid>-<suffix>` -> pid.
fn creator_pid(name: &str) -> Option<i32> {
    let mut parts = name.rsplit('-');
    let _suffix = parts.next()?;
    parts.next()?.parse().ok().filter(|pid| *pid > 0)
}

fn is_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => crate::fsutil::remove_tree(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil;

    #[test]
    fn temps_of_dead_processes_go_and_live_ones_stay() {
        let (_dir, store) = testutil::store();
        // A pid that cannot be alive: above the kernel's pid_max ceiling (2^22).
        let dead = 1 << 23;
        let mine = std::process::id();
        let tmp = store.tmp_dir();
        let index = store.index_dir();
        std::fs::create_dir_all(tmp.join(format!("render-tree-sha512-ab-{dead}-77/rootfs"))).expect("mkdir");
        std::fs::create_dir_all(&index).expect("mkdir");
        for path in [
            tmp.join(format!("import-{dead}-12")),
            tmp.join(format!("import-{mine}-13")),
            index.join(format!(".tmp-x.json-{dead}-14")),
            index.join(format!(".tmp-x.json-{mine}-15")),
            index.join(format!("sha512-{dead}-16.json")),
        ] {
            std::fs::write(path, b"x").expect("write");
        }
        assert_eq!(remove_abandoned(&store).expect("sweep"), 3);
        let mut left: Vec<String> = [&tmp, &index]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).expect("ls"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!(".tmp-x.json-{mine}-15"),
                format!("import-{mine}-13"),
                format!("sha512-{dead}-16.json"),
            ]
        );
    }
}
