//! `rkt image ...` through the real binary, as root: listing, references, export,
//! extract/render, rm and gc next to pods, verify.

mod common;
use common::{harness, one_line_254};

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rkt_conformance::harness::RunOutput;
use rkt_conformance::{AciSpec, Rkt};
use rkt_engine::pod::layout::{self, AppRootfs};
use rkt_engine::runner::Runtime;
use uuid::Uuid;

fn ok(out: &RunOutput) -> &str {
    assert_eq!(out.code, 0, "{}", out.describe());
    &out.stdout
}

/// Fetches the image built from `spec`; returns its ID and the ACI's path.
fn fetch(rkt: &Rkt, spec: &AciSpec) -> (String, PathBuf) {
    let path = rkt.image(spec).expect("image");
    let out = rkt.rkt(&["fetch", "--insecure-options=image", &path.display().to_string()]);
    (ok(&out).trim().to_string(), path)
}

/// An image without busybox: a manifest and the given files only.
fn tiny(name: &str, version: &str, files: &[(&str, &[u8])]) -> AciSpec {
    let mut spec = AciSpec::busybox(name);
    spec.busybox = false;
    spec.labels = vec![
        ("version".into(), version.into()),
        ("arch".into(), "amd64".into()),
    ];
    spec.files = files
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_vec(), 0o644))
        .collect();
    spec
}

fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|l| {
            l.split('\t')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn image_list_fields_sort_order_formats() {
    let Some(rkt) = harness("image_list_fields_sort_order_formats") else {
        return;
    };
    let (b_id, _) = fetch(&rkt, &tiny("example.com/bbb", "1.0", &[("f", b"b")]));
    let (a_id, _) = fetch(&rkt, &tiny("example.com/aaa", "2.0", &[("f", &[7u8; 5000])]));

    let out = rkt.rkt(&["image", "list"]);
    let table = rows(ok(&out));
    assert_eq!(table[0], ["ID", "NAME", "SIZE", "IMPORT TIME", "LAST USED"]);
    assert_eq!(table.len(), 3, "{}", out.stdout);
    // Import order by default; short IDs as rkt (algorithm + 12 hex digits).
    assert_eq!(table[1][0], b_id[..19]);
    assert_eq!(table[1][1], "example.com/bbb:1.0");
    assert!(table[1][2].ends_with("KiB"), "{:?}", table[1]);
    assert!(table[1][3].ends_with("ago"), "{:?}", table[1]);
    assert_eq!(table[2][1], "example.com/aaa:2.0");
    // Tab-aligned: every column starts at the same tab stop on every line.
    let starts: Vec<usize> = out
        .stdout
        .lines()
        .map(|l| l.find("example.com").unwrap_or(4))
        .collect();
    assert!(starts[1..].iter().all(|s| *s == starts[1]), "{:?}", out.stdout);

    let out = rkt.rkt(&["image", "list", "--no-legend", "--fields=name,id", "--sort=name"]);
    let table = rows(ok(&out));
    assert_eq!(table.len(), 2);
    assert_eq!(table[0], ["example.com/aaa:2.0", &a_id[..19]]);
    let out = rkt.rkt(&[
        "image",
        "list",
        "--no-legend",
        "--fields=name",
        "--sort=name",
        "--order=desc",
    ]);
    assert_eq!(ok(&out), "example.com/bbb:1.0\nexample.com/aaa:2.0\n");
    let out = rkt.rkt(&[
        "image",
        "list",
        "--no-legend",
        "--fields=name",
        "--sort=size",
        "--order=desc",
    ]);
    assert_eq!(
        rows(ok(&out))[0],
        ["example.com/aaa:2.0"],
        "the bigger image first"
    );

    let out = rkt.rkt(&[
        "image",
        "list",
        "--full",
        "--no-legend",
        "--fields=id,size,importtime,latest",
    ]);
    let table = rows(ok(&out));
    assert_eq!(table[0][0], b_id, "--full: the whole ID");
    assert!(table[0][1].parse::<u64>().is_ok(), "--full: bytes {:?}", table[0]);
    assert!(
        table[0][2].ends_with("+0000 UTC"),
        "--full: absolute time {:?}",
        table[0]
    );
    assert_eq!(table[0][3], "true");

    for format in ["--format=json", "--format=json-pretty"] {
        let out = rkt.rkt(&["image", "list", format]);
        let json: serde_json::Value = serde_json::from_str(ok(&out)).expect("json");
        let entries = json.as_array().expect("array");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["id"], b_id.as_str());
        assert_eq!(entries[0]["name"], "example.com/bbb:1.0");
        for key in ["import_time", "last_used_time", "size"] {
            assert!(entries[0][key].as_u64().is_some_and(|n| n > 0), "{key}: {json}");
        }
    }
    assert!(
        rkt.rkt(&["image", "list", "--format=json-pretty"])
            .stdout
            .lines()
            .count()
            > 2
    );

    one_line_254(&rkt.rkt(&["image", "list", "--fields=id,bogus"]), "bogus");
    one_line_254(&rkt.rkt(&["image", "list", "--fields=id,id"]), "twice");
    one_line_254(&rkt.rkt(&["image", "list", "--order=up"]), "up");
}

