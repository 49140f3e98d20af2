//! Pod networks through the real CNI plugins, end to end through the binary, as
//! root: the default network's address range, a server in the pod reached on the
//! pod's IP and through a `--port` mapping on 127.0.0.1, distinct IPs for pods
//! running at once, `--net=none`, and teardown by gc (also after `rkt` was
//! killed) leaving none of the pod's iptables chains, IP leases or namespaces.
//! Traffic only flows between this host and the pods the tests create.
//! Skipped (with the reason) without root, busybox, nspawn, the plugins or iptables.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rkt_conformance::{AciSpec, Rkt, busybox_path, raw_entries_of, raw_tar};
use rkt_engine::stage::{Availability, Stage1, registry};

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: needs root");
        return None;
    }
    if busybox_path().is_none() {
        eprintln!("{test}: skipped: needs busybox-static");
        return None;
    }
    for plugin in ["ptp", "host-local", "loopback", "portmap"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            eprintln!("{test}: skipped: needs the CNI plugin {plugin} (containernetworking-plugins)");
            return None;
        }
    }
    if std::process::Command::new("iptables-save")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("{test}: skipped: needs iptables");
        return None;
    }
    match registry::create::<dyn Stage1>("nspawn").map(|s| s.availability()) {
        Ok(Availability::Available) => {}
        Ok(Availability::Unavailable(why)) => {
            eprintln!("{test}: skipped: {why}");
            return None;
        }
        Err(e) => panic!("nspawn is not registered: {e}"),
    }
    Some(Rkt::new(common::bin(), "nspawn").expect("harness"))
}

/// A busybox image whose app serves /srv over HTTP on port 80 (declared as
/// port `http`), prints "ready" once the server listens, then stays up.
fn web_image(rkt: &Rkt) -> String {
    let mut spec = AciSpec::busybox("example.com/web");
    spec.files
        .push(("srv/index.html".into(), b"hello from the pod\n".to_vec(), 0o644));
    // httpd without -f binds its socket, then goes to the background.
    spec.exec = vec![
        "/bin/sh".into(),
        "-c".into(),
        "/bin/busybox httpd -p 80 -h /srv && echo ready && exec /bin/busybox sleep 600".into(),
    ];
    let mut manifest = spec.manifest();
    manifest["app"]["ports"] = serde_json::json!([{"name": "http", "protocol": "tcp", "port": 80}]);
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let entries = raw_entries_of(&spec, Some(&manifest)).expect("entries");
    let path = rkt.work().join("web.aci");
    std::fs::write(&path, raw_tar(&entries, true).expect("tar")).expect("write image");
    path.display().to_string()
}

/// `rkt prepare ARGS`: the new pod's UUID.
fn prepare(rkt: &Rkt, args: &[&str]) -> String {
    let mut all = vec![
        "prepare",
        "--quiet",
        "--insecure-options=image",
        "--stage1=nspawn",
    ];
    all.extend_from_slice(args);
    let out = rkt.rkt(&all);
    assert_eq!(out.code, 0, "prepare: {}", out.describe());
    out.stdout.trim().to_string()
}

