//! What the reliability suites (crash, concurrency, hostile) share: processes with
//! deadlines, and the checks that a data dir holds nothing a crash or a race could
//! have left behind.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rkt_conformance::Rkt;
use rkt_conformance::harness::RunOutput;

/// A finished process: what it printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub out: RunOutput,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// Starts `cmd` with stdin closed and stdout/stderr captured.
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start process")
}

/// Waits for every child (each in its own thread, so their pipes drain in
/// parallel) until `limit` has passed; a child still running then is killed (by
/// its pid: we started it and have not reaped it) and the test fails, naming it.
pub fn wait_all(children: Vec<(String, Child)>, limit: Duration) -> Vec<(String, Finished)> {
    let (tx, rx) = mpsc::channel();
    let mut pending: BTreeMap<usize, (String, u32)> = BTreeMap::new();
    for (i, (what, child)) in children.into_iter().enumerate() {
        pending.insert(i, (what, child.id()));
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, child.wait_with_output()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut done: BTreeMap<usize, (String, Finished)> = BTreeMap::new();
    while !pending.is_empty() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, out)) => {
                let (what, _) = pending.remove(&i).expect("a child reports once");
                let out = out.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
                let finished = Finished {
                    signal: out.status.signal(),
                    out: RunOutput {
                        code: out.status.code().unwrap_or(-1),
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    },
                };
                done.insert(i, (what, finished));
            }
            Err(_) => {
                for (what, pid) in pending.values() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    eprintln!("watchdog: killed {what} (pid {pid}) after {limit:?}");
                }
                let names: Vec<&String> = pending.values().map(|(w, _)| w).collect();
                panic!("deadlock or hang: still running after {limit:?}, killed: {names:?}");
            }
        }
    }
    done.into_values().collect()
}

/// One command with a deadline.
pub fn finish_within(what: &str, cmd: Command, limit: Duration) -> Finished {
    wait_all(vec![(what.to_string(), spawn(cmd))], limit)
        .pop()
        .expect("one result")
        .1
}

/// Whether `rkt version` lists the stage1 `name` as available on this machine.
pub fn stage1_available(rkt: &Rkt, name: &str) -> bool {
    let version = rkt.rkt(&["version"]);
    version.stdout.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(name) && words.next() == Some("available")
    })
}

/// The states `rkt list` may show (rkt's names).
pub const LEGAL_STATES: &[&str] = &[
    "embryo",
    "preparing",
    "aborted prepare",
    "prepared",
    "running",
    "exited",
    "exited garbage",
    "garbage",
];

/// The pods `rkt list --format=json` shows, as (uuid, state).
pub fn list_pods(rkt: &Rkt) -> Result<Vec<(String, String)>, String> {
    let out = rkt.rkt(&["list", "--format=json"]);
    if out.code != 0 {
        return Err(format!("rkt list failed: {}", out.describe()));
    }
    let pods: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("rkt list printed no JSON ({e}): {}", out.describe()))?;
    let pods = pods.as_array().cloned().unwrap_or_default();
    Ok(pods
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Pod directories under `$dir/pods/<state>/`.
pub fn pod_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for state in std::fs::read_dir(dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for pod in std::fs::read_dir(state.path()).into_iter().flatten().flatten() {
            out.push(pod.path());
        }
    }
    out
}

/// Processes whose root, cwd or executable lies under `root` (an app of a pod
/// there, or an rkt run from there), other than this test process.
pub fn processes_under(root: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        for link in ["root", "cwd", "exe"] {
            if let Ok(target) = std::fs::read_link(entry.path().join(link))
                && target.starts_with(root)
            {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                found.push(format!(
                    "pid {pid} ({}) {link} -> {}",
                    comm.trim(),
                    target.display()
                ));
                break;
            }
        }
    }
    found
}

/// Temp entries an import, a render or an atomic write left in the store.
pub fn store_temps(dir: &Path) -> Vec<PathBuf> {
    let cas = dir.join("cas");
    let mut out: Vec<PathBuf> = std::fs::read_dir(cas.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    for sub in ["index", "files"] {
        out.extend(
            std::fs::read_dir(cas.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .map(|e| e.path()),
        );
    }
    out
}

/// Everything wrong with a data dir after `rkt gc --grace-period=0s`: pods, mounts,
/// processes, store temps, store inconsistencies.
pub fn leftovers(rkt: &Rkt) -> Vec<String> {
    let mut problems = Vec::new();
    match list_pods(rkt) {
        Ok(pods) if pods.is_empty() => {}
        Ok(pods) => problems.push(format!("rkt list still shows {pods:?}")),
        Err(e) => problems.push(e),
    }
    let pods = pod_dirs(&rkt.dir);
    if !pods.is_empty() {
        problems.push(format!("pod directories left: {pods:?}"));
    }
    let mounts = rkt.mounts_left();
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    let procs = processes_under(rkt.work());
    if !procs.is_empty() {
        problems.push(format!("processes left: {procs:?}"));
    }
    let temps = store_temps(&rkt.dir);
    if !temps.is_empty() {
        problems.push(format!("store temp files left: {temps:?}"));
    }
    problems
}

/// What `rkt image verify` (the whole store: every blob re-hashed against its ID,
/// every tree against its recorded hash, no blob without its index record)
/// reports, one problem a line; empty when it exits 0 saying no damage was found.
pub fn store_problems(rkt: &Rkt) -> Vec<String> {
    let out = rkt.rkt(&["image", "verify"]);
    let problems: Vec<String> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("image verify: "))
        .map(str::to_string)
        .collect();
    match (out.code, problems.is_empty()) {
        (0, true) if out.stdout.contains("no damage found") => Vec::new(),
        (254, false) => problems,
        _ => vec![format!("rkt image verify: {}", out.describe())],
    }
}

/// The images `rkt image list` shows, by full ID.
pub fn stored_images(rkt: &Rkt) -> Vec<String> {
    let out = rkt.rkt(&["image", "list", "--no-legend", "--full", "--fields=id"]);
    assert_eq!(out.code, 0, "rkt image list: {}", out.describe());
    out.stdout.lines().map(|l| l.trim().to_string()).collect()
}
