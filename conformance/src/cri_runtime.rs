//! The CRI RuntimeService cases of Kubernetes' `critest`, rebuilt as a Rust
//! CRI client over the unix socket: runtime status, sandbox lifecycle with
//! filters, container lifecycle (stop with timeout, then kill), ExecSync
//! (output, exit code, timeout), logs in the CRI format at the kubelet's
//! path, DNS and hostname in the sandbox, several sandboxes at once, and a
//! server restarted in the middle that must find every pod and container
//! again from `--dir`.
//!
//! Runs against any socket (`rkt-conformance cri --socket=... --image=...`,
//! the image already in the server's store), or against a `rkt cri-service`
//! the suite starts itself on a fresh `--dir` (then the restart case runs too).
//!
//! Waiting for a container's own output is the one thing the CRI offers no
//! event for: [`Ctx::eventually`] re-checks a condition until a deadline, as
//! critest's `Eventually` does; everything else returns when it is done.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rkt_cri::runtime_v1::runtime_service_client::RuntimeServiceClient;
use rkt_cri::runtime_v1::*;
use tonic::Code;
use tonic::transport::Channel;

use crate::checks::Outcome;
use crate::harness::Rkt;
use crate::image::AciSpec;

/// The name the suite's own busybox image is imported under.
pub const SUITE_IMAGE: &str = "example.com/cri-busybox";

type CaseResult = Result<(), String>;

pub struct CriCase {
    pub name: &'static str,
    pub run: fn(&mut Ctx) -> CaseResult,
}

/// Every case, in a stable order; the restart case last but one, a final
/// check that nothing the suite made is left.
pub fn all_cases() -> Vec<CriCase> {
    vec![
        CriCase {
            name: "runtime-status",
            run: runtime_status,
        },
        CriCase {
            name: "sandbox-lifecycle-with-filters",
            run: sandbox_lifecycle_with_filters,
        },
        CriCase {
            name: "container-lifecycle",
            run: container_lifecycle,
        },
        CriCase {
            name: "stop-container-timeout-then-kill",
            run: stop_container_timeout_then_kill,
        },
        CriCase {
            name: "container-config-env-workdir-user",
            run: container_config_env_workdir_user,
        },
        CriCase {
            name: "memory-limit-enforced",
            run: memory_limit_enforced,
        },
        CriCase {
            name: "exec-sync",
            run: exec_sync,
        },
        CriCase {
            name: "container-logs-cri-format",
            run: container_logs,
        },
        CriCase {
            name: "sandbox-dns-and-hostname",
            run: sandbox_dns_and_hostname,
        },
        CriCase {
            name: "several-sandboxes",
            run: several_sandboxes,
        },
        CriCase {
            name: "errors-are-grpc-statuses",
            run: errors_are_statuses,
        },
        CriCase {
            name: "restart-recovers-everything",
            run: restart_recovers_everything,
        },
        CriCase {
            name: "host-path-mounts",
            run: host_path_mounts,
        },
        // crinet cases
        CriCase {
            name: "sandbox-status-pod-ip",
            run: sandbox_status_pod_ip,
        },
        CriCase {
            name: "port-mapping-host-port",
            run: port_mapping_host_port,
        },
        CriCase {
            name: "container-stats",
            run: container_stats,
        },
        CriCase {
            name: "update-container-resources",
            run: update_container_resources,
        },
        CriCase {
            name: "reopen-container-log",
            run: reopen_container_log,
        },
    ]
}

/// A `rkt cri-service` a suite started; dropping it kills it.
pub struct CriServer {
    child: Child,
    pub socket: PathBuf,
}

impl CriServer {
    /// Starts the service on `socket` with rkt's `global` flags and the
    /// service's `extra` flags, and returns once it listens (it prints the
    /// socket first).
    pub fn start(rkt: &Rkt, socket: &Path, global: &[&str], extra: &[&str]) -> Result<Self, String> {
        let listen = format!("--listen=unix://{}", socket.display());
        let stage1 = format!("--stage1={}", rkt.stage1);
        let mut args = global.to_vec();
        args.extend(["cri-service", listen.as_str(), stage1.as_str()]);
        args.extend_from_slice(extra);
        let mut child = rkt
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start rkt cri-service: {e}"))?;
        let mut line = String::new();
        let read = match child.stdout.as_mut() {
            Some(out) => BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("reading rkt cri-service's first line: {e}")),
            None => Err("no stdout from rkt cri-service".into()),
        };
        let server = CriServer {
            child,
            socket: socket.to_path_buf(),
        };
        match read {
            Ok(_) if line.contains(&socket.display().to_string()) => Ok(server),
            Ok(_) => Err(format!("rkt cri-service did not start (said {line:?})")),
            Err(e) => Err(e),
        }
    }

    /// The suite's own server: images unsigned, CNI configuration from `cni`.
    fn start_own(rkt: &Rkt, socket: &Path, cni: &Path) -> Result<Self, String> {
        let cni = format!("--cni-conf-dir={}", cni.display());
        Self::start(rkt, socket, &["--insecure-options=image"], &[&cni])
    }

    /// SIGTERM, as an operator would; waits for the service to exit.
    pub fn terminate(mut self) -> Result<(), String> {
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| format!("SIGTERM: {e}"))?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cri-service after SIGTERM: {status}"));
        }
        Ok(())
    }
}

impl Drop for CriServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server the suite owns and may restart.
pub struct OwnServer<'a> {
    pub rkt: &'a Rkt,
    pub cni: PathBuf,
    pub server: Option<CriServer>,
}

/// What every case works with.
pub struct Ctx<'a> {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
    /// The CRI image reference containers run (busybox inside).
    pub image: String,
    /// Where sandboxes' log directories go.
    logs: PathBuf,
    own: Option<OwnServer<'a>>,
    /// Sandboxes made by the running case, removed after it.
    made: Vec<String>,
    serial: u32,
}

impl<'a> Ctx<'a> {
    /// Connects to `socket`; `own` is set when the suite runs the server.
    pub fn new(socket: &Path, image: &str, logs: &Path, own: Option<OwnServer<'a>>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let client = runtime
            .block_on(rkt_cri::connect(socket))
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        Ok(Ctx {
            runtime,
            client,
            socket: socket.to_path_buf(),
            image: image.to_string(),
            logs: logs.to_path_buf(),
            own,
            made: Vec::new(),
            serial: 0,
        })
    }

