//! The checks. Each is backend-neutral: it drives `rkt` like a user would and
//! asserts on what the app saw from inside the pod and what rkt reports after.

use std::path::Path;

use crate::harness::{Rkt, RunOutput};
use crate::image::{AciSpec, busybox_path};
use crate::pod_checks;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

pub struct Check {
    pub name: &'static str,
    pub run: fn(&Rkt) -> Outcome,
}

/// Every check, in a stable order.
pub fn all_checks() -> Vec<Check> {
    vec![
        Check {
            name: "exit-code-propagates",
            run: exit_code_propagates,
        },
        Check {
            name: "signal-exit-code",
            run: signal_exit_code,
        },
        Check {
            name: "list-and-status-report-exit",
            run: list_and_status_report_exit,
        },
        Check {
            name: "default-environment",
            run: default_environment,
        },
        Check {
            name: "environment-precedence",
            run: environment_precedence,
        },
        Check {
            name: "working-directory",
            run: working_directory,
        },
        Check {
            name: "user-and-group-by-name",
            run: user_and_group_by_name,
        },
        Check {
            name: "args-after-double-dash",
            run: args_after_double_dash,
        },
        Check {
            name: "host-volume-read-write",
            run: host_volume_read_write,
        },
        Check {
            name: "host-volume-read-only",
            run: host_volume_read_only,
        },
        Check {
            name: "empty-volume",
            run: empty_volume,
        },
        Check {
            name: "rootfs-writes-stay-in-pod",
            run: rootfs_writes_stay_in_pod,
        },
        Check {
            name: "no-overlay",
            run: no_overlay,
        },
        Check {
            name: "dependencies-and-path-whitelist",
            run: dependencies_and_path_whitelist,
        },
        Check {
            name: "no-mounts-leak-to-host",
            run: no_mounts_leak_to_host,
        },
        Check {
            name: "gc-removes-pod",
            run: gc_removes_pod,
        },
        Check {
            name: "missing-exec-is-an-error",
            run: missing_exec_is_an_error,
        },
        Check {
            name: "missing-image-is-an-error",
            run: missing_image_is_an_error,
        },
        Check {
            name: "multi-app-shared-volume",
            run: pod_checks::multi_app_shared_volume,
        },
        Check {
            name: "stop-ends-the-pod",
            run: pod_checks::stop_ends_the_pod,
        },
        Check {
            name: "enter-runs-in-the-app",
            run: pod_checks::enter_runs_in_the_app,
        },
        Check {
            name: "event-handlers",
            run: pod_checks::event_handlers,
        },
        Check {
            name: "metadata-service",
            run: pod_checks::metadata_service,
        },
        Check {
            name: "mds-register-without-service",
            run: pod_checks::mds_register_without_service,
        },
        Check {
            name: "cri-image-service",
            run: crate::cri_images::check,
        },
        Check {
            name: "ace-validator",
            run: pod_checks::ace_validator,
        },
        Check {
            name: "ace-validator-main-alone",
            run: pod_checks::ace_validator_main_alone,
        },
    ]
}

/// Early return with Failed/Skipped from inside a check.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Outcome::Failed(format!($($msg)+));
        }
    };
}

macro_rules! try_or_fail {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("{}: {e}", stringify!($e))),
        }
    };
}

fn busybox_image(rkt: &Rkt, spec: AciSpec) -> Result<String, Outcome> {
    if busybox_path().is_none() {
        return Err(Outcome::Skipped(
            "no static busybox: apt-get install busybox-static".into(),
        ));
    }
    rkt.image(&spec)
        .map(|p| p.display().to_string())
        .map_err(|e| Outcome::Failed(format!("cannot build the test image: {e}")))
}

macro_rules! image {
    ($rkt:expr, $spec:expr) => {
        match busybox_image($rkt, $spec) {
            Ok(path) => path,
            Err(outcome) => return outcome,
        }
    };
}

fn sh(rkt: &Rkt, image: &str, extra: &[&str], script: &str) -> RunOutput {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&[image, "--exec", "/bin/sh", "--", "-c", script]);
    rkt.run(&args)
}

fn uuid_of(rkt: &Rkt) -> Option<String> {
    let list = rkt.rkt(&["list", "--full", "--no-legend"]);
    list.stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .map(String::from)
}

fn exit_code_propagates(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(rkt, &image, &[], "echo hi; exit 7");
    ensure!(out.code == 7, "want exit 7, got {}", out.describe());
    ensure!(
        out.stdout == "hi\n",
        "want the app's output on stdout, got {}",
        out.describe()
    );
    let ok = sh(rkt, &image, &[], "true");
    ensure!(ok.code == 0, "want exit 0, got {}", ok.describe());
    Outcome::Passed
}

