//! `rkt gc`.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use rkt_engine::gc::{GcOptions, collect};

use crate::flags::{GlobalFlags, parse_duration};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// How long exited pods stay in exited-garbage before they are deleted
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// How long a prepared pod may wait to be run before it is discarded
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub expire_prepared: Duration,
    /// Move pods to garbage but delete nothing
    #[arg(long)]
    pub mark_only: bool,
}

pub fn gc(global: &GlobalFlags, args: GcArgs) -> Result<u8> {
    let runtime = global.runtime()?;
    let report = collect(
        &runtime.pods,
        &GcOptions {
            grace_period: args.grace_period,
            expire_prepared: args.expire_prepared,
            mark_only: args.mark_only,
        },
    )?;
    let temps = runtime.store.remove_abandoned_temps();
    for uuid in &report.marked {
        println!("Moving pod {uuid} to garbage");
    }
    for uuid in &report.removed {
        println!("Garbage collecting pod {uuid}");
    }
    for error in &report.errors {
        eprintln!("gc: {error}");
    }
    if let Err(e) = &temps {
        eprintln!("gc: {e}");
    }
    Ok(if report.errors.is_empty() && temps.is_ok() {
        0
    } else {
        crate::EXIT_RKT_ERROR
    })
}