    fn call<T, F>(
        &mut self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.runtime
            .block_on(f(client))
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{what}: {:?}: {}", s.code(), s.message()))
    }

    /// The call's gRPC code when it fails, Ok when it succeeds.
    fn code_of<T, F>(&mut self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Code
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        match self.runtime.block_on(f(client)) {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }

    fn unique(&mut self, base: &str) -> String {
        self.serial += 1;
        format!("{base}-{}-{}", std::process::id(), self.serial)
    }

    fn sandbox_config(&mut self, name: &str, labels: &[(&str, &str)]) -> PodSandboxConfig {
        let name = self.unique(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                uid: format!("uid-{name}"),
                name: name.clone(),
                namespace: "cri-conformance".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: self.logs.join(&name).display().to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::from([("suite".to_string(), "rkt-conformance".to_string())]),
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
        }
    }

    fn run_sandbox(&mut self, config: PodSandboxConfig) -> Result<String, String> {
        let id = self
            .call("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
            })?
            .pod_sandbox_id;
        self.made.push(id.clone());
        Ok(id)
    }

    fn sandbox(&mut self, name: &str) -> Result<(String, PodSandboxConfig), String> {
        let config = self.sandbox_config(name, &[]);
        let id = self.run_sandbox(config.clone())?;
        Ok((id, config))
    }

    fn container_config(&self, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("container".to_string(), name.to_string())]),
            annotations: HashMap::from([("note".to_string(), format!("annotation of {name}"))]),
            ..Default::default()
        }
    }

    fn create(
        &mut self,
        sandbox: &str,
        sandbox_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        Ok(self
            .call("CreateContainer", |mut c| async move {
                c.create_container(request).await
            })?
            .container_id)
    }

    fn start(&mut self, id: &str) -> CaseResult {
        let container_id = id.to_string();
        self.call("StartContainer", |mut c| async move {
            c.start_container(StartContainerRequest { container_id }).await
        })?;
        Ok(())
    }

    fn stop(&mut self, id: &str, timeout: i64) -> CaseResult {
        let container_id = id.to_string();
        self.call("StopContainer", |mut c| async move {
            c.stop_container(StopContainerRequest {
                container_id,
                timeout,
            })
            .await
        })?;
        Ok(())
    }

    fn remove(&mut self, id: &str) -> CaseResult {
        let container_id = id.to_string();
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(RemoveContainerRequest { container_id }).await
        })?;
        Ok(())
    }

    fn status(&mut self, id: &str) -> Result<ContainerStatus, String> {
        let container_id = id.to_string();
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(ContainerStatusRequest {
                container_id,
                verbose: false,
            })
            .await
        })?
        .status
        .ok_or_else(|| "ContainerStatus: no status".to_string())
    }

    fn state(&mut self, id: &str) -> Result<ContainerState, String> {
        Ok(self.status(id)?.state())
    }

    /// A started container running `sh -c SCRIPT`.
    fn running(
        &mut self,
        sandbox: &str,
        config: &PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> Result<String, String> {
        let container = self.container_config(name, &["/bin/sh", "-c", script]);
        let id = self.create(sandbox, config, container)?;
        self.start(&id)?;
        Ok(id)
    }

    fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, String> {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.call("ExecSync", |mut c| async move { c.exec_sync(request).await })
    }

    fn list_sandboxes(&mut self, filter: PodSandboxFilter) -> Result<Vec<String>, String> {
        let mut ids: Vec<String> = self
            .call("ListPodSandbox", |mut c| async move {
                c.list_pod_sandbox(ListPodSandboxRequest { filter: Some(filter) })
                    .await
            })?
            .items
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn list_containers(&mut self, filter: ContainerFilter) -> Result<Vec<String>, String> {
        let mut ids: Vec<String> = self
            .call("ListContainers", |mut c| async move {
                c.list_containers(ListContainersRequest { filter: Some(filter) })
                    .await
            })?
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn stop_sandbox(&mut self, id: &str) -> CaseResult {
        let pod_sandbox_id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id }).await
        })?;
        Ok(())
    }

    fn remove_sandbox(&mut self, id: &str) -> CaseResult {
        let pod_sandbox_id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })?;
        self.made.retain(|m| m != id);
        Ok(())
    }

    /// Removes what the case made (also after a failure).
    fn clean(&mut self) -> CaseResult {
        let mut first = Ok(());
        for id in std::mem::take(&mut self.made) {
            if let Err(e) = self.remove_sandbox(&id) {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// Re-checks `probe` until it yields Some or `within` passes.
    fn eventually<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut(&mut Self) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = probe(self)? {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_of(&mut self, id: &str) -> Result<String, String> {
        let path = self.status(id)?.log_path;
        if path.is_empty() {
            return Err(format!("container {id} has no log path"));
        }
        match std::fs::read(&path) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!("reading {path}: {e}")),
        }
    }

    /// The log's messages (stream, message) once `needle` is among them.
    fn log_with(&mut self, id: &str, needle: &str) -> Result<Vec<(String, String)>, String> {
        let needle = needle.to_string();
        let id = id.to_string();
        self.eventually(
            &format!("{needle:?} in the log of {id}"),
            Duration::from_secs(30),
            |ctx| {
                let text = ctx.log_of(&id)?;
                let records = parse_log(&text)?;
                Ok(records
                    .iter()
                    .any(|(_, m)| m.contains(&needle))
                    .then_some(records))
            },
        )
    }

    /// Restarts the suite's own server and reconnects.
    fn restart(&mut self) -> Result<bool, String> {
        let Some(own) = self.own.as_mut() else {
            return Ok(false);
        };
        if let Some(server) = own.server.take() {
            server.terminate()?;
        }
        own.server = Some(CriServer::start_own(own.rkt, &self.socket, &own.cni)?);
        self.client = self
            .runtime
            .block_on(rkt_cri::connect(&self.socket))
            .map_err(|e| format!("reconnecting: {e}"))?;
        Ok(true)
    }
}

/// Parses a CRI log: every line `<RFC3339Nano> <stream> <P|F> <msg>`; the
/// P pieces joined to the record they continue.
pub fn parse_log(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut partial: Option<(String, String)> = None;
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("not a CRI log line: {line:?}"));
        };
        let message = parts.next().unwrap_or("");
        let ok_time = time.len() >= 20 && time.as_bytes().get(10) == Some(&b'T') && time.ends_with('Z');
        if !ok_time || !matches!(stream, "stdout" | "stderr") || !matches!(tag, "P" | "F") {
            return Err(format!("not a CRI log line: {line:?}"));
        }
        let (s, mut m) = partial
            .take()
            .unwrap_or_else(|| (stream.to_string(), String::new()));
        m.push_str(message);
        if tag == "F" {
            out.push((s, m));
        } else {
            partial = Some((s, m));
        }
    }
    Ok(out)
}