#[test]
fn image_references_resolve_as_rkt() {
    let Some(rkt) = harness("image_references_resolve_as_rkt") else {
        return;
    };
    // 17 images: two of them share their first hex digit.
    let ids: Vec<String> = (0..17)
        .map(|i| fetch(&rkt, &tiny("example.com/many", &format!("{i}.0"), &[("f", b"x")])).0)
        .collect();
    let (amd, _) = fetch(&rkt, &tiny("example.com/multi", "1.0", &[("f", b"amd")]));
    let mut arm_spec = tiny("example.com/multi", "1.0", &[("f", b"arm")]);
    arm_spec.labels[1].1 = "aarch64".into();
    let (arm, _) = fetch(&rkt, &arm_spec);

    let labels_of = |reference: &str| -> String {
        let out = rkt.rkt(&["image", "cat-manifest", "--pretty-print=false", reference]);
        let m: serde_json::Value = serde_json::from_str(ok(&out)).expect("manifest json");
        let labels = m["labels"].as_array().expect("labels");
        labels
            .iter()
            .map(|l| {
                format!(
                    "{}={}",
                    l["name"].as_str().unwrap_or(""),
                    l["value"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(labels_of(&ids[3]), "version=3.0,arch=amd64", "full ID");
    assert_eq!(labels_of(&ids[3][..7 + 14]), "version=3.0,arch=amd64", "short ID");
    assert_eq!(
        labels_of("example.com/many:5.0"),
        "version=5.0,arch=amd64",
        "name:version"
    );
    assert_eq!(
        labels_of("example.com/multi,arch=amd64"),
        "version=1.0,arch=amd64"
    );
    // A bare name is the newest import.
    assert_eq!(
        rkt.rkt(&[
            "image",
            "export",
            "example.com/multi",
            &rkt.work().join("n.aci").display().to_string()
        ])
        .code,
        0
    );
    let exported = std::fs::read(rkt.work().join("n.aci")).expect("exported");
    assert!(
        exported.windows(7).any(|w| w == b"aarch64"),
        "newest: {arm} not {amd}"
    );

    let first = |id: &String| id[..8].to_string();
    let prefix = ids
        .iter()
        .map(first)
        .find(|p| ids.iter().filter(|id| first(id) == *p).count() > 1)
        .expect("pigeonhole");
    let count = ids.iter().filter(|id| first(id) == prefix).count();
    let out = rkt.rkt(&["image", "cat-manifest", &prefix]);
    one_line_254(&out, "ambiguous");
    assert!(
        out.stderr.contains(&format!("{count} images")),
        "{}",
        out.describe()
    );

    one_line_254(
        &rkt.rkt(&["image", "cat-manifest", "example.com/nope"]),
        "example.com/nope",
    );
    one_line_254(
        &rkt.rkt(&["image", "cat-manifest", "example.com/multi,arch"]),
        "label=value",
    );
    one_line_254(&rkt.rkt(&["image", "cat-manifest", "sha512-xyz"]), "hex digits");

    let pretty = rkt.rkt(&["image", "cat-manifest", "example.com/many:1.0"]);
    assert!(ok(&pretty).lines().count() > 5, "pretty by default");
    let compact = rkt.rkt(&[
        "image",
        "cat-manifest",
        "--pretty-print=false",
        "example.com/many:1.0",
    ]);
    assert_eq!(ok(&compact).lines().count(), 1);
    let a: serde_json::Value = serde_json::from_str(&pretty.stdout).expect("json");
    let b: serde_json::Value = serde_json::from_str(&compact.stdout).expect("json");
    assert_eq!(a, b);
    assert_eq!(a["name"], "example.com/many");
}

fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg(a).arg(b).status().expect("cmp").success()
}

#[test]
fn image_export_is_byte_identical_to_the_import() {
    let Some(rkt) = harness("image_export_is_byte_identical_to_the_import") else {
        return;
    };
    let plain = rkt.image(&AciSpec::busybox("example.com/export")).expect("image");
    let gz = rkt.work().join("export.aci.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", plain.display(), gz.display()))
        .status()
        .expect("gzip");
    assert!(status.success());
    let fetched = rkt.rkt(&["fetch", "--insecure-options=image", &gz.display().to_string()]);
    let id = ok(&fetched).trim().to_string();

    let out = rkt.work().join("out.aci");
    let shown = out.display().to_string();
    ok(&rkt.rkt(&["image", "export", &id, &shown]));
    assert!(
        cmp(&out, &plain),
        "a gzip import exports as the uncompressed original"
    );

    let exists = rkt.rkt(&["image", "export", &id, &shown]);
    one_line_254(&exists, "--overwrite");
    std::fs::write(&out, b"precious").expect("write");
    one_line_254(&rkt.rkt(&["image", "export", &id, &shown]), "exists");
    assert_eq!(std::fs::read(&out).expect("read"), b"precious", "left alone");

    // The same image imported plain: the same ID, the same bytes out.
    let again = rkt.rkt(&["fetch", "--insecure-options=image", &plain.display().to_string()]);
    assert_eq!(ok(&again).trim(), id);
    ok(&rkt.rkt(&[
        "image",
        "export",
        "--overwrite",
        "example.com/export:1.0.0",
        &shown,
    ]));
    assert!(cmp(&out, &plain));
    let leftovers: Vec<_> = std::fs::read_dir(rkt.work())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Every path below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("ls").flatten() {
            let path = e.path();
            out.push(path.strip_prefix(root).expect("prefix").display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn image_extract_and_render() {
    let Some(rkt) = harness("image_extract_and_render") else {
        return;
    };
    let base = AciSpec::busybox("example.com/base");
    fetch(&rkt, &base);
    let mut layer = AciSpec::layer("example.com/layer", &base);
    layer.files = vec![("etc/layer".into(), b"layer\n".to_vec(), 0o644)];
    let (layer_id, _) = fetch(&rkt, &layer);
    let out = |name: &str| rkt.work().join(name);
    let s = |p: PathBuf| p.display().to_string();

    ok(&rkt.rkt(&["image", "extract", &layer_id, &s(out("x"))]));
    assert_eq!(
        tree(&out("x")),
        ["manifest", "rootfs", "rootfs/etc", "rootfs/etc/layer"]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out("x").join("manifest")).expect("manifest")).expect("json");
    assert_eq!(manifest["name"], "example.com/layer");

    ok(&rkt.rkt(&[
        "image",
        "extract",
        "--rootfs-only",
        "example.com/layer",
        &s(out("xr")),
    ]));
    assert_eq!(tree(&out("xr")), ["etc", "etc/layer"]);

    ok(&rkt.rkt(&["image", "render", "example.com/layer", &s(out("r"))]));
    let rendered = tree(&out("r"));
    for want in [
        "manifest",
        "rootfs/bin/busybox",
        "rootfs/etc/passwd",
        "rootfs/etc/layer",
    ] {
        assert!(
            rendered.iter().any(|p| p == want),
            "render has {want}: {rendered:?}"
        );
    }
    ok(&rkt.rkt(&["image", "render", "--rootfs-only", &layer_id, &s(out("rr"))]));
    assert!(out("rr").join("bin/busybox").exists() && out("rr").join("etc/layer").exists());
    assert!(!out("rr").join("rootfs").exists());

    // An existing directory is replaced only with --overwrite.
    one_line_254(
        &rkt.rkt(&["image", "extract", &layer_id, &s(out("r"))]),
        "--overwrite",
    );
    assert!(out("r").join("rootfs/bin/busybox").exists(), "left alone");
    ok(&rkt.rkt(&["image", "extract", "--overwrite", &layer_id, &s(out("r"))]));
    assert_eq!(
        tree(&out("r")),
        ["manifest", "rootfs", "rootfs/etc", "rootfs/etc/layer"]
    );
    one_line_254(
        &rkt.rkt(&["image", "render", &layer_id, &s(out("xr"))]),
        "--overwrite",
    );
    ok(&rkt.rkt(&[
        "image",
        "render",
        "--overwrite",
        "--rootfs-only",
        &layer_id,
        &s(out("xr")),
    ]));
    assert!(out("xr").join("bin/busybox").exists());
}

/// Appends one entry whose name goes into the header bytes as is (the tar crate
/// refuses `..` through its safe API, which is the point here).
fn append_raw(tar: &mut tar::Builder<Vec<u8>>, name: &[u8], data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
    h.set_cksum();
    tar.append(&h, data)
}

#[test]
fn image_extract_never_writes_outside_the_target() {
    let Some(rkt) = harness("image_extract_never_writes_outside_the_target") else {
        return;
    };
    let spec = tiny("example.com/evil", "1.0", &[("ok", b"ok")]);
    let clean = std::fs::read(rkt.image(&spec).expect("image")).expect("read");
    // The clean archive without its end-of-archive blocks, then the hostile entry.
    let mut tar = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&clean[..]);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let header = entry.header().clone();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data).expect("read");
        tar.append(&header, &data[..]).expect("copy");
    }
    append_raw(&mut tar, b"rootfs/../../escaped", b"escaped\n").expect("hostile entry");
    let evil = rkt.work().join("evil.aci");
    std::fs::write(&evil, tar.into_inner().expect("tar")).expect("write");
    let fetched = rkt.rkt(&["fetch", "--insecure-options=image", &evil.display().to_string()]);
    let id = ok(&fetched).trim().to_string();

    let target = rkt.work().join("sub").join("out");
    for args in [
        vec!["image", "extract", id.as_str()],
        vec!["image", "extract", "--rootfs-only", id.as_str()],
        vec!["image", "render", id.as_str()],
    ] {
        let mut args = args.clone();
        let shown = target.display().to_string();
        args.push(&shown);
        one_line_254(&rkt.rkt(&args), "..");
        assert!(!target.exists(), "{args:?}: nothing half-written");
        assert_eq!(
            tree(&rkt.work().join("sub")),
            Vec::<String>::new(),
            "{args:?}: no temp left"
        );
        for escaped in [
            rkt.work().join("escaped"),
            rkt.work().join("sub/escaped"),
            rkt.dir.join("escaped"),
        ] {
            assert!(!escaped.exists(), "{args:?}: wrote {}", escaped.display());
        }
    }
}

#[test]
fn image_rm_reports_each_and_fails_after_trying_all() {
    let Some(rkt) = harness("image_rm_reports_each_and_fails_after_trying_all") else {
        return;
    };
    let (a, _) = fetch(&rkt, &tiny("example.com/rm-a", "1.0", &[("f", b"a")]));
    let (b, _) = fetch(&rkt, &tiny("example.com/rm-b", "1.0", &[("f", b"b")]));
    let (c, _) = fetch(&rkt, &tiny("example.com/rm-c", "1.0", &[("f", b"c")]));
    // Rendered, so rm has a tree to take along.
    ok(&rkt.rkt(&[
        "image",
        "render",
        &a,
        &rkt.work().join("ra").display().to_string(),
    ]));

    let out = rkt.rkt(&[
        "image",
        "rm",
        &a[..19],
        "example.com/none",
        "example.com/rm-b:1.0",
    ]);
    assert_eq!(out.code, 254, "{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("successfully removed aci for image: \"{a}\"")),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains(&format!("successfully removed aci for image: \"{b}\"")),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("example.com/none"), "{}", out.describe());
    assert!(
        out.stderr.contains("2 image(s) successfully removed"),
        "{}",
        out.describe()
    );
    let left = rkt.rkt(&["image", "list", "--no-legend", "--full", "--fields=id"]);
    assert_eq!(ok(&left).trim(), c);
    let trees = std::fs::read_dir(rkt.dir.join("cas/tree"))
        .expect("tree dir")
        .count();
    assert_eq!(trees, 0, "no pod used a's tree: it went with the image");

    ok(&rkt.rkt(&["image", "rm", &c]));
    let again = rkt.rkt(&["image", "rm", &c]);
    assert_eq!(again.code, 254, "{}", again.describe());
    assert!(again.stderr.contains("not found"), "{}", again.describe());
}

