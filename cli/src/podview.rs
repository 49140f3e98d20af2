//! A pod as `rkt list` and `rkt status` show it, read from the pod directory.
//! The JSON shape follows rkt's (`name`, `state`, `networks`, `app_names`, `apps`
//! with per-app `exit_code`, times in Unix nanoseconds).

use std::path::Path;
use std::time::SystemTime;

use rkt_engine::pod::layout;
use rkt_engine::pod::{PodInfo, PodState};
use rkt_engine::runner::NetRecord;
use rkt_engine::schema::PodManifest;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub name: String,
    pub state: String,
    pub networks: Vec<NetworkView>,
    pub app_names: Vec<String>,
    pub apps: Vec<AppView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip)]
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    pub name: String,
    pub ifname: String,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub name: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub image_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn nanos(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
}

/// Reads what is there; a pod being created or deleted may lack any file, and
/// that is shown as absent, never as an error.
pub fn view(info: &PodInfo) -> PodView {
    let dir = &info.path;
    let manifest = std::fs::read(layout::manifest(dir))
        .ok()
        .and_then(|b| PodManifest::from_json(&b).ok());
    let running = info.state == PodState::Running;
    let apps: Vec<AppView> = manifest
        .iter()
        .flat_map(|m| m.apps.iter())
        .map(|app| {
            let status = layout::app_status(dir, app.name.as_str());
            let exit_code = std::fs::read_to_string(&status)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            let state = match (exit_code, info.state) {
                (Some(_), _) => "exited",
                (None, _) if running => "running",
                (None, PodState::Prepared | PodState::Preparing) => "created",
                _ => "unknown",
            };
            AppView {
                name: app.name.to_string(),
                state,
                exit_code,
                image_id: app.image.id.to_string(),
                image_name: app.image.name.as_ref().map(|n| n.to_string()),
                finished_at: exit_code.and(mtime(&status)).and_then(nanos),
            }
        })
        .collect();
    let networks = std::fs::read(dir.join(layout::NET_INFO))
        .ok()
        .and_then(|b| serde_json::from_slice::<NetRecord>(&b).ok())
        .map(|r| {
            r.info
                .networks
                .into_iter()
                .map(|n| NetworkView {
                    name: n.name,
                    ifname: n.ifname,
                    ip: n.ip,
                })
                .collect()
        })
        .unwrap_or_default();
    let pid = std::fs::read_to_string(dir.join(layout::PID))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    PodView {
        name: info.uuid.to_string(),
        state: info.state.to_string(),
        networks,
        app_names: apps.iter().map(|a| a.name.clone()).collect(),
        apps,
        created_at: mtime(&dir.join(layout::POD_CREATED)).and_then(nanos),
        started_at: mtime(&dir.join(layout::PID)).and_then(nanos),
        pid,
    }
}

/// `2026-11-29 10:00:01.123 +0000 UTC`, rkt's absolute time format.
pub fn absolute(nanos: Option<i64>) -> String {
    let Some(n) = nanos else {
        return String::new();
    };
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(n).unwrap_or(0));
    let text = humantime::format_rfc3339_millis(t).to_string();
    // 2026-11-29T10:00:01.123Z -> 2026-11-29 10:00:01.123 +0000 UTC
    format!("{} +0000 UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `3 minutes ago`, rkt's relative format for tables.
pub fn relative(nanos: Option<i64>) -> String {
    let Some(n) = nanos else {
        return String::new();
    };
    let then = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(n).unwrap_or(0));
    let secs = SystemTime::now()
        .duration_since(then)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (amount, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    let plural = if amount == 1 { "" } else { "s" };
    format!("{amount} {unit}{plural} ago")
}
