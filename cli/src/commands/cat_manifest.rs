//! `rkt cat-manifest UUID`: the pod manifest the pod runs (or will run).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{ArgAction, Args};
use rkt_engine::pod::layout;
use rkt_engine::schema::PodManifest;

use crate::flags::{GlobalFlags, resolve_pod};

#[derive(Debug, Args)]
pub struct CatManifestArgs {
    /// Indent the output (--pretty-print=false: one line)
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub pretty_print: bool,
    /// Read the pod UUID from this file
    #[arg(long, conflicts_with = "uuid")]
    pub uuid_file: Option<PathBuf>,
    /// The pod's UUID (or an unambiguous prefix)
    #[arg(required_unless_present = "uuid_file")]
    pub uuid: Option<String>,
}

pub fn cat_manifest(global: &GlobalFlags, args: CatManifestArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let uuid = resolve_pod(&runtime.pods, args.uuid.as_deref(), args.uuid_file.as_deref())?;
    let info = runtime.pods.info(&uuid)?;
    let bytes = std::fs::read(layout::manifest(&info.path))
        .with_context(|| format!("pod {uuid} ({}) has no pod manifest", info.state))?;
    let manifest =
        PodManifest::from_json(&bytes).with_context(|| format!("pod {uuid}: invalid pod manifest"))?;
    println!("{}", render(&manifest, args.pretty_print)?);
    Ok(0)
}

/// rkt's rendering: tab-indented, or compact.
pub fn render(manifest: &PodManifest, pretty: bool) -> Result<String> {
    if !pretty {
        return Ok(serde_json::to_string(manifest)?);
    }
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(manifest, &mut ser)?;
    Ok(String::from_utf8(out)?)
}
