//! CNI results, one type per result format: 0.1.0/0.2.0 (`ip4`/`ip6`) and
//! 0.3.0 up to 1.0.0 (`interfaces`/`ips`). Both reduce to what rkt shows and uses:
//! the pod's IPv4 address and the DNS settings.

use rkt_engine::stage::DnsSettings;
use serde::Deserialize;
use serde_json::Value;

use crate::CniError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// 0.1.0 and 0.2.0.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LegacyResult {
    pub ip4: Option<LegacyIp>,
    pub ip6: Option<LegacyIp>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LegacyIp {
    pub ip: String,
    pub gateway: Option<String>,
}

/// 0.3.0, 0.3.1, 0.4.0 and 1.0.0.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CurrentResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Interface {
    pub name: String,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IpConfig {
    pub address: String,
    pub gateway: Option<String>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum CniResult {
    Legacy(LegacyResult),
    Current(CurrentResult),
}

impl CniResult {
    /// Parses `value` by the version it declares (or, lacking one, the
    /// configuration's version).
    pub fn parse(value: &Value, config_version: &str) -> Result<Self, CniError> {
        let version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(config_version);
        let bad = |e: serde_json::Error| CniError::BadResult {
            plugin: "result".into(),
            reason: format!("version {version}: {e}"),
        };
        match version {
            "0.1.0" | "0.2.0" => Ok(CniResult::Legacy(LegacyResult::deserialize(value).map_err(bad)?)),
            v if v.starts_with("0.3.") || v.starts_with("0.4.") || v.starts_with("1.") => Ok(
                CniResult::Current(CurrentResult::deserialize(value).map_err(bad)?),
            ),
            other => Err(CniError::BadResult {
                plugin: "result".into(),
                reason: format!("unknown result version {other:?}"),
            }),
        }
    }

    /// The first IPv4 address (without prefix length), else the first address.
    pub fn ip(&self) -> Option<String> {
        let addresses: Vec<&str> = match self {
            CniResult::Legacy(r) => r
                .ip4
                .iter()
                .chain(r.ip6.iter())
                .map(|ip| ip.ip.as_str())
                .collect(),
            CniResult::Current(r) => r.ips.iter().map(|ip| ip.address.as_str()).collect(),
        };
        let strip = |a: &str| a.split('/').next().unwrap_or(a).to_string();
        addresses
            .iter()
            .find(|a| !a.contains(':'))
            .or(addresses.first())
            .map(|a| strip(a))
    }

    /// The gateway of the address [`ip`](Self::ip) picks, else the first one given.
    pub fn gateway(&self) -> Option<String> {
        let gateways: Vec<(&str, Option<&String>)> = match self {
            CniResult::Legacy(r) => r
                .ip4
                .iter()
                .chain(r.ip6.iter())
                .map(|ip| (ip.ip.as_str(), ip.gateway.as_ref()))
                .collect(),
            CniResult::Current(r) => r
                .ips
                .iter()
                .map(|ip| (ip.address.as_str(), ip.gateway.as_ref()))
                .collect(),
        };
        gateways
            .iter()
            .find(|(a, g)| !a.contains(':') && g.is_some())
            .or(gateways.iter().find(|(_, g)| g.is_some()))
            .and_then(|(_, g)| g.cloned())
    }

    pub fn dns(&self) -> Option<DnsSettings> {
        let dns = match self {
            CniResult::Legacy(r) => &r.dns,
            CniResult::Current(r) => &r.dns,
        };
        let settings = DnsSettings {
            nameservers: dns.nameservers.clone(),
            domain: dns.domain.clone(),
            search: dns.search.clone(),
            options: dns.options.clone(),
        };
        (!settings.is_empty()).then_some(settings)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_results_give_the_first_ipv4() {
        let r = json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "6", "address": "fd00::2/64"}, {"version": "4", "address": "172.16.28.7/24", "gateway": "172.16.28.1", "interface": 0}],
            "dns": {"nameservers": ["10.0.0.1"]}});
        let r = CniResult::parse(&r, "0.4.0").unwrap();
        assert_eq!(r.ip().as_deref(), Some("172.16.28.7"));
        assert_eq!(r.dns().unwrap().nameservers, vec!["10.0.0.1"]);
        let r = CniResult::parse(
            &json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/16"}]}),
            "1.0.0",
        )
        .unwrap();
        assert_eq!(r.ip().as_deref(), Some("10.1.2.3"));
        assert!(r.dns().is_none());
    }

    #[test]
    fn legacy_results_use_ip4() {
        let r = CniResult::parse(&json!({"ip4": {"ip": "172.31.0.9/16"}}), "0.2.0").unwrap();
        assert!(matches!(r, CniResult::Legacy(_)));
        assert_eq!(r.ip().as_deref(), Some("172.31.0.9"));
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(CniResult::parse(&json!({"cniVersion": "9.9.9"}), "0.4.0").is_err());
    }
}
