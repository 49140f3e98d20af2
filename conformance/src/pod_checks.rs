//! Checks of whole pods: several apps, a pod that keeps running while the kit
//! enters and stops it, event handlers, the metadata service and the appc ACE
//! validator. Like the others, they drive only the `rkt` binary; they ask the
//! backend's declared capabilities only to tell "cannot" from "does wrong".

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ace::{self, Unavailable};
use crate::backends;
use crate::checks::Outcome;
use crate::harness::{Rkt, RunOutput};
use crate::image::{AciSpec, busybox_path};
use crate::service::{self, MetadataService};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Outcome::Failed(format!($($msg)+));
        }
    };
}

macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("{}: {e}", stringify!($e))),
        }
    };
}

/// The image's path, or the outcome to return (busybox missing: skipped).
fn image(rkt: &Rkt, spec: &AciSpec) -> Result<String, Outcome> {
    if busybox_path().is_none() {
        return Err(Outcome::Skipped(
            "no static busybox: apt-get install busybox-static".into(),
        ));
    }
    rkt.image(spec)
        .map(|p| p.display().to_string())
        .map_err(|e| Outcome::Failed(format!("cannot build the test image: {e}")))
}

macro_rules! image {
    ($rkt:expr, $spec:expr) => {
        match image($rkt, &$spec) {
            Ok(path) => path,
            Err(outcome) => return outcome,
        }
    };
}

fn backend(rkt: &Rkt) -> Result<backends::Backend, Outcome> {
    backends::find(&rkt.stage1).map_err(Outcome::Failed)
}

