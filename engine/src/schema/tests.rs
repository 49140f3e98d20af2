//! Whole-manifest tests: hand-written manifests in the shape rkt-era tools produced, and
//! property tests over generated manifests and names.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use super::*;

fn hex_id(c: char) -> String {
    format!("sha512-{}", c.to_string().repeat(128))
}

/// An image manifest as acbuild/actool wrote them, exercising every section.
fn realistic_image_manifest() -> String {
    format!(
        r#"{{
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "coreos.com/etcd",
    "labels": [
        {{"name": "version", "value": "v3.1.0"}},
        {{"name": "os", "value": "linux"}},
        {{"name": "arch", "value": "amd64"}}
    ],
    "app": {{
        "exec": ["/etcd", "--data-dir=/var/lib/etcd"],
        "user": "0",
        "group": "0",
        "supplementaryGIDs": [10, 20],
        "workingDirectory": "/var/lib/etcd",
        "eventHandlers": [
            {{"name": "pre-start", "exec": ["/bin/prepare-data", "--fast"]}},
            {{"name": "post-stop", "exec": ["/bin/cleanup"]}}
        ],
        "environment": [
            {{"name": "ETCD_NAME", "value": "infra0"}},
            {{"name": "PATH", "value": "/usr/bin:/bin"}}
        ],
        "mountPoints": [
            {{"name": "data-dir", "path": "/var/lib/etcd", "readOnly": false}},
            {{"name": "certs", "path": "/etc/ssl/etcd", "readOnly": true}}
        ],
        "ports": [
            {{"name": "client", "protocol": "tcp", "port": 2379, "count": 1, "socketActivated": false}},
            {{"name": "peer", "protocol": "tcp", "port": 2380}}
        ],
        "isolators": [
            {{"name": "resource/memory", "value": {{"request": "512M", "limit": "1Gi"}}}},
            {{"name": "resource/cpu", "value": {{"request": "250m", "limit": "1"}}}},
            {{"name": "os/linux/capabilities-retain-set", "value": {{"set": ["CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]}}}},
            {{"name": "os/linux/seccomp-remove-set", "value": {{"set": ["@docker/default-blacklist", "reboot"], "errno": "EPERM"}}}},
            {{"name": "os/linux/no-new-privileges", "value": true}},
            {{"name": "os/linux/oom-score-adj", "value": -500}},
            {{"name": "os/linux/cpu-shares", "value": 2048}},
            {{"name": "os/unix/sysctl", "value": {{"net.ipv4.ip_forward": "1"}}}}
        ]
    }},
    "annotations": [
        {{"name": "authors", "value": "CoreOS <team@coreos.com>"}},
        {{"name": "homepage", "value": "https://coreos.com/etcd"}},
        {{"name": "created", "value": "2017-01-20T18:22:11Z"}}
    ],
    "dependencies": [
        {{
            "imageName": "coreos.com/alpine-sh",
            "imageID": "{}",
            "labels": [{{"name": "os", "value": "linux"}}, {{"name": "arch", "value": "amd64"}}],
            "size": 2465792
        }}
    ],
    "pathWhitelist": ["/etcd", "/bin/prepare-data", "/bin/cleanup", "/etc/ssl/etcd", "/var/lib/etcd"]
}}"#,
        hex_id('a')
    )
}

#[test]
fn schema_realistic_image_manifest_parses() {
    let m = ImageManifest::from_json(realistic_image_manifest().as_bytes()).expect("realistic manifest");
    assert_eq!(m.name, "coreos.com/etcd");
    assert_eq!(m.label("os"), Some("linux"));
    assert_eq!(m.label("arch"), Some("amd64"));
    let app = m.app.as_ref().expect("app");
    assert_eq!(app.exec[0], "/etcd");
    assert_eq!(app.supplementary_gids, vec![10, 20]);
    assert_eq!(app.env("ETCD_NAME"), Some("infra0"));
    assert_eq!(app.event_handler("post-stop").map(|h| h.exec.len()), Some(1));
    assert_eq!(app.ports[1].count, 1);

    let kinds: Vec<IsolatorKind> = app.isolators.iter().map(|i| i.kind().expect("valid")).collect();
    assert_eq!(
        kinds[0],
        IsolatorKind::Memory(ResourceAmounts {
            request: Some(512_000_000),
            limit: Some(1 << 30)
        })
    );
    assert_eq!(
        kinds[1],
        IsolatorKind::Cpu(ResourceAmounts {
            request: Some(250),
            limit: Some(1000)
        })
    );
    assert!(matches!(&kinds[2], IsolatorKind::CapabilitiesRetain(c) if c.len() == 2));
    assert!(matches!(&kinds[3], IsolatorKind::SeccompRemove(s) if s.errno.as_deref() == Some("EPERM")));
    assert_eq!(kinds[4], IsolatorKind::NoNewPrivileges(true));
    assert_eq!(kinds[5], IsolatorKind::OomScoreAdj(-500));
    assert_eq!(kinds[6], IsolatorKind::CpuShares(2048));
    assert_eq!(kinds[7], IsolatorKind::Other);
    assert_eq!(app.isolators[7].value, json!({"net.ipv4.ip_forward": "1"}));

    assert_eq!(
        m.dependencies[0].image_id.as_ref().map(ImageId::as_str),
        Some(hex_id('a').as_str())
    );
    assert_eq!(m.annotation("authors"), Some("CoreOS <team@coreos.com>"));
    assert_eq!(m.path_whitelist.len(), 5);
    assert!(m.validate().is_ok());

    // Re-serializing keeps every field: parsing our output gives the same manifest.
    assert_eq!(ImageManifest::from_json(&m.to_json()).expect("reparse"), m);
}

/// A pod manifest as rkt's Go code wrote it: nil lists as null, Go key spellings.
#[test]
fn schema_realistic_pod_manifest_parses() {
    let text = format!(
        r#"{{
    "acVersion": "1.30.0",
    "acKind": "PodManifest",
    "apps": [
        {{
            "name": "etcd",
            "image": {{"name": "coreos.com/etcd", "id": "{}", "labels": [{{"name": "version", "value": "v3.1.0"}}]}},
            "app": {{
                "exec": ["/etcd"], "user": "0", "group": "0",
                "mountPoints": [{{"name": "data-dir", "path": "/var/lib/etcd"}}],
                "isolators": null
            }},
            "readOnlyRootFS": false,
            "mounts": [{{"volume": "data-dir", "path": "/var/lib/etcd"}}],
            "annotations": [{{"name": "coreos.com/rkt/stage1/mutable", "value": "false"}}]
        }},
        {{
            "name": "sidecar",
            "image": {{"id": "{}"}},
            "app": {{"exec": null, "user": "1000", "group": "1000"}}
        }}
    ],
    "volumes": [
        {{"name": "data-dir", "kind": "host", "source": "/srv/etcd", "readOnly": false, "recursive": true}},
        {{"name": "scratch", "kind": "empty", "mode": "0755", "uid": 0, "gid": 0}}
    ],
    "isolators": null,
    "annotations": [{{"name": "coreos.com/rkt/stage1/mutable", "value": "false"}}],
    "ports": [{{"name": "client", "hostPort": 2379}}],
    "userAnnotations": {{"owner": "ops"}}
}}"#,
        hex_id('b'),
        hex_id('c')
    );
    let p = PodManifest::from_json(text.as_bytes()).expect("realistic pod manifest");
    assert_eq!(p.apps.len(), 2);
    assert!(p.isolators.is_empty());
    assert!(
        p.app("sidecar")
            .and_then(|a| a.app.as_ref())
            .is_some_and(|a| a.exec.is_empty())
    );
    assert_eq!(p.volume("scratch").map(Volume::mode_bits), Some(0o755));
    assert_eq!(p.ports[0].host_port, Some(2379));
    assert!(p.validate().is_ok());
    assert_eq!(PodManifest::from_json(&p.to_json()).expect("reparse"), p);
}

#[test]
fn schema_type_errors_name_the_path() {
    let err = PodManifest::from_json(
        br#"{"acVersion": "0.8.11", "acKind": "PodManifest", "apps": [{"name": "a", "image": {"id": 5}}]}"#,
    )
    .expect_err("bad type");
    assert_eq!(err.field(), Some("apps[0].image.id"));
    let err = ImageManifest::from_json(b"[]").expect_err("not an object");
    assert_eq!(err.field(), Some("(document)"));
}

#[test]
fn schema_errors_are_one_line() {
    let bad = realistic_image_manifest().replace("\"/etcd\", \"--data", "\"bin/etcd\", \"--data");
    let err = ImageManifest::from_json(bad.as_bytes()).expect_err("relative exec");
    assert_eq!(
        err.to_string(),
        r#"app.exec[0]: must be an absolute path or a program name looked up in PATH, got "bin/etcd""#
    );
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn schema_constant_isolator_names_are_identifiers() {
    for name in [
        Isolator::RESOURCE_MEMORY,
        Isolator::RESOURCE_CPU,
        Isolator::CAPABILITIES_RETAIN,
        Isolator::CAPABILITIES_REMOVE,
        Isolator::SECCOMP_RETAIN,
        Isolator::SECCOMP_REMOVE,
        Isolator::NO_NEW_PRIVILEGES,
        Isolator::OOM_SCORE_ADJ,
        Isolator::CPU_SHARES,
    ] {
        assert!(ACIdentifier::is_valid(name), "{name}");
    }
}

// ---- generators -------------------------------------------------------------------

fn ac_name() -> impl Strategy<Value = ACName> {
    "[a-z0-9]{1,6}(-[a-z0-9]{1,6}){0,2}".prop_map(|s| ACName::new(&s).expect("generated AC Name"))
}

fn ac_identifier() -> impl Strategy<Value = ACIdentifier> {
    "[a-z0-9]{1,6}([-._~/][a-z0-9]{1,6}){0,3}"
        .prop_map(|s| ACIdentifier::new(&s).expect("generated AC Identifier"))
}

fn image_id() -> impl Strategy<Value = ImageId> {
    "[0-9a-f]{128}".prop_map(|h| ImageId::from_sha512_hex(&h))
}

fn abs_path() -> impl Strategy<Value = String> {
    "(/[a-zA-Z0-9_.-]{1,8}){1,3}"
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,12}"
}

fn labels() -> impl Strategy<Value = Vec<Label>> {
    let os_arch = prop::option::of(prop::sample::select(
        VALID_OS_ARCH
            .iter()
            .flat_map(|(os, archs)| archs.iter().map(move |a| (*os, *a)))
            .collect::<Vec<_>>(),
    ));
    (
        prop::collection::btree_map(ac_identifier(), text(), 0..3),
        os_arch,
    )
        .prop_map(|(map, os_arch)| {
            let mut out: Vec<Label> = map
                .into_iter()
                .filter(|(n, _)| !["name", "os", "arch"].contains(&n.as_str()))
                .map(|(name, value)| Label { name, value })
                .collect();
            if let Some((os, arch)) = os_arch {
                out.push(Label::new("os", os).expect("os"));
                out.push(Label::new("arch", arch).expect("arch"));
            }
            out
        })
}

fn annotations() -> impl Strategy<Value = Vec<Annotation>> {
    prop::collection::btree_map(ac_identifier(), text(), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(name, value)| Annotation { name, value })
            .collect()
    })
}

