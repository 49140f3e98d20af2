//! `rkt run`: prepare a pod from images and flags, then run it to completion;
//! the exit code is the pod's (the first failing app's), or 254 for rkt's own errors.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_engine::runner::{PrepareRequest, RunRequest};
use rkt_engine::schema::{EnvVar, ExposedPort, Mount, Volume};
use rkt_engine::stage::registry;
use rkt_engine::stage::{DnsMode, DnsSettings, FetchPolicy, HostsMode, NetRequest, PullPolicy};

use crate::apps::parse_apps;
use crate::flags::{GlobalFlags, refuse};

/// Which stage1 runs the pod. `--stage1=NAME` names a registered backend; rkt's
/// image-based flags are accepted and mapped onto the backends by flavor.
#[derive(Debug, Args)]
pub struct Stage1Flags {
    /// The stage1 backend to run the pod with (see `rkt version`); nspawn, like rkt's default flavor
    #[arg(long, env = "RKT_STAGE1", default_value = "nspawn")]
    pub stage1: String,
    /// A stage1 image name (e.g. coreos.com/rkt/stage1-fly), mapped to its backend
    #[arg(long, conflicts_with_all = ["stage1_path", "stage1_url", "stage1_hash", "stage1_from_dir"])]
    pub stage1_name: Option<String>,
    /// A stage1 image path (e.g. /usr/lib/rkt/stage1-fly.aci), mapped to its backend
    #[arg(long, conflicts_with_all = ["stage1_url", "stage1_hash", "stage1_from_dir"])]
    pub stage1_path: Option<String>,
    /// A stage1 image URL, mapped to its backend by file name
    #[arg(long, conflicts_with_all = ["stage1_hash", "stage1_from_dir"])]
    pub stage1_url: Option<String>,
    /// A stage1 image hash: not meaningful for built-in backends
    #[arg(long, conflicts_with = "stage1_from_dir")]
    pub stage1_hash: Option<String>,
    /// A stage1 image file name in the default stage1 directory, mapped to its backend
    #[arg(long)]
    pub stage1_from_dir: Option<String>,
}

impl Stage1Flags {
    pub fn backend(&self) -> Result<String> {
        if let Some(hash) = &self.stage1_hash {
            bail!("--stage1-hash={hash}: stage1s are built-in backends here, pick one with --stage1=NAME");
        }
        let image = [
            &self.stage1_name,
            &self.stage1_path,
            &self.stage1_url,
            &self.stage1_from_dir,
        ]
        .into_iter()
        .flatten()
        .next();
        match image {
            None => Ok(self.stage1.clone()),
            Some(image) => flavor_of(image),
        }
    }
}

/// `.../stage1-fly.aci`, `coreos.com/rkt/stage1-kvm:1.30.0` -> the backend name.
fn flavor_of(image: &str) -> Result<String> {
    let known = registry::names::<dyn rkt_engine::stage::Stage1>()?;
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '.']).next().unwrap_or(base);
    let flavor = base.strip_prefix("stage1-").unwrap_or(base);
    // rkt's default flavors ran systemd-nspawn.
    let flavor = match flavor {
        "coreos" | "src" | "host" => "nspawn",
        other => other,
    };
    if known.contains(&flavor) {
        Ok(flavor.to_string())
    } else {
        bail!(
            "stage1 image {image:?} does not name a known backend (registered: {})",
            known.join(", ")
        )
    }
}

/// Flags that shape a pod, shared by `run` and `prepare`.
#[derive(Debug, Args)]
pub struct PodFlags {
    /// Ports to expose on the host (NAME:HOSTPORT; requires --net)
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// Inherit all environment variables not set by apps
    #[arg(long)]
    pub inherit_env: bool,
    /// Disable the overlay filesystem (copy each app's rootfs instead)
    #[arg(long)]
    pub no_overlay: bool,
    /// Run within user namespaces
    #[arg(long)]
    pub private_users: bool,
    /// An environment variable to set for apps, NAME=VALUE
    #[arg(long = "set-env")]
    pub set_env: Vec<String>,
    /// Use only images already in the store
    #[arg(long)]
    pub store_only: bool,
    /// Fetch images ignoring the store
    #[arg(long)]
    pub no_store: bool,
    /// When to fetch images: new, update, never
    #[arg(long)]
    pub pull_policy: Option<String>,
    /// A pod manifest to run; only --net, --no-overlay and --interactive may go with it
    /// (and the stage1 and --uuid-file-save flags)
    #[arg(long)]
    pub pod_manifest: Option<PathBuf>,
    /// Write the pod's UUID to this file
    #[arg(long)]
    pub uuid_file_save: Option<PathBuf>,
    /// A volume for the pod: NAME,kind=host|empty,source=PATH,readOnly=BOOL,...
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Bind a volume into every app: volume=NAME,target=PATH (after an image: that app only)
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
}