fn check(cond: bool, what: impl FnOnce() -> String) -> CaseResult {
    if cond { Ok(()) } else { Err(what()) }
}

fn runtime_status(ctx: &mut Ctx) -> CaseResult {
    let version = ctx.call("Version", |mut c| async move {
        c.version(VersionRequest { version: "v1".into() }).await
    })?;
    check(version.runtime_api_version == "v1", || {
        format!("runtime_api_version {:?}", version.runtime_api_version)
    })?;
    check(
        !version.runtime_name.is_empty() && !version.runtime_version.is_empty(),
        || format!("runtime name/version empty: {version:?}"),
    )?;
    let status = ctx.call("Status", |mut c| async move {
        c.status(StatusRequest { verbose: false }).await
    })?;
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.r#type == t).cloned();
    let runtime = find("RuntimeReady").ok_or("no RuntimeReady condition")?;
    check(runtime.status, || format!("RuntimeReady is false: {runtime:?}"))?;
    let network = find("NetworkReady").ok_or("no NetworkReady condition")?;
    check(network.status || !network.reason.is_empty(), || {
        format!("NetworkReady false without a reason: {network:?}")
    })
}

fn sandbox_lifecycle_with_filters(ctx: &mut Ctx) -> CaseResult {
    let tag = ctx.unique("filters");
    let a_config = ctx.sandbox_config("filter-a", &[("suite-run", &tag), ("role", "a")]);
    let b_config = ctx.sandbox_config("filter-b", &[("suite-run", &tag), ("role", "b")]);
    let a = ctx.run_sandbox(a_config.clone())?;
    let b = ctx.run_sandbox(b_config)?;
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    let by_run = |role: Option<&str>| PodSandboxFilter {
        label_selector: std::iter::once(("suite-run".to_string(), tag.clone()))
            .chain(role.map(|r| ("role".to_string(), r.to_string())))
            .collect(),
        ..Default::default()
    };
    check(ctx.list_sandboxes(by_run(None))? == both, || {
        "label filter: not both sandboxes".into()
    })?;
    check(ctx.list_sandboxes(by_run(Some("a")))? == vec![a.clone()], || {
        "label filter role=a".into()
    })?;
    let by_id = PodSandboxFilter {
        id: a.clone(),
        ..Default::default()
    };
    check(ctx.list_sandboxes(by_id)? == vec![a.clone()], || {
        "id filter".into()
    })?;
    let id = a.clone();
    let status = ctx
        .call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: false,
            })
            .await
        })?
        .status
        .ok_or("PodSandboxStatus: no status")?;
    check(status.state() == PodSandboxState::SandboxReady, || {
        format!("{a} not ready: {status:?}")
    })?;
    check(status.metadata == a_config.metadata, || {
        format!("metadata changed: {:?}", status.metadata)
    })?;
    check(status.annotations == a_config.annotations, || {
        "annotations changed".into()
    })?;
    ctx.stop_sandbox(&a)?;
    ctx.stop_sandbox(&a)
        .map_err(|e| format!("second stop must be OK: {e}"))?;
    let ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxReady.into(),
        }),
        ..by_run(None)
    };
    check(ctx.list_sandboxes(ready)? == vec![b.clone()], || {
        "state filter READY".into()
    })?;
    let not_ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxNotready.into(),
        }),
        ..by_run(None)
    };
    check(ctx.list_sandboxes(not_ready)? == vec![a.clone()], || {
        "state filter NOTREADY".into()
    })?;
    ctx.remove_sandbox(&a)?;
    ctx.remove_sandbox(&a)
        .map_err(|e| format!("second remove must be OK: {e}"))?;
    let gone = a.clone();
    let code = ctx.code_of(|mut c| async move {
        c.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: gone,
            verbose: false,
        })
        .await
    });
    check(code == Code::NotFound, || {
        format!("status of a removed sandbox: {code:?}")
    })?;
    check(ctx.list_sandboxes(by_run(None))? == vec![b.clone()], || {
        "removed sandbox still listed".into()
    })?;
    ctx.stop_sandbox("no-such-sandbox")
        .map_err(|e| format!("stop of a missing sandbox: {e}"))?;
    ctx.remove_sandbox("no-such-sandbox")
        .map_err(|e| format!("remove of a missing sandbox: {e}"))
}

