//! Micro-benchmarks of stage0's hot paths, so a regression shows up as a number:
//! manifest parsing (every run and every `list` reads manifests), store lookup by
//! ID and by name (every `run IMAGE`), and the pod-state scan behind `list`/`gc`.
//!
//! `cargo bench -p rkt-engine --bench hot_paths`. Not run by `cargo test`.

use std::path::Path;
use std::sync::LazyLock;

use divan::{Bencher, black_box};
use rkt_engine::pod::PodsDir;
use rkt_engine::schema::{ACIdentifier, ImageId, ImageManifest, PodManifest};
use rkt_engine::store::Store;

fn main() {
    divan::main();
}

fn hex_id(c: char) -> String {
    format!("sha512-{}", c.to_string().repeat(128))
}

/// An image manifest as acbuild/actool wrote them, with every section filled.
fn image_manifest_json() -> String {
    format!(
        r#"{{
    "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "coreos.com/etcd",
    "labels": [{{"name": "version", "value": "v3.1.0"}}, {{"name": "os", "value": "linux"}},
               {{"name": "arch", "value": "amd64"}}],
    "app": {{
        "exec": ["/etcd", "--data-dir=/var/lib/etcd"], "user": "0", "group": "0",
        "supplementaryGIDs": [10, 20], "workingDirectory": "/var/lib/etcd",
        "eventHandlers": [{{"name": "pre-start", "exec": ["/bin/prepare-data", "--fast"]}}],
        "environment": [{{"name": "ETCD_NAME", "value": "infra0"}}, {{"name": "PATH", "value": "/usr/bin:/bin"}}],
        "mountPoints": [{{"name": "data-dir", "path": "/var/lib/etcd", "readOnly": false}},
                        {{"name": "certs", "path": "/etc/ssl/etcd", "readOnly": true}}],
        "ports": [{{"name": "client", "protocol": "tcp", "port": 2379, "count": 1}}],
        "isolators": [
            {{"name": "resource/memory", "value": {{"request": "512M", "limit": "1Gi"}}}},
            {{"name": "os/linux/capabilities-retain-set", "value": {{"set": ["CAP_NET_BIND_SERVICE"]}}}},
            {{"name": "os/linux/seccomp-remove-set", "value": {{"set": ["reboot"], "errno": "EPERM"}}}}
        ]
    }},
    "annotations": [{{"name": "authors", "value": "CoreOS <team@coreos.com>"}}],
    "dependencies": [{{"imageName": "coreos.com/alpine-sh", "imageID": "{}",
                       "labels": [{{"name": "os", "value": "linux"}}], "size": 2465792}}],
    "pathWhitelist": ["/etcd", "/bin/prepare-data", "/etc/ssl/etcd", "/var/lib/etcd"]
}}"#,
        hex_id('a')
    )
}

/// A two-app pod manifest as rkt wrote them (nil lists as null).
fn pod_manifest_json() -> String {
    format!(
        r#"{{
    "acVersion": "1.30.0", "acKind": "PodManifest",
    "apps": [
        {{"name": "etcd",
          "image": {{"name": "coreos.com/etcd", "id": "{}", "labels": [{{"name": "version", "value": "v3.1.0"}}]}},
          "app": {{"exec": ["/etcd"], "user": "0", "group": "0",
                   "mountPoints": [{{"name": "data-dir", "path": "/var/lib/etcd"}}], "isolators": null}},
          "mounts": [{{"volume": "data-dir", "path": "/var/lib/etcd"}}]}},
        {{"name": "sidecar", "image": {{"id": "{}"}}, "app": {{"exec": null, "user": "1000", "group": "1000"}}}}
    ],
    "volumes": [{{"name": "data-dir", "kind": "host", "source": "/srv/etcd", "readOnly": false}},
                {{"name": "scratch", "kind": "empty", "mode": "0755", "uid": 0, "gid": 0}}],
    "isolators": null,
    "ports": [{{"name": "client", "hostPort": 2379}}]
}}"#,
        hex_id('b'),
        hex_id('c')
    )
}

#[divan::bench]
fn parse_image_manifest(bencher: Bencher) {
    let json = image_manifest_json();
    bencher.bench(|| ImageManifest::from_json(black_box(json.as_bytes())).expect("valid manifest"));
}

#[divan::bench]
fn parse_pod_manifest(bencher: Bencher) {
    let json = pod_manifest_json();
    bencher.bench(|| PodManifest::from_json(black_box(json.as_bytes())).expect("valid manifest"));
}

/// An uncompressed ACI with just a manifest and an empty rootfs: the store's index
/// is what is measured, not extraction.
fn tiny_aci(name: &str, version: usize) -> Vec<u8> {
    let manifest = format!(
        r#"{{"acKind":"ImageManifest","acVersion":"0.8.11","name":"{name}",
            "labels":[{{"name":"version","value":"{version}.0.0"}},{{"name":"os","value":"linux"}}]}}"#
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "manifest", manifest.as_bytes())
        .expect("append manifest");
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    tar.append_data(&mut dir, "rootfs", std::io::empty())
        .expect("append rootfs");
    tar.into_inner().expect("finish tar")
}

