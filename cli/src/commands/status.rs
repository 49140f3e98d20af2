//! `rkt status`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_engine::pod::layout;
use rkt_engine::pod::{PodInfo, PodState, PodsDir};
use uuid::Uuid;

use crate::flags::{Format, GlobalFlags, Wait, parse_wait, print_json, resolve_pod};
use crate::podview;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Wait for the pod to exit: true, false, or a duration (negative: forever)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_wait)]
    pub wait: Wait,
    /// Wait until the pod is running its apps: true, false, or a duration
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_wait)]
    pub wait_ready: Wait,
    /// Output format
    #[arg(long)]
    pub format: Option<Format>,
    /// Read the pod UUID from this file
    #[arg(long, conflicts_with = "uuid")]
    pub uuid_file: Option<PathBuf>,
    /// The pod's UUID (or an unambiguous prefix)
    #[arg(required_unless_present = "uuid_file")]
    pub uuid: Option<String>,
}

pub fn status(global: &GlobalFlags, args: StatusArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let uuid = resolve_pod(&runtime.pods, args.uuid.as_deref(), args.uuid_file.as_deref())?;
    if args.wait_ready != Wait::No {
        // Ready: the apps run, which a stage1 records with the pid before exec.
        wait_until(
            &runtime.pods,
            &uuid,
            args.wait_ready,
            Until::Ready,
            |info| match info.state {
                PodState::Embryo | PodState::Preparing | PodState::Prepared => false,
                PodState::Running => info.path.join(layout::PID).exists(),
                _ => true,
            },
        )?;
    }
    if args.wait != Wait::No {
        wait_until(&runtime.pods, &uuid, args.wait, Until::Exited, |info| {
            !matches!(
                info.state,
                PodState::Embryo | PodState::Preparing | PodState::Prepared | PodState::Running
            )
        })?;
    }
    let info = runtime.pods.info(&uuid)?;
    let view = podview::view(&info);
    if let Some(format) = args.format {
        print_json(&view, format)?;
        return Ok(0);
    }
    println!("state={}", view.state);
    println!("created={}", podview::absolute(view.created));
    if view.started_at.is_some() {
        println!("started={}", podview::absolute(view.started));
    }
    if !view.networks.is_empty() {
        let nets: Vec<String> = view
            .networks
            .iter()
            .map(|n| format!("{}:ip4={}", n.name, n.ip))
            .collect();
        println!("networks={}", nets.join(","));
    }
    if let Some(pid) = view.pid {
        println!("pid={pid}");
    }
    let exited = !matches!(
        info.state,
        PodState::Embryo | PodState::Preparing | PodState::Prepared | PodState::Running
    );
    println!("exited={exited}");
    for app in &view.apps {
        if let Some(code) = app.exit_code {
            println!("app-{}={code}", app.name);
        }
    }
    Ok(0)
}

/// What a wait is for: an exit can be awaited on the pod's lock; readiness is a
/// file appearing while the lock is held, so it is re-read.
#[derive(PartialEq, Eq)]
enum Until {
    Ready,
    Exited,
}

/// Waits until the pod satisfies `done`. Waiting for a running pod to exit is a
/// blocking shared flock on the pod directory: it returns the moment the stage1
/// lock holder ends, with no polling. Other states are re-read at a short interval.
fn wait_until(
    pods: &PodsDir,
    uuid: &Uuid,
    wait: Wait,
    until: Until,
    done: impl Fn(&PodInfo) -> bool,
) -> Result<()> {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        _ => None,
    };
    loop {
        let info = pods.info(uuid)?;
        if done(&info) {
            return Ok(());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            bail!("timed out waiting for pod {uuid} (still {})", info.state);
        }
        if info.state == PodState::Running && until == Until::Exited {
            wait_for_unlock(&info.path, remaining)?;
        } else {
            std::thread::sleep(remaining.unwrap_or(Duration::MAX).min(Duration::from_millis(20)));
        }
    }
}

fn wait_for_unlock(path: &std::path::Path, timeout: Option<Duration>) -> Result<()> {
    let dir = match std::fs::File::open(path) {
        Ok(f) => f,
        // Moved on (to garbage) while we looked: the caller re-reads the state.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let locked = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockShared);
        let _ = tx.send(locked.is_ok());
    });
    match timeout {
        None => {
            let _ = rx.recv();
        }
        Some(t) => {
            let _ = rx.recv_timeout(t);
        }
    }
    Ok(())
}
