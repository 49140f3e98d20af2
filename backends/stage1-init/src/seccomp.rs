//! Seccomp filters compiled to classic BPF here, with no libseccomp: an
//! architecture check, then one compare per listed syscall.
//!
//! The x86_64 table (`syscalls_x86_64.rs`) comes from the kernel headers:
//! `awk '/#define __NR_/ {sub("__NR_","",$2); printf "    (\"%s\", %s),\n", $2, $3}'
//! /usr/include/x86_64-linux-gnu/asm/unistd_64.h`.

use rkt_engine::pod::protocol::{SeccompFilter, SeccompMode};

#[cfg(target_arch = "x86_64")]
#[path = "syscalls_x86_64.rs"]
mod table;

/// docker's default profile refuses these; rkt's default blocklist is the same.
const DEFAULT_BLACKLIST: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    // mount(2)'s newer API: refusing mount alone would leave these open.
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount_setattr",
    "move_mount",
    "open_tree",
];

/// Besides the blocklist, what the default allow-lists leave out: calls no
/// kernel implements on x86_64, quota and NUMA page migration (as the
/// blocklist's quotactl and move_pages), fanotify's global watch.
const NOT_ALLOWED_BY_DEFAULT: &[&str] = &[
    "afs_syscall",
    "fanotify_init",
    "getpmsg",
    "migrate_pages",
    "putpmsg",
    "quotactl_fd",
    "security",
    "set_mempolicy_home_node",
    "tuxcall",
    "vserver",
];

/// The groups rkt documents (Documentation/seccomp-guide.md), for the error
/// message.
const GROUPS: &str = "@appc.io/all, @appc.io/empty, @rkt/default-blacklist, @rkt/default-whitelist, \
                      @docker/default-blacklist, @docker/default-whitelist";

/// What an allow-list always keeps, so the init can still exec the app (and
/// report a failed exec) once the filter is in place.
const EXEC_PATH: &[&str] = &["execve", "write", "exit", "exit_group"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp: unknown syscall {0:?}")]
    UnknownSyscall(String),
    #[error("seccomp: unknown group {0:?} (known: {GROUPS})")]
    UnknownGroup(String),
    #[error("seccomp: unknown errno {0:?}")]
    UnknownErrno(String),
    #[error("seccomp filters are supported on x86_64 only")]
    Architecture,
    #[error("seccomp: {0} syscalls are more than one filter can hold")]
    TooLong(usize),
}

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(Vec<libc::sock_filter>);

