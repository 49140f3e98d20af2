//! `rkt fetch`: bring images into the store and print their IDs.

use anyhow::{Context, Result};
use clap::Args;
use rkt_engine::stage::{FetchPolicy, PullPolicy};

use crate::flags::{GlobalFlags, refuse};

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A detached signature for the (single) image
    #[arg(long)]
    pub signature: Option<std::path::PathBuf>,
    /// Use only images already in the store
    #[arg(long)]
    pub store_only: bool,
    /// Fetch images ignoring the store
    #[arg(long)]
    pub no_store: bool,
    /// Print the full image ID (the default; kept for rkt compatibility)
    #[arg(long)]
    pub full: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn fetch(global: &GlobalFlags, args: FetchArgs) -> Result<u8> {
    refuse(
        args.store_only && args.no_store,
        "both --store-only and --no-store specified",
    )?;
    refuse(
        args.signature.is_some() && args.images.len() > 1,
        "--signature applies to a single image",
    )?;
    let runtime = global.runtime()?;
    let policy = FetchPolicy {
        pull: match (args.store_only, args.no_store) {
            (true, _) => PullPolicy::Never,
            (_, true) => PullPolicy::Update,
            _ => PullPolicy::New,
        },
        insecure: global.insecure_options,
        signature: args.signature.clone(),
    };
    for image in &args.images {
        let id = runtime
            .find_image(image, &policy)
            .with_context(|| image.clone())?;
        println!("{id}");
    }
    Ok(0)
}