/// A store with 100 images: 10 names, 10 versions each.
struct StoreFixture {
    _dir: tempfile::TempDir,
    store: Store,
    ids: Vec<ImageId>,
}

static STORE: LazyLock<StoreFixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let mut ids = Vec::new();
    for name in 0..10 {
        for version in 0..10 {
            let aci = tiny_aci(&format!("example.com/app{name}"), version);
            ids.push(store.import(&mut aci.as_slice(), "bench").expect("import"));
        }
    }
    StoreFixture {
        _dir: dir,
        store,
        ids,
    }
});

#[divan::bench]
fn store_resolve_full_id(bencher: Bencher) {
    let fixture = &*STORE;
    let id = fixture.ids[57].as_str().to_string();
    bencher.bench(|| fixture.store.resolve(black_box(&id)).expect("found"));
}

#[divan::bench]
fn store_resolve_id_prefix(bencher: Bencher) {
    let fixture = &*STORE;
    // Short prefixes list the index; 20 hex digits are unambiguous among 100.
    let prefix = fixture.ids[57].as_str()[..27].to_string();
    bencher.bench(|| fixture.store.resolve(black_box(&prefix)).expect("found"));
}

#[divan::bench]
fn store_resolve_name_version(bencher: Bencher) {
    let fixture = &*STORE;
    bencher.bench(|| {
        fixture
            .store
            .resolve(black_box("example.com/app5:7.0.0"))
            .expect("found")
    });
}

#[divan::bench]
fn store_find_newest_by_name(bencher: Bencher) {
    let fixture = &*STORE;
    let name = ACIdentifier::new("example.com/app5").expect("valid name");
    bencher.bench(|| {
        fixture
            .store
            .find_by_name(black_box(&name), &[])
            .expect("lookup")
            .expect("found")
    });
}

/// `count` exited pods: created, moved to run/ and unlocked, as `rkt run` leaves
/// them (without a stage1: the scan reads only the state directories and locks).
fn exited_pods(root: &Path, count: usize) -> PodsDir {
    let pods = PodsDir::open(root).expect("open pods dir");
    for _ in 0..count {
        let pod = pods.create().expect("create").prepare().expect("prepare");
        drop(pod.run().expect("run"));
    }
    pods
}

struct PodsFixture {
    _dir: tempfile::TempDir,
    pods: PodsDir,
}

fn pods_fixture(count: usize) -> PodsFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pods = exited_pods(dir.path(), count);
    PodsFixture { _dir: dir, pods }
}

static PODS_100: LazyLock<PodsFixture> = LazyLock::new(|| pods_fixture(100));
static PODS_1000: LazyLock<PodsFixture> = LazyLock::new(|| pods_fixture(1000));

#[divan::bench(args = [100, 1000])]
fn pods_list(bencher: Bencher, count: usize) {
    let fixture = if count == 100 { &*PODS_100 } else { &*PODS_1000 };
    bencher.bench(|| {
        let listed = fixture.pods.list().expect("list");
        assert_eq!(listed.len(), count);
        listed
    });
}

/// An 8 MB image (64 files of 128 KiB) for the first run's import + render.
static SIZED_ACI: LazyLock<Vec<u8>> = LazyLock::new(|| {
    // The tiny image's entries, without its end-of-archive blocks.
    let tiny = tiny_aci("example.com/sized", 1);
    let mut entries = Vec::new();
    for entry in tar::Archive::new(tiny.as_slice()).entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read entry");
        entries.push((
            entry.header().clone(),
            entry.path().expect("path").into_owned(),
            bytes,
        ));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (mut header, path, bytes) in entries {
        tar.append_data(&mut header, path, bytes.as_slice())
            .expect("append");
    }
    let mut data = vec![0u8; 128 << 10];
    for i in 0..64 {
        for (j, byte) in data.iter_mut().enumerate() {
            *byte = (i * 31 + j * 7) as u8;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("rootfs/f{i}"), data.as_slice())
            .expect("append file");
    }
    tar.into_inner().expect("finish tar")
});

/// A new image's import then render: the archive read and hashed once with the
/// tree extracted on the way (`one_pass`), or imported then rendered from its blob.
#[divan::bench(args = [false, true])]
fn store_import_and_render(bencher: Bencher, one_pass: bool) {
    let aci = &*SIZED_ACI;
    bencher
        .with_inputs(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open store");
            (dir, store)
        })
        .bench_values(|(dir, store)| {
            let importing = if one_pass {
                store.rendering_on_import()
            } else {
                store.clone()
            };
            let id = importing.import(&mut aci.as_slice(), "bench").expect("import");
            store.render(&id).expect("render");
            dir
        });
}
