//! `rkt image cat-manifest`.

use anyhow::Result;
use clap::{ArgAction, Args};

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct CatManifestArgs {
    /// Apply indent to format the output
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub pretty_print: bool,
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

pub fn cat_manifest(global: &GlobalFlags, args: CatManifestArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let id = super::resolve(&runtime, &args.image)?;
    let manifest = runtime.store.manifest(&id)?;
    let text = if args.pretty_print {
        serde_json::to_string_pretty(&manifest)?
    } else {
        serde_json::to_string(&manifest)?
    };
    println!("{text}");
    Ok(0)
}
