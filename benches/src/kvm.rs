//! The kvm scenario's peer: QEMU started by hand with what rkt's pod boots —
//! the benchmarked rkt's cached vmlinux and initramfs (the very files its pods
//! boot; with other rkt builds about, the newest in the cache may be theirs),
//! the initramfs with a busybox and a shell-script init appended (the kernel
//! unpacks concatenated cpio archives in order), the same machine,
//! accelerator, memory, kernel command line and devices. Its init runs
//! /bin/true and leaves through isa-debug-exit as rkt's guest does.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use rkt_backend_kvm::{Accel, Cpio, Machine, QemuArgs};

const PEER_INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox true
/bin/busybox printf '\\000' | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
";

pub struct BareQemu {
    args: QemuArgs,
}

impl BareQemu {
    pub fn new(work: &Path, rkt: &Path) -> Result<BareQemu> {
        let (vmlinux, base) = rkt_backend_kvm::default_boot_files(rkt).context("the kvm boot files")?;
        let busybox = rkt_conformance::busybox_path().context("busybox-static is needed")?;
        let mut bytes = std::fs::read(&base).with_context(|| format!("reading {}", base.display()))?;
        let mut extra = Cpio::default();
        extra.dir("bin");
        extra.file("bin/busybox", 0o755, &std::fs::read(&busybox)?);
        extra.file("peer-init", 0o755, PEER_INIT.as_bytes());
        bytes.extend_from_slice(&extra.finish());
        let initramfs = work.join("peer-initramfs.cpio");
        std::fs::write(&initramfs, bytes)?;
        let share = work.join("peer-share");
        std::fs::create_dir_all(share.join(rkt_backend_kvm::APPS_DIR))?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let args = QemuArgs {
            machine: Machine::Microvm,
            accel: Accel::detect().0,
            // rkt's size for a one-app pod: 128 MB + 128 MB.
            memory_mb: 256,
            // What rkt gives a pod without CPU isolators.
            cpus: rkt_backend_kvm::vcpus(0),
            vmlinux,
            initramfs,
            share,
            nics: Vec::new(),
            debug: false,
            tsc_khz: rkt_backend_kvm::tsc_khz(&cpuinfo),
            snapshot: false,
        };
        Ok(BareQemu { args })
    }

    pub fn accel(&self) -> &'static str {
        self.args.accel.as_str()
    }

    /// QEMU exits with `0 << 1 | 1` when the guest writes 0 to the debug port:
    /// a shell turns that into success.
    pub fn command(&self) -> Command {
        let mut argv = self.args.to_argv();
        for arg in argv.iter_mut() {
            let text = arg.to_string_lossy();
            if text.contains("rdinit=/init") {
                *arg = text.replace("rdinit=/init", "rdinit=/peer-init").into();
            }
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("\"$0\" \"$@\"; test $? -eq 1")
            .arg("qemu-system-x86_64")
            .args(argv);
        cmd
    }
}
