//! Runs a command and measures it: wall time from spawn to reap, and the peak RSS
//! the kernel recorded for it and every descendant it reaped (wait4's rusage).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub elapsed: Duration,
    /// ru_maxrss: the largest resident set of the process tree, in KiB.
    pub max_rss_kib: i64,
}

impl Measured {
    pub fn millis(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3
    }
}

/// Runs `cmd` with no input and no stdout; fails with its stderr unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let child = spawn(cmd)?;
    finish(cmd, child, start)
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
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let (status, usage) = wait4(pid).with_context(|| format!("waiting for {}", describe(cmd)))?;
    let elapsed = start.elapsed();
    // The child has been reaped by wait4: `child` must not be waited on again, only
    // its stderr read (what it wrote is in the pipe; a failing peer writes a line).
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let how = if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        bail!("{} failed ({how}): {}", describe(cmd), stderr.trim());
    }
    Ok(Measured {
        elapsed,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn wait4(pid: libc::pid_t) -> std::io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct of integers; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped; both out-pointers are valid
        // for writes for the duration of the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
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
    fn success_is_timed_and_has_a_resident_set() {
        let m = run(&mut Command::new("true")).expect("true runs");
        assert!(m.max_rss_kib > 0, "rusage came back: {m:?}");
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).expect_err("fails");
        let text = format!("{err:#}");
        assert!(text.contains("exit code 3"), "{text}");
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
