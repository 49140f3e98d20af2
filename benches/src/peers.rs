//! The peers rkt is measured against, found on the machine or installed from
//! Debian's packages, and the setup each needs here — done by the harness, so the
//! figures never depend on someone having prepared the machine by hand.
//!
//! - crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported, drop
//!   all controllers from cgroupv2"). The harness runs everything (rkt and every
//!   peer alike) in its own private mount namespace in which an empty file is
//!   bind-mounted over `/sys/fs/cgroup/unified/cgroup.controllers`: crun then sees no
//!   v2 controllers and uses v1. Nothing of it is visible outside the harness.
//! - runc works as it is.
//! - systemd-nspawn needs `--register=no --keep-unit` (no systemd PID 1, no D-Bus)
//!   and refuses a directory without `/usr`, so its rootfs copy gets an empty one.
//! - crun and runc run an OCI bundle the harness writes: `crun spec`'s default
//!   config (their usual namespaces), with `/bin/true` as the process, no terminal,
//!   and the same busybox rootfs rkt runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// A peer program, or why it is not there.
pub type Found = std::result::Result<PathBuf, String>;

#[derive(Debug)]
pub struct Peers {
    pub crun: Found,
    pub runc: Found,
    pub nspawn: Found,
    /// GNU time, for peak RSS.
    pub time: Found,
}

impl Peers {
    /// Finds each peer on PATH, installing its Debian package when it is missing.
    pub fn find_or_install() -> Peers {
        Peers {
            crun: find_or_install("crun", "crun"),
            runc: find_or_install("runc", "runc"),
            nspawn: find_or_install("systemd-nspawn", "systemd-container"),
            time: find_or_install("time", "time"),
        }
    }
}

fn find_or_install(program: &str, package: &str) -> Found {
    if let Some(path) = find_program(program) {
        return Ok(path);
    }
    eprintln!("bench: {program} not found; apt-get install {package}");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match installed {
        Ok(status) if status.success() => {
            find_program(program).ok_or_else(|| format!("{package} installed but no {program} on PATH"))
        }
        Ok(status) => Err(format!("{program} missing; apt-get install {package}: {status}")),
        Err(e) => Err(format!("{program} missing; cannot run apt-get: {e}")),
    }
}

pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

const CGROUP2_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// Moves this process into a private mount namespace (mounts from the host still
/// propagate in, ours never out) and hides the hybrid hierarchy's v2 controllers
/// from crun. Must run before the harness starts any thread.
pub fn enter_private_mount_namespace(work: &Path) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS): the benchmarks need root")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    if Path::new(CGROUP2_CONTROLLERS).exists() {
        let empty = work.join("empty-cgroup-controllers");
        std::fs::write(&empty, b"").with_context(|| format!("writing {}", empty.display()))?;
        mount(
            Some(&empty),
            CGROUP2_CONTROLLERS,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting an empty file over {CGROUP2_CONTROLLERS}"))?;
    }
    Ok(())
}

/// A copy of `source` (rkt's rendered busybox tree) for the peers, which write
/// into their root (mount points, nspawn's /etc/resolv.conf) where rkt's store
/// must not be touched.
pub fn copy_rootfs(source: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        rkt_engine::fsutil::remove_tree(target).with_context(|| format!("removing {}", target.display()))?;
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(target)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("cp -a {} {}: {status}", source.display(), target.display());
    }
    for dir in ["usr", "proc", "sys", "dev"] {
        std::fs::create_dir_all(target.join(dir))?;
    }
    Ok(())
}

/// Writes an OCI bundle at `bundle` running /bin/true in `rootfs`.
pub fn oci_bundle(crun: &Path, bundle: &Path, rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(bundle)?;
    let spec = bundle.join("config.json");
    let _ = std::fs::remove_file(&spec);
    let status = Command::new(crun)
        .arg("spec")
        .current_dir(bundle)
        .status()
        .context("running crun spec")?;
    if !status.success() {
        bail!("crun spec: {status}");
    }
    let text = std::fs::read(&spec).context("reading crun's spec")?;
    let mut config: serde_json::Value = serde_json::from_slice(&text).context("parsing crun's spec")?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["root"]["path"] = rootfs.display().to_string().into();
    std::fs::write(&spec, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// The setup notes printed under the table.
pub const SETUP_NOTES: &str = "crun runs with an empty file bind-mounted over \
/sys/fs/cgroup/unified/cgroup.controllers (hybrid cgroups) in the harness's private mount \
namespace, which every side shares; crun and runc run `crun spec`'s default bundle (pid, \
net, ipc, uts and mount namespaces) with /bin/true; nspawn runs with --register=no \
--keep-unit -q.";
