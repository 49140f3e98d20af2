//! `rkt run-prepared UUID`: runs a pod `rkt prepare` left ready, in this process's
//! lifetime, with the stage1 it was prepared for; the exit code is the pod's.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rkt_engine::runner::RunPreparedRequest;

use super::run::parse_net;
use crate::flags::{GlobalFlags, refuse, resolve_pod};

#[derive(Debug, Args)]
pub struct RunPreparedArgs {
    /// The pod's networks: host, none, default, default-restricted or a named
    /// network, with optional CNI args (NAME:ARGS); comma-separated
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "default")]
    pub net: Vec<String>,
    /// Run the pod interactively: the app gets the terminal
    #[arg(long)]
    pub interactive: bool,
    /// Register the pod with the metadata service
    #[arg(long)]
    pub mds_register: bool,
    /// The metadata service's registration socket (`rkt metadata-service --socket`)
    #[arg(long, env = "RKT_MDS_SOCKET", default_value = rkt_engine::mds::DEFAULT_SOCKET, hide = true)]
    pub mds_socket: PathBuf,
    /// Read the pod UUID from this file
    #[arg(long, conflicts_with = "uuid")]
    pub uuid_file: Option<PathBuf>,
    /// The prepared pod's UUID (or an unambiguous prefix)
    #[arg(required_unless_present = "uuid_file")]
    pub uuid: Option<String>,
}

pub fn run_prepared(global: &GlobalFlags, args: RunPreparedArgs) -> Result<u8> {
    let net = if args.net.is_empty() {
        parse_net(&["default".to_string()])
    } else {
        parse_net(&args.net)
    };
    let net = rkt_engine::stage::NetRequest {
        local_config: Some(global.local_config.clone()),
        ..net
    };
    refuse(
        args.mds_register && net.networks.iter().any(|(n, _)| n == "none"),
        "--mds-register flag does not work with --net=none; use 'host', 'default' or an equivalent network",
    )?;
    let runtime = global.runtime()?;
    let uuid = resolve_pod(&runtime.pods, args.uuid.as_deref(), args.uuid_file.as_deref())?;
    let exit = runtime.run_prepared(&RunPreparedRequest {
        uuid,
        net,
        net_explicit: !args.net.is_empty(),
        interactive: args.interactive,
        debug: global.debug,
        insecure: global.insecure_options,
        mds: args.mds_register.then(|| rkt_engine::mds::MdsRegistration {
            socket: args.mds_socket.clone(),
        }),
    })?;
    Ok(super::exit_byte(exit.code))
}