impl Program {
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.0
    }

    /// Installs the filter on the calling thread (and what it execs).
    /// Needs no_new_privs or CAP_SYS_ADMIN, as the kernel does.
    pub fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(self.0.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
            filter: self.0.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `self.0`, alive for the call; the kernel
        // copies the program.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

pub fn syscall_number(name: &str) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        table::SYSCALLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

/// Names and groups to syscall numbers; group members this architecture
/// lacks are skipped, as systemd does, a plain unknown name is an error.
fn resolve(names: &[String]) -> Result<Vec<u32>, SeccompError> {
    let mut numbers = Vec::new();
    for name in names {
        if let Some(group) = name.strip_prefix('@') {
            match group {
                "rkt/default-blacklist" | "docker/default-blacklist" => {
                    numbers.extend(DEFAULT_BLACKLIST.iter().filter_map(|m| syscall_number(m)))
                }
                "rkt/default-whitelist" | "docker/default-whitelist" => numbers.extend(default_allowed()),
                "appc.io/all" => numbers.extend(all_syscalls()),
                "appc.io/empty" => {}
                _ => return Err(SeccompError::UnknownGroup(name.clone())),
            }
        } else {
            numbers.push(syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall(name.clone()))?);
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    Ok(numbers)
}

fn all_syscalls() -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        table::SYSCALLS.iter().map(|(_, nr)| *nr).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The allow-list groups: every syscall this architecture has but the
/// blocklist and [`NOT_ALLOWED_BY_DEFAULT`], so a retain filter of the
/// allow-list and the default remove filter agree on everything an app
/// ordinarily calls, while a syscall newer than the table stays refused.
fn default_allowed() -> Vec<u32> {
    let refused: Vec<u32> = DEFAULT_BLACKLIST
        .iter()
        .chain(NOT_ALLOWED_BY_DEFAULT)
        .filter_map(|m| syscall_number(m))
        .collect();
    all_syscalls()
        .into_iter()
        .filter(|nr| !refused.contains(nr))
        .collect()
}

pub fn errno_number(name: &str) -> Option<i32> {
    // The common ones an isolator names; nix knows every errno by its name.
    (1..134)
        .map(nix::errno::Errno::from_raw)
        .find(|e| format!("{e:?}") == name)
        .map(|e| e as i32)
}

// BPF opcodes (linux/bpf_common.h) and seccomp return values.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 syscalls carry this bit on x86_64; they are never allowed through.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
// struct seccomp_data: nr at 0, arch at 4.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

pub fn compile(filter: &SeccompFilter) -> Result<Program, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::Architecture);
    }
    let refuse = match &filter.errno {
        None => SECCOMP_RET_KILL_PROCESS,
        Some(name) => {
            let n = errno_number(name).ok_or_else(|| SeccompError::UnknownErrno(name.clone()))?;
            SECCOMP_RET_ERRNO | (n as u32 & 0xffff)
        }
    };
    let mut names = filter.syscalls.clone();
    let mut mode = filter.mode;
    // rkt reads "remove nothing" as "keep the default allow-list", not as
    // "allow everything" (@appc.io/all says that).
    if mode == SeccompMode::Remove && names.iter().all(|n| n == "@appc.io/empty") {
        mode = SeccompMode::Retain;
        names = vec!["@rkt/default-whitelist".to_string()];
    }
    if mode == SeccompMode::Retain {
        names.extend(EXEC_PATH.iter().map(|s| s.to_string()));
    }
    let numbers = resolve(&names)?;
    let (listed, other) = match mode {
        SeccompMode::Retain => (SECCOMP_RET_ALLOW, refuse),
        SeccompMode::Remove => (refuse, SECCOMP_RET_ALLOW),
    };
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, refuse),
    ];
    // Runs of consecutive numbers are one range test: an allow-list of three
    // hundred syscalls costs a few dozen compares per call, not six hundred.
    for (lo, hi) in ranges(&numbers) {
        if lo == hi {
            prog.push(jump(BPF_JMP_JEQ_K, lo, 0, 1));
        } else {
            prog.push(jump(BPF_JMP_JGE_K, lo, 0, 2));
            prog.push(jump(BPF_JMP_JGT_K, hi, 1, 0));
        }
        prog.push(stmt(BPF_RET_K, listed));
    }
    prog.push(stmt(BPF_RET_K, other));
    if prog.len() > 4096 {
        return Err(SeccompError::TooLong(numbers.len()));
    }
    Ok(Program(prog))
}