/// Arbitrary JSON without floats (whose text form serde_json need not preserve).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn unknown_isolator() -> impl Strategy<Value = Isolator> {
    ("[a-z]{1,8}", json_value()).prop_map(|(n, value)| Isolator {
        name: ACIdentifier::new(&format!("example.com/{n}")).expect("name"),
        value,
    })
}

fn known_isolators() -> impl Strategy<Value = Vec<Isolator>> {
    let caps: Vec<&'static str> = LinuxCapability::all().map(LinuxCapability::name).collect();
    (
        prop::option::of(0u64..(1 << 40)),
        prop::option::of(1u64..64_000),
        prop::option::of(prop::sample::subsequence(caps, 1..4)),
        prop::option::of(any::<bool>()),
        prop::option::of(-1000i32..=1000),
        prop::option::of(2u32..=262_144),
        prop::option::of((
            any::<bool>(),
            prop::collection::vec("[a-z_]{1,10}", 1..4),
            prop::option::of("E[A-Z]{2,6}"),
        )),
    )
        .prop_map(|(mem, cpu, caps, nnp, oom, shares, seccomp)| {
            let mut out = Vec::new();
            out.extend(mem.map(Isolator::memory_limit));
            out.extend(cpu.map(Isolator::cpu_limit_millis));
            out.extend(caps.map(|c| Isolator::capabilities_remove(&c).expect("caps")));
            out.extend(nnp.map(Isolator::no_new_privileges));
            out.extend(oom.map(|o| Isolator::oom_score_adj(o).expect("oom")));
            out.extend(shares.map(|s| Isolator::cpu_shares(s).expect("shares")));
            if let Some((retain, calls, errno)) = seccomp {
                let calls: Vec<&str> = calls.iter().map(String::as_str).collect();
                let iso = if retain {
                    Isolator::seccomp_retain(&calls, errno.as_deref())
                } else {
                    Isolator::seccomp_remove(&calls, errno.as_deref())
                };
                out.push(iso.expect("seccomp"));
            }
            out
        })
}

