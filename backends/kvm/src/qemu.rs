//! The QEMU command line, as a typed value rendered to argv, so the exact flags
//! are unit-tested without root or a VM.

use std::ffi::OsString;
use std::path::PathBuf;

use rkt_engine::pod::{protocol, sandbox};

use crate::accel::Accel;

/// The machine type; microvm unless QEMU lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// virtio-mmio devices, found by the guest through ACPI.
    #[default]
    Microvm,
    /// A PC with PCI: virtio-pci devices.
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
    /// The guest's virtio transport module.
    pub fn transport_module(self) -> &'static str {
        match self {
            Machine::Microvm => "virtio_mmio",
            Machine::Q35 => "virtio_pci",
        }
    }
    fn device(self, kind: &str) -> String {
        match self {
            Machine::Microvm => format!("{kind}-device"),
            Machine::Q35 => format!("{kind}-pci"),
        }
    }
}

/// A tap device in the pod's network namespace and the guest NIC behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuArgs {
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mb: u64,
    pub cpus: u32,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The stage1 rootfs, shared as [`protocol::VM_SHARE_TAG`], its
    /// [`APPS_DIR`] also as [`protocol::VM_APPS_SHARE_TAG`].
    pub share: PathBuf,
    pub nics: Vec<Nic>,
    /// The kernel log on the serial port, to QEMU's stderr.
    pub debug: bool,
    /// `tsc_early_khz=` for TCG.
    pub tsc_khz: u64,
    /// The init stops at the snapshot point ([`protocol::VM_SNAPSHOT_ARG`]):
    /// for a VM that is saved as a snapshot or restored from one.
    pub snapshot: bool,
}

impl QemuArgs {
    pub fn kernel_cmdline(&self) -> String {
        let mut c: Vec<String> = Vec::new();
        if self.debug {
            c.push("console=ttyS0".into());
        } else {
            c.push("quiet".into());
            c.push("loglevel=1".into());
        }
        // What boots fastest here: no speculation workarounds, no page zeroing
        // on allocation, a panic ends QEMU at once rather than hanging.
        c.extend(
            [
                "mitigations=off",
                "init_on_alloc=0",
                "panic=-1",
                "random.trust_cpu=on",
            ]
            .map(String::from),
        );
        if self.machine == Machine::Microvm {
            c.push("pci=off".into());
        }
        if self.accel == Accel::Tcg {
            c.push(format!("tsc_early_khz={}", self.tsc_khz));
        }
        c.push("rdinit=/init".into());
        c.push("--".into());
        c.push(protocol::INIT_ROLE_ARG.into());
        c.push(protocol::VM_ROLE_ARG.into());
        if self.snapshot {
            c.push(protocol::VM_SNAPSHOT_ARG.into());
        }
        c.join(" ")
    }

    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(OsString::from));
        push(&["-M", self.machine.as_str(), "-accel", self.accel.as_str()]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-m", &self.memory_mb.to_string(), "-smp", &self.cpus.to_string()]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        push(&[
            "-serial",
            if self.debug {
                "file:/proc/self/fd/2"
            } else {
                "none"
            },
        ]);
        push(&["-kernel", &self.vmlinux.to_string_lossy()]);
        push(&["-initrd", &self.initramfs.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline()]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        let fsdev = format!(
            "local,id=pod,path={},security_model=passthrough,multidevs=remap",
            escape_option(&self.share.to_string_lossy())
        );
        push(&["-fsdev", &fsdev]);
        let share = format!(
            "{},fsdev=pod,mount_tag={}",
            self.machine.device("virtio-9p"),
            protocol::VM_SHARE_TAG
        );
        push(&["-device", &share]);
        let apps = format!(
            "local,id=apps,path={},security_model=passthrough,multidevs=remap",
            escape_option(&self.share.join(APPS_DIR).to_string_lossy())
        );
        push(&["-fsdev", &apps]);
        let apps_share = format!(
            "{},fsdev=apps,mount_tag={}",
            self.machine.device("virtio-9p"),
            protocol::VM_APPS_SHARE_TAG
        );
        push(&["-device", &apps_share]);
        push(&["-device", &self.machine.device("virtio-serial")]);
        for (id, fd, name) in [
            ("out", 1, protocol::VM_STDOUT_PORT),
            ("err", 2, protocol::VM_STDERR_PORT),
        ] {
            push(&[
                "-chardev",
                &format!("file,id={id},path=/proc/self/fd/{fd},append=on"),
            ]);
            push(&["-device", &format!("virtserialport,chardev={id},name={name}")]);
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let netdev = format!(
                "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
                nic.tap
            );
            push(&["-netdev", &netdev]);
            let device = format!(
                "{},netdev=net{i},mac={}",
                self.machine.device("virtio-net"),
                nic.mac
            );
            push(&["-device", &device]);
        }
        a
    }
}