/// `rkt prepare --quiet` of a pod running `script`; returns its UUID.
fn prepare(rkt: &Rkt, image: &str, script: &str) -> Uuid {
    let out = rkt.rkt(&[
        "prepare",
        "--insecure-options=image",
        "--stage1=fly",
        "--quiet",
        image,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        script,
    ]);
    Uuid::parse_str(ok(&out).trim()).expect("prepare --quiet prints the UUID")
}

/// The prepared pod's app rootfs source: the tree store directory it was prepared on.
fn lower_dir(rkt: &Rkt, uuid: &Uuid) -> PathBuf {
    let runtime = Runtime::existing(&rkt.dir).expect("runtime");
    let info = runtime.pods.info(uuid).expect("pod");
    let app = std::fs::read_dir(info.path.join("appsinfo"))
        .expect("appsinfo")
        .next()
        .expect("one app")
        .expect("entry")
        .file_name();
    match layout::read_app_rootfs(&info.path, &app.to_string_lossy()).expect("rootfs spec") {
        AppRootfs::Overlay { lower } => lower,
        AppRootfs::Copy => layout::app_rootfs(&info.path, &app.to_string_lossy()),
    }
}

#[test]
fn image_rm_leaves_a_prepared_pod_runnable() {
    let Some(rkt) = harness("image_rm_leaves_a_prepared_pod_runnable") else {
        return;
    };
    let (id, _) = fetch(&rkt, &AciSpec::busybox("example.com/prepared"));
    let uuid = prepare(&rkt, &id, "echo ran-$((6*7)) from the prepared pod");
    let lower = lower_dir(&rkt, &uuid);
    assert!(lower.join("bin/busybox").exists());

    // gc with no grace period: the pod's image and tree stay.
    let gc = rkt.rkt(&["image", "gc", "--grace-period=0s"]);
    ok(&gc);
    assert!(!gc.stderr.contains("removed treestore"), "{}", gc.describe());
    assert_eq!(
        ok(&rkt.rkt(&["image", "list", "--no-legend", "--full", "--fields=id"])).trim(),
        id
    );

    // rm takes the image, keeps the tree, and says so.
    let rm = rkt.rkt(&["image", "rm", &id]);
    assert!(ok(&rm).contains("successfully removed aci"), "{}", rm.describe());
    assert!(rm.stderr.contains("kept tree"), "{}", rm.describe());
    assert_eq!(ok(&rkt.rkt(&["image", "list", "--no-legend"])), "");
    ok(&rkt.rkt(&["image", "gc", "--grace-period=0s"]));
    assert!(lower.join("bin/busybox").exists(), "the pod's tree is kept");
    let verify = rkt.rkt(&["image", "verify"]);
    assert!(ok(&verify).contains("no damage"), "{}", verify.describe());

    // The pod still runs, later, from that tree.
    let run = rkt.rkt(&["run-prepared", &uuid.to_string()]);
    assert_eq!(run.stdout, "ran-42 from the prepared pod\n", "{}", run.describe());
    assert_eq!(run.code, 0, "{}", run.describe());

    // Exited but not yet collected: still its tree.
    ok(&rkt.rkt(&["image", "gc", "--grace-period=0s"]));
    assert!(lower.join("bin/busybox").exists());
    // Once the pod is gone, image gc takes the tree.
    ok(&rkt.rkt(&["gc", "--grace-period=0s"]));
    let gc = rkt.rkt(&["image", "gc", "--grace-period=0s"]);
    assert!(
        ok(&gc).is_empty() && gc.stderr.contains("removed treestore"),
        "{}",
        gc.describe()
    );
    assert!(!lower.exists());
    assert_eq!(
        std::fs::read_dir(rkt.dir.join("cas/tree")).expect("ls").count(),
        0
    );
}

