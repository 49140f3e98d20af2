//! An app's resource isolators (`resource/memory`, `resource/cpu`,
//! `os/linux/cpu-shares`) and the cgroup values they become, as systemd (and
//! so rkt) converts them. Shared by the stage1s that enforce them: nspawn on
//! the host's cgroups, kvm inside its guest.

use crate::schema::{Isolator, IsolatorKind, ResourceAmounts};
use crate::stage::isolation::IsolatorError;

/// rkt's CFS period, as systemd's CPUQuota= uses.
pub const CFS_PERIOD_US: u64 = 100_000;

/// What a stage1 limits for one app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppLimits {
    pub memory: ResourceAmounts,
    pub cpu: ResourceAmounts,
    pub cpu_shares: Option<u32>,
}

impl AppLimits {
    pub fn of(isolators: &[Isolator]) -> Result<Self, IsolatorError> {
        let mut limits = AppLimits::default();
        for iso in isolators {
            match iso.kind().map_err(|source| IsolatorError {
                what: format!("isolator {}", iso.name),
                source,
            })? {
                IsolatorKind::Memory(m) => limits.memory = m,
                IsolatorKind::Cpu(c) => limits.cpu = c,
                IsolatorKind::CpuShares(s) => limits.cpu_shares = Some(s),
                _ => {}
            }
        }
        Ok(limits)
    }

    pub fn limits_memory(&self) -> bool {
        self.memory.limit.is_some() || self.memory.request.is_some()
    }

    pub fn limits_cpu(&self) -> bool {
        self.cpu.limit.is_some() || self.cpu_shares.is_some()
    }

    /// The files of the app's cgroup2 directory and what each gets.
    pub fn cgroup2_files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut set = |file: &str, value: String| files.push((file.to_string(), value));
        if let Some(limit) = self.memory.limit {
            set("memory.max", limit.to_string());
            set("memory.swap.max", "0".to_string());
        }
        if let Some(request) = self.memory.request {
            set("memory.low", request.to_string());
        }
        if let Some(millis) = self.cpu.limit {
            set("cpu.max", format!("{} {CFS_PERIOD_US}", cfs_quota_us(millis)));
        }
        if let Some(shares) = self.cpu_shares {
            set("cpu.weight", shares_to_weight(shares).to_string());
        }
        files
    }
}

/// At least 1 ms per period: the kernel refuses smaller quotas.
pub fn cfs_quota_us(millicores: u64) -> u64 {
    (millicores.saturating_mul(CFS_PERIOD_US) / 1000).max(1000)
}

/// systemd's mapping of v1 shares (2..=262144, default 1024) to v2 weights
/// (1..=10000, default 100).
pub fn shares_to_weight(shares: u32) -> u64 {
    1 + (u64::from(shares).saturating_sub(2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts_convert_as_systemd_does() {
        assert_eq!(cfs_quota_us(500), 50_000);
        assert_eq!(cfs_quota_us(2000), 200_000);
        assert_eq!(cfs_quota_us(1), 1000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