fn isolators() -> impl Strategy<Value = Vec<Isolator>> {
    (known_isolators(), prop::collection::vec(unknown_isolator(), 0..3)).prop_map(|(mut k, u)| {
        k.extend(u);
        k
    })
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("\\PC{1,8}", text(), 0..2)
}

fn app() -> impl Strategy<Value = App> {
    let exec = prop::option::of((abs_path(), prop::collection::vec(text(), 0..3)));
    let handlers = prop::collection::btree_map(
        prop::sample::select(vec![EventHandler::PRE_START, EventHandler::POST_STOP]),
        (abs_path(), prop::collection::vec(text(), 0..2)),
        0..3,
    );
    let env = prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_.-]{0,8}", text(), 0..4);
    let mount_points = prop::collection::btree_map(ac_name(), (abs_path(), any::<bool>()), 0..3);
    let ports = prop::collection::btree_map(
        ac_name(),
        (
            prop::sample::select(vec!["tcp", "udp"]),
            1u16..60_000,
            1u32..100,
            any::<bool>(),
        ),
        0..3,
    );
    (
        (
            exec,
            "[a-z0-9/]{1,8}",
            "[a-z0-9/]{1,8}",
            prop::collection::vec(any::<u32>(), 0..3),
        ),
        (prop::option::of(abs_path()), handlers, env, mount_points),
        (ports, isolators(), string_map(), string_map()),
    )
        .prop_map(
            |(
                (exec, user, group, gids),
                (working_directory, handlers, env, mount_points),
                (ports, isolators, user_annotations, user_labels),
            )| App {
                exec: exec
                    .map(|(cmd, args)| std::iter::once(cmd).chain(args).collect())
                    .unwrap_or_default(),
                user,
                group,
                supplementary_gids: gids,
                working_directory,
                event_handlers: handlers
                    .into_iter()
                    .map(|(name, (cmd, args))| EventHandler {
                        name: name.to_string(),
                        exec: std::iter::once(cmd).chain(args).collect(),
                    })
                    .collect(),
                environment: env
                    .into_iter()
                    .map(|(name, value)| EnvVar { name, value })
                    .collect(),
                mount_points: mount_points
                    .into_iter()
                    .map(|(name, (path, read_only))| MountPoint {
                        name,
                        path,
                        read_only,
                    })
                    .collect(),
                ports: ports
                    .into_iter()
                    .map(|(name, (protocol, port, count, socket_activated))| Port {
                        name,
                        protocol: protocol.to_string(),
                        port,
                        count,
                        socket_activated,
                    })
                    .collect(),
                isolators,
                user_annotations,
                user_labels,
            },
        )
}

