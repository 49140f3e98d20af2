//! Lists the functions of a binary that one run of a command executes, in the order
//! they first run: the symbol ordering file `cli/build.rs` hands to the linker.
//!
//! Why: `rkt run --stage1=fly` touches perhaps a megabyte of its 9 MB of code, but
//! scattered through the text; the kernel maps 64 KB around every fault of a cached
//! file ("fault-around"), so a scattered megabyte becomes ~5 MB of resident text.
//! Laid out in first-run order the hot code shares pages and windows.
//!
//! How: the command runs under ptrace, single-stepped, in every process it forks
//! until that process execs something else; each instruction pointer inside the
//! binary's mapping is kept, then mapped to its function through the ELF symbol
//! table. Single-stepping is slow (~3 µs an instruction) but exact — sampling
//! profilers miss the small functions that cost a page each. The binary must keep
//! its symbols: build it with `RKT_KEEP_SYMBOLS=1` (see cli/build.rs), which leaves
//! every name exactly as in the stripped release build.
//!
//! ```sh
//! RKT_KEEP_SYMBOLS=1 cargo build --release -p rkt
//! sudo target/x86_64-unknown-linux-gnu/release/rkt-hot-functions \
//!     --binary target/x86_64-unknown-linux-gnu/release/rkt --out cli/link/hot-functions.txt \
//!     -- target/x86_64-unknown-linux-gnu/release/rkt --dir D run --stage1=fly IMAGE --exec /bin/true
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use object::{Object, ObjectSymbol, SymbolKind};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    about = "Writes the functions a command runs, in first-run order, as a linker symbol ordering file"
)]
struct Args {
    /// The binary whose functions are listed (with its symbol table).
    #[arg(long)]
    binary: PathBuf,
    /// Where the ordering file goes; appended to with --append.
    #[arg(long)]
    out: PathBuf,
    /// Add the functions not yet in --out at its end instead of replacing it.
    #[arg(long)]
    append: bool,
    /// The command to trace.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data = std::fs::read(&args.binary).with_context(|| format!("reading {}", args.binary.display()))?;
    let functions = Functions::from_elf(&data)?;

    let offsets = trace(&data, &args.command)?;
    // Appending to a list that cannot be read would write over it.
    let mut text = match std::fs::read_to_string(&args.out) {
        Ok(old) if args.append => old,
        Err(e) if args.append && e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading {}", args.out.display()));
        }
        _ => String::new(),
    };
    let mut seen: HashSet<&str> = text.lines().collect();
    let mut unknown = 0usize;
    let mut names = Vec::new();
    for offset in &offsets {
        match functions.containing(*offset) {
            Some(name) if seen.insert(name) => names.push(name),
            Some(_) => {}
            None => unknown += 1,
        }
    }
    for name in &names {
        text.push_str(name);
        text.push('\n');
    }
    write_atomically(&args.out, text.as_bytes())?;
    eprintln!(
        "{} distinct instruction addresses, {} new functions written to {} ({} addresses in no symbol)",
        offsets.len(),
        names.len(),
        args.out.display(),
        unknown
    );
    Ok(())
}

/// The binary's functions, sorted by address, for lookups of instruction offsets.
struct Functions<'a> {
    /// (start, end, name), sorted by start.
    ranges: Vec<(u64, u64, &'a str)>,
}

impl<'a> Functions<'a> {
    fn from_elf(data: &'a [u8]) -> Result<Self> {
        let file = object::File::parse(data).context("parsing the binary as ELF")?;
        let mut ranges: Vec<(u64, u64, &str)> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some((s.address(), s.address() + s.size(), name))
            })
            .collect();
        if ranges.is_empty() {
            bail!("the binary has no function symbols: build it with RKT_KEEP_SYMBOLS=1");
        }
        ranges.sort_unstable();
        Ok(Self { ranges })
    }

    fn containing(&self, offset: u64) -> Option<&'a str> {
        let index = self.ranges.partition_point(|(start, _, _)| *start <= offset);
        let (start, end, name) = self.ranges.get(index.checked_sub(1)?)?;
        (*start <= offset && offset < *end).then_some(*name)
    }
}

/// Where the binary sits in a tracee: its load address and the end of its mapping.
#[derive(Clone, Copy)]
struct Mapping {
    base: u64,
    end: u64,
}

/// The binary's mapping in `pid` if `pid` runs the binary or a copy of it (nspawn's
/// stage1 init is a copy, under another path in another mount namespace).
fn mapping_of(pid: Pid, binary: &[u8]) -> Result<Option<Mapping>> {
    let exe = format!("/proc/{pid}/exe");
    match std::fs::metadata(&exe) {
        Ok(meta) if meta.len() == binary.len() as u64 => {}
        _ => return Ok(None),
    }
    if std::fs::read(&exe).ok().as_deref() != Some(binary) {
        return Ok(None);
    }
    // /proc/PID/exe and /proc/PID/maps render the path the same way for this reader.
    let path = std::fs::read_link(&exe)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut found: Option<Mapping> = None;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if Path::new(fields.nth(2).unwrap_or("")) != path {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16)?;
        let end = u64::from_str_radix(end, 16)?;
        let offset = u64::from_str_radix(offset, 16)?;
        let base = start - offset;
        found = Some(match found {
            None => Mapping { base, end },
            Some(m) => Mapping {
                base: m.base.min(base),
                end: m.end.max(end),
            },
        });
    }
    Ok(found)
}

/// What the tracer does with one traced process.
#[derive(Clone, Copy)]
enum Tracee {
    /// Runs the binary: single-stepped, its instruction pointers kept.
    Ours(Mapping),
    /// Runs something else (nspawn, the app): left to run, only its forks and
    /// execs stop it, in case a descendant runs the binary again.
    Foreign,
}

