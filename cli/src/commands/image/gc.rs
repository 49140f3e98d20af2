//! `rkt image gc`: trees no pod uses, and images unused for the grace period.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use rkt_engine::image_gc;

use crate::flags::{GlobalFlags, parse_duration};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Duration to wait since an image was last used before removing it
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub grace_period: Duration,
}

pub fn gc(global: &GlobalFlags, args: GcArgs) -> Result<u8> {
    let runtime = global.runtime()?;
    let report = image_gc::collect(&runtime.store, &runtime.pods, args.grace_period)?;
    for tree in &report.trees_removed {
        eprintln!("removed treestore {tree:?}");
    }
    for (id, name) in &report.images_removed {
        println!("successfully removed aci for image: {:?} ({name:?})", id.as_str());
    }
    if !report.images_removed.is_empty() {
        eprintln!("{} image(s) successfully removed", report.images_removed.len());
    }
    for key in &report.orphans_removed {
        eprintln!("removed {key:?}, left without its index record by an interrupted rkt");
    }
    for error in &report.errors {
        eprintln!("image gc: {error}");
    }
    Ok(if report.errors.is_empty() {
        0
    } else {
        crate::EXIT_RKT_ERROR
    })
}