fn container_lifecycle(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("lifecycle")?;
    let mut container = ctx.container_config("sleeper", &["/bin/sleep", "3600"]);
    container.labels.insert("tier".into(), "test".into());
    let id = ctx.create(&sandbox, &config, container.clone())?;
    let status = ctx.status(&id)?;
    check(status.state() == ContainerState::ContainerCreated, || {
        format!("after create: {status:?}")
    })?;
    check(status.metadata == container.metadata, || {
        "metadata changed".into()
    })?;
    check(
        status.annotations == container.annotations && status.labels == container.labels,
        || "labels or annotations changed".into(),
    )?;
    check(status.created_at > 0, || "created_at unset".into())?;
    let by = |f: ContainerFilter| f;
    check(
        ctx.list_containers(by(ContainerFilter {
            pod_sandbox_id: sandbox.clone(),
            ..Default::default()
        }))? == vec![id.clone()],
        || "sandbox filter".into(),
    )?;
    check(
        ctx.list_containers(by(ContainerFilter {
            id: id.clone(),
            ..Default::default()
        }))? == vec![id.clone()],
        || "id filter".into(),
    )?;
    let state_filter = |s: ContainerState| ContainerFilter {
        pod_sandbox_id: sandbox.clone(),
        state: Some(ContainerStateValue { state: s.into() }),
        ..Default::default()
    };
    check(
        ctx.list_containers(state_filter(ContainerState::ContainerCreated))? == vec![id.clone()],
        || "state filter CREATED".into(),
    )?;
    check(
        ctx.list_containers(state_filter(ContainerState::ContainerRunning))?
            .is_empty(),
        || "state filter RUNNING before start".into(),
    )?;
    let labels = |k: &str, v: &str| ContainerFilter {
        label_selector: HashMap::from([(k.to_string(), v.to_string())]),
        pod_sandbox_id: sandbox.clone(),
        ..Default::default()
    };
    check(
        ctx.list_containers(labels("tier", "test"))? == vec![id.clone()],
        || "label filter".into(),
    )?;
    check(ctx.list_containers(labels("tier", "prod"))?.is_empty(), || {
        "label filter mismatch".into()
    })?;
    ctx.start(&id)?;
    let status = ctx.status(&id)?;
    check(status.state() == ContainerState::ContainerRunning, || {
        format!("after start: {status:?}")
    })?;
    check(status.started_at >= status.created_at, || {
        "started_at before created_at".into()
    })?;
    check(
        ctx.list_containers(state_filter(ContainerState::ContainerRunning))? == vec![id.clone()],
        || "state filter RUNNING".into(),
    )?;
    ctx.stop(&id, 10)?;
    let status = ctx.status(&id)?;
    check(status.state() == ContainerState::ContainerExited, || {
        format!("after stop: {status:?}")
    })?;
    check(
        status.finished_at >= status.started_at && status.finished_at > 0,
        || format!("finished_at: {status:?}"),
    )?;
    ctx.stop(&id, 10)
        .map_err(|e| format!("second stop must be OK: {e}"))?;
    ctx.remove(&id)?;
    ctx.remove(&id)
        .map_err(|e| format!("second remove must be OK: {e}"))?;
    let gone = id.clone();
    let code = ctx.code_of(|mut c| async move {
        c.container_status(ContainerStatusRequest {
            container_id: gone,
            verbose: false,
        })
        .await
    });
    check(code == Code::NotFound, || {
        format!("status of a removed container: {code:?}")
    })?;
    check(
        ctx.list_containers(ContainerFilter {
            pod_sandbox_id: sandbox.clone(),
            ..Default::default()
        })?
        .is_empty(),
        || "removed container still listed".into(),
    )?;
    // A container that exits by itself: its exit code is reported.
    let quick = ctx.running(&sandbox, &config, "quick", "exit 7")?;
    let status = ctx.eventually("the quick container to exit", Duration::from_secs(30), |ctx| {
        let s = ctx.status(&quick)?;
        Ok((s.state() == ContainerState::ContainerExited).then_some(s))
    })?;
    check(status.exit_code == 7, || format!("exit code: {status:?}"))?;
    ctx.clean()
}

fn stop_container_timeout_then_kill(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("stubborn")?;
    // Reports on its log that SIGTERM is ignored, so the stop starts after that.
    let id = ctx.running(
        &sandbox,
        &config,
        "stubborn",
        "trap '' TERM; echo ignoring-term; while :; do sleep 1; done",
    )?;
    ctx.log_with(&id, "ignoring-term")?;
    let started = Instant::now();
    ctx.stop(&id, 2)?;
    let took = started.elapsed();
    let status = ctx.status(&id)?;
    check(status.state() == ContainerState::ContainerExited, || {
        format!("after stop: {status:?}")
    })?;
    check(took >= Duration::from_secs(2), || {
        format!("killed before the grace period: {took:?}")
    })?;
    check(status.exit_code == 137, || {
        format!("exit code after the kill: {status:?}")
    })?;
    ctx.clean()
}

fn container_config_env_workdir_user(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("config")?;
    let mut container = ctx.container_config(
        "configured",
        &[
            "/bin/sh",
            "-c",
            "echo \"seen:$GREETING:$(pwd):$(id -u):$(id -g):$0\"; exec sleep 3600",
        ],
    );
    container.args = vec!["from-args".into()];
    container.envs = vec![KeyValue {
        key: "GREETING".into(),
        value: "hello world".into(),
    }];
    container.working_dir = "/tmp".into();
    container.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            run_as_group: Some(Int64Value { value: 2000 }),
            ..Default::default()
        }),
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
    });
    let id = ctx.create(&sandbox, &config, container)?;
    ctx.start(&id)?;
    let records = ctx.log_with(&id, "seen:")?;
    let line = records
        .iter()
        .find(|(_, m)| m.starts_with("seen:"))
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    check(line == "seen:hello world:/tmp:1000:2000:from-args", || {
        format!("env, working dir, user, group or args not applied: {line:?}")
    })?;
    let status = ctx.status(&id)?;
    let linux = status.resources.and_then(|r| r.linux).unwrap_or_default();
    check(
        linux.memory_limit_in_bytes == 64 << 20 && linux.cpu_quota == 50_000,
        || format!("resources not reported: {linux:?}"),
    )?;
    ctx.clean()
}

/// LinuxContainerResources.memory_limit_in_bytes becomes the app's memory
/// isolator: past it the kernel kills the app (137), under it the app ends well.
fn memory_limit_enforced(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("memory")?;
    let mut outcomes = Vec::new();
    for (name, megabytes) in [("over", 200), ("under", 4)] {
        // tail keeps a line without a newline whole: that much memory.
        let script = format!("head -c {megabytes}m /dev/zero | tail >/dev/null");
        let mut container = ctx.container_config(name, &["/bin/sh", "-c", &script]);
        container.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = ctx.create(&sandbox, &config, container)?;
        ctx.start(&id)?;
        let status = ctx.eventually(
            &format!("the {name} container to exit"),
            Duration::from_secs(60),
            |ctx| {
                let s = ctx.status(&id)?;
                Ok((s.state() == ContainerState::ContainerExited).then_some(s))
            },
        )?;
        outcomes.push((status.exit_code, status.reason));
    }
    // The reason is the kubelet's only way to tell an OOM kill from a kill.
    check(
        outcomes == [(137, "OOMKilled".to_string()), (0, "Completed".to_string())],
        || {
            format!(
                "exit codes and reasons past and under a 32 MiB limit: {outcomes:?}, want [(137, OOMKilled), (0, Completed)]"
            )
        },
    )?;
    ctx.clean()
}

