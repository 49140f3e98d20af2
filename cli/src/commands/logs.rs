//! `rkt logs [--app NAME] [--follow] UUID` (beyond rkt): what a pod's apps wrote
//! to stdout and stderr, as the stage1 init kept it (CRI records, see
//! `pod::applog`), app by app in manifest order; `--follow` goes on printing
//! what the apps write until the pod has exited.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_engine::pod::{PodState, applog, layout, protocol};
use rkt_engine::schema::PodManifest;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this app's output
    #[arg(long)]
    pub app: Option<String>,
    /// Keep printing new output until the pod has exited
    #[arg(long, short = 'f')]
    pub follow: bool,
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
    let mut files: Vec<(PathBuf, u64)> = wanted
        .iter()
        .map(|app| (protocol::app_log(app).on_host(&info.path), 0))
        .collect();
    print_new(&mut files)?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        // Read after the state: what the apps wrote before the pod ended is
        // printed by this last round.
        let running = runtime
            .pods
            .info(&uuid)
            .map(|i| i.state == PodState::Running)
            .unwrap_or(false);
        if !print_new(&mut files)? && !running {
            return Ok(0);
        }
        if running {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// How often `--follow` looks for new output.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Prints the whole records appended to each file since its offset; whether
/// there were any.
fn print_new(files: &mut [(PathBuf, u64)]) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    let mut any = false;
    for (path, offset) in files.iter_mut() {
        let mut file = match std::fs::File::open(&*path) {
            Ok(f) => f,
            // Not started yet, interactive, or a stage1 that keeps no logs.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        file.seek(SeekFrom::Start(*offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // A record still being written waits for the next round.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        *offset += end as u64 + 1;
        let mut text = Vec::with_capacity(end + 1);
        applog::decode(&bytes[..=end], &mut text);
        out.write_all(&text)?;
        any = true;
    }
    out.flush()?;
    Ok(any)
}
