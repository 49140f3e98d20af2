//! A pod network reaches the guest through the Networker's namespace: the CNI
//! plugin configured `ethN` there (address, routes); that configuration moves
//! into the guest. In the namespace, `ethN` gives its MAC to the guest NIC (so
//! the host's neighbour entries stay right) and joins a bridge `brN` with a tap
//! device `tapN` that QEMU opens. `ethN` keeps its address: as a bridge port its
//! own IP stack sees no traffic, and the CNI plugins' DEL finds the address
//! there to tear down what they set up for it (the bridge plugin's masquerade
//! chain is found from the link's addresses; without them it leaked). The
//! namespace's new links never answer ARP (`arp_ignore=8`): `brN` would
//! otherwise claim the guest's address with its own MAC.
//! Everything lives in the namespace and goes with it at gc.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use rkt_engine::pod::protocol::{VmInterface, VmRoute};
use rkt_engine::stage::NetworkAttachment;
use serde_json::Value;

use crate::KvmError;
use crate::qemu::Nic;

/// What the guest gets: its interfaces and routes, and the taps QEMU opens.
#[derive(Debug, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<VmInterface>,
    pub routes: Vec<VmRoute>,
    pub nics: Vec<Nic>,
}

pub fn open_netns(path: &Path) -> Result<OwnedFd, KvmError> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| KvmError::io(format!("opening {}", path.display()), e.into()))
}

/// Runs `ip ARGS` in the namespace; its stdout.
fn ip(netns: &OwnedFd, args: &[&str], stdin: Option<&str>) -> Result<String, KvmError> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = netns
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| KvmError::io("dup", e))?;
    // SAFETY: setns only, in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)?;
            Ok(())
        });
    }
    let what = || format!("ip {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| KvmError::io(what(), e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| KvmError::io(what(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| KvmError::io(what(), e))?;
    if !out.status.success() {
        return Err(KvmError::Invalid(format!(
            "{} in the pod's network namespace: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(text: &str, what: &str) -> Result<Vec<Value>, KvmError> {
    serde_json::from_str(text).map_err(|e| KvmError::Invalid(format!("{what}: {e}")))
}

/// Moves each attachment's configuration from the namespace into the guest.
pub fn attach(netns_path: &Path, networks: &[NetworkAttachment]) -> Result<GuestNetwork, KvmError> {
    let netns = open_netns(netns_path)?;
    let mut guest = GuestNetwork::default();
    let mut batch = String::new();
    for (i, net) in networks.iter().enumerate() {
        let dev = net.ifname.as_str();
        let link = json(&ip(&netns, &["-j", "link", "show", "dev", dev], None)?, dev)?;
        let mac = link
            .first()
            .and_then(|l| l["address"].as_str())
            .ok_or_else(|| KvmError::Invalid(format!("{dev}: no MAC address")))?
            .to_string();
        let addrs = json(&ip(&netns, &["-j", "-4", "addr", "show", "dev", dev], None)?, dev)?;
        let (address, prefix_len) = addrs
            .first()
            .and_then(|l| l["addr_info"].as_array()?.first().cloned())
            .and_then(|a| Some((a["local"].as_str()?.to_string(), a["prefixlen"].as_u64()?)))
            .ok_or_else(|| KvmError::Invalid(format!("{dev}: no IPv4 address from network {}", net.name)))?;
        let routes = json(
            &ip(&netns, &["-j", "-4", "route", "show", "dev", dev], None)?,
            dev,
        )?;
        guest.routes.extend(routes_for_guest(&routes, dev));
        guest.interfaces.push(VmInterface {
            name: dev.to_string(),
            mac: mac.clone(),
            address,
            prefix_len: prefix_len.min(32) as u8,
        });
        let (tap, bridge) = (format!("tap{i}"), format!("br{i}"));
        batch.push_str(&bridge_script(dev, &bridge, &tap, &local_mac(i, &mac)));
        guest.nics.push(Nic { tap, mac });
    }
    if !batch.is_empty() {
        never_answer_arp_on_new_links(&netns)?;
        ip(&netns, &["-batch", "-"], Some(&batch))?;
    }
    Ok(guest)
}

/// Links created in the namespace from now on (the bridges and taps) inherit
/// `arp_ignore=8`. A net sysctl file belongs to the netns of the thread that
/// opens it, so a short-lived thread joins the namespace for the write.
fn never_answer_arp_on_new_links(netns: &OwnedFd) -> Result<(), KvmError> {
    let fd = netns
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| KvmError::io("dup", e))?;
    const KNOB: &str = "/proc/sys/net/ipv4/conf/default/arp_ignore";
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)?;
        std::fs::write(KNOB, b"8")
    })
    .join()
    .map_err(|_| KvmError::Invalid(format!("writing {KNOB}: the thread panicked")))?
    .map_err(|e| KvmError::io(format!("writing {KNOB} in the pod's network namespace"), e))
}

