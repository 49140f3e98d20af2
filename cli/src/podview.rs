//! A pod as `rkt list` and `rkt status` show it, read from the pod directory.
//!
//! The JSON shape is rkt's (`api/v1` `Pod` and `App`, as `lib.NewPodFromInternalPod`
//! fills them): a pod's `created_at`/`started_at` are Unix seconds, an app's times
//! are Unix nanoseconds; empty lists and unknown values are left out. Apps of a
//! pod whose stage1 cannot add or remove apps take their state from the pod's,
//! as rkt does for such pods; an app's `finished_at` is when its exit status was
//! written, or failing that when the pod was marked garbage.

use std::path::Path;
use std::time::SystemTime;

use rkt_engine::pod::{PodInfo, PodState};
use rkt_engine::pod::{layout, sandbox};
use rkt_engine::runner::NetRecord;
use rkt_engine::schema::PodManifest;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub name: String,
    pub state: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub app_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip)]
    pub created: Option<SystemTime>,
    #[serde(skip)]
    pub started: Option<SystemTime>,
    #[serde(skip)]
    pub pid: Option<i32>,
}

/// rkt's `netinfo.NetInfo`, with the fields this runtime records.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    #[serde(rename = "netName")]
    pub name: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub name: String,
    /// `created`, `running`, `exited` or `unknown`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub image_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountView>,
    /// For `rkt list`'s table; not part of rkt's JSON.
    #[serde(skip)]
    pub image_name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MountView {
    pub name: String,
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A small pod file's bytes, and its mtime when `with_mtime`: one open, one
/// read for files under 4 KiB, and a stat only when asked. `rkt list` reads
/// four of these per pod, so `std::fs::read` plus a separate `metadata` (two
/// more system calls each, path lookups included) showed up in its profile.
fn read_small(path: &Path, with_mtime: bool) -> Option<(Vec<u8>, Option<SystemTime>)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let modified = if with_mtime {
        Some(file.metadata().and_then(|m| m.modified()).ok()?)
    } else {
        None
    };
    let mut bytes = Vec::with_capacity(4096);
    loop {
        if bytes.len() == bytes.capacity() {
            bytes.reserve(bytes.capacity());
        }
        let start = bytes.len();
        bytes.resize(bytes.capacity(), 0);
        match file.read(&mut bytes[start..]) {
            Ok(0) => {
                bytes.truncate(start);
                break;
            }
            Ok(n) => {
                bytes.truncate(start + n);
                // A short read of a regular file on a local filesystem is its end.
                if bytes.len() < bytes.capacity() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => bytes.truncate(start),
            Err(_) => return None,
        }
    }
    Some((bytes, modified))
}

fn parse_number<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// Every pod's view, read on as many threads as there are CPUs: the reads are
/// independent, and with 1,000 pods their system calls are most of `rkt list`.
pub fn view_all(pods: &[PodInfo]) -> Vec<PodView> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    // Below this a thread costs more than it saves.
    const PER_THREAD_MIN: usize = 64;
    if threads < 2 || pods.len() < 2 * PER_THREAD_MIN {
        return pods.iter().map(view).collect();
    }
    let chunk = pods.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = pods
            .chunks(chunk)
            .map(|part| {
                let thread = std::thread::Builder::new()
                    .spawn_scoped(scope, move || part.iter().map(view).collect::<Vec<_>>());
                (part, thread)
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(part, thread)| match thread {
                // A worker only panics on a bug; show it as one rather than hide pods.
                Ok(thread) => thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                // No thread to be had: read this part here.
                Err(_) => part.iter().map(view).collect(),
            })
            .collect()
    })
}

fn since_epoch(t: SystemTime) -> Option<std::time::Duration> {
    t.duration_since(SystemTime::UNIX_EPOCH).ok()
}

fn nanos(t: SystemTime) -> Option<i64> {
    since_epoch(t).and_then(|d| i64::try_from(d.as_nanos()).ok())
}

fn seconds(t: SystemTime) -> Option<i64> {
    since_epoch(t).and_then(|d| i64::try_from(d.as_secs()).ok())
}

/// rkt's app state in a pod whose apps live and die with it.
fn app_state_of(pod: PodState) -> &'static str {
    match pod {
        PodState::Embryo | PodState::Preparing | PodState::AbortedPrepare => "unknown",
        PodState::Prepared => "created",
        PodState::Running => "running",
        PodState::Exited | PodState::ExitedGarbage | PodState::Garbage => "exited",
    }
}