fn exec_sync(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("exec")?;
    let id = ctx.running(&sandbox, &config, "execd", "exec sleep 3600")?;
    let out = ctx.exec(
        &id,
        &["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        30,
    )?;
    check(out.stdout == b"to-out\n", || {
        format!("stdout {:?}", String::from_utf8_lossy(&out.stdout))
    })?;
    check(out.stderr == b"to-err\n", || {
        format!("stderr {:?}", String::from_utf8_lossy(&out.stderr))
    })?;
    check(out.exit_code == 3, || format!("exit code {}", out.exit_code))?;
    let ok = ctx.exec(&id, &["/bin/true"], 0)?;
    check(ok.exit_code == 0, || format!("true exited {}", ok.exit_code))?;
    let started = Instant::now();
    let target = id.clone();
    let code = ctx.code_of(|mut c| async move {
        c.exec_sync(ExecSyncRequest {
            container_id: target,
            cmd: vec!["/bin/sleep".into(), "60".into()],
            timeout: 1,
        })
        .await
    });
    check(code == Code::DeadlineExceeded, || {
        format!("ExecSync past its timeout: {code:?}")
    })?;
    check(started.elapsed() < Duration::from_secs(30), || {
        "the timeout did not end the command".into()
    })?;
    ctx.stop(&id, 0)?;
    let stopped = id.clone();
    let code = ctx.code_of(|mut c| async move {
        c.exec_sync(ExecSyncRequest {
            container_id: stopped,
            cmd: vec!["/bin/true".into()],
            timeout: 5,
        })
        .await
    });
    check(code == Code::FailedPrecondition, || {
        format!("ExecSync in an exited container: {code:?}")
    })?;
    ctx.clean()
}

fn container_logs(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("logs")?;
    let id = ctx.running(
        &sandbox,
        &config,
        "logger",
        "echo first-line; echo second-line >&2; echo last-line; exec sleep 3600",
    )?;
    let records = ctx.log_with(&id, "last-line")?;
    let expected = [
        ("stdout".to_string(), "first-line".to_string()),
        ("stderr".to_string(), "second-line".to_string()),
        ("stdout".to_string(), "last-line".to_string()),
    ];
    for want in &expected {
        check(records.contains(want), || {
            format!("{want:?} missing from {records:?}")
        })?;
    }
    let path = ctx.status(&id)?.log_path;
    let wanted = Path::new(&config.log_directory).join("logger/0.log");
    check(Path::new(&path) == wanted, || {
        format!("log path {path:?}, asked for {}", wanted.display())
    })?;
    // The log outlives the container, as the kubelet expects.
    ctx.stop(&id, 0)?;
    ctx.remove(&id)?;
    let after = std::fs::read_to_string(&wanted).unwrap_or_default();
    check(after.contains("first-line"), || {
        format!("log gone after remove: {after:?}")
    })?;
    ctx.clean()
}

fn sandbox_dns_and_hostname(ctx: &mut Ctx) -> CaseResult {
    let mut config = ctx.sandbox_config("dns", &[]);
    config.hostname = "cri-conformance-host".into();
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let sandbox = ctx.run_sandbox(config.clone())?;
    let id = ctx.running(&sandbox, &config, "resolver", "exec sleep 3600")?;
    let host = ctx.exec(&id, &["/bin/hostname"], 30)?;
    check(
        String::from_utf8_lossy(&host.stdout).trim() == "cri-conformance-host",
        || format!("hostname {:?}", String::from_utf8_lossy(&host.stdout)),
    )?;
    let resolv = ctx.exec(&id, &["/bin/cat", "/etc/resolv.conf"], 30)?;
    let text = String::from_utf8_lossy(&resolv.stdout).into_owned();
    for want in [
        "nameserver 10.96.0.10",
        "nameserver 10.96.0.11",
        "search svc.cluster.local cluster.local",
        "options ndots:5",
    ] {
        check(text.lines().any(|l| l.trim() == want), || {
            format!("{want:?} not in resolv.conf: {text:?}")
        })?;
    }
    ctx.clean()
}

fn several_sandboxes(ctx: &mut Ctx) -> CaseResult {
    let mut pods = Vec::new();
    for i in 0..3 {
        let mut config = ctx.sandbox_config(&format!("many-{i}"), &[]);
        config.hostname = format!("many-{i}");
        let sandbox = ctx.run_sandbox(config.clone())?;
        let id = ctx.running(&sandbox, &config, "worker", "exec sleep 3600")?;
        pods.push((sandbox, id, config.hostname));
    }
    for (sandbox, id, hostname) in &pods {
        let out = ctx.exec(id, &["/bin/hostname"], 30)?;
        check(String::from_utf8_lossy(&out.stdout).trim() == hostname, || {
            format!(
                "container of {sandbox} sees hostname {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let listed = ctx.list_containers(ContainerFilter {
            pod_sandbox_id: sandbox.clone(),
            ..Default::default()
        })?;
        check(listed == vec![id.clone()], || {
            format!("containers of {sandbox}: {listed:?}")
        })?;
    }
    ctx.clean()
}

fn errors_are_statuses(ctx: &mut Ctx) -> CaseResult {
    let code = ctx.code_of(|mut c| async move {
        c.start_container(StartContainerRequest {
            container_id: "0123456789abcdef0123456789abcdef".into(),
        })
        .await
    });
    check(code == Code::NotFound, || {
        format!("StartContainer of a missing container: {code:?}")
    })?;
    ctx.stop("0123456789abcdef0123456789abcdef", 0)
        .map_err(|e| format!("StopContainer of a missing container must be OK: {e}"))?;
    ctx.remove("0123456789abcdef0123456789abcdef")
        .map_err(|e| format!("RemoveContainer of a missing container must be OK: {e}"))?;
    let config = ctx.sandbox_config("nowhere", &[]);
    let request = CreateContainerRequest {
        pod_sandbox_id: "00000000-0000-0000-0000-000000000000".into(),
        config: Some(ctx.container_config("orphan", &["/bin/true"])),
        sandbox_config: Some(config),
    };
    let code = ctx.code_of(|mut c| async move { c.create_container(request).await });
    check(code == Code::NotFound, || {
        format!("CreateContainer in a missing sandbox: {code:?}")
    })?;
    let code = ctx.code_of(|mut c| async move {
        c.exec(ExecRequest {
            container_id: "x".into(),
            cmd: vec!["/bin/true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
    });
    check(code == Code::Unimplemented, || {
        format!("streaming Exec: {code:?}")
    })?;
    let (sandbox, config) = ctx.sandbox("bad-image")?;
    let mut container = ctx.container_config("bad", &["/bin/true"]);
    container.image = Some(ImageSpec {
        image: "example.com/no-such-image-in-store".into(),
        ..Default::default()
    });
    let request = CreateContainerRequest {
        pod_sandbox_id: sandbox,
        config: Some(container),
        sandbox_config: Some(config),
    };
    let code = ctx.code_of(|mut c| async move { c.create_container(request).await });
    check(code != Code::Ok && code != Code::Unknown, || {
        format!("CreateContainer of a missing image: {code:?}")
    })?;
    ctx.clean()
}

fn restart_recovers_everything(ctx: &mut Ctx) -> CaseResult {
    if ctx.own.is_none() {
        return Err("skip: the suite did not start this server, so it cannot restart it".into());
    }
    let mut before = Vec::new();
    for i in 0..2 {
        let (sandbox, config) = ctx.sandbox(&format!("restart-{i}"))?;
        let running = ctx.running(&sandbox, &config, "running", "exec sleep 3600")?;
        let template = ctx.container_config("created", &["/bin/sleep", "3600"]);
        let created = ctx.create(&sandbox, &config, template)?;
        let exited = ctx.running(&sandbox, &config, "exited", "exit 4")?;
        ctx.eventually("the exiting container to exit", Duration::from_secs(30), |ctx| {
            Ok((ctx.state(&exited)? == ContainerState::ContainerExited).then_some(()))
        })?;
        before.push((sandbox, running, created, exited));
    }
    let sandboxes_before = ctx.list_sandboxes(PodSandboxFilter::default())?;
    let containers_before = ctx.list_containers(ContainerFilter::default())?;
    ctx.restart()?;
    let sandboxes_after = ctx.list_sandboxes(PodSandboxFilter::default())?;
    let containers_after = ctx.list_containers(ContainerFilter::default())?;
    check(sandboxes_after == sandboxes_before, || {
        format!("sandboxes before {sandboxes_before:?}, after {sandboxes_after:?}")
    })?;
    check(containers_after == containers_before, || {
        format!("containers before {containers_before:?}, after {containers_after:?}")
    })?;
    for (sandbox, running, created, exited) in &before {
        check(ctx.state(running)? == ContainerState::ContainerRunning, || {
            format!("{running} not running")
        })?;
        check(ctx.state(created)? == ContainerState::ContainerCreated, || {
            format!("{created} not created")
        })?;
        let status = ctx.status(exited)?;
        check(
            status.state() == ContainerState::ContainerExited && status.exit_code == 4,
            || format!("{exited} after restart: {status:?}"),
        )?;
        let out = ctx.exec(running, &["/bin/echo", "still-here"], 30)?;
        check(out.stdout == b"still-here\n", || {
            format!("exec after restart in {sandbox}: {out:?}")
        })?;
        ctx.start(created)?;
        check(ctx.state(created)? == ContainerState::ContainerRunning, || {
            format!("{created} did not start")
        })?;
    }
    ctx.clean()
}

/// critest's "should support mounts": a host directory read-write and
/// read-only, a host file over an image file; what the kubelet cannot mean
/// (propagation, a missing host path) is an InvalidArgument; the host's files
/// outlive the sandbox.
fn host_path_mounts(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("mounts")?;
    let unique = ctx.unique("mount-source");
    let source = ctx.logs.join(unique);
    let hosts = source.with_extension("hosts");
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&source).map_err(|e| format!("creating {}: {e}", source.display()))?;
    write(&source.join("hello"), "host-file\n")?;
    write(&hosts, "10.9.8.7 db\n")?;
    let mount = |host: &Path, container_path: &str, readonly: bool| Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    };
    let mut container = ctx.container_config("mounted", &["/bin/sh", "-c", "exec sleep 3600"]);
    container.mounts = vec![
        mount(&source, "/mnt/rw", false),
        mount(&source, "/mnt/ro", true),
        mount(&hosts, "/etc/hosts", true),
    ];
    let id = ctx.create(&sandbox, &config, container.clone())?;
    ctx.start(&id)?;
    let seen = ctx.exec(
        &id,
        &["/bin/cat", "/mnt/rw/hello", "/mnt/ro/hello", "/etc/hosts"],
        30,
    )?;
    check(seen.stdout == b"host-file\nhost-file\n10.9.8.7 db\n", || {
        format!(
            "the container sees {:?} (stderr {:?})",
            String::from_utf8_lossy(&seen.stdout),
            String::from_utf8_lossy(&seen.stderr)
        )
    })?;
    let wrote = ctx.exec(
        &id,
        &["/bin/sh", "-c", "echo from-container > /mnt/rw/written"],
        30,
    )?;
    check(wrote.exit_code == 0, || {
        format!("writing the rw mount: {}", String::from_utf8_lossy(&wrote.stderr))
    })?;
    let on_host = std::fs::read_to_string(source.join("written")).unwrap_or_default();
    check(on_host == "from-container\n", || {
        format!("the host sees {on_host:?}")
    })?;
    let refused = ctx.exec(&id, &["/bin/touch", "/mnt/ro/nope"], 30)?;
    check(
        refused.exit_code != 0 && String::from_utf8_lossy(&refused.stderr).contains("Read-only"),
        || {
            format!(
                "touch on the read-only mount: exit {}, {:?}",
                refused.exit_code,
                String::from_utf8_lossy(&refused.stderr)
            )
        },
    )?;
    let mut shared = container.clone();
    shared.metadata = Some(ContainerMetadata {
        name: "shared".into(),
        attempt: 0,
    });
    shared.mounts = vec![Mount {
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..mount(&source, "/mnt/shared", false)
    }];
    let mut missing = shared.clone();
    missing.mounts = vec![mount(&source.join("no-such-dir"), "/mnt/missing", false)];
    for (what, bad) in [
        ("bidirectional propagation", shared),
        ("a missing host path", missing),
    ] {
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(bad),
            sandbox_config: Some(config.clone()),
        };
        let code = ctx.code_of(|mut c| async move { c.create_container(request).await });
        check(code == Code::InvalidArgument, || format!("{what}: {code:?}"))?;
    }
    ctx.clean()?;
    let kept = std::fs::read_to_string(source.join("hello")).unwrap_or_default();
    check(kept == "host-file\n", || {
        format!("the host file after the sandbox went: {kept:?}")
    })
}

/// A sandbox config on a pod network (the suite's default is the node's).
fn pod_network(mut config: PodSandboxConfig) -> PodSandboxConfig {
    if let Some(options) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        options.network = NamespaceMode::Pod.into();
    }
    config
}

fn sandbox_network(ctx: &mut Ctx, id: &str) -> Result<Option<PodSandboxNetworkStatus>, String> {
    let pod_sandbox_id = id.to_string();
    Ok(ctx
        .call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: false,
            })
            .await
        })?
        .status
        .ok_or("PodSandboxStatus: no status")?
        .network)
}

