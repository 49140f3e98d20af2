//! `rkt metadata-service`: serves the appc metadata service until SIGINT or
//! SIGTERM (`rkt_mds`). Pods registered with `rkt run --mds-register` reach it at
//! their `AC_METADATA_URL`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rkt_engine::mds::{DEFAULT_PORT, DEFAULT_SOCKET};

#[derive(Debug, Args)]
pub struct MetadataServiceArgs {
    /// The TCP port apps connect to (0: any free port, announced on stdout)
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub listen_port: u16,
    /// The address to listen on for apps (all of the host's, like rkt's)
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// The unix socket where `rkt run --mds-register` registers pods
    #[arg(long, env = "RKT_MDS_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn metadata_service(args: MetadataServiceArgs) -> Result<u8> {
    let config = rkt_mds::ServiceConfig {
        listen: SocketAddr::new(args.listen_address, args.listen_port),
        socket: args.socket,
    };
    rkt_mds::serve(&config, |bound| {
        // One line on stdout once both listeners accept: callers wait for it.
        println!(
            "metadata service listening on {}, registrations on {}",
            bound.listen,
            bound.socket.display()
        );
    })?;
    Ok(0)
}