fn signal_exit_code(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(rkt, &image, &[], "kill -9 $$");
    ensure!(
        out.code == 128 + 9,
        "want 137 for SIGKILL, got {}",
        out.describe()
    );
    Outcome::Passed
}

fn list_and_status_report_exit(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(rkt, &image, &[], "exit 3");
    ensure!(out.code == 3, "want exit 3, got {}", out.describe());
    let list = rkt.rkt(&["list", "--no-legend", "--full"]);
    ensure!(list.code == 0, "rkt list failed: {}", list.describe());
    let row = list.stdout.lines().last().unwrap_or_default().to_string();
    let cols: Vec<&str> = row.split('\t').map(str::trim).filter(|c| !c.is_empty()).collect();
    ensure!(cols.get(1) == Some(&"busybox"), "want app busybox in {row:?}");
    ensure!(
        cols.contains(&"exited") && cols.contains(&"3"),
        "want state exited and exit 3 in {row:?}"
    );
    let Some(uuid) = uuid_of(rkt) else {
        return Outcome::Failed("no pod in rkt list".into());
    };
    let status = rkt.rkt(&["status", &uuid]);
    ensure!(
        status.stdout.contains("state=exited"),
        "status: {}",
        status.describe()
    );
    ensure!(
        status.stdout.contains("app-busybox=3"),
        "status: {}",
        status.describe()
    );
    let json = rkt.rkt(&["status", "--format=json", &uuid]);
    let value: serde_json::Value = try_or_fail!(serde_json::from_str(&json.stdout));
    ensure!(value["apps"][0]["exit_code"] == 3, "status json: {}", json.stdout);
    ensure!(value["state"] == "exited", "status json: {}", json.stdout);
    Outcome::Passed
}

fn env_of(out: &RunOutput) -> Vec<(String, String)> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn default_environment(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = rkt.run(&[&image, "--exec", "/bin/env"]);
    ensure!(out.code == 0, "env failed: {}", out.describe());
    let env = env_of(&out);
    ensure!(
        get(&env, "PATH") == Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "PATH: {env:?}"
    );
    ensure!(
        get(&env, "AC_APP_NAME") == Some("busybox"),
        "AC_APP_NAME: {env:?}"
    );
    ensure!(get(&env, "HOME") == Some("/root"), "HOME: {env:?}");
    ensure!(
        get(&env, "USER") == Some("root") && get(&env, "LOGNAME") == Some("root"),
        "USER/LOGNAME: {env:?}"
    );
    ensure!(get(&env, "SHELL") == Some("/bin/sh"), "SHELL: {env:?}");
    Outcome::Passed
}

