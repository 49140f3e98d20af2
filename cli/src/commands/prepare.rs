//! `rkt prepare`: everything `rkt run` does before starting the pod; prints the
//! pod's UUID for a later `rkt run-prepared`.

use anyhow::Result;
use clap::Args;

use super::run::{PodFlags, Stage1Flags};
use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub stage1: Stage1Flags,
    #[command(flatten)]
    pub pod: PodFlags,
    /// Suppress superfluous output on stdout, print only the UUID on success
    #[arg(long)]
    pub quiet: bool,
    /// IMAGE [per-app flags] [-- ARGS... [---]] ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn prepare(global: &GlobalFlags, args: PrepareArgs) -> Result<u8> {
    let mut request = args
        .pod
        .request(args.stage1.backend()?, global.insecure_options, &args.images)?;
    request.fetch.config = global.config_dirs();
    let runtime = global.runtime()?;
    let pod = runtime.prepare(&request)?;
    // rkt prints nothing else on stdout here either; --quiet is accepted so
    // scripts written for rkt keep working.
    println!("{}", pod.uuid());
    Ok(0)
}
