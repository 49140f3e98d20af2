//! The CRI ImageService of `rkt cri-service` against Debian's docker-registry
//! on 127.0.0.1, as root: every critest-style case of the conformance kit
//! (`rkt_conformance::cri_images`), and the store shared with the rest of
//! rkt: what PullImage brings in, `rkt image list` shows and `rkt run` runs;
//! RemoveImage of an image a prepared pod uses behaves as `rkt image rm`.

#[allow(dead_code)] // each test binary uses its own subset
mod common;

use rkt_conformance::Rkt;
use rkt_conformance::cri_images::{self, ImageClient};
use rkt_conformance::cri_runtime::CriServer;

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    let h = common::harness(test)?;
    if let Some(why) = cri_images::unavailable() {
        eprintln!("{test}: skipped: {why}");
        return None;
    }
    Some(h)
}

/// On nspawn, so the case that runs containers from a pulled image runs too.
#[test]
fn critest_image_cases_pass() {
    let test = "critest_image_cases_pass";
    let Some(h) = common::stage1_harness(test, "nspawn") else {
        return;
    };
    if let Some(why) = cri_images::unavailable() {
        eprintln!("{test}: skipped: {why}");
        return;
    }
    let results = cri_images::run_cases(&h, None).expect("CRI image session");
    for (name, result) in &results {
        eprintln!("{name:<32} {result:?}");
    }
    assert_eq!(results.len(), cri_images::cases().len());
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    assert!(h.rkt(&["image", "list", "--no-legend"]).stdout.trim().is_empty());
}

#[test]
fn pulled_images_are_rkts_images() {
    let test = "pulled_images_are_rkts_images";
    let Some(h) = harness(test) else { return };
    let Some(registry) = common::registry(test) else {
        return;
    };
    let layout = h.work().join("layout");
    let mut base = rkt_conformance::registry::busybox_layer().expect("busybox layer");
    // The layout's config runs the app in /data.
    base.files.push(("data/keep".into(), Vec::new(), 0o644));
    rkt_conformance::registry::oci_layout(&layout, &[("v1", vec![&base])], "echo from the registry")
        .expect("layout");
    registry.push(&layout, "v1", "team/app").expect("push");
    let insecure = format!("--insecure-registry={}", registry.addr);
    let server = CriServer::start(&h, &h.work().join("cri.sock"), &[], &[&insecure]).expect("cri-service");
    let client = ImageClient::connect(&server.socket).expect("connect");

    let image = format!("{}/team/app:v1", registry.addr);
    let id = client.pull(&image, None).expect("PullImage");
    let listed = h.rkt(&["image", "list", "--no-legend", "--full", "--fields=id,name"]);
    assert!(listed.stdout.contains(&id), "{}", listed.describe());
    let run = h.run(&[&id]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert!(run.stdout.contains("from the registry"), "{}", run.describe());

    // `rkt fetch` of the same docker:// image gives the same image, and the
    // CRI knows it by its tag whichever way it came in.
    let fetched = h.rkt(&[
        "fetch",
        "--insecure-options=image,http",
        &format!("docker://{image}"),
    ]);
    assert_eq!(fetched.stdout.trim(), id, "{}", fetched.describe());

    // A prepared pod keeps its tree: RemoveImage removes the image (as `rkt
    // image rm` does), and the pod still runs.
    let prepared = h.rkt(&[
        "prepare",
        "--quiet",
        "--insecure-options=image",
        "--stage1=fly",
        &id,
    ]);
    assert_eq!(prepared.code, 0, "{}", prepared.describe());
    let uuid = prepared.stdout.trim().to_string();
    client.remove(&image).expect("RemoveImage");
    assert!(client.status(&image).expect("ImageStatus").is_none());
    assert!(client.status(&id).expect("ImageStatus").is_none());
    let listed = h.rkt(&["image", "list", "--no-legend", "--full"]);
    assert!(!listed.stdout.contains(&id), "{}", listed.describe());
    let out = h.rkt(&["run-prepared", "--net=host", &uuid]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stdout.contains("from the registry"), "{}", out.describe());
    let gc = h.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
}
