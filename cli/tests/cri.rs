//! `rkt cri-service` through a real CRI v1 client (tonic over the unix
//! socket), as root on the nspawn stage1: Version, Status (NetworkReady
//! follows the CNI config dir), two sandboxes run, listed with id, state and
//! label filters, the service restarted in the middle (both sandboxes found
//! again from --dir), stop and remove (also of missing sandboxes: OK), and gc
//! leaving nothing. Each test has its own --dir and socket; no sleeps: every
//! CRI call returns once its pod is ready or exited.

#[allow(dead_code)] // each test binary uses its own subset
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use rkt_conformance::Rkt;
use rkt_cri::runtime_v1::runtime_service_client::RuntimeServiceClient;
use rkt_cri::runtime_v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StatusRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::Channel;

use rkt_backend_nspawn as _;

fn harness(test: &str) -> Option<Rkt> {
    common::stage1_harness(test, "nspawn")
}

/// A running `rkt cri-service`; dropping it kills it.
struct CriService {
    child: Child,
}

impl CriService {
    fn start(rkt: &Rkt, socket: &Path, cni: &Path) -> Self {
        let mut child = rkt
            .command(&[
                "cri-service",
                &format!("--listen=unix://{}", socket.display()),
                &format!("--cni-conf-dir={}", cni.display()),
                "--stage1=nspawn",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rkt cri-service");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the socket line");
        assert!(line.contains(&socket.display().to_string()), "{line:?}");
        CriService { child }
    }

    /// SIGTERM, as an operator would; waits for the service to exit.
    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait for cri-service");
        assert!(status.success(), "cri-service after SIGTERM: {status}");
    }
}

impl Drop for CriService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sandbox_request(name: &str, labels: &[(&str, &str)]) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 1,
            }),
            hostname: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::from([("note".to_string(), format!("annotation of {name}"))]),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

async fn list_ids(
    client: &mut RuntimeServiceClient<Channel>,
    filter: Option<PodSandboxFilter>,
) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn state_filter(state: PodSandboxState) -> Option<PodSandboxFilter> {
    Some(PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: state.into() }),
        ..Default::default()
    })
}

fn network_ready(status: &rkt_cri::runtime_v1::StatusResponse) -> (bool, bool) {
    let conditions = &status.status.as_ref().expect("runtime status").conditions;
    let find = |t: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == t)
            .unwrap_or_else(|| panic!("no {t} condition in {conditions:?}"))
            .status
    };
    (find("RuntimeReady"), find("NetworkReady"))
}