fn dependency() -> impl Strategy<Value = Dependency> {
    (
        ac_identifier(),
        prop::option::of(image_id()),
        labels(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(image_name, image_id, labels, size)| Dependency {
            image_name,
            image_id,
            labels,
            size,
        })
}

fn image_manifest() -> impl Strategy<Value = ImageManifest> {
    (
        ac_identifier(),
        labels(),
        prop::option::of(app()),
        annotations(),
        prop::collection::vec(dependency(), 0..3),
        prop::collection::btree_set(abs_path(), 0..4),
    )
        .prop_map(
            |(name, labels, app, annotations, dependencies, whitelist): (_, _, _, _, _, BTreeSet<String>)| {
                ImageManifest {
                    labels,
                    app,
                    annotations,
                    dependencies,
                    path_whitelist: whitelist.into_iter().collect(),
                    ..ImageManifest::new(name)
                }
            },
        )
}

fn volume() -> impl Strategy<Value = Volume> {
    prop_oneof![
        (
            ac_name(),
            abs_path(),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>())
        )
            .prop_map(|(name, source, read_only, recursive)| Volume {
                source: Some(source),
                read_only,
                recursive,
                kind: VolumeKind::Host,
                ..Volume::empty(name)
            }),
        (
            ac_name(),
            prop::option::of(any::<bool>()),
            prop::option::of("0[0-7]{3}"),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
        )
            .prop_map(|(name, read_only, mode, uid, gid)| Volume {
                read_only,
                mode,
                uid,
                gid,
                ..Volume::empty(name)
            }),
    ]
}