/// Sorted, deduplicated numbers as inclusive runs.
fn ranges(numbers: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &nr in numbers {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(nr) => *hi = nr,
            _ => runs.push((nr, nr)),
        }
    }
    runs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn filter(mode: SeccompMode, syscalls: &[&str], errno: Option<&str>) -> SeccompFilter {
        SeccompFilter {
            mode,
            syscalls: syscalls.iter().map(|s| s.to_string()).collect(),
            errno: errno.map(str::to_string),
        }
    }

    /// A tiny interpreter of the instructions compile emits.
    fn run(p: &Program, arch: u32, nr: u32) -> u32 {
        let mut acc = 0;
        let mut pc = 0;
        let insns = p.instructions();
        loop {
            let i = insns[pc];
            match i.code {
                BPF_LD_W_ABS => acc = if i.k == OFFSET_ARCH { arch } else { nr },
                BPF_RET_K => return i.k,
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JGT_K => {
                    let taken = match i.code {
                        BPF_JMP_JEQ_K => acc == i.k,
                        BPF_JMP_JGE_K => acc >= i.k,
                        _ => acc > i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn remove_sets_refuse_only_what_they_list() {
        let p = compile(&filter(
            SeccompMode::Remove,
            &["@rkt/default-blacklist", "chmod"],
            Some("ENOSYS"),
        ))
        .unwrap();
        let mount = syscall_number("mount").unwrap();
        let chmod = syscall_number("chmod").unwrap();
        let read = syscall_number("read").unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, mount),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, chmod),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, read), SECCOMP_RET_ALLOW);
        assert_eq!(
            run(&p, 0x4000_0003, read),
            SECCOMP_RET_KILL_PROCESS,
            "other architectures die"
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, read | X32_SYSCALL_BIT),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn retain_sets_allow_only_what_they_list_and_exec() {
        let p = compile(&filter(SeccompMode::Retain, &["read"], None)).unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, syscall_number("read").unwrap()),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, syscall_number("execve").unwrap()),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, syscall_number("mount").unwrap()),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn allow_lists_and_the_blocklist_agree_and_unknown_numbers_stay_refused() {
        let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = compile(&filter(
            SeccompMode::Retain,
            &["@docker/default-whitelist"],
            Some("EPERM"),
        ))
        .unwrap();
        let block = compile(&filter(
            SeccompMode::Remove,
            &["@rkt/default-blacklist"],
            Some("EPERM"),
        ))
        .unwrap();
        assert!(allow.instructions().len() < 200, "{}", allow.instructions().len());
        for name in [
            "read",
            "openat",
            "clone3",
            "statx",
            "rseq",
            "execve",
            "exit_group",
        ] {
            let nr = syscall_number(name).unwrap();
            assert_eq!(run(&allow, AUDIT_ARCH_X86_64, nr), SECCOMP_RET_ALLOW, "{name}");
            assert_eq!(run(&block, AUDIT_ARCH_X86_64, nr), SECCOMP_RET_ALLOW, "{name}");
        }
        for name in DEFAULT_BLACKLIST.iter().filter_map(|n| syscall_number(n)) {
            assert_eq!(run(&allow, AUDIT_ARCH_X86_64, name), eperm, "{name}");
            assert_eq!(run(&block, AUDIT_ARCH_X86_64, name), eperm, "{name}");
        }
        // A number past the table, and one in its gap (335..424 on x86_64).
        assert_eq!(run(&allow, AUDIT_ARCH_X86_64, 1000), eperm);
        assert_eq!(run(&allow, AUDIT_ARCH_X86_64, 400), eperm);
        let all = compile(&filter(SeccompMode::Retain, &["@appc.io/all"], Some("EPERM"))).unwrap();
        assert_eq!(
            run(&all, AUDIT_ARCH_X86_64, syscall_number("mount").unwrap()),
            SECCOMP_RET_ALLOW
        );
        let default = compile(&filter(SeccompMode::Remove, &["@appc.io/empty"], Some("EPERM"))).unwrap();
        assert_eq!(
            default, allow,
            "removing nothing keeps the default allow-list, as rkt"
        );
        let none = compile(&filter(SeccompMode::Retain, &["@appc.io/empty"], Some("EPERM"))).unwrap();
        assert_eq!(
            run(&none, AUDIT_ARCH_X86_64, syscall_number("read").unwrap()),
            eperm
        );
        assert_eq!(
            run(&none, AUDIT_ARCH_X86_64, syscall_number("execve").unwrap()),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn ranges_join_consecutive_numbers() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), [(1, 3), (5, 5), (7, 8)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(
            compile(&filter(SeccompMode::Remove, &["nosuchcall"], None)),
            Err(SeccompError::UnknownSyscall(_))
        ));
        assert!(matches!(
            compile(&filter(SeccompMode::Remove, &["@nope/x"], None)),
            Err(SeccompError::UnknownGroup(_))
        ));
        assert!(matches!(
            compile(&filter(SeccompMode::Remove, &["read"], Some("ENOPE"))),
            Err(SeccompError::UnknownErrno(_))
        ));
        assert_eq!(errno_number("EPERM"), Some(1));
        assert_eq!(errno_number("ENOSYS"), Some(libc::ENOSYS));
    }
}
