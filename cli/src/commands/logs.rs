//! `rkt logs [--app NAME] UUID` (beyond rkt): what a pod's apps wrote to stdout
//! and stderr, as the stage1 init kept it, app by app in manifest order.

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_engine::pod::{layout, protocol};
use rkt_engine::schema::PodManifest;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this app's output
    #[arg(long)]
    pub app: Option<String>,
    /// The pod's UUID (or an unambiguous prefix)
    pub uuid: String,
}

pub fn logs(global: &GlobalFlags, args: LogsArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let uuid = runtime.pods.resolve(&args.uuid)?;
    let info = runtime.pods.info(&uuid)?;
    let manifest_path = layout::manifest(&info.path);
    let bytes =
        std::fs::read(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = PodManifest::from_json(&bytes).with_context(|| manifest_path.display().to_string())?;
    let apps: Vec<&str> = manifest.apps.iter().map(|a| a.name.as_str()).collect();
    let wanted: Vec<&str> = match &args.app {
        Some(app) if apps.contains(&app.as_str()) => vec![app.as_str()],
        Some(app) => bail!("pod {uuid} has no app {app:?} (apps: {})", apps.join(", ")),
        None => apps,
    };
    let mut out = std::io::stdout().lock();
    for app in wanted {
        let path = protocol::app_log(app).on_host(&info.path);
        match std::fs::read(&path) {
            Ok(bytes) => out.write_all(&bytes)?,
            // Not started yet, interactive, or a stage1 that keeps no logs.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    out.flush()?;
    Ok(0)
}
