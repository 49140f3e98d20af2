//! `rkt api-service` through a real tonic client, as root: pods and images
//! listed and inspected (with filters) while pods start and stop beside the
//! service, several clients at once, events for a pod that ran, and the
//! service staying up through it all. The service listens on 127.0.0.1:0 and
//! prints the port it got; every test has its own --dir.

#[allow(dead_code)] // each test binary uses its own subset
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use rkt_api::v1alpha::public_api_client::PublicApiClient;
use rkt_api::v1alpha::{
    EventType, GetInfoRequest, ImageFilter, InspectImageRequest, InspectPodRequest, ListImagesRequest,
    ListPodsRequest, ListenEventsRequest, PodFilter, PodState,
};
use rkt_conformance::{AciSpec, Rkt};
use tonic::transport::Channel;

/// The service; dropping it ends it.
struct ApiService {
    child: Child,
    addr: String,
}

impl ApiService {
    fn start(rkt: &Rkt) -> Self {
        let mut child = rkt
            .command(&["api-service", "--listen=127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rkt api-service");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the address");
        let addr = line.trim().rsplit(' ').next().expect("an address").to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{line:?}");
        ApiService { child, addr }
    }

    async fn client(&self) -> PublicApiClient<Channel> {
        PublicApiClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

impl Drop for ApiService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an rkt command off the async workers.
async fn rkt_cmd(rkt: &Rkt, args: &[&str]) -> rkt_conformance::harness::RunOutput {
    let cmd = rkt.command(args);
    tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        let out = cmd.output().expect("rkt");
        rkt_conformance::harness::RunOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}

#[test]
fn clients_list_and_inspect_while_pods_come_and_go() {
    let Some(rkt) = common::harness("clients_list_and_inspect_while_pods_come_and_go") else {
        return;
    };
    let image = rkt
        .image(&AciSpec::busybox("example.com/api-busybox"))
        .expect("image")
        .display()
        .to_string();
    let fetched = rkt.rkt(&["fetch", "--insecure-options=image", &image]);
    assert_eq!(fetched.code, 0, "{}", fetched.describe());
    let image_id = fetched.stdout.trim().to_string();
    let service = ApiService::start(&rkt);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = service.client().await;
        let info = client
            .get_info(GetInfoRequest {})
            .await
            .expect("GetInfo")
            .into_inner();
        let flags = info.info.expect("info").global_flags.expect("flags");
        assert_eq!(
            std::path::Path::new(&flags.dir),
            std::fs::canonicalize(&rkt.dir).expect("dir")
        );

        // Images, with and without filters that do and do not match.
        let images = client
            .list_images(ListImagesRequest::default())
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        assert_eq!(images.len(), 1, "{images:?}");
        assert_eq!(images[0].id, image_id);
        assert_eq!(images[0].name, "example.com/api-busybox");
        let filtered = |f: ImageFilter| ListImagesRequest {
            filters: vec![f],
            detail: false,
        };
        let by_base = client
            .list_images(filtered(ImageFilter {
                base_names: vec!["api-busybox".into()],
                ..Default::default()
            }))
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        assert_eq!(by_base.len(), 1);
        let none = client
            .list_images(filtered(ImageFilter {
                prefixes: vec!["example.org/".into()],
                ..Default::default()
            }))
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        assert!(none.is_empty(), "{none:?}");
        let inspected = client
            .inspect_image(InspectImageRequest { id: image_id.clone() })
            .await
            .expect("InspectImage")
            .into_inner()
            .image
            .expect("image");
        assert!(
            !inspected.manifest.is_empty(),
            "InspectImage carries the manifest"
        );
        let missing = client
            .inspect_image(InspectImageRequest {
                id: "sha512-0000".into(),
            })
            .await
            .expect_err("an unknown image");
        assert_eq!(missing.code(), tonic::Code::NotFound);

        assert!(
            client
                .list_pods(ListPodsRequest::default())
                .await
                .expect("ListPods")
                .into_inner()
                .pods
                .is_empty()
        );

        // Events from now on; then pods run beside four busy clients.
        let mut events = client
            .listen_events(ListenEventsRequest::default())
            .await
            .expect("ListenEvents")
            .into_inner();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut busy = Vec::new();
        for _ in 0..4 {
            let mut c = service.client().await;
            let stop = stop.clone();
            busy.push(tokio::spawn(async move {
                let mut calls = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let pods = c
                        .list_pods(ListPodsRequest::default())
                        .await
                        .expect("ListPods")
                        .into_inner();
                    for p in pods.pods {
                        // A pod may be collected between the list and this.
                        match c.inspect_pod(InspectPodRequest { id: p.id }).await {
                            Ok(_) => {}
                            Err(s) if s.code() == tonic::Code::NotFound => {}
                            Err(s) => panic!("InspectPod: {s}"),
                        }
                    }
                    c.list_images(ListImagesRequest::default())
                        .await
                        .expect("ListImages");
                    calls += 1;
                }
                calls
            }));
        }
        let mut uuids = Vec::new();
        for code in ["0", "3"] {
            let out = rkt_cmd(
                &rkt,
                &[
                    "run",
                    "--insecure-options=image",
                    "--stage1=fly",
                    &image_id,
                    "--exec=/bin/sh",
                    "--",
                    "-c",
                    &format!("exit {code}"),
                ],
            )
            .await;
            assert_eq!(out.stdout.trim(), "", "{}", out.describe());
        }
        let listed = client
            .list_pods(ListPodsRequest {
                filters: vec![PodFilter {
                    states: vec![PodState::Exited as i32],
                    image_ids: vec![image_id.clone()],
                    ..Default::default()
                }],
                detail: true,
            })
            .await
            .expect("ListPods")
            .into_inner()
            .pods;
        assert_eq!(listed.len(), 2, "{listed:?}");
        for p in &listed {
            uuids.push(p.id.clone());
            assert!(!p.manifest.is_empty());
            assert!(p.created_at > 0 && p.started_at >= p.created_at, "{p:?}");
        }
        let mut codes: Vec<i32> = listed.iter().map(|p| p.apps[0].exit_code).collect();
        codes.sort_unstable();
        assert_eq!(codes, [0, 3]);

        // Each pod's exit is seen as an event (the poll may fold its start in).
        let mut exited = std::collections::BTreeSet::new();
        while exited.len() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .expect("events within 30s")
                .expect("stream")
                .expect("a batch");
            for e in batch.events {
                if e.r#type == EventType::PodExited as i32 && uuids.contains(&e.id) {
                    exited.insert(e.id);
                }
            }
        }