/// The pod's address is its first network's, the one its container sees on
/// eth0; a sandbox on the node's network has none of its own.
fn sandbox_status_pod_ip(ctx: &mut Ctx) -> CaseResult {
    let config = pod_network(ctx.sandbox_config("pod-ip", &[]));
    let sandbox = ctx.run_sandbox(config.clone())?;
    let network = sandbox_network(ctx, &sandbox)?.ok_or("no network status for a pod-network sandbox")?;
    let ip: std::net::Ipv4Addr = network
        .ip
        .parse()
        .map_err(|e| format!("network.ip {:?}: {e}", network.ip))?;
    let id = ctx.running(&sandbox, &config, "addressed", "exec sleep 3600")?;
    // The suite's busybox links few applets; the kernel's own table of the
    // pod's local addresses needs none.
    let seen = ctx.exec(&id, &["/bin/cat", "/proc/net/fib_trie"], 30)?;
    let text = String::from_utf8_lossy(&seen.stdout).into_owned();
    check(text.contains(&format!("|-- {ip}\n")), || {
        format!("the container's addresses: {text:?}, PodSandboxStatus says {ip}")
    })?;
    let (host, _) = ctx.sandbox("node-ip")?;
    let none = sandbox_network(ctx, &host)?;
    check(none.as_ref().is_none_or(|n| n.ip.is_empty()), || {
        format!("a node-network sandbox reports {none:?}")
    })?;
    ctx.clean()
}

