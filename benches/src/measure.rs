//! Runs a command and measures it: wall time from spawn to reap, or peak RSS.
//!
//! Peak RSS goes through GNU time (`/usr/bin/time -f %M`), not through this
//! program's own wait4: a child inherits its parent's memory high-water mark up
//! to its exec (with vfork, all of it), so ru_maxrss of a child of this 4 MB
//! harness never reads below 4 MB. time is a small C program that forks, so the
//! floor it leaves is about 1 MB (`time -f %M /bin/true` reads 1.1 MB here).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};

#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub elapsed: Duration,
    /// User + system CPU time of the command and its descendants. On a loaded
    /// machine wall time includes waiting for a CPU; this does not. Only right when
    /// no other child of this process is reaped meanwhile (sequential runs).
    pub cpu: Duration,
}

impl Measured {
    pub fn millis(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3
    }

    pub fn cpu_millis(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e3
    }
}

/// Runs `cmd` with no input and no stdout; fails with its stderr unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Measured> {
    let cpu_before = children_cpu()?;
    let start = Instant::now();
    let child = spawn(cmd)?;
    let mut measured = finish(cmd, child, start)?;
    measured.cpu = children_cpu()?.saturating_sub(cpu_before);
    Ok(measured)
}

/// CPU time of every reaped child of this process so far.
fn children_cpu() -> Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(RUSAGE_CHILDREN)")?;
    let seconds = |t: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Starts every command at once and waits for all; returns the wall time for the
/// whole batch and how many failed (with the first failure's message).
pub fn run_concurrently(cmds: &mut [Command]) -> Result<(Duration, usize, Option<String>)> {
    let start = Instant::now();
    let mut children = Vec::with_capacity(cmds.len());
    for cmd in cmds.iter_mut() {
        children.push(spawn(cmd)?);
    }
    let mut failed = 0;
    let mut first_error = None;
    for (cmd, child) in cmds.iter().zip(children) {
        if let Err(e) = finish(cmd, child, start) {
            failed += 1;
            first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
    Ok((start.elapsed(), failed, first_error))
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))
}

fn finish(cmd: &Command, mut child: Child, start: Instant) -> Result<Measured> {
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    let elapsed = start.elapsed();
    // A failing peer writes a line; what it wrote waits in the pipe.
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() {
        bail!("{} failed ({status}): {}", describe(cmd), stderr.trim());
    }
    Ok(Measured {
        elapsed,
        cpu: Duration::ZERO,
    })
}

/// Peak RSS of `cmd` in KiB, as GNU time (`time`) reports it into `report`.
pub fn peak_rss_kib(time: &Path, cmd: &Command, report: &Path) -> Result<f64> {
    let mut timed = Command::new(time);
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    run(&mut timed)?;
    let text = std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("time -f %M wrote {text:?}, not a number of KiB"))
}

/// The command as a user would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_comes_from_time() {
        let Some(time) = crate::peers::find_program("time") else {
            eprintln!("peak_rss_comes_from_time: skipped: no GNU time (apt-get install time)");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("rss");
        let small = peak_rss_kib(&time, &Command::new("true"), &report).expect("true runs");
        // 64 MiB touched by a shell builtin loop would be slow; dd's buffer is not.
        let mut big = Command::new("dd");
        big.args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        let large = peak_rss_kib(&time, &big, &report).expect("dd runs");
        assert!(small > 0.0 && small < 16_384.0, "true: {small} KiB");
        assert!(large > 65_536.0, "dd with a 64 MiB buffer: {large} KiB");
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).expect_err("fails");
        let text = format!("{err:#}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("broken"), "{text}");
    }

    #[test]
    fn concurrent_batch_counts_failures() {
        let mut cmds = vec![Command::new("true"), Command::new("false"), Command::new("true")];
        let (_, failed, first) = run_concurrently(&mut cmds).expect("all start");
        assert_eq!(failed, 1);
        assert!(first.is_some_and(|e| e.contains("false")));
    }
}
