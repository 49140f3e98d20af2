//! `rkt cri-service [--listen=unix:///run/rkt/cri.sock]`: the Kubernetes CRI
//! v1 RuntimeService over `--dir` (see the rkt-cri crate). Pods run as
//! `rkt app sandbox` children of this binary. Prints the socket it listens
//! on, then serves until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_cri::ServiceConfig;
use rkt_cri::images::ImageServiceConfig;
use rkt_cri::sandboxes::Engine;
use rkt_engine::stage::InsecureOptions;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct CriServiceArgs {
    /// The unix socket to serve on (unix:///PATH)
    #[arg(long, default_value = "unix:///run/rkt/cri.sock")]
    pub listen: String,
    /// The stage1 sandboxes run with when the CRI names no runtime handler
    #[arg(long, env = "RKT_STAGE1", default_value = "nspawn")]
    pub stage1: String,
    /// The CNI network config directory NetworkReady is judged by
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// A registry (HOST[:PORT]) PullImage may reach over plain http or
    /// unverified TLS; repeat or separate with commas
    #[arg(long, value_name = "REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
}

/// `--insecure-options` as rkt parses it back.
fn insecure_flag(opts: &InsecureOptions) -> String {
    let words: Vec<&str> = [
        (opts.image, "image"),
        (opts.tls, "tls"),
        (opts.http, "http"),
        (opts.pubkey, "pubkey"),
        (opts.capabilities, "capabilities"),
        (opts.paths, "paths"),
        (opts.seccomp, "seccomp"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if words.is_empty() {
        "none".into()
    } else {
        words.join(",")
    }
}

pub fn cri_service(global: &GlobalFlags, args: CriServiceArgs) -> Result<u8> {
    let Some(path) = args.listen.strip_prefix("unix://") else {
        bail!("--listen {:?}: only unix:///PATH is supported", args.listen);
    };
    if !path.starts_with('/') {
        bail!("--listen {:?}: the socket path must be absolute", args.listen);
    }
    let socket = PathBuf::from(path);
    std::fs::create_dir_all(&global.dir).with_context(|| format!("--dir {}", global.dir.display()))?;
    let dir =
        std::fs::canonicalize(&global.dir).with_context(|| format!("--dir {}", global.dir.display()))?;
    let rkt = std::env::current_exe().context("cannot find the rkt binary")?;
    let mut global_args = vec![
        format!("--dir={}", dir.display()),
        format!("--insecure-options={}", insecure_flag(&global.insecure_options)),
        format!("--local-config={}", global.local_config.display()),
        format!("--system-config={}", global.system_config.display()),
    ];
    if global.debug {
        global_args.push("--debug".into());
    }
    let config = ServiceConfig {
        engine: Engine {
            dir,
            rkt,
            global_args,
            stage1: args.stage1,
        },
        cni_conf_dir: args.cni_conf_dir,
        images: ImageServiceConfig {
            insecure_registries: args.insecure_registry,
            insecure: global.insecure_options,
            config_dirs: global.config_dirs(),
        },
    };
    rkt_cri::serve(config, &socket, |path| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "CRI service listening on unix://{}", path.display());
        let _ = out.flush();
    })?;
    Ok(0)
}