/// iptables rules (nat and filter) that name `id`: CNI writes the pod's
/// container ID into the comments of every rule it adds for it.
fn iptables_rules_naming(id: &str) -> Result<Vec<String>, String> {
    let mut rules = Vec::new();
    for table in ["nat", "filter"] {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .map_err(|e| format!("iptables-save: {e}"))?;
        rules.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(id))
                .map(str::to_string),
        );
    }
    Ok(rules)
}

/// critest's "runtime should support port mapping with host port and
/// container port": a container listening on its port answers on the host's
/// 127.0.0.1 at the host port; the forwarding rules go with the sandbox.
fn port_mapping_host_port(ctx: &mut Ctx) -> CaseResult {
    let host_port = 40000 + (std::process::id() % 20000) as i32;
    let mut config = pod_network(ctx.sandbox_config("ports", &[]));
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp.into(),
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let sandbox = ctx.run_sandbox(config.clone())?;
    ctx.running(
        &sandbox,
        &config,
        "listener",
        "while true; do echo reply-from-the-pod | nc -l -p 8080; done",
    )?;
    let reply = ctx.eventually(
        &format!("a reply on 127.0.0.1:{host_port}"),
        Duration::from_secs(30),
        |_| Ok(read_line_from(("127.0.0.1", host_port as u16))),
    )?;
    check(reply.trim() == "reply-from-the-pod", || {
        format!("reply {reply:?}")
    })?;
    let rules = iptables_rules_naming(&sandbox)?;
    check(
        rules.iter().any(|r| r.contains("DNAT") || r.contains("dport")),
        || format!("no port forwarding rule names the sandbox: {rules:?}"),
    )?;
    ctx.stop_sandbox(&sandbox)?;
    ctx.remove_sandbox(&sandbox)?;
    let left = iptables_rules_naming(&sandbox)?;
    check(left.is_empty(), || format!("rules left after removal: {left:?}"))?;
    // SCTP has no portmap support: refused up front.
    let mut sctp = pod_network(ctx.sandbox_config("sctp", &[]));
    sctp.port_mappings = vec![PortMapping {
        protocol: Protocol::Sctp.into(),
        container_port: 9,
        host_port: host_port + 1,
        host_ip: String::new(),
    }];
    let code = ctx.code_of(|mut c| async move {
        c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sctp),
            runtime_handler: String::new(),
        })
        .await
    });
    check(code == Code::InvalidArgument, || {
        format!("SCTP mapping: {code:?}")
    })?;
    ctx.clean()
}

/// One line from a TCP server at `addr`, None while nothing answers.
fn read_line_from(addr: (&str, u16)) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).ok()? == 1 {
        if byte[0] == b'\n' {
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned())
}

fn stats_of(ctx: &mut Ctx, id: &str) -> Result<ContainerStats, String> {
    let container_id = id.to_string();
    ctx.call("ContainerStats", |mut c| async move {
        c.container_stats(ContainerStatsRequest { container_id }).await
    })?
    .stats
    .ok_or_else(|| "ContainerStats: no stats".to_string())
}

/// CPU time and memory come from the container's own cgroups: a container
/// that counted in its shell has used CPU, one holding 4 MB in a shell
/// variable has that much working set; a created one is not listed.
fn container_stats(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("stats")?;
    // tail holds a line without a newline whole: 8 MB, kept while the
    // subshell's sleep keeps the pipe open.
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo counted; \
                  (head -c 8000000 /dev/zero; exec sleep 3600) | tail";
    let id = ctx.running(&sandbox, &config, "busy", script)?;
    ctx.log_with(&id, "counted")?;
    let idle = ctx.create(
        &sandbox,
        &config,
        ctx.container_config("idle", &["/bin/sleep", "3600"]),
    )?;
    let target = id.clone();
    let stats = ctx.eventually(
        "the container's working set to reach the 8 MB tail holds",
        Duration::from_secs(30),
        |ctx| {
            let stats = stats_of(ctx, &target)?;
            let working_set = stats
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map_or(0, |v| v.value);
            Ok((working_set >= 8_000_000).then_some(stats))
        },
    )?;
    let attributes = stats.attributes.clone().unwrap_or_default();
    check(attributes.id == id, || format!("attributes {attributes:?}"))?;
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .ok_or_else(|| format!("no CPU usage: {stats:?}"))?;
    check(cpu >= 1_000_000, || {
        format!("CPU usage {cpu} ns after counting to 20000")
    })?;
    let memory = stats
        .memory
        .ok_or_else(|| format!("no memory usage: {stats:?}"))?;
    let working_set = memory.working_set_bytes.map(|v| v.value).unwrap_or(0);
    let usage = memory.usage_bytes.map(|v| v.value).unwrap_or(0);
    check(usage >= working_set, || {
        format!("working set {working_set} above usage {usage}")
    })?;
    let listed = ctx.call("ListContainerStats", |mut c| async move {
        c.list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: sandbox.clone(),
                ..Default::default()
            }),
        })
        .await
    })?;
    let ids: Vec<String> = listed
        .stats
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    check(ids == vec![id.clone()], || {
        format!("stats listed for the sandbox: {ids:?} (running {id}, created {idle})")
    })?;
    let code = ctx.code_of(|mut c| async move {
        c.container_stats(ContainerStatsRequest {
            container_id: "0000000000000000000000000000dead".into(),
        })
        .await
    });
    check(code == Code::NotFound, || {
        format!("stats of a missing container: {code:?}")
    })?;
    ctx.clean()
}

