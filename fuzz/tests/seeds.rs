//! Replays every seed (fuzz/seeds/<target>/*) and every saved corpus entry
//! (fuzz/corpus/<target>/*, when a fuzzing run left one) through the targets'
//! checks: the CI smoke test, no libFuzzer needed.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["seeds", "corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read input");
            eprintln!("{target}: {}", path.display());
            check(&data);
            count += 1;
        }
    }
    assert!(count > 0, "{target}: no seeds in fuzz/seeds/{target}");
}

#[test]
fn image_manifest_seeds() {
    replay("image_manifest", rkt_fuzz::image_manifest);
}

#[test]
fn pod_manifest_seeds() {
    replay("pod_manifest", rkt_fuzz::pod_manifest);
}

#[test]
fn aci_import_seeds() {
    replay("aci_import", rkt_fuzz::aci_import);
}

#[test]
fn discovery_meta_seeds() {
    replay("discovery_meta", rkt_fuzz::discovery_meta);
}

#[test]
fn cni_result_seeds() {
    replay("cni_result", rkt_fuzz::cni_result);
}

#[test]
fn oci_manifest_seeds() {
    replay("oci_manifest", rkt_fuzz::oci_manifest);
}