#[test]
fn image_gc_races_runs_without_breaking_one() {
    let Some(rkt) = harness("image_gc_races_runs_without_breaking_one") else {
        return;
    };
    let (id, _) = fetch(&rkt, &AciSpec::busybox("example.com/race"));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (runs, gcs) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    (0..4)
                        .map(|_| rkt.run(&[&id, "--exec", "/bin/sh", "--", "-c", "test -x /bin/busybox"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let collector = s.spawn(|| {
            let mut outs = Vec::new();
            // Pods go, so their trees become unused and image gc deletes them while
            // other runs render them again.
            while !done.load(std::sync::atomic::Ordering::Relaxed) || outs.len() < 2 {
                outs.push(rkt.rkt(&["gc", "--grace-period=0s"]));
                outs.push(rkt.rkt(&["image", "gc", "--grace-period=1h"]));
            }
            outs
        });
        let runs: Vec<RunOutput> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (runs, collector.join().expect("collector"))
    });
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.describe());
    }
    for gc in &gcs {
        assert_eq!(gc.code, 0, "{}", gc.describe());
    }
    assert_eq!(runs.len(), 12);
}

#[test]
fn image_verify_reports_damage() {
    let Some(rkt) = harness("image_verify_reports_damage") else {
        return;
    };
    let (id, _) = fetch(&rkt, &AciSpec::busybox("example.com/verify"));
    let (other, _) = fetch(&rkt, &tiny("example.com/other", "1.0", &[("f", b"x")]));
    ok(&rkt.rkt(&[
        "image",
        "render",
        &id,
        &rkt.work().join("r").display().to_string(),
    ]));
    let out = rkt.rkt(&["image", "verify"]);
    assert!(
        ok(&out).contains("2 image(s) and 1 tree(s): no damage found"),
        "{}",
        out.describe()
    );
    let out = rkt.rkt(&["image", "verify", "example.com/verify", &other[..19]]);
    assert_eq!(ok(&out).matches("successfully verified checksum").count(), 2);

    // A file in the rendered tree changes.
    let tree_dir = std::fs::read_dir(rkt.dir.join("cas/tree"))
        .expect("ls")
        .next()
        .expect("one tree")
        .expect("entry")
        .path();
    std::fs::write(tree_dir.join("rootfs/etc/passwd"), b"root::0:0::/:/bin/sh\n").expect("damage");
    let out = rkt.rkt(&["image", "verify"]);
    assert_eq!(out.code, 254, "{}", out.describe());
    assert!(out.stderr.contains("content changed"), "{}", out.describe());
    let out = rkt.rkt(&["image", "verify", "example.com/verify"]);
    assert_eq!(out.code, 254, "{}", out.describe());
    assert!(verifies_clean(&rkt, &other), "the other image is fine");

    // A stored blob changes.
    let blob = walk_files(&rkt.dir.join("cas/blob"))
        .into_iter()
        .find(|p| other.starts_with(&p.file_name().expect("name").to_string_lossy()[..]))
        .expect("other's blob");
    let mut bytes = std::fs::read(&blob).expect("read");
    bytes[600] ^= 0x20;
    std::fs::write(&blob, bytes).expect("write");
    let out = rkt.rkt(&["image", "verify", &other]);
    assert_eq!(out.code, 254, "{}", out.describe());
    assert!(out.stderr.contains("hashes to"), "{}", out.describe());
}