fn pod_manifest() -> impl Strategy<Value = PodManifest> {
    let volumes = prop::collection::vec(volume(), 0..3);
    let apps = prop::collection::btree_map(
        ac_name(),
        (
            (prop::option::of(ac_identifier()), image_id(), labels()),
            prop::option::of(app()),
            any::<bool>(),
            prop::collection::vec((any::<Index>(), abs_path()), 0..3),
            annotations(),
        ),
        0..3,
    );
    let ports = prop::collection::btree_map(ac_name(), prop::option::of(1u16..=65535), 0..3);
    (
        volumes,
        apps,
        isolators(),
        annotations(),
        ports,
        string_map(),
        string_map(),
    )
        .prop_map(
            |(volumes, apps, isolators, annotations, ports, user_annotations, user_labels)| {
                let mut volumes: Vec<Volume> = volumes;
                let mut seen = BTreeSet::new();
                volumes.retain(|v| seen.insert(v.name.clone()));
                let apps = apps
                    .into_iter()
                    .map(
                        |(name, ((image_name, id, labels), app, read_only_root_fs, mounts, annotations))| {
                            RuntimeApp {
                                name,
                                image: RuntimeImage {
                                    name: image_name,
                                    id,
                                    labels,
                                },
                                app,
                                read_only_root_fs,
                                // Mounts only make sense when there is a volume to point at.
                                mounts: if volumes.is_empty() {
                                    Vec::new()
                                } else {
                                    mounts
                                        .into_iter()
                                        .map(|(ix, path)| Mount {
                                            volume: volumes[ix.index(volumes.len())].name.clone(),
                                            path,
                                        })
                                        .collect()
                                },
                                annotations,
                            }
                        },
                    )
                    .collect();
                PodManifest {
                    apps,
                    volumes,
                    isolators,
                    annotations,
                    ports: ports
                        .into_iter()
                        .map(|(name, host_port)| ExposedPort {
                            name,
                            host_port,
                            host_ip: None,
                            pod_port: None,
                        })
                        .collect(),
                    user_annotations,
                    user_labels,
                    ..PodManifest::default()
                }
            },
        )
}