/// Runs `command`; returns the distinct offsets (from the binary's load address)
/// of the instructions executed in any process of its tree while that process
/// ran the binary, in first-run order.
fn trace(binary: &[u8], command: &[String]) -> Result<Vec<u64>> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    let program = CString::new(Path::new(&command[0]).as_os_str().as_bytes())?;
    // SAFETY: the child only calls async-signal-safe functions (ptrace, execv, _exit)
    // before it execs.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let _ = ptrace::traceme();
            let _ = nix::unistd::execv(&program, &argv);
            // SAFETY: _exit is always safe; the child must not run the parent's atexit.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    // The child stops with SIGTRAP at its exec.
    match waitpid(child, None)? {
        WaitStatus::Stopped(_, Signal::SIGTRAP) => {}
        other => bail!("the command did not start under ptrace: {other:?}"),
    }
    ptrace::setoptions(
        child,
        ptrace::Options::PTRACE_O_TRACEFORK
            | ptrace::Options::PTRACE_O_TRACEVFORK
            | ptrace::Options::PTRACE_O_TRACECLONE
            | ptrace::Options::PTRACE_O_TRACEEXEC
            | ptrace::Options::PTRACE_O_EXITKILL,
    )?;
    let first = mapping_of(child, binary)?.context("the command does not run the binary")?;

    let mut tracees: HashMap<Pid, Tracee> = HashMap::from([(child, Tracee::Ours(first))]);
    // A new process's first stop (SIGSTOP) and its parent's fork event arrive in
    // either order; the process waits until both are seen.
    let mut stopped_unknown: HashSet<Pid> = HashSet::new();
    let mut awaiting_first_stop: HashSet<Pid> = HashSet::new();
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let resume = |tracees: &HashMap<Pid, Tracee>, pid: Pid, signal: Option<Signal>| {
        // A process that vanished meanwhile (killed) is not an error here.
        let _ = match tracees.get(&pid) {
            Some(Tracee::Ours(_)) => ptrace::step(pid, signal),
            _ => ptrace::cont(pid, signal),
        };
    };
    resume(&tracees, child, None);
    loop {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(status) => status,
            Err(nix::errno::Errno::ECHILD) => break,
            Err(e) => return Err(e.into()),
        };
        match status {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                tracees.remove(&pid);
            }
            WaitStatus::PtraceEvent(pid, _, event)
                if event == libc::PTRACE_EVENT_FORK
                    || event == libc::PTRACE_EVENT_VFORK
                    || event == libc::PTRACE_EVENT_CLONE =>
            {
                let new = Pid::from_raw(ptrace::getevent(pid)? as i32);
                let kind = tracees.get(&pid).copied().unwrap_or(Tracee::Foreign);
                tracees.insert(new, kind);
                if stopped_unknown.remove(&new) {
                    resume(&tracees, new, None);
                } else {
                    awaiting_first_stop.insert(new);
                }
                resume(&tracees, pid, None);
            }
            WaitStatus::PtraceEvent(pid, _, event) if event == libc::PTRACE_EVENT_EXEC => {
                let kind = match mapping_of(pid, binary) {
                    Ok(Some(mapping)) => Tracee::Ours(mapping),
                    _ => Tracee::Foreign,
                };
                tracees.insert(pid, kind);
                resume(&tracees, pid, None);
            }
            WaitStatus::PtraceEvent(pid, _, _) => resume(&tracees, pid, None),
            WaitStatus::Stopped(pid, Signal::SIGTRAP) => {
                if let (Some(Tracee::Ours(m)), Ok(regs)) = (tracees.get(&pid), ptrace::getregs(pid))
                    && (m.base..m.end).contains(&regs.rip)
                    && seen.insert(regs.rip - m.base)
                {
                    order.push(regs.rip - m.base);
                }
                resume(&tracees, pid, None);
            }
            WaitStatus::Stopped(pid, Signal::SIGSTOP) if !tracees.contains_key(&pid) => {
                stopped_unknown.insert(pid);
            }
            WaitStatus::Stopped(pid, Signal::SIGSTOP) if awaiting_first_stop.remove(&pid) => {
                resume(&tracees, pid, None);
            }
            WaitStatus::Stopped(pid, signal) => resume(&tracees, pid, Some(signal)),
            _ => {}
        }
    }
    Ok(order)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Functions;

    #[test]
    fn an_offset_belongs_to_the_function_that_spans_it() {
        let functions = Functions {
            ranges: vec![(0x100, 0x140, "a"), (0x140, 0x150, "b"), (0x200, 0x210, "c")],
        };
        assert_eq!(functions.containing(0x100), Some("a"));
        assert_eq!(functions.containing(0x13f), Some("a"));
        assert_eq!(functions.containing(0x140), Some("b"));
        assert_eq!(functions.containing(0x150), None, "a gap between functions");
        assert_eq!(functions.containing(0x20f), Some("c"));
        assert_eq!(functions.containing(0x210), None);
        assert_eq!(functions.containing(0x10), None);
    }

    #[test]
    fn the_ordering_file_lists_only_names_the_linker_can_place() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cli/link/hot-functions.txt"
        ))
        .expect("cli/link/hot-functions.txt is checked in");
        assert!(
            text.lines().count() > 100,
            "the fly run touches hundreds of functions"
        );
        assert!(
            text.lines()
                .all(|l| !l.is_empty() && !l.contains(char::is_whitespace))
        );
        assert_eq!(
            text.lines().next(),
            Some("_start"),
            "the order starts where the process does"
        );
    }
}