impl QemuArgs {
    /// A mutable pod's request channel ([`sandbox::VM_PORT`]) on the
    /// virtio-serial bus [`QemuArgs::to_argv`] sets up: QEMU's end of the
    /// channel is the inherited descriptor `fd`.
    pub fn sandbox_channel_argv(fd: i32) -> Vec<OsString> {
        [
            "-chardev".to_string(),
            format!("socket,id=sandbox,fd={fd}"),
            "-device".to_string(),
            format!("virtserialport,chardev=sandbox,name={}", sandbox::VM_PORT),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }
}

/// The apps' roots in the stage1 rootfs, shared again on their own
/// ([`protocol::VM_APPS_SHARE_TAG`]).
pub const APPS_DIR: &str = "opt/stage2";

/// QEMU's option syntax doubles a comma inside a value.
pub(crate) fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

/// A pod's QEMU arguments for unit tests: microvm, TCG, one NIC.
#[cfg(test)]
pub(crate) fn sample_args() -> QemuArgs {
    tests::args()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) fn args() -> QemuArgs {
        QemuArgs {
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            memory_mb: 256,
            cpus: 1,
            vmlinux: "/cache/vmlinux".into(),
            initramfs: "/cache/initramfs.cpio".into(),
            share: "/pods/run/u/stage1/rootfs".into(),
            nics: vec![Nic {
                tap: "tap0".into(),
                mac: "0a:58:ac:10:1c:05".into(),
            }],
            debug: false,
            tsc_khz: 2_600_000,
            snapshot: false,
        }
    }

    fn argv(a: &QemuArgs) -> Vec<String> {
        a.to_argv()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_under_tcg_with_a_quiet_pvh_boot() {
        let a = args();
        let v = argv(&a);
        assert_eq!(&v[..4], ["-M", "microvm", "-accel", "tcg"]);
        assert!(!v.contains(&"-cpu".to_string()));
        assert_eq!(after(&v, "-kernel"), ["/cache/vmlinux"]);
        assert_eq!(after(&v, "-serial"), ["none"]);
        let cmdline = a.kernel_cmdline();
        assert!(cmdline.contains("quiet") && cmdline.contains("tsc_early_khz=2600000"));
        assert!(
            !cmdline.contains("acpi=off"),
            "microvm finds virtio-mmio through ACPI"
        );
        assert!(cmdline.ends_with("-- stage1-init vm"), "{cmdline}");
        let devices = after(&v, "-device");
        assert!(devices.contains(&"virtio-9p-device,fsdev=pod,mount_tag=rkt"));
        assert!(devices.contains(&"virtio-9p-device,fsdev=apps,mount_tag=rkt.apps"));
        assert!(after(&v, "-fsdev")[1].contains("path=/pods/run/u/stage1/rootfs/opt/stage2,"));
        assert!(devices.contains(&"isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(devices.contains(&"virtserialport,chardev=out,name=rkt.stdout"));
        assert!(devices.contains(&"virtio-net-device,netdev=net0,mac=0a:58:ac:10:1c:05"));
        assert_eq!(
            after(&v, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"]
        );
    }

    #[test]
    fn kvm_q35_debug_uses_pci_devices_and_the_serial_console() {
        let mut a = args();
        a.accel = Accel::Kvm;
        a.machine = Machine::Q35;
        a.debug = true;
        a.share = "/pods/a,b".into();
        let v = argv(&a);
        assert_eq!(after(&v, "-cpu"), ["host"]);
        assert!(after(&v, "-device").contains(&"virtio-9p-pci,fsdev=pod,mount_tag=rkt"));
        assert_eq!(after(&v, "-serial"), ["file:/proc/self/fd/2"]);
        assert!(after(&v, "-fsdev")[0].contains("path=/pods/a,,b,"));
        let cmdline = a.kernel_cmdline();
        assert!(cmdline.contains("console=ttyS0") && !cmdline.contains("quiet"));
        assert!(!cmdline.contains("tsc_early_khz") && !cmdline.contains("pci=off"));
    }

    #[test]
    fn a_mutable_pods_channel_is_an_inherited_socket_on_a_named_port() {
        let v: Vec<String> = QemuArgs::sandbox_channel_argv(9)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(after(&v, "-chardev"), ["socket,id=sandbox,fd=9"]);
        assert_eq!(
            after(&v, "-device"),
            ["virtserialport,chardev=sandbox,name=rkt.sandbox"]
        );
    }
}
