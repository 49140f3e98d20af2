//! `rkt fetch`: bring images into the store and print their IDs.

use anyhow::{Context, Result, bail};
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
    /// When to fetch: new (only when not in the store), update (when the remote
    /// changed), never (the store only)
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<String>,
    /// Trust the keys a discovery answer names when fetched over verified https
    #[arg(long)]
    pub trust_keys_from_https: bool,
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
    let pull = match (args.pull_policy.as_deref(), args.store_only, args.no_store) {
        (Some("new") | None, false, false) => PullPolicy::New,
        (Some("update"), false, false) | (None, false, true) => PullPolicy::Update,
        (Some("never"), false, false) | (None, true, false) => PullPolicy::Never,
        (Some(p), false, false) => bail!("--pull-policy={p}: must be new, update or never"),
        _ => bail!("--pull-policy cannot be combined with --store-only or --no-store"),
    };
    let policy = FetchPolicy {
        pull,
        insecure: global.insecure_options,
        signature: args.signature.clone(),
        config: global.config_dirs(),
        trust_keys_from_https: args.trust_keys_from_https,
        registry_credentials: None,
    };
    for image in &args.images {
        let id = runtime
            .find_image(image, &policy)
            .with_context(|| image.clone())?;
        println!("{id}");
    }
    Ok(0)
}
