//! `rkt list`.

use anyhow::Result;
use clap::Args;

use crate::flags::{Format, GlobalFlags, print_json};
use crate::podview::{self, PodView};
use crate::table::Table;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Suppress the legend
    #[arg(long)]
    pub no_legend: bool,
    /// Use long output format (full UUIDs and image IDs, absolute times)
    #[arg(long)]
    pub full: bool,
    /// Output format
    #[arg(long)]
    pub format: Option<Format>,
}

pub fn list(global: &GlobalFlags, args: ListArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let views: Vec<PodView> = podview::view_all(&runtime.pods.list()?);
    if let Some(format) = args.format {
        print_json(&views, format)?;
        return Ok(0);
    }
    let mut header = vec!["UUID", "APP", "IMAGE NAME"];
    if args.full {
        header.push("IMAGE ID");
    }
    header.extend(["STATE", "EXIT", "CREATED", "STARTED", "NETWORKS"]);
    let mut table = Table::new(&header, !args.no_legend);
    for pod in &views {
        let uuid = if args.full {
            pod.name.clone()
        } else {
            pod.name.chars().take(8).collect()
        };
        let time = |t| {
            if args.full {
                podview::absolute(t)
            } else {
                podview::relative(t)
            }
        };
        let networks = pod
            .networks
            .iter()
            .map(|n| format!("{}:ip4={}", n.name, n.ip))
            .collect::<Vec<_>>()
            .join(", ");
        // A pod without a readable manifest (still being created) gets one row.
        let apps: Vec<Option<&podview::AppView>> = if pod.apps.is_empty() {
            vec![None]
        } else {
            pod.apps.iter().map(Some).collect()
        };
        for app in apps {
            let mut row = vec![
                uuid.clone(),
                app.map(|a| a.name.clone()).unwrap_or_else(|| "-".into()),
                app.and_then(|a| a.image_name.clone())
                    .unwrap_or_else(|| "-".into()),
            ];
            if args.full {
                row.push(app.map(|a| a.image_id.clone()).unwrap_or_else(|| "-".into()));
            }
            row.extend([
                pod.state.clone(),
                app.and_then(|a| a.exit_code)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                time(pod.created),
                time(pod.started),
                networks.clone(),
            ]);
            table.push(row);
        }
    }
    print!("{}", table.render());
    Ok(0)
}