/// New limits land in the running container's cgroup (its stats report the
/// memory limit back) and in its status; what its cgroups cannot hold is
/// refused.
fn update_container_resources(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("update")?;
    let id = ctx.running(&sandbox, &config, "resized", "exec sleep 3600")?;
    let limit: i64 = 48 << 20;
    let update = |container_id: String, linux: LinuxContainerResources| {
        move |mut c: RuntimeServiceClient<Channel>| async move {
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id,
                linux: Some(linux),
                annotations: HashMap::new(),
            })
            .await
        }
    };
    ctx.call(
        "UpdateContainerResources",
        update(
            id.clone(),
            LinuxContainerResources {
                memory_limit_in_bytes: limit,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            },
        ),
    )?;
    let stats = stats_of(ctx, &id)?;
    let memory = stats.memory.ok_or("no memory stats")?;
    let working_set = memory.working_set_bytes.map(|v| v.value).unwrap_or(0);
    let available = memory.available_bytes.map(|v| v.value);
    check(available == Some(limit as u64 - working_set), || {
        format!("available {available:?} with working set {working_set} under a {limit}-byte limit")
    })?;
    let resources = ctx
        .status(&id)?
        .resources
        .and_then(|r| r.linux)
        .unwrap_or_default();
    check(
        resources.memory_limit_in_bytes == limit
            && resources.cpu_quota == 50_000
            && resources.cpu_period == 100_000,
        || format!("status resources after the update: {resources:?}"),
    )?;
    let code = ctx.code_of(update(
        id.clone(),
        LinuxContainerResources {
            cpuset_cpus: "0".into(),
            ..Default::default()
        },
    ));
    check(code == Code::InvalidArgument, || {
        format!("a cpuset update: {code:?}")
    })?;
    let code = ctx.code_of(update(
        "0000000000000000000000000000dead".into(),
        LinuxContainerResources::default(),
    ));
    check(code == Code::NotFound, || {
        format!("updating a missing container: {code:?}")
    })?;
    ctx.clean()
}

/// While the kubelet's log path is the container's log, reopening is a
/// no-op; once rotated away it cannot be reopened and says so (the kubelet
/// then moves its file back).
fn reopen_container_log(ctx: &mut Ctx) -> CaseResult {
    let (sandbox, config) = ctx.sandbox("reopen")?;
    let id = ctx.running(&sandbox, &config, "logger", "echo first; exec sleep 3600")?;
    ctx.log_with(&id, "first")?;
    let reopen = |container_id: String| {
        move |mut c: RuntimeServiceClient<Channel>| async move {
            c.reopen_container_log(ReopenContainerLogRequest { container_id })
                .await
        }
    };
    let code = ctx.code_of(reopen(id.clone()));
    check(code == Code::Ok, || format!("reopening an intact log: {code:?}"))?;
    let path = ctx.status(&id)?.log_path;
    let rotated = format!("{path}.rotated");
    std::fs::rename(&path, &rotated).map_err(|e| format!("rotating {path}: {e}"))?;
    let code = ctx.code_of(reopen(id.clone()));
    std::fs::rename(&rotated, &path).map_err(|e| format!("moving {rotated} back: {e}"))?;
    check(code == Code::FailedPrecondition, || {
        format!("reopening a rotated log: {code:?}")
    })?;
    check(
        !Path::new(&path).exists() || ctx.log_of(&id)?.contains("first"),
        || "the log moved back lost its lines".to_string(),
    )?;
    ctx.clean()
}

/// Runs the cases whose name contains `filter` (all when None). A case that
/// fails still has what it made removed.
pub fn run_cases(ctx: &mut Ctx, filter: Option<&str>) -> Vec<(&'static str, Outcome)> {
    let mut out = Vec::new();
    for case in all_cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let result = (case.run)(ctx);
        let cleaned = ctx.clean();
        let outcome = match (result, cleaned) {
            (Err(e), _) if e.starts_with("skip: ") => Outcome::Skipped(e["skip: ".len()..].to_string()),
            (Err(e), _) => Outcome::Failed(e),
            (Ok(()), Err(e)) => Outcome::Failed(format!("cleaning up: {e}")),
            (Ok(()), Ok(())) => Outcome::Passed,
        };
        out.push((case.name, outcome));
    }
    out
}

/// Imports the suite's busybox image into `rkt`'s store under [`SUITE_IMAGE`].
pub fn import_suite_image(rkt: &Rkt) -> Result<(), String> {
    let path = rkt
        .image(&AciSpec::busybox(SUITE_IMAGE))
        .map_err(|e| format!("building the busybox image: {e}"))?;
    let path = path.display().to_string();
    let out = rkt.rkt(&["fetch", "--insecure-options=image", &path]);
    if out.code != 0 {
        return Err(format!("rkt fetch {path}: {}", out.describe()));
    }
    Ok(())
}

/// Starts a `rkt cri-service` on `rkt`'s `--dir`, imports the suite's image
/// and runs the cases against it, the restart case included.
pub fn run_with_own_server(rkt: &Rkt, filter: Option<&str>) -> Result<Vec<(&'static str, Outcome)>, String> {
    import_suite_image(rkt)?;
    let socket = rkt.work().join("run").join("cri.sock");
    let cni = rkt.work().join("net.d");
    std::fs::create_dir_all(&cni).map_err(|e| format!("creating {}: {e}", cni.display()))?;
    let logs = rkt.work().join("pod-logs");
    let server = CriServer::start_own(rkt, &socket, &cni)?;
    let own = OwnServer {
        rkt,
        cni,
        server: Some(server),
    };
    let mut ctx = Ctx::new(&socket, SUITE_IMAGE, &logs, Some(own))?;
    Ok(run_cases(&mut ctx, filter))
}
