//! `rkt rm UUID...`: removes exited, prepared and aborted pods now, the way gc
//! would sweep them; a running or preparing pod is refused and left alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::flags::{GlobalFlags, for_each_pod};

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Read the pod UUID from this file
    #[arg(long, conflicts_with = "uuids")]
    pub uuid_file: Option<PathBuf>,
    /// The pods' UUIDs (or unambiguous prefixes)
    #[arg(required_unless_present = "uuid_file", value_name = "UUID")]
    pub uuids: Vec<String>,
}

pub fn rm(global: &GlobalFlags, args: RmArgs) -> Result<u8> {
    let runtime = global.runtime()?;
    let pods = &runtime.pods;
    Ok(for_each_pod(
        "rm",
        pods,
        &args.uuids,
        args.uuid_file.as_deref(),
        |uuid| {
            rkt_engine::gc::remove(pods, &uuid)?;
            println!("\"{uuid}\"");
            Ok(())
        },
    ))
}