fn verifies_clean(rkt: &Rkt, id: &str) -> bool {
    rkt.rkt(&["image", "verify", id]).code == 0
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Waits until `pid` is queued for an flock on the file with inode `ino`, as
/// /proc/locks shows blocked requests (`-> FLOCK ...`). False if `child` ends first.
fn blocked_on_lock(child: &mut std::process::Child, ino: u64) -> bool {
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        let waiting = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"->")
                && f.get(2) == Some(&"FLOCK")
                && f.get(5) == Some(&pid.as_str())
                && f.get(6)
                    .is_some_and(|id| id.rsplit(':').next() == Some(&ino.to_string()))
        });
        if waiting {
            return true;
        }
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        std::thread::yield_now();
    }
    false
}

fn finish(child: std::process::Child) -> RunOutput {
    let out = child.wait_with_output().expect("wait");
    RunOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn prepare_and_tree_removal_exclude_each_other() {
    let Some(rkt) = harness("prepare_and_tree_removal_exclude_each_other") else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let (id, _) = fetch(&rkt, &AciSpec::busybox("example.com/locks"));
    ok(&rkt.rkt(&[
        "image",
        "render",
        &id,
        &rkt.work().join("r").display().to_string(),
    ]));
    let lock_path = rkt.dir.join("cas/prepare.lock");
    let lock = std::fs::File::open(&lock_path).expect("the trees lock exists after a render");
    let ino = lock.metadata().expect("stat").ino();
    let trees = || std::fs::read_dir(rkt.dir.join("cas/tree")).expect("ls").count();
    assert_eq!(trees(), 1);

    // A prepare between rendering a tree and recording it holds the lock shared:
    // image gc waits for it instead of deleting the tree under it.
    lock.lock_shared().expect("shared");
    let mut gc = rkt
        .command(&["image", "gc", "--grace-period=1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gc");
    assert!(
        blocked_on_lock(&mut gc, ino),
        "image gc did not wait: {}",
        finish(gc).describe()
    );
    assert_eq!(trees(), 1, "nothing removed while a prepare may be using it");
    lock.unlock().expect("unlock");
    let out = finish(gc);
    assert!(
        out.code == 0 && out.stderr.contains("removed treestore"),
        "{}",
        out.describe()
    );
    assert_eq!(trees(), 0);

    // And a prepare waits while trees are being removed.
    lock.lock().expect("exclusive");
    let stage1 = format!("--stage1={}", rkt.stage1);
    let mut run = rkt
        .command(&[
            "run",
            "--insecure-options=image",
            &stage1,
            &id,
            "--exec",
            "/bin/true",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn run");
    assert!(
        blocked_on_lock(&mut run, ino),
        "run did not wait: {}",
        finish(run).describe()
    );
    lock.unlock().expect("unlock");
    let out = finish(run);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(trees(), 1);
}