        let gc = rkt_cmd(&rkt, &["gc", "--grace-period=0s"]).await;
        assert_eq!(gc.code, 0, "{}", gc.describe());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in busy {
            let calls = task.await.expect("a busy client");
            assert!(calls > 0);
        }
        let left = client
            .list_pods(ListPodsRequest::default())
            .await
            .expect("the service is still up after gc")
            .into_inner()
            .pods;
        assert!(left.is_empty(), "{left:?}");
        let gone = client
            .inspect_pod(InspectPodRequest { id: uuids[0].clone() })
            .await
            .expect_err("a collected pod");
        assert_eq!(gone.code(), tonic::Code::NotFound);
    });
}

/// GetLogs and an app's state for a mutable pod's app, through the service.
#[test]
fn logs_and_app_states_of_a_sandbox() {
    use rkt_backend_nspawn as _;
    use rkt_engine::stage::{Availability, Stage1, registry};
    let Some(rkt) = common::harness("logs_and_app_states_of_a_sandbox") else {
        return;
    };
    match registry::create::<dyn Stage1>("nspawn").map(|s| s.availability()) {
        Ok(Availability::Available) => {}
        _ => {
            eprintln!("logs_and_app_states_of_a_sandbox: skipped: nspawn is not available");
            return;
        }
    }
    let image = rkt
        .image(&AciSpec::busybox("example.com/api-logs"))
        .expect("image")
        .display()
        .to_string();
    let sync = rkt.work().join("sync");
    std::fs::create_dir(&sync).expect("sync dir");
    let up = sync.join("up");
    nix::unistd::mkfifo(&up, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let volume = format!("--volume=sync,kind=host,source={}", sync.display());
    let mut sandbox = rkt
        .command(&["app", "sandbox", "--stage1=nspawn", "--net=host", &volume])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rkt app sandbox");
    struct Stop<'a>(&'a Rkt, String, &'a mut Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.rkt(&["stop", "--force", &self.1]);
            let _ = self.2.kill();
            let _ = self.2.wait();
        }
    }
    let mut uuid = String::new();
    BufReader::new(sandbox.stdout.as_mut().expect("stdout"))
        .read_line(&mut uuid)
        .expect("uuid");
    let uuid = uuid.trim().to_string();
    let _stop = Stop(&rkt, uuid.clone(), &mut sandbox);
    let ready = rkt.rkt(&["status", "--wait-ready=60s", &uuid]);
    assert_eq!(ready.code, 0, "{}", ready.describe());
    let add = rkt.rkt(&[
        "--insecure-options=image",
        "app",
        "add",
        &uuid,
        &image,
        "--name=talker",
        "--mount=volume=sync,target=/sync",
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo one; echo two >&2; echo up > /sync/up; exec sleep 1000",
    ]);
    assert_eq!(add.code, 0, "{}", add.describe());
    let start = rkt.rkt(&["app", "start", &uuid, "--app=talker"]);
    assert_eq!(start.code, 0, "{}", start.describe());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::open(&up).expect("fifo"), &mut text).expect("read");

    let service = ApiService::start(&rkt);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = service.client().await;
        let pod = client
            .inspect_pod(InspectPodRequest { id: uuid.clone() })
            .await
            .expect("InspectPod")
            .into_inner()
            .pod
            .expect("pod");
        assert_eq!(pod.state, PodState::Running as i32);
        assert!(pod.pid > 0, "{pod:?}");
        assert_eq!(pod.apps.len(), 1);
        assert_eq!(pod.apps[0].state, rkt_api::v1alpha::AppState::Running as i32);
        // Followed until both lines have been relayed (the init relays the
        // app's pipes on its own schedule).
        let mut logs = client
            .get_logs(rkt_api::v1alpha::GetLogsRequest {
                pod_id: uuid.clone(),
                app_name: "talker".into(),
                follow: true,
                ..Default::default()
            })
            .await
            .expect("GetLogs")
            .into_inner();
        let mut lines = Vec::new();
        while lines.len() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(30), logs.message())
                .await
                .expect("lines within 30s")
                .expect("stream")
                .expect("a batch");
            lines.extend(batch.lines);
        }
        let mut tails: Vec<String> = lines
            .iter()
            .map(|l| l.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default())
            .collect();
        tails.sort();
        assert_eq!(tails, ["stderr F two", "stdout F one"], "{lines:?}");
        // Without follow the stream ends after what is there; lines=1 keeps the last.
        let mut last = client
            .get_logs(rkt_api::v1alpha::GetLogsRequest {
                pod_id: uuid.clone(),
                app_name: "talker".into(),
                lines: 1,
                ..Default::default()
            })
            .await
            .expect("GetLogs")
            .into_inner();
        let batch = last.message().await.expect("stream").expect("lines");
        assert_eq!(batch.lines.len(), 1, "{batch:?}");
        assert!(last.message().await.expect("stream").is_none(), "the stream ends");
    });
}