/// The appc rules stated a second way: trimming separators changes nothing, and nothing
/// but lowercase alphanumerics is left once they are removed.
fn reference_valid(s: &str, separators: &str) -> bool {
    let is_sep = |c: char| separators.contains(c);
    !s.is_empty()
        && s.trim_matches(is_sep) == s
        && s.chars()
            .filter(|c| !is_sep(*c))
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn schema_prop_image_manifest_round_trips(m in image_manifest()) {
        prop_assert!(m.validate().is_ok(), "{:?}", m.validate());
        let back = ImageManifest::from_json(&m.to_json());
        prop_assert_eq!(back.ok(), Some(m));
    }

    #[test]
    fn schema_prop_pod_manifest_round_trips(p in pod_manifest()) {
        prop_assert!(p.validate().is_ok(), "{:?}", p.validate());
        let back = PodManifest::from_json(&p.to_json());
        prop_assert_eq!(back.ok(), Some(p));
    }

    #[test]
    fn schema_prop_unknown_isolators_survive_byte_for_byte(iso in unknown_isolator()) {
        let original = serde_json::to_vec(&iso.value).expect("ser");
        let mut pod = PodManifest::default();
        pod.isolators.push(iso);
        let back = PodManifest::from_json(&pod.to_json()).expect("parses");
        prop_assert_eq!(serde_json::to_vec(&back.isolators[0].value).expect("ser"), original);
    }

    #[test]
    fn schema_prop_names_match_the_grammar(s in "[a-zA-Z0-9._~/ :-]{0,10}") {
        prop_assert_eq!(ACName::new(&s).is_ok(), reference_valid(&s, "-"));
        prop_assert_eq!(ACIdentifier::new(&s).is_ok(), reference_valid(&s, "-._~/"));
    }

    #[test]
    fn schema_prop_corrupted_names_are_rejected(
        name in ac_name(),
        bad in prop::sample::select(vec!['A', 'Z', ' ', ':', '_', '.', '!', 'é']),
        at in any::<Index>(),
    ) {
        let mut s = name.to_string();
        let pos = at.index(s.len() + 1);
        s.insert(pos, bad);
        prop_assert!(ACName::new(&s).is_err(), "{:?}", s);
        prop_assert!(serde_json::from_value::<ACName>(Value::String(s)).is_err());
    }

    #[test]
    fn schema_prop_invalid_identifiers_rejected_in_manifests(s in "[a-zA-Z0-9._~/ :-]{0,10}") {
        prop_assume!(!reference_valid(&s, "-._~/"));
        let doc = json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "a", "labels": [{"name": s, "value": ""}]});
        let err = ImageManifest::from_json(&serde_json::to_vec(&doc).expect("ser")).expect_err("invalid label name");
        prop_assert_eq!(err.field(), Some("labels[0].name"));
    }

    #[test]
    fn schema_prop_sanitize_keeps_valid_names(n in ac_name(), i in ac_identifier()) {
        prop_assert_eq!(ACName::sanitize(n.as_str()).ok(), Some(n));
        prop_assert_eq!(ACIdentifier::sanitize(i.as_str()).ok(), Some(i));
    }

    #[test]
    fn schema_prop_sanitized_names_are_valid(s in "\\PC{0,16}") {
        if let Ok(n) = ACName::sanitize(&s) {
            prop_assert!(ACName::new(n.as_str()).is_ok(), "{:?} -> {:?}", s, n);
        }
        if let Ok(n) = ACIdentifier::sanitize(&s) {
            prop_assert!(ACIdentifier::new(n.as_str()).is_ok(), "{:?} -> {:?}", s, n);
            let app = n.default_app_name();
            prop_assert!(ACName::new(app.as_str()).is_ok());
        }
    }

    #[test]
    fn schema_prop_quantity_units_round_trip(n in 0u64..(1 << 62)) {
        let q = Quantity::parse(&n.to_string()).expect("plain integer");
        prop_assert_eq!(q.units(), n);
        let ki = Quantity::parse(&format!("{}Ki", n >> 10)).expect("Ki");
        prop_assert_eq!(ki.units(), (n >> 10) << 10);
    }
}
