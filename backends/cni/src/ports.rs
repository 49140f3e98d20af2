//! Host-port reservations. The portmap plugin happily installs a second DNAT for
//! a host port already forwarded, so the runtime keeps its own table: one file
//! per `protocol-port` under /run/rkt-rs/ports naming the pod that holds it. A
//! holder whose network namespace is gone (a crashed pod not yet collected) no
//! longer counts.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{CniError, netns};

const DIR: &str = "/run/rkt-rs/ports";

/// One `--port` resolved against the pod's apps, in portmap's runtimeConfig shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

impl PortMapping {
    pub fn key(&self) -> String {
        format!("{}-{}", self.protocol, self.host_port)
    }
}

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// Reserves every mapping for `owner`, or none: a conflict releases what this
/// call took and names the pod holding the port.
pub fn reserve(owner: &str, mappings: &[PortMapping]) -> Result<(), CniError> {
    let dir = dir();
    let io = |what: String| move |e: std::io::Error| CniError::Io(format!("{what}: {e}"));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let lock = std::fs::File::open(&dir).map_err(io(format!("opening {}", dir.display())))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| CniError::Io(format!("locking {}: {e}", dir.display())))?;
    let mut taken = Vec::new();
    for mapping in mappings {
        let path = dir.join(mapping.key());
        if let Ok(holder) = std::fs::read_to_string(&path) {
            let holder = holder.trim();
            if holder != owner && netns::is_pinned(&netns::path_for(holder)) {
                release_keys(owner, &taken);
                return Err(CniError::PortTaken {
                    port: format!("{}/{}", mapping.protocol, mapping.host_port),
                    holder: holder.to_string(),
                });
            }
        }
        let mut file = std::fs::File::create(&path).map_err(io(format!("writing {}", path.display())))?;
        file.write_all(owner.as_bytes())
            .map_err(io(format!("writing {}", path.display())))?;
        taken.push(mapping.key());
    }
    Ok(())
}

/// Releases the keys `owner` still holds (another pod may hold them by now).
pub fn release_keys(owner: &str, keys: &[String]) {
    let dir = dir();
    for key in keys {
        release_one(&dir.join(key), owner);
    }
}

fn release_one(path: &Path, owner: &str) {
    if std::fs::read_to_string(path).is_ok_and(|h| h.trim() == owner) {
        let _ = std::fs::remove_file(path);
    }
}
