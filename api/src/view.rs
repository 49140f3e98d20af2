//! The data directory read into v1alpha messages (blocking code; the service
//! runs it on tokio's blocking pool).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rkt_engine::pod::sandbox::{self, AppPhase};
use rkt_engine::pod::{self, PodInfo, PodState, PodsDir, layout, protocol};
use rkt_engine::runner::NetRecord;
use rkt_engine::schema::{ImageId, PodManifest};
use rkt_engine::store::{ImageInfo, Store};
use tonic::Status;

use crate::v1alpha::{
    self, App, AppState, Event, EventFilter, EventType, Image, ImageFilter, KeyValue, Pod, PodFilter,
};

pub const APPC_VERSION: &str = "0.8.11";

fn nanos(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn pod_state(state: PodState) -> v1alpha::PodState {
    use v1alpha::PodState as P;
    match state {
        PodState::Embryo => P::Embryo,
        PodState::Preparing => P::Preparing,
        PodState::AbortedPrepare => P::AbortedPrepare,
        PodState::Prepared => P::Prepared,
        PodState::Running => P::Running,
        PodState::Exited => P::Exited,
        PodState::ExitedGarbage | PodState::Garbage => P::Garbage,
    }
}

fn read_manifest(info: &PodInfo) -> Option<(Vec<u8>, PodManifest)> {
    let bytes = std::fs::read(layout::manifest(&info.path)).ok()?;
    let manifest = PodManifest::from_json(&bytes).ok()?;
    Some((bytes, manifest))
}

/// An app's state and exit code: what the init recorded for apps of mutable
/// pods, else the pod's state and the app's status file.
fn app_state(info: &PodInfo, app: &str) -> (AppState, i32) {
    let code: Option<i32> = std::fs::read_to_string(layout::app_status(&info.path, app))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let recorded = sandbox::AppState::read(&sandbox::app_state(app).on_host(&info.path));
    let running = info.state == PodState::Running;
    match (recorded, code) {
        (_, Some(code)) => (AppState::Exited, code),
        (Some(s), None) if s.state == AppPhase::Running && running => (AppState::Running, 0),
        (Some(s), None) if s.state == AppPhase::Created => (AppState::Undefined, 0),
        (Some(_), None) => (AppState::Exited, 0),
        (None, None) if running => (AppState::Running, 0),
        (None, None) => (AppState::Undefined, 0),
    }
}

pub fn pod_message(info: &PodInfo, detail: bool) -> Pod {
    let manifest = read_manifest(info);
    let pid = if info.state == PodState::Running {
        std::fs::read_to_string(info.path.join(layout::PID))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1)
    } else {
        -1
    };
    let apps = manifest
        .as_ref()
        .map(|(_, m)| {
            m.apps
                .iter()
                .map(|a| {
                    let (state, exit_code) = app_state(info, a.name.as_str());
                    App {
                        name: a.name.as_str().to_string(),
                        image: Some(Image {
                            id: a.image.id.to_string(),
                            name: a
                                .image
                                .name
                                .as_ref()
                                .map(|n| n.as_str().to_string())
                                .unwrap_or_default(),
                            ..Image::default()
                        }),
                        state: state as i32,
                        exit_code,
                        annotations: a
                            .annotations
                            .iter()
                            .map(|x| KeyValue {
                                key: x.name.as_str().to_string(),
                                value: x.value.clone(),
                            })
                            .collect(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let networks = std::fs::read(info.path.join(layout::NET_INFO))
        .ok()
        .and_then(|b| serde_json::from_slice::<NetRecord>(&b).ok())
        .map(|r| {
            r.info
                .networks
                .iter()
                .map(|n| v1alpha::Network {
                    name: n.name.clone(),
                    ipv4: if n.ip.contains(':') {
                        String::new()
                    } else {
                        n.ip.clone()
                    },
                    ipv6: if n.ip.contains(':') {
                        n.ip.clone()
                    } else {
                        String::new()
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    Pod {
        id: info.uuid.to_string(),
        pid,
        state: pod_state(info.state) as i32,
        apps,
        networks,
        annotations: manifest
            .as_ref()
            .map(|(_, m)| {
                m.annotations
                    .iter()
                    .map(|x| KeyValue {
                        key: x.name.as_str().to_string(),
                        value: x.value.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        manifest: match (detail, manifest) {
            (true, Some((bytes, _))) => bytes,
            _ => Vec::new(),
        },
        cgroup: String::new(),
        created_at: nanos(pod::created_at(info)),
        started_at: nanos(pod::started_at(info)),
        gc_marked_at: nanos(pod::gc_marked_at(info)),
    }
}

fn pod_matches(pod: &Pod, f: &PodFilter) -> bool {
    let any = |wanted: &[String], have: &mut dyn Iterator<Item = String>| {
        let have: Vec<String> = have.collect();
        wanted.is_empty() || wanted.iter().any(|w| have.contains(w))
    };
    (f.ids.is_empty() || f.ids.iter().any(|id| pod.id.starts_with(id.as_str())))
        && (f.states.is_empty() || f.states.contains(&pod.state))
        && any(&f.app_names, &mut pod.apps.iter().map(|a| a.name.clone()))
        && any(
            &f.image_ids,
            &mut pod
                .apps
                .iter()
                .filter_map(|a| a.image.as_ref())
                .map(|i| i.id.clone()),
        )
        && any(&f.network_names, &mut pod.networks.iter().map(|n| n.name.clone()))
        && f.annotations.iter().all(|kv| {
            pod.annotations
                .iter()
                .any(|a| a.key == kv.key && a.value == kv.value)
        })
        && (f.cgroups.is_empty() || f.cgroups.contains(&pod.cgroup))
}

pub fn list_pods(dir: &Path, filters: &[PodFilter], detail: bool) -> Result<Vec<Pod>, Status> {
    let pods = PodsDir::existing(dir);
    let mut out = Vec::new();
    for info in pods.list().map_err(internal)? {
        let pod = pod_message(&info, detail);
        if filters.is_empty() || filters.iter().any(|f| pod_matches(&pod, f)) {
            out.push(pod);
        }
    }
    Ok(out)
}

pub fn inspect_pod(dir: &Path, id: &str) -> Result<Pod, Status> {
    let pods = PodsDir::existing(dir);
    let uuid = pods.resolve(id).map_err(|e| Status::not_found(e.to_string()))?;
    let info = pods.info(&uuid).map_err(|e| Status::not_found(e.to_string()))?;
    Ok(pod_message(&info, true))
}

fn image_message(store: &Store, info: &ImageInfo, detail: bool) -> Image {
    let version = info
        .labels
        .iter()
        .find(|l| l.name.as_str() == "version")
        .map(|l| l.value.clone())
        .unwrap_or_default();
    Image {
        base_format: Some(v1alpha::ImageFormat {
            r#type: v1alpha::ImageType::Appc as i32,
            version: APPC_VERSION.into(),
        }),
        id: info.id.to_string(),
        name: info.name.as_str().to_string(),
        version,
        import_timestamp: secs(info.imported_at),
        manifest: if detail {
            store.manifest(&info.id).map(|m| m.to_json()).unwrap_or_default()
        } else {
            Vec::new()
        },
        size: i64::try_from(info.size).unwrap_or(i64::MAX),
        annotations: Vec::new(),
        labels: info
            .labels
            .iter()
            .map(|l| KeyValue {
                key: l.name.as_str().to_string(),
                value: l.value.clone(),
            })
            .collect(),
    }
}

fn image_matches(image: &Image, f: &ImageFilter) -> bool {
    let base = image.name.rsplit('/').next().unwrap_or(&image.name);
    (f.ids.is_empty() || f.ids.iter().any(|id| image.id.starts_with(id.as_str())))
        && (f.prefixes.is_empty() || f.prefixes.iter().any(|p| image.name.starts_with(p.as_str())))
        && (f.base_names.is_empty() || f.base_names.iter().any(|b| b == base))
        && (f.keywords.is_empty() || f.keywords.iter().any(|k| image.name.contains(k.as_str())))
        && f.labels.iter().all(|kv| {
            image
                .labels
                .iter()
                .any(|l| l.key == kv.key && l.value == kv.value)
        })
        && (f.imported_after == 0 || image.import_timestamp > f.imported_after)
        && (f.imported_before == 0 || image.import_timestamp < f.imported_before)
        && (f.full_names.is_empty() || f.full_names.contains(&image.name))
}

pub fn list_images(dir: &Path, filters: &[ImageFilter], detail: bool) -> Result<Vec<Image>, Status> {
    let store = Store::open(dir).map_err(internal)?;
    let mut out = Vec::new();
    for info in store.list().map_err(internal)? {
        let image = image_message(&store, &info, detail);
        if filters.is_empty() || filters.iter().any(|f| image_matches(&image, f)) {
            out.push(image);
        }
    }
    Ok(out)
}

pub fn inspect_image(dir: &Path, id: &str) -> Result<Image, Status> {
    let store = Store::open(dir).map_err(internal)?;
    let id: ImageId = store.resolve(id).map_err(|e| Status::not_found(e.to_string()))?;
    let info = store.info(&id).map_err(|e| Status::not_found(e.to_string()))?;
    Ok(image_message(&store, &info, true))
}

/// What ListenEvents compares between two looks at the directory.
#[derive(Debug, Default)]
pub struct Snapshot {
    pods: BTreeMap<String, (PodState, BTreeMap<String, AppState>)>,
    images: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn take(dir: &Path) -> Snapshot {
        let mut snapshot = Snapshot::default();
        if let Ok(list) = PodsDir::existing(dir).list() {
            for info in list {
                let apps = read_manifest(&info)
                    .map(|(_, m)| {
                        m.apps
                            .iter()
                            .map(|a| (a.name.as_str().to_string(), app_state(&info, a.name.as_str()).0))
                            .collect()
                    })
                    .unwrap_or_default();
                snapshot.pods.insert(info.uuid.to_string(), (info.state, apps));
            }
        }
        if let Ok(store) = Store::open(dir)
            && let Ok(images) = store.list()
        {
            for i in images {
                snapshot
                    .images
                    .insert(i.id.to_string(), i.name.as_str().to_string());
            }
        }
        snapshot
    }

    pub fn events_to(&self, next: &Snapshot) -> Vec<Event> {
        let now = secs(SystemTime::now());
        let event = |t: EventType, id: &str, from: &str| Event {
            r#type: t as i32,
            id: id.to_string(),
            from: from.to_string(),
            time: now,
            data: Vec::new(),
        };
        let mut out = Vec::new();
        for (id, (state, apps)) in &next.pods {
            let before = self.pods.get(id);
            let was = before.map(|(s, _)| *s);
            if was != Some(*state) {
                let t = match state {
                    PodState::Prepared => Some(EventType::PodPrepared),
                    PodState::AbortedPrepare => Some(EventType::PodPrepareAborted),
                    PodState::Running => Some(EventType::PodStarted),
                    PodState::Exited => Some(EventType::PodExited),
                    PodState::ExitedGarbage | PodState::Garbage => Some(EventType::PodGarbageCollected),
                    _ => None,
                };
                if let Some(t) = t {
                    out.push(event(t, id, ""));
                }
            }
            for (app, state) in apps {
                let was = before.and_then(|(_, a)| a.get(app)).copied();
                if was != Some(*state) {
                    match state {
                        AppState::Running => out.push(event(EventType::AppStarted, id, app)),
                        AppState::Exited => out.push(event(EventType::AppExited, id, app)),
                        AppState::Undefined => {}
                    }
                }
            }
        }
        for id in self.pods.keys().filter(|id| !next.pods.contains_key(*id)) {
            if !matches!(
                self.pods.get(id),
                Some((PodState::ExitedGarbage | PodState::Garbage, _))
            ) {
                out.push(event(EventType::PodGarbageCollected, id, ""));
            }
        }
        for (id, name) in &next.images {
            if !self.images.contains_key(id) {
                out.push(event(EventType::ImageImported, id, name));
            }
        }
        for (id, name) in &self.images {
            if !next.images.contains_key(id) {
                out.push(event(EventType::ImageRemoved, id, name));
            }
        }
        out
    }
}

pub fn event_matches(e: &Event, f: &EventFilter) -> bool {
    (f.types.is_empty() || f.types.contains(&e.r#type))
        && (f.ids.is_empty() || f.ids.contains(&e.id))
        && (f.names.is_empty() || f.names.contains(&e.from))
        && (f.since_time == 0 || e.time >= f.since_time)
        && (f.until_time == 0 || e.time <= f.until_time)
}

/// A log file being followed: where the next read starts.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

/// The lines so far (the last `lines` of them when asked), and the files to
/// follow from there.
pub fn log_start(
    dir: &Path,
    request: &v1alpha::GetLogsRequest,
) -> Result<(Vec<LogFile>, Vec<String>), Status> {
    let pods = PodsDir::existing(dir);
    let uuid = pods
        .resolve(&request.pod_id)
        .map_err(|e| Status::not_found(e.to_string()))?;
    let info = pods.info(&uuid).map_err(|e| Status::not_found(e.to_string()))?;
    let (_, manifest) =
        read_manifest(&info).ok_or_else(|| Status::not_found(format!("pod {uuid} has no manifest")))?;
    let apps: Vec<String> = manifest
        .apps
        .iter()
        .map(|a| a.name.as_str().to_string())
        .collect();
    let wanted: Vec<String> = if request.app_name.is_empty() {
        apps
    } else if apps.contains(&request.app_name) {
        vec![request.app_name.clone()]
    } else {
        return Err(Status::not_found(format!(
            "pod {uuid} has no app {:?}",
            request.app_name
        )));
    };
    let mut files: Vec<LogFile> = wanted
        .iter()
        .map(|app| LogFile {
            path: protocol::app_log(app).on_host(&info.path),
            offset: 0,
            partial: Vec::new(),
        })
        .collect();
    let (next, mut lines) = log_more(std::mem::take(&mut files));
    if let Ok(n) = usize::try_from(request.lines)
        && n > 0
        && lines.len() > n
    {
        lines.drain(..lines.len() - n);
    }
    Ok((next, lines))
}

/// Complete lines appended since the last read.
pub fn log_more(mut files: Vec<LogFile>) -> (Vec<LogFile>, Vec<String>) {
    let mut lines = Vec::new();
    for f in &mut files {
        let Ok(mut file) = std::fs::File::open(&f.path) else {
            continue;
        };
        if file.seek(SeekFrom::Start(f.offset)).is_err() {
            continue;
        }
        let mut bytes = Vec::new();
        let Ok(n) = file.read_to_end(&mut bytes) else {
            continue;
        };
        f.offset += n as u64;
        f.partial.extend_from_slice(&bytes);
        if let Some(cut) = f.partial.iter().rposition(|b| *b == b'\n') {
            let complete: Vec<u8> = f.partial.drain(..=cut).collect();
            lines.extend(String::from_utf8_lossy(&complete).lines().map(str::to_string));
        }
    }
    (files, lines)
}
