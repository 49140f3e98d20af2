//! `rkt stop [--force] UUID...`: asks each running pod's stage1 to stop it
//! (SIGTERM; SIGKILL with --force). It returns once the signal is sent; `rkt
//! status --wait` waits for the pod to be exited.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rkt_engine::pod::PodState;
use rkt_engine::runner::pod_stage1;

use crate::flags::{GlobalFlags, for_each_pod};

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Kill the pod (SIGKILL) instead of asking it to stop
    #[arg(long)]
    pub force: bool,
    /// Read the pod UUID from this file
    #[arg(long, conflicts_with = "uuids")]
    pub uuid_file: Option<PathBuf>,
    /// The pods' UUIDs (or unambiguous prefixes)
    #[arg(required_unless_present = "uuid_file", value_name = "UUID")]
    pub uuids: Vec<String>,
}

pub fn stop(global: &GlobalFlags, args: StopArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let pods = &runtime.pods;
    Ok(for_each_pod(
        "stop",
        pods,
        &args.uuids,
        args.uuid_file.as_deref(),
        |uuid| {
            let info = pods.info(&uuid)?;
            match info.state {
                PodState::Running => {}
                PodState::Exited | PodState::ExitedGarbage | PodState::Garbage => {
                    println!("pod \"{uuid}\" is already stopped");
                    return Ok(());
                }
                other => bail!("pod {uuid} is {other}, not running"),
            }
            rkt_engine::failpoint::failpoint("stop.pod-checked");
            pod_stage1(&info.path)?.stop(&info, args.force)?;
            rkt_engine::failpoint::failpoint("stop.signal-sent");
            println!("\"{uuid}\"");
            Ok(())
        },
    ))
}
