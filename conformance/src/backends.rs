//! The stage1 backends the kit checks. Linking a backend crate here puts its
//! registration in this crate's view of the registry, so the kit knows its
//! capabilities (multi-app, networks...) and whether it can run on this machine.
//!
//! A new stage1 is one line below (and its crate in Cargo.toml).

use rkt_backend_fly as _;
use rkt_backend_kvm as _;
use rkt_backend_nspawn as _;

use rkt_engine::stage::{Availability, Stage1, Stage1Capabilities, registry};

/// A registered stage1 as the kit sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: &'static str,
    pub capabilities: Stage1Capabilities,
    pub availability: Availability,
}

/// Every stage1 linked into the kit, by name.
pub fn all() -> Result<Vec<Backend>, String> {
    let stage1s = registry::all::<dyn Stage1>().map_err(|e| e.to_string())?;
    Ok(stage1s
        .iter()
        .map(|s| Backend {
            name: s.name(),
            capabilities: s.capabilities(),
            availability: s.availability(),
        })
        .collect())
}

/// The named stage1, or an error listing the ones the kit knows.
pub fn find(name: &str) -> Result<Backend, String> {
    let all = all()?;
    let names: Vec<&str> = all.iter().map(|b| b.name).collect();
    all.iter()
        .find(|b| b.name == name)
        .cloned()
        .ok_or_else(|| format!("unknown stage1 {name:?} (registered: {})", names.join(", ")))
}
