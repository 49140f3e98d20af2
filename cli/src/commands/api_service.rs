//! `rkt api-service [--listen=ADDR]`: rkt's read-only gRPC API over `--dir`
//! (see the rkt-api crate). Prints the address it listens on, then serves
//! until SIGINT or SIGTERM.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, Result};
use clap::Args;
use rkt_api::ServiceConfig;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct ApiServiceArgs {
    /// Address to listen on (HOST:PORT; port 0 picks a free one)
    #[arg(long, default_value = "localhost:15441")]
    pub listen: String,
}

pub fn api_service(global: &GlobalFlags, args: ApiServiceArgs) -> Result<u8> {
    let listen: SocketAddr = args
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {:?}", args.listen))?
        .next()
        .with_context(|| format!("--listen {:?}: no address", args.listen))?;
    let dir = std::fs::canonicalize(&global.dir).unwrap_or_else(|_| global.dir.clone());
    let config = ServiceConfig {
        dir,
        local_config: global.local_config.clone(),
        system_config: global.system_config.clone(),
        insecure_flags: format!("{:?}", global.insecure_options),
    };
    rkt_api::serve(config, listen, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "API service listening on {addr}");
        let _ = out.flush();
    })?;
    Ok(0)
}