/// Reads what is there; a pod being created or deleted may lack any file, and
/// that is shown as absent, never as an error.
pub fn view(info: &PodInfo) -> PodView {
    let dir = &info.path;
    let manifest =
        read_small(&layout::manifest(dir), false).and_then(|(b, _)| PodManifest::from_json(&b).ok());
    let created = mtime(&dir.join(layout::POD_CREATED));
    let (pid, started) = match read_small(&dir.join(layout::PID), true) {
        Some((bytes, modified)) => (parse_number(&bytes), modified),
        None => (None, None),
    };
    let gc_marked = rkt_engine::pod::gc_marked_at(info);
    let apps: Vec<AppView> = manifest
        .iter()
        .flat_map(|m| m.apps.iter().map(move |app| (m, app)))
        .map(|(manifest, app)| {
            let status = read_small(&layout::app_status(dir, app.name.as_str()), true);
            let exit_code = status.as_ref().and_then(|(bytes, _)| parse_number::<i32>(bytes));
            // Apps of a mutable pod (`rkt app`) have a life of their own.
            let recorded = sandbox::is_mutable(manifest)
                .then(|| sandbox::AppState::read(&sandbox::app_state(app.name.as_str()).on_host(dir)))
                .flatten();
            let state = match (exit_code, &recorded) {
                (Some(_), _) => "exited",
                (None, Some(r)) if info.state == PodState::Running => r.state.as_str(),
                _ => app_state_of(info.state),
            };
            let finished = match exit_code {
                Some(_) => status.and_then(|(_, modified)| modified).or(gc_marked),
                None => gc_marked,
            };
            AppView {
                name: app.name.to_string(),
                state,
                created_at: recorded
                    .as_ref()
                    .map(|r| r.created_at)
                    .or(created.and_then(nanos)),
                started_at: match &recorded {
                    Some(r) => r.started_at,
                    None => started.and_then(nanos),
                },
                finished_at: finished.and_then(nanos),
                exit_code,
                image_id: app.image.id.to_string(),
                mounts: app
                    .mounts
                    .iter()
                    .map(|m| {
                        let volume = manifest.volumes.iter().find(|v| v.name == m.volume);
                        MountView {
                            name: m.volume.to_string(),
                            container_path: m.path.clone(),
                            host_path: volume.and_then(|v| v.source.clone()).unwrap_or_default(),
                            read_only: volume.and_then(|v| v.read_only).unwrap_or(false),
                        }
                    })
                    .collect(),
                image_name: app.image.name.as_ref().map(|n| n.to_string()),
            }
        })
        .collect();
    let networks = read_small(&dir.join(layout::NET_INFO), false)
        .and_then(|(b, _)| serde_json::from_slice::<NetRecord>(&b).ok())
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
    PodView {
        name: info.uuid.to_string(),
        state: info.state.to_string(),
        networks,
        app_names: apps.iter().map(|a| a.name.clone()).collect(),
        apps,
        created_at: created.and_then(seconds),
        started_at: started.and_then(seconds),
        created,
        started,
        pid,
    }
}