/// The routes `ip -j route show dev DEV` lists, as the guest adds them; the
/// subnet route of the address itself the guest's kernel makes.
fn routes_for_guest(routes: &[Value], dev: &str) -> Vec<VmRoute> {
    routes
        .iter()
        .filter(|r| r["protocol"].as_str() != Some("kernel"))
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            Some(VmRoute {
                destination: if dst == "default" {
                    "0.0.0.0/0".into()
                } else {
                    dst.to_string()
                },
                gateway: r["gateway"].as_str().map(str::to_string),
                device: dev.to_string(),
            })
        })
        .collect()
}

/// A locally administered MAC for the namespace's end, distinct per network.
fn local_mac(i: usize, mac: &str) -> String {
    let tail: Vec<&str> = mac.split(':').skip(3).collect();
    format!(
        "02:72:6b:{}",
        if tail.len() == 3 {
            tail.join(":")
        } else {
            format!("00:00:{i:02x}")
        }
    )
}

fn bridge_script(dev: &str, bridge: &str, tap: &str, new_mac: &str) -> String {
    format!(
        "link set {dev} down\n\
         link set {dev} address {new_mac}\n\
         link add {bridge} type bridge\n\
         link set {dev} master {bridge}\n\
         tuntap add dev {tap} mode tap\n\
         link set {tap} master {bridge}\n\
         link set {dev} up\n\
         link set {tap} up\n\
         link set {bridge} up\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_move_to_the_guest_without_the_kernels_own() {
        let routes: Vec<Value> = serde_json::from_str(
            r#"[{"dst":"default","gateway":"172.16.28.1","flags":[]},
                {"dst":"172.16.28.0/24","protocol":"kernel","scope":"link","prefsrc":"172.16.28.5","flags":[]},
                {"dst":"172.16.28.1","scope":"link","flags":[]}]"#,
        )
        .unwrap();
        let got = routes_for_guest(&routes, "eth0");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].destination, "0.0.0.0/0");
        assert_eq!(got[0].gateway.as_deref(), Some("172.16.28.1"));
        assert_eq!(got[1].destination, "172.16.28.1");
        assert_eq!(got[1].gateway, None);
    }

    #[test]
    fn the_namespace_end_gets_a_local_mac() {
        assert_eq!(local_mac(0, "0a:58:ac:10:1c:05"), "02:72:6b:10:1c:05");
        assert_eq!(local_mac(1, "bad"), "02:72:6b:00:00:01");
        let s = bridge_script("eth0", "br0", "tap0", "02:72:6b:10:1c:05");
        assert!(
            !s.contains("addr flush"),
            "the CNI DEL needs the address on the link"
        );
        assert!(s.find("address 02:72:6b").unwrap() < s.find("master br0").unwrap());
        assert!(s.contains("tuntap add dev tap0 mode tap"));
    }
}
