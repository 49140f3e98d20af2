//! What the init does to an app's process between fork and exec, besides its
//! root and credentials: cgroups, OOM score, capabilities, no_new_privs and
//! the seccomp filter. Every step only makes system calls on data prepared in
//! the parent ([`Confinement`]), so it is safe in a forked child.
//!
//! Capabilities as rkt (through systemd's CapabilityBoundingSet= and
//! AmbientCapabilities=): the bounding set is cut to the app's set before the
//! uid changes (PR_SET_KEEPCAPS keeps permitted across it), then permitted,
//! effective and inheritable become the set and every cap of it is raised in
//! the ambient set, so a non-root app keeps them across exec. Caps nspawn
//! already took from the pod cannot be granted and are left out.

use std::path::PathBuf;

use rkt_engine::pod::protocol::AppIsolation;

use crate::seccomp::{self, Program};

const CAP_SYS_ADMIN: u8 = 21;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// An app's isolation, compiled in the init before any fork.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    pub cgroup_procs: Vec<PathBuf>,
    pub oom_score_adj: Option<i32>,
    /// Capability bits; None keeps the init's.
    pub capabilities: Option<u64>,
    pub no_new_privileges: bool,
    pub seccomp: Option<Program>,
}

impl Confinement {
    pub fn new(isolation: &AppIsolation) -> Result<Self, seccomp::SeccompError> {
        Ok(Confinement {
            cgroup_procs: isolation.cgroup_procs.clone(),
            oom_score_adj: isolation.oom_score_adj,
            capabilities: isolation
                .capabilities
                .as_ref()
                .map(|caps| caps.iter().filter(|c| **c < 64).fold(0u64, |m, c| m | 1 << c)),
            no_new_privileges: isolation.no_new_privileges,
            seccomp: isolation.seccomp.as_ref().map(seccomp::compile).transpose()?,
        })
    }

    /// Before chroot: the files it writes are the pod's.
    pub fn enter_cgroups(&self) -> std::io::Result<()> {
        for procs in &self.cgroup_procs {
            std::fs::write(procs, b"0")?;
        }
        if let Some(score) = self.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", score.to_string())?;
        }
        Ok(())
    }

    /// Before the uid changes: the bounding set, and keep permitted across setuid.
    pub fn limit_bounding_set(&self) -> std::io::Result<()> {
        let Some(keep) = self.capabilities else {
            return Ok(());
        };
        for cap in 0..64u8 {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // Past the kernel's last capability.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// After the uid changed: the remaining sets, no_new_privs, then the filter
    /// (the last step before exec, so it never filters the init's own work).
    pub fn finish(&self) -> std::io::Result<()> {
        let mut effective = None;
        if let Some(keep) = self.capabilities {
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            // SAFETY: header and a two-element data array, as version 3 wants.
            if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let permitted = u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32;
            let set = keep & permitted;
            for (i, d) in data.iter_mut().enumerate() {
                let half = (set >> (32 * i)) as u32;
                *d = CapData {
                    effective: half,
                    permitted: half,
                    inheritable: half,
                };
            }
            // SAFETY: as for capget.
            if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
            }
            for cap in 0..64u8 {
                if set & (1 << cap) != 0 {
                    // SAFETY: as above.
                    let r = unsafe {
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE,
                            libc::c_ulong::from(cap),
                            0,
                            0,
                        )
                    };
                    if r != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            effective = Some(set);
        }
        // The kernel installs a filter only with no_new_privs or CAP_SYS_ADMIN;
        // systemd (and so rkt) sets no_new_privs for apps without it.
        let needs_nnp = self.seccomp.is_some()
            && effective.is_some_and(|set| set & (1 << CAP_SYS_ADMIN) == 0)
            || self.seccomp.is_some() && nix::unistd::geteuid().as_raw() != 0;
        if self.no_new_privileges || needs_nnp {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(filter) = &self.seccomp {
            filter.install()?;
        }
        Ok(())
    }
}
