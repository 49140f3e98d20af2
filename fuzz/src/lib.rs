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

/// The appc discovery meta-tag parser (pages come from any server the name points
/// at). Input: the first line is the app name, the rest the page. Every content
/// comes from the page; every endpoint is a prefix of the name with one URL.
pub fn discovery_meta(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, html) = text.split_once('\n').unwrap_or(("example.com/app", &text));
    let (tags, templates, pubkeys) = rkt_backend_finders::discovery::fuzz_meta_tags(html, name);
    for (_, content) in &tags {
        assert!(
            html.contains(content.as_str()),
            "content {content:?} not from the page"
        );
    }
    for (prefix, url) in templates.iter().chain(&pubkeys) {
        assert!(
            name.starts_with(prefix.as_str()),
            "{prefix:?} is not a prefix of {name:?}"
        );
        assert!(
            !url.is_empty() && !url.contains(char::is_whitespace),
            "url {url:?}"
        );
    }
}

/// The CNI result parser (a plugin's stdout), under each configuration version
/// rkt accepts; an address it reports carries no prefix length.
pub fn cni_result(data: &[u8]) {
    for version in ["0.2.0", "0.3.1", "0.4.0", "1.0.0"] {
        if let Ok((Some(ip), _)) = rkt_backend_cni::fuzz_parse_result(data, version) {
            assert!(!ip.contains('/'), "address {ip:?} keeps its prefix length");
        }
    }
}

/// The docker/OCI manifest, index and image-config parsers, as the docker://
/// and oci: sources chain them: an index picks a platform; a manifest lists
/// layers; a config becomes an ACI manifest that must itself be valid.
pub fn oci_manifest(data: &[u8]) {
    use rkt_backend_finders::oci;
    if oci::is_index(data, "") {
        let _ = oci::pick_platform(data);
    }
    if let Ok(manifest) = oci::parse_manifest(data) {
        assert!(
            manifest.layers.iter().all(|l| !l.media_type.contains("zstd")),
            "a zstd layer was accepted"
        );
    }
    if let Ok(config) = serde_json::from_slice::<oci::ImageConfig>(data) {
        if let Ok(aci) = oci::aci_manifest("fuzz/image", Some("latest"), &config) {
            let json = aci.to_json();
            rkt_engine::schema::ImageManifest::from_json(&json).expect("the ACI manifest parses again");
        }
    }
}