/// `2026-11-29 10:00:01.123 +0000 UTC`, rkt's absolute time format.
pub fn absolute(time: Option<SystemTime>) -> String {
    let Some(t) = time else {
        return String::new();
    };
    let text = humantime::format_rfc3339_millis(t).to_string();
    // 2026-11-29T10:00:01.123Z -> 2026-11-29 10:00:01.123 +0000 UTC
    format!("{} +0000 UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `3 minutes ago`, rkt's relative format for tables.
pub fn relative(time: Option<SystemTime>) -> String {
    let Some(then) = time else {
        return String::new();
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "5f0d1c2e-3a4b-4c5d-8e6f-708192a3b4c5";

    /// Replaces what differs between runs (times) with markers, line by line in
    /// the pretty JSON, so field order is compared with the stored snapshot too.
    fn normalise(pretty: &str) -> String {
        let mut out = String::new();
        for line in pretty.lines() {
            let marked = line.split_once("_at\": ").and_then(|(key, rest)| {
                let (number, comma) = match rest.strip_suffix(',') {
                    Some(n) => (n, ","),
                    None => (rest, ""),
                };
                let n: i64 = number.parse().ok()?;
                // Seconds stay below 1e11 until the year 5138; nanoseconds are above 1e18.
                let unit = match n {
                    1_000_000_000..100_000_000_000 => "<seconds>",
                    1_000_000_000_000_000_000.. => "<nanoseconds>",
                    _ => "<not a time>",
                };
                Some(format!("{key}_at\": \"{unit}\"{comma}"))
            });
            out.push_str(marked.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    fn exited_pod(dir: &Path) -> PodInfo {
        let id = format!("sha512-{}", "0123456789abcdef".repeat(8));
        let manifest = serde_json::json!({
            "acVersion": "0.8.11",
            "acKind": "PodManifest",
            "apps": [{
                "name": "busybox",
                "image": {"name": "example.com/busybox", "id": id},
                "app": {"exec": ["/bin/sh"], "user": "0", "group": "0"},
                "mounts": [{"volume": "data", "path": "/data"}]
            }],
            "volumes": [{"name": "data", "kind": "host", "source": "/srv/data", "readOnly": true}]
        });
        std::fs::write(layout::manifest(dir), manifest.to_string()).expect("manifest");
        std::fs::write(dir.join(layout::POD_CREATED), b"").expect("pod-created");
        std::fs::write(dir.join(layout::PID), b"4242").expect("pid");
        std::fs::create_dir_all(layout::status_dir(dir)).expect("status dir");
        std::fs::write(layout::app_status(dir, "busybox"), b"7").expect("status");
        let net = serde_json::json!({"networker": "host", "netns": null,
            "networks": [{"name": "default", "ifname": "eth0", "ip": "172.16.28.2"}]});
        std::fs::write(dir.join(layout::NET_INFO), net.to_string()).expect("net-info");
        PodInfo {
            uuid: UUID.parse().expect("uuid"),
            state: PodState::Exited,
            path: dir.to_path_buf(),
        }
    }

    #[test]
    fn json_matches_rkts_shape_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let view = view(&exited_pod(dir.path()));
        let got = normalise(&serde_json::to_string_pretty(&view).expect("json"));
        let want = include_str!("testdata/pod-view.json");
        assert_eq!(got.trim(), want.trim(), "got:\n{got}");
    }

    #[test]
    fn views_read_on_threads_come_back_complete_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods: Vec<PodInfo> = (0..300u32)
            .map(|i| {
                let pod = dir.path().join(i.to_string());
                std::fs::create_dir(&pod).expect("pod dir");
                let mut info = exited_pod(&pod);
                info.uuid = format!("5f0d1c2e-3a4b-4c5d-8e6f-{i:012}").parse().expect("uuid");
                // A big manifest too: more than one read of the file.
                if i == 7 {
                    let mut bytes = std::fs::read(layout::manifest(&pod)).expect("read");
                    bytes.extend(std::iter::repeat_n(b' ', 10_000));
                    std::fs::write(layout::manifest(&pod), bytes).expect("write");
                }
                info
            })
            .collect();
        let one_by_one: Vec<String> = pods
            .iter()
            .map(|p| serde_json::to_string(&view(p)).expect("json"))
            .collect();
        let threaded: Vec<String> = view_all(&pods)
            .iter()
            .map(|v| serde_json::to_string(v).expect("json"))
            .collect();
        assert_eq!(threaded, one_by_one);
        let seventh: serde_json::Value = serde_json::from_str(&threaded[7]).expect("json");
        assert_eq!(seventh["apps"][0]["exit_code"], 7, "{seventh}");
        assert_eq!(
            seventh["apps"][0]["mounts"][0]["host_path"], "/srv/data",
            "{seventh}"
        );
    }

    #[test]
    fn a_pod_without_files_shows_only_name_and_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = PodInfo {
            uuid: UUID.parse().expect("uuid"),
            state: PodState::Embryo,
            path: dir.path().join("gone"),
        };
        let json = serde_json::to_value(view(&info)).expect("json");
        assert_eq!(json, serde_json::json!({"name": UUID, "state": "embryo"}));
    }

    #[test]
    fn app_states_follow_the_pod() {
        assert_eq!(app_state_of(PodState::Prepared), "created");
        assert_eq!(app_state_of(PodState::Running), "running");
        assert_eq!(app_state_of(PodState::ExitedGarbage), "exited");
        assert_eq!(app_state_of(PodState::Preparing), "unknown");
    }
}
