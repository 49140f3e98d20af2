//! The properties each fuzz target checks, one function per target, so the seed
//! corpus can be replayed by a plain `cargo test` (tests/seeds.rs) without libFuzzer.
//!
//! Any input may be refused with an error; none may panic, hang or write outside
//! the store it was given.

use rkt_engine::schema::{ImageManifest, PodManifest};
use rkt_engine::store::Store;

/// The appc image manifest parser; a parsed manifest round-trips.
pub fn image_manifest(data: &[u8]) {
    if let Ok(manifest) = ImageManifest::from_json(data) {
        let json = manifest.to_json();
        let again = ImageManifest::from_json(&json).expect("a parsed image manifest parses again");
        assert_eq!(again.to_json(), json, "the image manifest round-trips");
    }
}

/// The appc pod manifest parser; a parsed manifest round-trips.
pub fn pod_manifest(data: &[u8]) {
    if let Ok(manifest) = PodManifest::from_json(data) {
        let json = manifest.to_json();
        let again = PodManifest::from_json(&json).expect("a parsed pod manifest parses again");
        assert_eq!(again.to_json(), json, "the pod manifest round-trips");
    }
}

/// The tar/ACI reader end to end: import (decompression, tar walk, manifest,
/// hashing) into a fresh store, then render (extraction); the store verifies and
/// nothing appears beside it.
pub fn aci_import(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    if let Ok(id) = store.import(&mut &data[..], "fuzz") {
        let _ = store.render(&id);
        let report = store.verify().expect("verify");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        names.iter().all(|n| n == "data"),
        "written beside the store: {names:?}"
    );
}
