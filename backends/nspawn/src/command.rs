//! The systemd-nspawn command line, as a typed value rendered to argv, so the
//! exact flags are unit-tested without root or a container.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How this machine runs nspawn: registered with systemd-machined, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// systemd is PID 1 and D-Bus runs: the pod is the machine `rkt-<uuid>`.
    Machined,
    /// No systemd, no D-Bus: `--register=no --keep-unit`.
    None,
}

impl Registration {
    /// machined is reached over the system bus, and only exists under systemd.
    pub fn detect() -> Self {
        let systemd = Path::new("/run/systemd/system").is_dir();
        let bus = Path::new("/run/dbus/system_bus_socket").exists();
        if systemd && bus {
            Registration::Machined
        } else {
            Registration::None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NspawnArgs {
    /// The stage1 rootfs: the container's `/`.
    pub directory: PathBuf,
    pub machine: String,
    pub hostname: String,
    pub registration: Registration,
    /// The pod's console is a terminal nspawn relays (else stdio passes through).
    pub interactive: bool,
    /// The Networker's namespace; None: the host's network.
    pub netns: Option<PathBuf>,
    /// The init, as a path inside the container, and its arguments.
    pub init: Vec<OsString>,
    /// Every app runs under the seccomp filter our init installs.
    pub own_seccomp: bool,
    /// `--private-users`: (host uid of the pod's root, how many ids); the
    /// files were shifted by stage0 already.
    pub private_users: Option<(u32, u32)>,
    /// The Labeler's labels: the pod's processes and its API file systems.
    pub labels: rkt_engine::stage::Labels,
}

impl NspawnArgs {
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["--quiet".into()];
        match self.registration {
            Registration::Machined => argv.push("--register=yes".into()),
            Registration::None => {
                argv.push("--register=no".into());
                argv.push("--keep-unit".into());
            }
        }
        argv.push(flag("--directory=", self.directory.as_os_str()));
        argv.push(flag("--machine=", self.machine.as_ref()));
        argv.push(flag("--hostname=", self.hostname.as_ref()));
        argv.push(if self.interactive {
            "--console=interactive".into()
        } else {
            "--console=pipe".into()
        });
        // The init decides what apps see; nspawn must not edit the stage1 rootfs.
        argv.push("--resolv-conf=off".into());
        argv.push("--timezone=off".into());
        argv.push("--link-journal=no".into());
        // Without --boot nspawn would SIGKILL the pod on SIGTERM; the init turns
        // SIGTERM into an orderly stop of every app.
        argv.push("--kill-signal=SIGTERM".into());
        if let Some(netns) = &self.netns {
            argv.push(flag("--network-namespace-path=", netns.as_os_str()));
        }
        if let Some(process) = &self.labels.process {
            argv.push(format!("--selinux-context={process}").into());
        }
        if let Some(mount) = &self.labels.mount {
            argv.push(format!("--selinux-apifs-context={mount}").into());
        }
        if let Some((shift, count)) = self.private_users {
            argv.push(format!("--private-users={shift}:{count}").into());
            argv.push("--private-users-ownership=off".into());
        }
        argv.push("--".into());
        argv.extend(self.init.iter().cloned());
        argv
    }

    /// Environment for nspawn on top of rkt's own.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        if self.own_seccomp {
            // nspawn's own filter costs ~65 ms of CPU per pod here (libseccomp
            // compiling its allowlist) and would sit under ours, which already
            // decides what every app may call. Pods without our filter
            // (--insecure-options=seccomp) keep nspawn's, as with rkt.
            vec![("SYSTEMD_SECCOMP", "0")]
        } else {
            Vec::new()
        }
    }
}

fn flag(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut s = OsString::from(name);
    s.push(value);
    s
}

/// nspawn and the kernel take at most 64 bytes of letters, digits, '-' and '.'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(registration: Registration, netns: Option<&str>, interactive: bool) -> Vec<String> {
        NspawnArgs {
            directory: "/pods/run/u/stage1/rootfs".into(),
            machine: "rkt-u".into(),
            hostname: "web".into(),
            registration,
            interactive,
            netns: netns.map(PathBuf::from),
            init: vec!["/rkt/init".into(), "stage1-init".into()],
            own_seccomp: true,
            private_users: None,
            labels: Default::default(),
        }
        .to_argv()
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
    }

    #[test]
    fn unregistered_pods_keep_the_unit_and_use_the_hosts_network() {
        assert_eq!(
            args(Registration::None, None, false),
            [
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--directory=/pods/run/u/stage1/rootfs",
                "--machine=rkt-u",
                "--hostname=web",
                "--console=pipe",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                "--kill-signal=SIGTERM",
                "--",
                "/rkt/init",
                "stage1-init",
            ]
        );
    }

    #[test]
    fn registered_interactive_pods_in_a_netns() {
        let a = args(Registration::Machined, Some("/run/netns/x"), true);
        assert!(a.contains(&"--register=yes".to_string()));
        assert!(!a.contains(&"--keep-unit".to_string()));
        assert!(a.contains(&"--console=interactive".to_string()));
        assert!(a.contains(&"--network-namespace-path=/run/netns/x".to_string()));
        let dashdash = a.iter().position(|s| s == "--").unwrap_or(0);
        assert!(
            a.iter()
                .position(|s| s.starts_with("--network"))
                .unwrap_or(usize::MAX)
                < dashdash
        );
    }

    #[test]
    fn nspawns_filter_is_off_only_under_ours() {
        let mut a = NspawnArgs {
            directory: "/r".into(),
            machine: "rkt-u".into(),
            hostname: "h".into(),
            registration: Registration::None,
            interactive: false,
            netns: None,
            init: vec!["/rkt/init".into()],
            own_seccomp: true,
            private_users: None,
            labels: Default::default(),
        };
        assert_eq!(a.env(), [("SYSTEMD_SECCOMP", "0")]);
        a.own_seccomp = false;
        assert!(a.env().is_empty());
    }

    #[test]
    fn private_users_and_labels_go_before_the_init() {
        let mut a = NspawnArgs {
            directory: "/r".into(),
            machine: "rkt-u".into(),
            hostname: "h".into(),
            registration: Registration::None,
            interactive: false,
            netns: None,
            init: vec!["/rkt/init".into()],
            own_seccomp: true,
            private_users: Some((0x50000, 0x10000)),
            labels: rkt_engine::stage::Labels {
                process: Some("system_u:system_r:container_t:s0:c1,c2".into()),
                mount: Some("system_u:object_r:container_file_t:s0:c1,c2".into()),
            },
        };
        let argv: Vec<String> = a
            .to_argv()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let dashdash = argv.iter().position(|s| s == "--").unwrap_or(0);
        let at = |f: &str| argv.iter().position(|s| s == f).unwrap_or(usize::MAX);
        assert!(at("--private-users=327680:65536") < dashdash, "{argv:?}");
        assert!(at("--private-users-ownership=off") < dashdash, "{argv:?}");
        assert!(at("--selinux-context=system_u:system_r:container_t:s0:c1,c2") < dashdash);
        assert!(at("--selinux-apifs-context=system_u:object_r:container_file_t:s0:c1,c2") < dashdash);
        a.private_users = None;
        assert!(
            !a.to_argv()
                .iter()
                .any(|s| s.to_string_lossy().contains("private-users"))
        );
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("rkt-0a1b2c3d-0000-4000-8000-000000000000"));
        assert!(valid_hostname("web.example"));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }
}
