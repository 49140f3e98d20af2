//! Which accelerator QEMU gets: KVM only when the host has real hardware
//! virtualization, TCG otherwise. A /dev/kvm alone proves nothing: under PVM
//! (the `kvm_pvm` module) it runs only PVM-patched guest kernels, and Debian's
//! kernel hangs there.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn detect() -> (Accel, String) {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        decide(
            &cpuinfo,
            Path::new("/dev/kvm").exists(),
            Path::new("/sys/module/kvm_pvm").exists(),
        )
    }
}

/// The choice and why, from what the host shows.
pub fn decide(cpuinfo: &str, dev_kvm: bool, pvm: bool) -> (Accel, String) {
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    if !hardware {
        return (
            Accel::Tcg,
            "no vmx or svm CPU flag: no hardware virtualization".into(),
        );
    }
    if pvm {
        return (
            Accel::Tcg,
            "/dev/kvm is PVM (kvm_pvm), which runs only PVM guest kernels".into(),
        );
    }
    if !dev_kvm {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    (Accel::Kvm, "hardware virtualization and /dev/kvm".into())
}

/// The host's TSC in kHz, for `tsc_early_khz=` (under TCG on microvm the guest
/// has no PIT to calibrate against and would hang).
pub fn tsc_khz(cpuinfo: &str) -> u64 {
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .filter(|khz| *khz > 0)
        .unwrap_or(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_hardware_virtualization_and_no_pvm() {
        let vmx = "flags\t\t: fpu vme vmx sse\n";
        assert_eq!(decide(vmx, true, false).0, Accel::Kvm);
        assert_eq!(decide(vmx, true, true).0, Accel::Tcg);
        assert_eq!(decide(vmx, false, false).0, Accel::Tcg);
        assert_eq!(decide("flags\t: fpu sse\n", true, false).0, Accel::Tcg);
        assert_eq!(decide("flags\t: svm\n", true, false).0, Accel::Kvm);
    }

    #[test]
    fn tsc_from_cpu_mhz() {
        assert_eq!(tsc_khz("model\t: x\ncpu MHz\t\t: 2599.998\n"), 2_599_998);
        assert_eq!(tsc_khz(""), 1_000_000);
    }
}