impl PodFlags {
    /// rkt's list: flags that shape apps, volumes or fetching, which a pod manifest
    /// already decides. Stage1 selection, --net, --no-overlay, --interactive and
    /// --uuid-file-save may go with it.
    fn conflicts_with_pod_manifest(&self, images: usize) -> Vec<&'static str> {
        let fetching = self.store_only
            || self.no_store
            || matches!(self.pull_policy.as_deref(), Some("never" | "update"));
        [
            (images > 0, "IMAGE"),
            (!self.volumes.is_empty(), "--volume"),
            (!self.mounts.is_empty(), "--mount"),
            (!self.ports.is_empty(), "--port"),
            (fetching, "--pull-policy/--store-only/--no-store"),
            (self.inherit_env, "--inherit-env"),
            (!self.set_env.is_empty(), "--set-env"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }

    pub fn request(
        &self,
        stage1: String,
        insecure: rkt_engine::stage::InsecureOptions,
        images: &[String],
    ) -> Result<PrepareRequest> {
        refuse(
            self.store_only && self.no_store,
            "both --store-only and --no-store specified",
        )?;
        let apps = parse_apps(images)?;
        if self.pod_manifest.is_some() {
            let conflicting = self.conflicts_with_pod_manifest(apps.len());
            if !conflicting.is_empty() {
                bail!(
                    "conflicting flags set with --pod-manifest: {} (only --net, --no-overlay and --interactive may go with it)",
                    conflicting.join(", ")
                );
            }
        } else {
            refuse(
                apps.is_empty(),
                "must provide at least one image or specify the pod manifest",
            )?;
        }
        let mut set_env: Vec<EnvVar> = Vec::new();
        for flag in &self.set_env {
            let var = EnvVar::from_flag(flag).with_context(|| format!("--set-env {flag:?}"))?;
            if set_env.iter().any(|v| v.name == var.name) {
                bail!("--set-env: environment variable {:?} already set", var.name);
            }
            set_env.push(var);
        }
        let pull = match (self.pull_policy.as_deref(), self.store_only, self.no_store) {
            (Some("new") | None, false, false) => PullPolicy::New,
            (Some("update"), false, false) | (None, false, true) => PullPolicy::Update,
            (Some("never"), false, false) | (None, true, false) => PullPolicy::Never,
            (Some(p), false, false) => bail!("--pull-policy={p}: must be new, update or never"),
            _ => bail!("--pull-policy cannot be combined with --store-only or --no-store"),
        };
        Ok(PrepareRequest {
            apps,
            mounts: self
                .mounts
                .iter()
                .map(|m| Mount::from_flag(m).with_context(|| format!("--mount {m:?}")))
                .collect::<Result<_>>()?,
            volumes: self
                .volumes
                .iter()
                .map(|v| Volume::from_flag(v).with_context(|| format!("--volume {v:?}")))
                .collect::<Result<_>>()?,
            set_env,
            inherit_env: self.inherit_env,
            ports: self
                .ports
                .iter()
                .map(|p| ExposedPort::from_flag(p).with_context(|| format!("--port {p:?}")))
                .collect::<Result<_>>()?,
            no_overlay: self.no_overlay,
            private_users: self.private_users,
            pod_manifest: self.pod_manifest.clone(),
            stage1,
            fetch: FetchPolicy {
                pull,
                insecure,
                signature: None,
                ..FetchPolicy::default()
            },
            uuid_file_save: self.uuid_file_save.clone(),
            mutable: false,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub stage1: Stage1Flags,
    #[command(flatten)]
    pub pod: PodFlags,
    /// The pod's networks: host, none, default, default-restricted or a named
    /// network, with optional CNI args (NAME:ARGS); comma-separated
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "default")]
    pub net: Vec<String>,
    /// Run the pod interactively (one image only): the app gets the terminal
    #[arg(long)]
    pub interactive: bool,
    /// Register the pod with the metadata service
    #[arg(long)]
    pub mds_register: bool,
    /// The metadata service's registration socket (`rkt metadata-service --socket`)
    #[arg(long, env = "RKT_MDS_SOCKET", default_value = rkt_engine::mds::DEFAULT_SOCKET, hide = true)]
    pub mds_socket: PathBuf,
    /// The pod's hostname (default: rkt-<uuid>; stage1s with their own UTS namespace)
    #[arg(long)]
    pub hostname: Option<String>,
    #[command(flatten)]
    pub dns: DnsFlags,
    /// IMAGE [per-app flags] [-- ARGS... [---]] ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// resolv.conf and hosts for the pod's apps.
#[derive(Debug, Args, Default)]
pub struct DnsFlags {
    /// Name servers for the pod's resolv.conf; `host` (the host's resolv.conf)
    /// or `none` (leave the image's) alone
    #[arg(long, value_delimiter = ',')]
    pub dns: Vec<String>,
    /// resolv.conf search domains
    #[arg(long, value_delimiter = ',')]
    pub dns_search: Vec<String>,
    /// resolv.conf options
    #[arg(long, value_delimiter = ',')]
    pub dns_opt: Vec<String>,
    /// resolv.conf domain
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// Entries for the pod's /etc/hosts (IP=HOSTNAME), or `host` for the host's file
    #[arg(long)]
    pub hosts_entry: Vec<String>,
}

impl DnsFlags {
    pub fn dns_mode(&self) -> Result<DnsMode> {
        let others = !self.dns_search.is_empty() || !self.dns_opt.is_empty() || self.dns_domain.is_some();
        let special = |word: &str| self.dns.iter().any(|d| d == word);
        for word in ["host", "none"] {
            if special(word) {
                refuse(
                    self.dns.len() > 1 || others,
                    &format!("--dns={word} cannot be combined with other --dns* flags"),
                )?;
                return Ok(if word == "host" {
                    DnsMode::Host
                } else {
                    DnsMode::None
                });
            }
        }
        for ip in &self.dns {
            if ip.parse::<std::net::IpAddr>().is_err() {
                bail!("--dns {ip:?}: not an IP address, host or none");
            }
        }
        if self.dns.is_empty() && !others {
            return Ok(DnsMode::Default);
        }
        Ok(DnsMode::Explicit(DnsSettings {
            nameservers: self.dns.clone(),
            domain: self.dns_domain.clone(),
            search: self.dns_search.clone(),
            options: self.dns_opt.clone(),
        }))
    }

    pub fn hosts_mode(&self) -> Result<HostsMode> {
        if self.hosts_entry.iter().any(|h| h == "host") {
            refuse(
                self.hosts_entry.len() > 1,
                "--hosts-entry=host cannot be combined with other entries",
            )?;
            return Ok(HostsMode::Host);
        }
        if self.hosts_entry.is_empty() {
            return Ok(HostsMode::Default);
        }
        let mut entries = Vec::new();
        for entry in &self.hosts_entry {
            let Some((ip, host)) = entry.split_once('=') else {
                bail!("--hosts-entry {entry:?}: want IP=HOSTNAME or host");
            };
            if ip.parse::<std::net::IpAddr>().is_err()
                || host.is_empty()
                || host.contains(char::is_whitespace)
            {
                bail!("--hosts-entry {entry:?}: want IP=HOSTNAME or host");
            }
            entries.push((ip.to_string(), host.to_string()));
        }
        Ok(HostsMode::Entries(entries))
    }
}

pub fn parse_net(flags: &[String]) -> NetRequest {
    let networks = flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| match n.split_once(':') {
            Some((name, args)) => (name.to_string(), Some(args.to_string())),
            None => (n.to_string(), None),
        })
        .collect();
    NetRequest {
        networks,
        local_config: None,
    }
}

pub fn run(global: &GlobalFlags, args: RunArgs) -> Result<u8> {
    let net = if args.net.is_empty() {
        parse_net(&["default".to_string()])
    } else {
        parse_net(&args.net)
    };
    let net = NetRequest {
        local_config: Some(global.local_config.clone()),
        ..net
    };
    let none = net.networks.iter().any(|(n, _)| n == "none");
    refuse(
        !args.pod.ports.is_empty() && none,
        "--port flag does not work with 'none' networking",
    )?;
    refuse(
        !args.pod.ports.is_empty() && net.is_host(),
        "--port flag does not work with 'host' networking",
    )?;
    refuse(
        args.mds_register && none,
        "--mds-register flag does not work with --net=none; use 'host', 'default' or an equivalent network",
    )?;
    let mut prepare = args
        .pod
        .request(args.stage1.backend()?, global.insecure_options, &args.images)?;
    prepare.fetch.config = global.config_dirs();
    refuse(
        args.interactive && prepare.apps.len() > 1,
        "interactive option only supports one image",
    )?;
    let request = RunRequest {
        prepare,
        net,
        net_explicit: !args.net.is_empty(),
        interactive: args.interactive,
        debug: global.debug,
        hostname: args.hostname,
        dns: args.dns.dns_mode()?,
        hosts: args.dns.hosts_mode()?,
        mds: args.mds_register.then(|| rkt_engine::mds::MdsRegistration {
            socket: args.mds_socket.clone(),
        }),
    };
    let runtime = global.runtime()?;
    let exit = runtime.run(&request)?;
    Ok(super::exit_byte(exit.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_split_on_commas_with_args() {
        let net = parse_net(&["default:IP=172.16.28.50,host".into(), "x".into()]);
        assert_eq!(
            net.networks,
            vec![
                ("default".to_string(), Some("IP=172.16.28.50".to_string())),
                ("host".to_string(), None),
                ("x".to_string(), None)
            ]
        );
    }
}