#[test]
fn cri_sandbox_lifecycle_with_filters_and_restart() {
    let Some(rkt) = harness("cri_sandbox_lifecycle_with_filters_and_restart") else {
        return;
    };
    let socket = rkt.work().join("run").join("cri.sock");
    let cni: PathBuf = rkt.work().join("net.d");
    std::fs::create_dir_all(&cni).expect("cni dir");
    let service = CriService::start(&rkt, &socket, &cni);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let both = runtime.block_on(async {
        let mut client = rkt_cri::connect(&socket).await.expect("connect");

        let version = client
            .version(VersionRequest {
                version: "0.1.0".into(),
            })
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(version.runtime_name, "rkt");
        assert_eq!(version.runtime_api_version, "v1");
        assert!(!version.runtime_version.is_empty());

        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
        assert_eq!(
            network_ready(&status),
            (true, false),
            "no CNI config yet: {status:?}"
        );
        std::fs::write(
            cni.join("10-test.conflist"),
            r#"{"cniVersion":"0.4.0","name":"test","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write CNI config");
        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
        assert_eq!(
            network_ready(&status),
            (true, true),
            "with a CNI config: {status:?}"
        );

        let a = client
            .run_pod_sandbox(sandbox_request("a", &[("app", "a"), ("tier", "web")]))
            .await
            .expect("RunPodSandbox a")
            .into_inner()
            .pod_sandbox_id;
        let b = client
            .run_pod_sandbox(sandbox_request("b", &[("app", "b"), ("tier", "web")]))
            .await
            .expect("RunPodSandbox b")
            .into_inner()
            .pod_sandbox_id;
        assert_ne!(a, b);
        let both = sorted(vec![a.clone(), b.clone()]);

        assert_eq!(list_ids(&mut client, None).await, both);
        let by_label = |labels: &[(&str, &str)]| {
            Some(PodSandboxFilter {
                label_selector: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
        };
        assert_eq!(
            list_ids(&mut client, by_label(&[("app", "a")])).await,
            vec![a.clone()]
        );
        assert_eq!(list_ids(&mut client, by_label(&[("tier", "web")])).await, both);
        assert!(
            list_ids(&mut client, by_label(&[("app", "a"), ("tier", "db")]))
                .await
                .is_empty()
        );
        let by_id = Some(PodSandboxFilter {
            id: b[..8].to_string(),
            ..Default::default()
        });
        assert_eq!(list_ids(&mut client, by_id).await, vec![b.clone()]);
        assert_eq!(
            list_ids(&mut client, state_filter(PodSandboxState::SandboxReady)).await,
            both
        );

        let status = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: a.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus a")
            .into_inner()
            .status
            .expect("a status");
        assert_eq!(status.state(), PodSandboxState::SandboxReady);
        let metadata = status.metadata.expect("metadata");
        assert_eq!(
            (metadata.name.as_str(), metadata.uid.as_str(), metadata.attempt),
            ("a", "uid-a", 1)
        );
        assert_eq!(status.labels.get("app").map(String::as_str), Some("a"));
        assert_eq!(
            status.annotations.get("note").map(String::as_str),
            Some("annotation of a")
        );
        assert!(status.created_at > 0);
        both
    });
    let _service = service_restart(&rkt, service, &socket, &cni, &runtime, both);
}

/// Restarts the service and finishes the test against the new one: every
/// sandbox must be found again from --dir.
fn service_restart(
    rkt: &Rkt,
    service: CriService,
    socket: &Path,
    cni: &Path,
    runtime: &tokio::runtime::Runtime,
    both: Vec<String>,
) -> CriService {
    service.terminate();
    assert!(!socket.exists(), "the socket outlived the service");
    let service = CriService::start(rkt, socket, cni);
    runtime.block_on(async {
        let mut client = rkt_cri::connect(socket).await.expect("connect again");
        assert_eq!(
            list_ids(&mut client, state_filter(PodSandboxState::SandboxReady)).await,
            both,
            "after a restart"
        );
        let (a, b) = (both[0].clone(), both[1].clone());

        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: a.clone(),
            })
            .await
            .expect("StopPodSandbox a");
        assert_eq!(
            list_ids(&mut client, state_filter(PodSandboxState::SandboxNotready)).await,
            vec![a.clone()]
        );
        assert_eq!(
            list_ids(&mut client, state_filter(PodSandboxState::SandboxReady)).await,
            vec![b.clone()]
        );
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: a.clone(),
            })
            .await
            .expect("StopPodSandbox a again is OK");
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: a.clone(),
            })
            .await
            .expect("RemovePodSandbox a");
        let missing = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: a.clone(),
                verbose: false,
            })
            .await
            .expect_err("status of a removed sandbox");
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
        for id in [
            a.clone(),
            uuid::Uuid::new_v4().to_string(),
            "no-such-sandbox".to_string(),
        ] {
            client
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("StopPodSandbox of missing {id}: {e:?}"));
            client
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("RemovePodSandbox of missing {id}: {e:?}"));
        }
        // A running sandbox is stopped by its removal.
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: b.clone(),
            })
            .await
            .expect("RemovePodSandbox b while it runs");
        assert!(list_ids(&mut client, None).await.is_empty());
    });
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.code, 0, "{}", gc.describe());
    let list = rkt.rkt(&["list", "--no-legend"]);
    assert_eq!(list.stdout.trim(), "", "pods left: {}", list.describe());
    let records: Vec<_> = std::fs::read_dir(rkt.dir.join("cri").join("sandboxes"))
        .expect("records dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(records.is_empty(), "CRI records left: {records:?}");
    assert!(
        rkt.mounts_left().is_empty(),
        "mounts left: {:?}",
        rkt.mounts_left()
    );
    service
}