fn mkfifo(path: &Path) -> Result<(), String> {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .map_err(|e| format!("mkfifo: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("mkfifo {} failed", path.display()))
}

/// Two apps in one pod run at the same time and share a volume: each waits on a
/// FIFO only the other one opens (a backend running them one after the other
/// would deadlock, so each side gives up after a minute).
pub fn multi_app_shared_volume(rkt: &Rkt) -> Outcome {
    let backend = match backend(rkt) {
        Ok(b) => b,
        Err(o) => return o,
    };
    if !backend.capabilities.multi_app {
        return Outcome::Skipped(format!("stage1 {} runs one app per pod", backend.name));
    }
    let host = rkt.work().join("multi-app");
    attempt!(std::fs::create_dir_all(&host));
    for fifo in ["a-to-b", "b-to-a"] {
        attempt!(mkfifo(&host.join(fifo)));
    }
    let mut a = AciSpec::busybox("example.com/app-a");
    a.mount_points = vec![("shared".into(), "/shared".into(), false)];
    a.exec = [
        "/bin/timeout",
        "60",
        "/bin/sh",
        "-c",
        "echo from-a > /shared/a-to-b; cat /shared/b-to-a",
    ]
    .map(String::from)
    .to_vec();
    let mut b = a.clone();
    b.name = "example.com/app-b".into();
    b.exec = [
        "/bin/timeout",
        "60",
        "/bin/sh",
        "-c",
        "cat /shared/a-to-b > /shared/got-a; echo from-b > /shared/b-to-a",
    ]
    .map(String::from)
    .to_vec();
    let (a, b) = (image!(rkt, a), image!(rkt, b));
    let volume = format!("--volume=shared,kind=host,source={}", host.display());
    let out = rkt.run(&[&volume, &a, &b]);
    ensure!(
        out.code == 0,
        "two apps did not run side by side: {}",
        out.describe()
    );
    ensure!(
        out.stdout.contains("from-b"),
        "app-a did not read app-b's line: {}",
        out.describe()
    );
    let got = std::fs::read_to_string(host.join("got-a")).unwrap_or_default();
    ensure!(got == "from-a\n", "app-b read {got:?} from app-a");
    let status = rkt.rkt(&["list", "--no-legend", "--full"]);
    ensure!(
        status.stdout.contains("app-a") && status.stdout.contains("app-b"),
        "rkt list does not show both apps: {}",
        status.describe()
    );
    Outcome::Passed
}

/// A pod in the background whose app said "ready" and then waits.
struct RunningPod {
    child: Child,
    uuid: String,
}

impl RunningPod {
    fn start(rkt: &Rkt) -> Result<RunningPod, Outcome> {
        let image = image(rkt, &AciSpec::busybox("example.com/busybox"))?;
        let uuid_file = rkt.work().join("running-uuid");
        let _ = std::fs::remove_file(&uuid_file);
        let mut child = rkt
            .command(&[
                "run",
                "--insecure-options=image",
                &format!("--stage1={}", rkt.stage1),
                rkt.default_net(),
                &format!("--uuid-file-save={}", uuid_file.display()),
                &image,
                "--exec",
                "/bin/sh",
                "--",
                "-c",
                "echo ready; exec sleep 600",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Outcome::Failed(format!("cannot start rkt run: {e}")))?;
        // The app's first line, or the end of its output if the pod failed.
        let mut line = Vec::new();
        if let Some(stdout) = child.stdout.as_mut() {
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        }
        let mut pod = RunningPod {
            child,
            uuid: String::new(),
        };
        if line != b"ready" {
            let _ = pod.child.kill();
            let mut stderr = String::new();
            if let Some(mut e) = pod.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(Outcome::Failed(format!(
                "the pod did not start: first line {:?}, stderr {stderr:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        let ready = rkt.rkt(&[
            "status",
            "--wait-ready=60s",
            &format!("--uuid-file={}", uuid_file.display()),
        ]);
        if ready.code != 0 {
            return Err(Outcome::Failed(format!(
                "status --wait-ready: {}",
                ready.describe()
            )));
        }
        pod.uuid = std::fs::read_to_string(&uuid_file)
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(pod)
    }

    /// Waits for `rkt run` to end; its exit code.
    fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `rkt stop` ends a running pod with SIGTERM (exit 143); afterwards it is exited.
pub fn stop_ends_the_pod(rkt: &Rkt) -> Outcome {
    let mut pod = match RunningPod::start(rkt) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let stop = rkt.rkt(&["stop", &pod.uuid]);
    ensure!(stop.code == 0, "rkt stop: {}", stop.describe());
    let code = pod.wait();
    ensure!(code == Some(143), "want 143 (SIGTERM) from rkt run, got {code:?}");
    let status = rkt.rkt(&["status", &pod.uuid]);
    ensure!(
        status.stdout.contains("state=exited"),
        "after stop: {}",
        status.describe()
    );
    let again = rkt.rkt(&["stop", &pod.uuid]);
    ensure!(
        again.stdout.contains("already stopped"),
        "stopping an exited pod again (rkt: \"already stopped\"): {}",
        again.describe()
    );
    Outcome::Passed
}

/// `rkt enter` runs a command in the running app (its env, its root) and
/// returns the command's exit code; an unknown app is an error.
pub fn enter_runs_in_the_app(rkt: &Rkt) -> Outcome {
    let mut pod = match RunningPod::start(rkt) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let entered = rkt.rkt(&[
        "enter",
        "--app=busybox",
        &pod.uuid,
        "/bin/sh",
        "-c",
        "echo $AC_APP_NAME; test -x /bin/busybox && exit 5",
    ]);
    ensure!(
        entered.code == 5,
        "want the command's exit 5: {}",
        entered.describe()
    );
    ensure!(
        entered.stdout.trim() == "busybox",
        "enter's environment: {}",
        entered.describe()
    );
    let unknown = rkt.rkt(&["enter", "--app=nope", &pod.uuid, "/bin/true"]);
    ensure!(unknown.code == 254, "an unknown app: {}", unknown.describe());
    let stop = rkt.rkt(&["stop", "--force", &pod.uuid]);
    ensure!(stop.code == 0, "rkt stop --force: {}", stop.describe());
    let code = pod.wait();
    ensure!(
        code == Some(137),
        "want 137 (SIGKILL) after stop --force, got {code:?}"
    );
    Outcome::Passed
}

/// pre-start runs in the app's root before the app, post-stop after it.
pub fn event_handlers(rkt: &Rkt) -> Outcome {
    let backend = match backend(rkt) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let host = rkt.work().join("handlers");
    attempt!(std::fs::create_dir_all(&host));
    let mut spec = AciSpec::busybox("example.com/handlers");
    spec.mount_points = vec![("data".into(), "/data".into(), false)];
    spec.exec = [
        "/bin/sh",
        "-c",
        "cat /pre-start-ran 2>/dev/null || echo no-pre-start; echo app > /data/order",
    ]
    .map(String::from)
    .to_vec();
    spec.app_extra.insert(
        "eventHandlers".into(),
        serde_json::json!([
            {"name": "pre-start", "exec": ["/bin/sh", "-c", "echo pre-start > /pre-start-ran; echo $AC_APP_NAME > /data/pre-start-env"]},
            {"name": "post-stop", "exec": ["/bin/sh", "-c", "cat /data/order > /data/post-stop-saw"]},
        ]),
    );
    let image = image!(rkt, spec);
    let volume = format!("--volume=data,kind=host,source={}", host.display());
    let out = rkt.run(&[&volume, &image]);
    ensure!(out.code == 0, "run: {}", out.describe());
    let ran = !out.stdout.contains("no-pre-start");
    if !ran && !backend.capabilities.multi_app {
        return Outcome::Skipped(format!(
            "stage1 {} runs the app alone, with no init to run event handlers",
            backend.name
        ));
    }
    ensure!(
        out.stdout.contains("pre-start"),
        "the app did not see the pre-start handler's file: {}",
        out.describe()
    );
    let env = std::fs::read_to_string(host.join("pre-start-env")).unwrap_or_default();
    ensure!(env == "handlers\n", "the handler's AC_APP_NAME: {env:?}");
    let saw = std::fs::read_to_string(host.join("post-stop-saw")).unwrap_or_default();
    ensure!(saw == "app\n", "post-stop did not run after the app: {saw:?}");
    Outcome::Passed
}

/// The metadata service end to end: the app gets `AC_METADATA_URL`, reads its
/// own UUID there only with the Metadata-Flavor header, and once the pod has
/// ended its token is refused (401).
pub fn metadata_service(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let service = match MetadataService::start(rkt) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let [register, socket] = service.run_flags();
    let script = "echo $AC_METADATA_URL; \
        wget -q -O - --header 'Metadata-Flavor: AppContainer' $AC_METADATA_URL/acMetadata/v1/pod/uuid; echo; \
        wget -q -O /dev/null $AC_METADATA_URL/acMetadata/v1/pod/uuid && echo no-flavor-accepted; true";
    let out = rkt.run(&[
        &register, &socket, &image, "--exec", "/bin/sh", "--", "-c", script,
    ]);
    ensure!(out.code == 0, "run --mds-register: {}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let url = lines.first().copied().unwrap_or_default();
    let port = service.listen.port();
    let host = if rkt.host_network() { "127.0.0.1" } else { "" };
    ensure!(
        url.starts_with("http://") && url.contains(&format!("{host}:{port}/")) && url.len() > 40,
        "AC_METADATA_URL (host network: {}): {}",
        rkt.host_network(),
        out.describe()
    );
    let uuid = rkt.rkt(&["list", "--full", "--no-legend"]);
    let uuid = uuid
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        lines.get(1) == Some(&uuid.as_str()),
        "pod/uuid gave {:?}, the pod is {uuid}: {}",
        lines.get(1),
        out.describe()
    );
    ensure!(
        !out.stdout.contains("no-flavor-accepted"),
        "a request without Metadata-Flavor was answered"
    );
    match service::get(&format!("{url}/acMetadata/v1/pod/uuid"), true) {
        Ok((401, _, _)) => {}
        other => return Outcome::Failed(format!("an ended pod's token: want 401, got {other:?}")),
    }
    Outcome::Passed
}

/// `--mds-register` with no service listening: one line, 254, no pod left running.
pub fn mds_register_without_service(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let socket = rkt.work().join("no-service.sock");
    let out = rkt.run(&[
        "--mds-register",
        &format!("--mds-socket={}", socket.display()),
        &image,
        "--exec",
        "/bin/true",
    ]);
    ensure!(out.code == 254, "want 254: {}", out.describe());
    ensure!(
        out.stderr.contains("metadata service") && out.stderr.trim().lines().count() == 1,
        "want one line naming the metadata service: {}",
        out.describe()
    );
    let list = rkt.rkt(&["list", "--no-legend"]);
    ensure!(
        !list.stdout.contains("running"),
        "a pod is left running: {}",
        list.describe()
    );
    Outcome::Passed
}

fn validator_or_outcome() -> Result<PathBuf, Outcome> {
    ace::validator().map_err(|e| match e {
        Unavailable::Missing(why) => Outcome::Skipped(why),
        Unavailable::BuildFailed(why) => Outcome::Failed(why),
    })
}

fn describe_phases(out: &RunOutput) -> String {
    format!("phases OK: {:?}; {}", ace::phases_ok(&out.stdout), out.describe())
}

/// The appc ACE validator's full pod: ace-validator-main (with its pre-start
/// and post-stop handlers) and ace-validator-sidekick sharing an empty
/// `database` volume, registered with the metadata service. All four phases
/// must print "<phase> OK".
pub fn ace_validator(rkt: &Rkt) -> Outcome {
    let backend = match backend(rkt) {
        Ok(b) => b,
        Err(o) => return o,
    };
    if !backend.capabilities.multi_app {
        return Outcome::Skipped(format!(
            "stage1 {} runs one app per pod and no event handlers: the prestart, sidekick and poststop phases are not applicable (ace-validator-main-alone covers what it can)",
            backend.name
        ));
    }
    let validator = match validator_or_outcome() {
        Ok(v) => v,
        Err(o) => return o,
    };
    let main = image!(rkt, ace::main_image(&validator));
    let sidekick = image!(rkt, ace::sidekick_image(&validator));
    let service = match MetadataService::start(rkt) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let [register, socket] = service.run_flags();
    let out = rkt.run(&[
        &register,
        &socket,
        "--volume=database,kind=empty",
        &main,
        &sidekick,
    ]);
    let ok = ace::phases_ok(&out.stdout);
    ensure!(
        out.code == 0 && ok.len() == ace::PHASES.len(),
        "{}",
        describe_phases(&out)
    );
    Outcome::Passed
}

/// The validator's main phase alone, which a one-app stage1 can run: the kit
/// stands in for the other phases' markers (`/prestart` in the app's root,
/// `/db/sidekick` in the volume). It still checks PATH, cwd, env,
/// AC_APP_NAME, the `/db` mount and the whole metadata service from the app.
pub fn ace_validator_main_alone(rkt: &Rkt) -> Outcome {
    let validator = match validator_or_outcome() {
        Ok(v) => v,
        Err(o) => return o,
    };
    let main = image!(rkt, ace::main_image(&validator));
    let db = rkt.work().join("ace-db");
    attempt!(std::fs::create_dir_all(&db));
    attempt!(std::fs::write(db.join("sidekick"), b""));
    let service = match MetadataService::start(rkt) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let [register, socket] = service.run_flags();
    let volume = format!("--volume=database,kind=host,source={}", db.display());
    let out = rkt.run(&[
        &register,
        &socket,
        &volume,
        &main,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "touch /prestart && exec /ace-validator main",
    ]);
    ensure!(
        out.code == 0 && ace::phases_ok(&out.stdout).contains(&"main"),
        "{}",
        describe_phases(&out)
    );
    ensure!(
        db.join("main").exists(),
        "main did not write /db/main into the volume"
    );
    Outcome::Passed
}