fn environment_precedence(rkt: &Rkt) -> Outcome {
    let mut spec = AciSpec::busybox("example.com/env");
    spec.env = vec![
        ("FROM_IMAGE".into(), "image".into()),
        ("BOTH".into(), "image".into()),
        ("PATH".into(), "/bin".into()),
    ];
    let image = image!(rkt, spec);
    let mut cmd = rkt.command(&[
        "run",
        "--insecure-options=image",
        &format!("--stage1={}", rkt.stage1),
        rkt.default_net(),
        "--inherit-env",
        "--set-env=BOTH=flag",
        "--set-env=EXTRA=x",
        &image,
        "--exec",
        "/bin/env",
    ]);
    cmd.env("HOST_ONLY", "host").env("FROM_IMAGE", "host");
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("cannot run rkt: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let env: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    ensure!(
        out.status.code() == Some(0),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(get(&env, "HOST_ONLY") == Some("host"), "--inherit-env: {env:?}");
    ensure!(
        get(&env, "FROM_IMAGE") == Some("image"),
        "image env beats the host's: {env:?}"
    );
    ensure!(
        get(&env, "BOTH") == Some("flag"),
        "--set-env beats the image: {env:?}"
    );
    ensure!(get(&env, "EXTRA") == Some("x"), "--set-env: {env:?}");
    ensure!(
        get(&env, "PATH") == Some("/bin"),
        "the image's PATH beats the default: {env:?}"
    );
    Outcome::Passed
}

fn working_directory(rkt: &Rkt) -> Outcome {
    let mut spec = AciSpec::busybox("example.com/cwd");
    spec.working_directory = Some("/home/app".into());
    spec.exec = vec!["/bin/pwd".into()];
    let image = image!(rkt, spec);
    let out = rkt.run(&[&image]);
    ensure!(
        out.code == 0 && out.stdout.trim() == "/home/app",
        "pwd: {}",
        out.describe()
    );
    Outcome::Passed
}

fn user_and_group_by_name(rkt: &Rkt) -> Outcome {
    let mut spec = AciSpec::busybox("example.com/user");
    spec.user = "app".into();
    spec.group = "app".into();
    spec.exec = vec![
        "/bin/sh".into(),
        "-c".into(),
        "id -u; id -g; echo $HOME; echo $USER".into(),
    ];
    let image = image!(rkt, spec);
    let out = rkt.run(&[&image]);
    ensure!(out.code == 0, "run: {}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(
        lines == ["1000", "1000", "/home/app", "app"],
        "want uid/gid 1000, HOME and USER of app: {}",
        out.describe()
    );
    Outcome::Passed
}

fn args_after_double_dash(rkt: &Rkt) -> Outcome {
    let mut spec = AciSpec::busybox("example.com/args");
    spec.exec = vec!["/bin/echo".into(), "from-image".into()];
    let image = image!(rkt, spec);
    let out = rkt.run(&[&image, "--", "a b", "--c", "---"]);
    ensure!(
        out.code == 0 && out.stdout == "from-image a b --c\n",
        "args: {}",
        out.describe()
    );
    Outcome::Passed
}

fn host_volume_read_write(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let host = rkt.work().join("rw-volume");
    try_or_fail!(std::fs::create_dir_all(&host));
    try_or_fail!(std::fs::write(host.join("from-host"), "host"));
    let volume = format!("--volume=data,kind=host,source={}", host.display());
    let out = sh(
        rkt,
        &image,
        &[&volume, "--mount=volume=data,target=/data"],
        "cat /data/from-host; echo pod > /data/from-pod",
    );
    ensure!(out.code == 0 && out.stdout == "host", "run: {}", out.describe());
    let written = std::fs::read_to_string(host.join("from-pod")).unwrap_or_default();
    ensure!(
        written == "pod\n",
        "the pod's write must reach the host dir, got {written:?}"
    );
    Outcome::Passed
}

fn host_volume_read_only(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let host = rkt.work().join("ro-volume");
    try_or_fail!(std::fs::create_dir_all(&host));
    let volume = format!("--volume=data,kind=host,source={},readOnly=true", host.display());
    let out = sh(
        rkt,
        &image,
        &[&volume, "--mount=volume=data,target=/data"],
        "touch /data/x 2>/dev/null && echo wrote; ls /data",
    );
    ensure!(
        out.code == 0 && !out.stdout.contains("wrote"),
        "a read-only volume was writable: {}",
        out.describe()
    );
    ensure!(
        !host.join("x").exists(),
        "a file appeared in the read-only host dir"
    );
    Outcome::Passed
}

fn empty_volume(rkt: &Rkt) -> Outcome {
    let mut spec = AciSpec::busybox("example.com/mp");
    spec.mount_points = vec![("scratch".into(), "/scratch".into(), false)];
    let image = image!(rkt, spec);
    let out = sh(
        rkt,
        &image,
        &["--volume=scratch,kind=empty"],
        "echo x > /scratch/f && cat /scratch/f",
    );
    ensure!(
        out.code == 0 && out.stdout == "x\n",
        "explicit empty volume: {}",
        out.describe()
    );
    let implicit = sh(rkt, &image, &[], "echo y > /scratch/f && cat /scratch/f");
    ensure!(
        implicit.code == 0 && implicit.stdout == "y\n",
        "implicit empty volume: {}",
        implicit.describe()
    );
    Outcome::Passed
}

fn rootfs_writes_stay_in_pod(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let first = sh(
        rkt,
        &image,
        &[],
        "echo changed > /etc/passwd && echo new > /etc/new",
    );
    ensure!(first.code == 0, "write: {}", first.describe());
    let second = sh(
        rkt,
        &image,
        &[],
        "grep -c root /etc/passwd; test -e /etc/new && echo leaked; true",
    );
    ensure!(
        second.code == 0 && second.stdout == "1\n",
        "a pod saw another pod's writes: {}",
        second.describe()
    );
    Outcome::Passed
}

fn no_overlay(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(
        rkt,
        &image,
        &["--no-overlay"],
        "echo x > /etc/new && cat /etc/new",
    );
    ensure!(
        out.code == 0 && out.stdout == "x\n",
        "--no-overlay: {}",
        out.describe()
    );
    let again = sh(rkt, &image, &[], "test -e /etc/new && echo leaked; true");
    ensure!(
        again.stdout.is_empty(),
        "a --no-overlay write reached the image: {}",
        again.describe()
    );
    Outcome::Passed
}

fn no_mounts_leak_to_host(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(
        rkt,
        &image,
        &[],
        "test -e /proc/self/mountinfo && test -d /dev && test -d /sys/kernel && test -w /tmp",
    );
    ensure!(
        out.code == 0,
        "the pod lacks /proc, /dev, /sys or a writable /tmp: {}",
        out.describe()
    );
    let left = rkt.mounts_left();
    ensure!(
        left.is_empty(),
        "mounts left on the host after the pod exited: {left:?}"
    );
    Outcome::Passed
}

fn pods_on_disk(dir: &Path) -> usize {
    [
        "embryo",
        "prepare",
        "prepared",
        "run",
        "exited-garbage",
        "garbage",
    ]
    .iter()
    .map(|s| {
        std::fs::read_dir(dir.join("pods").join(s))
            .map(|d| d.count())
            .unwrap_or(0)
    })
    .sum()
}

fn gc_removes_pod(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = sh(rkt, &image, &[], "exit 0");
    ensure!(out.code == 0, "run: {}", out.describe());
    ensure!(pods_on_disk(&rkt.dir) >= 1, "no pod on disk after a run");
    let gc = rkt.rkt(&["gc", "--grace-period=0s"]);
    ensure!(gc.code == 0, "gc: {}", gc.describe());
    ensure!(
        pods_on_disk(&rkt.dir) == 0,
        "pods left after gc: {}",
        pods_on_disk(&rkt.dir)
    );
    let list = rkt.rkt(&["list", "--no-legend"]);
    ensure!(
        list.code == 0 && list.stdout.is_empty(),
        "list after gc: {}",
        list.describe()
    );
    let left = rkt.mounts_left();
    ensure!(left.is_empty(), "mounts left after gc: {left:?}");
    Outcome::Passed
}

fn missing_exec_is_an_error(rkt: &Rkt) -> Outcome {
    let image = image!(rkt, AciSpec::busybox("example.com/busybox"));
    let out = rkt.run(&[&image, "--exec", "/bin/does-not-exist"]);
    ensure!(
        out.code == 254,
        "want rkt's exit code 254, got {}",
        out.describe()
    );
    ensure!(
        out.stderr.contains("/bin/does-not-exist"),
        "the error must name the program: {}",
        out.describe()
    );
    ensure!(
        out.stderr.trim().lines().count() == 1,
        "want a one-line error: {}",
        out.describe()
    );
    Outcome::Passed
}

fn missing_image_is_an_error(rkt: &Rkt) -> Outcome {
    let missing = rkt.work().join("nope.aci");
    let out = rkt.run(&[&missing.display().to_string()]);
    ensure!(out.code == 254, "want 254, got {}", out.describe());
    ensure!(
        out.stderr.contains("nope.aci"),
        "the error must name the file: {}",
        out.describe()
    );
    ensure!(pods_on_disk(&rkt.dir) == 0, "a failed run left a pod behind");
    Outcome::Passed
}

/// An image that is only a layer over a dependency runs with the dependency's
/// files below its own (its own win), and `pathWhitelist` keeps only what it names.
fn dependencies_and_path_whitelist(rkt: &Rkt) -> Outcome {
    let mut base = AciSpec::busybox("example.com/base");
    base.files = vec![
        ("/etc/base-file".into(), b"base\n".to_vec(), 0o644),
        ("/etc/shared".into(), b"from base\n".to_vec(), 0o644),
    ];
    let base_image = image!(rkt, base.clone());
    let fetched = rkt.rkt(&["fetch", "--insecure-options=image", &base_image]);
    ensure!(fetched.code == 0, "fetch of the base: {}", fetched.describe());

    let mut layer = AciSpec::layer("example.com/layer", &base);
    layer.files = vec![
        ("/etc/layer-file".into(), b"layer\n".to_vec(), 0o644),
        ("/etc/shared".into(), b"from layer\n".to_vec(), 0o644),
    ];
    layer.exec = vec![
        "/bin/sh".into(),
        "-c".into(),
        "cat /etc/base-file /etc/layer-file /etc/shared".into(),
    ];
    let layer_image = image!(rkt, layer.clone());
    let out = rkt.run(&[&layer_image]);
    ensure!(out.code == 0, "run of the layer: {}", out.describe());
    ensure!(
        out.stdout == "base\nlayer\nfrom layer\n",
        "layered rootfs: {}",
        out.describe()
    );

    let mut narrow = layer;
    narrow.name = "example.com/narrow".into();
    narrow.path_whitelist = [
        "/bin/busybox",
        "/bin/sh",
        "/bin/test",
        "/etc/layer-file",
        "/etc/passwd",
        "/etc/group",
    ]
    .map(String::from)
    .to_vec();
    narrow.exec = vec![
        "/bin/sh".into(),
        "-c".into(),
        "test -e /etc/layer-file && test ! -e /etc/base-file && test ! -e /bin/cat".into(),
    ];
    let narrow_image = image!(rkt, narrow);
    let out = rkt.run(&[&narrow_image]);
    ensure!(
        out.code == 0,
        "pathWhitelist kept something it does not name: {}",
        out.describe()
    );
    Outcome::Passed
}
