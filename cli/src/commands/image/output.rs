//! `rkt image export`, `extract` and `render`: an image out of the store, into a
//! file or a directory that appears complete or not at all.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rkt_engine::store::DirContent;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Overwrite the output file
    #[arg(long)]
    pub overwrite: bool,
    #[arg(value_name = "IMAGE")]
    pub image: String,
    #[arg(value_name = "OUTPUT_ACI_FILE")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Write the root filesystem only, as the output directory itself
    #[arg(long)]
    pub rootfs_only: bool,
    /// Replace the output directory if it exists
    #[arg(long)]
    pub overwrite: bool,
    #[arg(value_name = "IMAGE")]
    pub image: String,
    #[arg(value_name = "OUTPUT_DIR")]
    pub output: PathBuf,
}

pub fn export(global: &GlobalFlags, args: ExportArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let id = super::resolve(&runtime, &args.image)?;
    runtime.store.export_to(&id, &args.output, args.overwrite)?;
    Ok(0)
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// The image's own archive, unpacked.
    Extract,
    /// The tree the image's apps see: dependencies and pathWhitelist applied.
    Render,
}

pub fn extract(global: &GlobalFlags, args: ExtractArgs, kind: Kind) -> Result<u8> {
    let content = if args.rootfs_only {
        DirContent::RootfsOnly
    } else {
        DirContent::Image
    };
    match kind {
        Kind::Extract => {
            let runtime = global.runtime_read_only()?;
            let id = super::resolve(&runtime, &args.image)?;
            runtime
                .store
                .extract_to(&id, &args.output, content, args.overwrite)?;
        }
        Kind::Render => {
            // Rendering may add a tree to the store.
            let runtime = global.runtime()?;
            let id = super::resolve(&runtime, &args.image)?;
            runtime
                .store
                .render_to(&id, &args.output, content, args.overwrite)?;
        }
    }
    Ok(0)
}