/// `rkt run-prepared` in the background; returns once the app said "ready"
/// and the pod is running.
fn start(rkt: &Rkt, uuid: &str, net: &str) -> Child {
    let mut child = rkt
        .command(&["run-prepared", net, uuid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-prepared");
    let mut line = String::new();
    let stdout = child.stdout.as_mut().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read");
    if line.trim() != "ready" {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.as_mut().expect("stderr").read_to_string(&mut err);
        panic!("pod {uuid}: first line {line:?}; stderr {err:?}");
    }
    let ready = rkt.rkt(&["status", "--wait-ready=30s", uuid]);
    assert_eq!(ready.code, 0, "status --wait-ready: {}", ready.describe());
    child
}

fn stop(rkt: &Rkt, uuid: &str, mut child: Child) {
    let out = rkt.rkt(&["stop", "--force", uuid]);
    assert_eq!(out.code, 0, "stop: {}", out.describe());
    child.wait().expect("wait for rkt");
}

/// The pod's networks from `rkt list --format=json`: (name, ip).
fn networks(rkt: &Rkt, uuid: &str) -> Vec<(String, String)> {
    let out = rkt.rkt(&["list", "--format=json"]);
    assert_eq!(out.code, 0, "list: {}", out.describe());
    let pods: serde_json::Value = serde_json::from_str(&out.stdout).expect("list JSON");
    let pod = pods
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["name"] == uuid)
        .unwrap_or_else(|| panic!("pod {uuid} not listed: {}", out.stdout));
    pod["networks"]
        .as_array()
        .map(|nets| {
            nets.iter()
                .map(|n| {
                    (
                        n["netName"].as_str().unwrap_or("").to_string(),
                        n["ip"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// GET / from `addr`. The server listens before the pod reports ready, but the
/// forwarding rules of a fresh pod may take a moment: connection attempts are
/// retried until a deadline.
fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::yield_now(),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// What a pod holds on the host outside its directory.
#[derive(Debug, Default)]
struct HostTraces {
    chains: Vec<String>,
    leases: Vec<String>,
    netns: bool,
}

impl HostTraces {
    fn of(uuid: &str) -> Self {
        let mut traces = HostTraces::default();
        // The pod's own chains are the ones its rules (commented with its ID) use.
        for table in ["nat", "filter"] {
            let out = std::process::Command::new("iptables-save")
                .args(["-t", table])
                .output()
                .expect("iptables-save");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.contains(uuid) {
                    continue;
                }
                for word in line.split_whitespace() {
                    if word.starts_with("CNI-") && !word.starts_with("CNI-HOSTPORT-") {
                        traces.chains.push(format!("{table}/{word}"));
                    }
                }
            }
        }
        traces.chains.sort();
        traces.chains.dedup();
        if let Ok(nets) = std::fs::read_dir("/var/lib/cni/networks") {
            for net in nets.flatten() {
                for lease in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
                    if std::fs::read_to_string(lease.path()).is_ok_and(|s| s.contains(uuid)) {
                        traces.leases.push(lease.path().display().to_string());
                    }
                }
            }
        }
        traces.netns = Path::new("/run/netns").join(format!("rkt-{uuid}")).exists();
        traces
    }

    /// After gc: none of `before`'s chains exist any more, nothing else names the pod.
    fn assert_gone(uuid: &str, before: &HostTraces) {
        let mut all_chains = String::new();
        for table in ["nat", "filter"] {
            let out = std::process::Command::new("iptables-save")
                .args(["-t", table])
                .output()
                .expect("iptables-save");
            all_chains.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        for chain in &before.chains {
            let name = chain.split_once('/').map(|(_, n)| n).unwrap_or(chain);
            assert!(
                !all_chains.contains(&format!(":{name} ")),
                "chain {chain} of pod {uuid} left after gc"
            );
        }
        let after = HostTraces::of(uuid);
        assert!(
            after.chains.is_empty(),
            "pod {uuid}: chains left: {:?}",
            after.chains
        );
        assert!(
            after.leases.is_empty(),
            "pod {uuid}: leases left: {:?}",
            after.leases
        );
        assert!(!after.netns, "pod {uuid}: netns left");
    }
}

fn gc(rkt: &Rkt) {
    let out = rkt.rkt(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
    assert_eq!(out.code, 0, "gc: {}", out.describe());
    assert!(
        rkt.mounts_left().is_empty(),
        "mounts left: {:?}",
        rkt.mounts_left()
    );
}

#[test]
fn default_network_serves_the_host_on_the_pod_ip_and_a_port_mapping() {
    let Some(rkt) = harness("default_network_serves_the_host") else {
        return;
    };
    let image = web_image(&rkt);
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let port = format!("--port=http:{host_port}");
    let uuid = prepare(&rkt, &[&port, &image]);
    let child = start(&rkt, &uuid, "--net=default");

    let nets = networks(&rkt, &uuid);
    assert_eq!(nets.len(), 1, "{nets:?}");
    let (name, ip) = &nets[0];
    assert_eq!(name, "default");
    assert!(ip.starts_with("172.16.28."), "pod IP {ip}");
    let status = rkt.rkt(&["status", &uuid]);
    assert!(
        status.stdout.contains(&format!("networks=default:ip4={ip}")),
        "{}",
        status.describe()
    );

    let direct = http_get(format!("{ip}:80").parse().expect("addr"));
    assert!(direct.contains("hello from the pod"), "{direct:?}");
    let mapped = http_get(format!("127.0.0.1:{host_port}").parse().expect("addr"));
    assert!(mapped.contains("hello from the pod"), "{mapped:?}");

    // A second pod asking for the same host port is refused, and keeps nothing.
    let other = prepare(&rkt, &[&port, &image]);
    let refused = rkt.rkt(&["run-prepared", "--net=default", &other]);
    common::one_line_254(&refused, "already forwarded");
    let other_traces = HostTraces::of(&other);
    assert!(
        !other_traces.netns && other_traces.leases.is_empty(),
        "{other_traces:?}"
    );

    let traces = HostTraces::of(&uuid);
    assert!(
        !traces.chains.is_empty(),
        "the pod's masquerade and port chains exist"
    );
    assert_eq!(traces.leases.len(), 1, "{traces:?}");
    assert!(traces.netns);
    stop(&rkt, &uuid, child);
    gc(&rkt);
    HostTraces::assert_gone(&uuid, &traces);
}

#[test]
fn two_pods_at_once_get_distinct_addresses() {
    let Some(rkt) = harness("two_pods_at_once_get_distinct_addresses") else {
        return;
    };
    let image = web_image(&rkt);
    let a = prepare(&rkt, &[&image]);
    let b = prepare(&rkt, &[&image]);
    let child_a = start(&rkt, &a, "--net=default");
    let child_b = start(&rkt, &b, "--net=default");
    let (ip_a, ip_b) = (networks(&rkt, &a)[0].1.clone(), networks(&rkt, &b)[0].1.clone());
    assert!(
        ip_a.starts_with("172.16.28.") && ip_b.starts_with("172.16.28."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    let traces = [HostTraces::of(&a), HostTraces::of(&b)];
    stop(&rkt, &a, child_a);
    stop(&rkt, &b, child_b);
    gc(&rkt);
    HostTraces::assert_gone(&a, &traces[0]);
    HostTraces::assert_gone(&b, &traces[1]);
}

#[test]
fn none_has_only_loopback() {
    let Some(rkt) = harness("none_has_only_loopback") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/none"))
        .expect("image")
        .display()
        .to_string();
    let out = rkt.run(&["--net=none", &image, "--exec", "/bin/cat", "--", "/proc/net/dev"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let interfaces: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':').map(|(i, _)| i.trim()))
        .filter(|i| !i.is_empty() && !i.contains('|'))
        .collect();
    assert_eq!(interfaces, vec!["lo"], "{}", out.stdout);
    let flags = rkt.run(&[
        "--net=none",
        &image,
        "--exec",
        "/bin/cat",
        "--",
        "/sys/class/net/lo/flags",
    ]);
    assert_eq!(flags.code, 0, "{}", flags.describe());
    let flags = u32::from_str_radix(flags.stdout.trim().trim_start_matches("0x"), 16).expect("hex flags");
    assert_eq!(flags & 1, 1, "lo is up");
    gc(&rkt);
}

#[test]
fn bad_network_requests_are_one_line_errors() {
    let Some(rkt) = harness("bad_network_requests_are_one_line_errors") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/bad"))
        .expect("image")
        .display()
        .to_string();
    let out = rkt.run(&["--net=nosuchnet", &image]);
    common::one_line_254(&out, "no network named \"nosuchnet\"");
    let out = rkt.run(&["--net=host", "--port=http:8080", &image]);
    common::one_line_254(&out, "'host' networking");
    let out = rkt.run(&["--net=none", "--port=http:8080", &image]);
    common::one_line_254(&out, "'none' networking");
    gc(&rkt);
    let listed = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(listed.stdout.trim(), "", "nothing left: {}", listed.describe());
}

#[test]
fn named_networks_come_from_local_config_and_cni_args_pick_the_ip() {
    let Some(rkt) = harness("named_networks_come_from_local_config") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/named"))
        .expect("image")
        .display()
        .to_string();
    // A private range per test process, so parallel runs do not share leases.
    let third = 100 + (std::process::id() % 100);
    let config = rkt.work().join("config");
    std::fs::create_dir_all(config.join("net.d")).expect("net.d");
    let net_name = format!("rkt-test-{}", std::process::id());
    std::fs::write(
        config.join("net.d/10-test.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0", "name": net_name,
            "plugins": [{"type": "ptp", "ipMasq": false,
                "ipam": {"type": "host-local", "subnet": format!("10.251.{third}.0/24")},
                "dns": {"nameservers": ["10.251.0.53"], "search": ["pods.test"]}}]
        })
        .to_string(),
    )
    .expect("conflist");
    let local_config = format!("--local-config={}", config.display());
    let net = format!("--net={net_name}:IP=10.251.{third}.77");
    let out = rkt.rkt(&[
        &local_config,
        "run",
        "--insecure-options=image",
        "--stage1=nspawn",
        &net,
        &image,
        "--exec",
        "/bin/cat",
        "--",
        "/proc/net/fib_trie",
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("10.251.{third}.77")),
        "{}",
        out.stdout
    );
    let uuid = rkt.rkt(&["list", "--no-legend", "--full"]).stdout;
    let uuid = uuid.split_whitespace().next().expect("a pod").to_string();
    assert_eq!(
        networks(&rkt, &uuid),
        vec![(net_name.clone(), format!("10.251.{third}.77"))]
    );
    let traces = HostTraces::of(&uuid);
    assert_eq!(traces.leases.len(), 1, "{traces:?}");
    gc(&rkt);
    HostTraces::assert_gone(&uuid, &traces);
    // host-local's own bookkeeping for this test's network.
    let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&net_name));
}

#[test]
fn several_networks_give_one_interface_each() {
    let Some(rkt) = harness("several_networks_give_one_interface_each") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/multi"))
        .expect("image")
        .display()
        .to_string();
    let out = rkt.run(&[
        "--net=default,default-restricted",
        &image,
        "--exec",
        "/bin/busybox",
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let addr = |ifname: &str| common::ipv4_of(&out.stdout, ifname);
    assert!(addr("eth0").starts_with("172.16.28."), "{}", out.stdout);
    assert!(addr("eth1").starts_with("172.31."), "{}", out.stdout);
    let uuid = rkt.rkt(&["list", "--no-legend", "--full"]).stdout;
    let uuid = uuid.split_whitespace().next().expect("a pod").to_string();
    let names: Vec<String> = networks(&rkt, &uuid).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["default", "default-restricted"]);
    let traces = HostTraces::of(&uuid);
    assert_eq!(traces.leases.len(), 2, "{traces:?}");
    gc(&rkt);
    HostTraces::assert_gone(&uuid, &traces);
}

#[test]
fn dns_and_hosts_flags_reach_the_apps() {
    let Some(rkt) = harness("dns_and_hosts_flags_reach_the_apps") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/dns"))
        .expect("image")
        .display()
        .to_string();
    let out = rkt.run(&[
        "--net=none",
        "--dns=10.9.8.7",
        "--dns-search=example.org",
        "--dns-opt=ndots:2",
        "--hosts-entry=10.1.1.1=db.internal",
        "--hostname=webpod",
        &image,
        "--exec",
        "/bin/cat",
        "--",
        "/etc/resolv.conf",
        "/etc/hosts",
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    for want in [
        "nameserver 10.9.8.7",
        "search example.org",
        "options ndots:2",
        "10.1.1.1\tdb.internal",
        "webpod",
    ] {
        assert!(out.stdout.contains(want), "want {want:?} in {}", out.stdout);
    }
    let out = rkt.run(&[
        "--net=none",
        "--dns=host",
        &image,
        "--exec",
        "/bin/cat",
        "--",
        "/etc/resolv.conf",
    ]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(
        out.stdout,
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    );
    gc(&rkt);
}

/// `rkt` killed with SIGKILL while the pod runs, and at each network failpoint:
/// gc still releases everything.
#[test]
fn kill_9_mid_pod_then_gc_cleans_everything() {
    let Some(rkt) = harness("kill_9_mid_pod_then_gc_cleans_everything") else {
        return;
    };
    let image = web_image(&rkt);
    let uuid = prepare(&rkt, &[&image]);
    let mut child = start(&rkt, &uuid, "--net=default");
    let traces = HostTraces::of(&uuid);
    assert!(traces.netns && traces.leases.len() == 1, "{traces:?}");
    child.kill().expect("SIGKILL rkt");
    child.wait().expect("reap");
    // The pod outlives its rkt (nspawn holds the pod's lock); stop it, then gc.
    let stopped = rkt.rkt(&["stop", "--force", &uuid]);
    assert_eq!(stopped.code, 0, "{}", stopped.describe());
    let waited = rkt.rkt(&["status", "--wait=30s", &uuid]);
    assert_eq!(waited.code, 0, "{}", waited.describe());
    gc(&rkt);
    HostTraces::assert_gone(&uuid, &traces);

    for step in [
        "net.netns-created",
        "net.before-add",
        "net.after-add",
        "run.network-ready",
    ] {
        let uuid = prepare(&rkt, &[&image]);
        let out = rkt
            .command(&["run-prepared", "--net=default", &uuid])
            .env(rkt_engine::failpoint::ENV, step)
            .output()
            .expect("run-prepared");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let traces = HostTraces::of(&uuid);
        gc(&rkt);
        HostTraces::assert_gone(&uuid, &traces);
        let listed = rkt.rkt(&["list", "--no-legend"]);
        assert!(
            !listed.stdout.contains(&uuid[..8]),
            "{step}: pod left: {}",
            listed.stdout
        );
    }
}
