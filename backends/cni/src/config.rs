//! Network configurations: rkt's built-in networks and the user's
//! `$local-config/net.d/*.conf` / `*.conflist`, all as CNI plugin lists.

use std::path::Path;

use serde_json::{Value, json};

use crate::CniError;

/// The CNI version our built-in networks are written in.
const BUILTIN_VERSION: &str = "0.4.0";

/// One network: a name, a config version and its plugin chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// A `.conflist` (`plugins`) or a `.conf` (one plugin).
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, CniError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| CniError::Config(format!("{origin}: {e}")))?;
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::Config(format!("{origin}: no network name")))?
            .to_string();
        let cni_version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.2.0")
            .to_string();
        let plugins = match value.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            Some(_) => {
                return Err(CniError::Config(format!(
                    "{origin}: \"plugins\" must be a non-empty list"
                )));
            }
            None => vec![value.clone()],
        };
        for plugin in &plugins {
            if plugin.get("type").and_then(Value::as_str).is_none() {
                return Err(CniError::Config(format!("{origin}: a plugin has no \"type\"")));
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
        })
    }

    /// Whether some plugin of the chain declares the `portMappings` capability.
    pub fn maps_ports(&self) -> bool {
        self.plugins.iter().any(declares_port_mappings)
    }
}

pub fn declares_port_mappings(plugin: &Value) -> bool {
    plugin
        .pointer("/capabilities/portMappings")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// rkt's built-ins: `default`, `default-restricted` and the loopback-only `none`.
pub fn builtin(name: &str) -> Option<NetworkList> {
    let ptp = |subnet: &str, masq: bool, routes: Value| {
        json!({
            "type": "ptp",
            "ipMasq": masq,
            "ipam": {"type": "host-local", "subnet": subnet, "routes": routes},
        })
    };
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true});
    let plugins = match name {
        "default" => vec![
            ptp("172.16.28.0/24", true, json!([{"dst": "0.0.0.0/0"}])),
            portmap,
        ],
        "default-restricted" => vec![ptp("172.31.0.0/16", false, json!([])), portmap],
        "none" => vec![loopback()],
        _ => return None,
    };
    Some(NetworkList {
        name: name.to_string(),
        cni_version: BUILTIN_VERSION.to_string(),
        plugins,
    })
}

fn loopback() -> Value {
    json!({"type": "loopback"})
}

/// Finds network `name`: the user's `net.d` first (files in name order, the
/// first that defines it wins, as rkt), then the built-ins.
pub fn find(local_config: Option<&Path>, name: &str) -> Result<NetworkList, CniError> {
    if let Some(dir) = local_config.map(|d| d.join("net.d")) {
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(CniError::Config(format!("{}: {e}", dir.display()))),
        };
        files.sort();
        for file in files {
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "conf" && ext != "conflist" {
                continue;
            }
            let bytes =
                std::fs::read(&file).map_err(|e| CniError::Config(format!("{}: {e}", file.display())))?;
            let net = NetworkList::from_json(&bytes, &file.display().to_string())?;
            if net.name == name {
                return Ok(net);
            }
        }
    }
    builtin(name).ok_or_else(|| {
        CniError::Config(format!(
            "no network named {name:?} (built-in: default, default-restricted, none, host; others from {}/net.d)",
            local_config.map(|p| p.display().to_string()).unwrap_or_else(|| "--local-config".into())
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_conf_is_a_list_of_one_plugin() {
        let net = NetworkList::from_json(br#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#, "x.conf")
            .unwrap();
        assert_eq!(
            (net.name.as_str(), net.cni_version.as_str(), net.plugins.len()),
            ("x", "0.3.1", 1)
        );
        assert!(!net.maps_ports());
    }

    #[test]
    fn user_networks_override_builtins_in_file_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let netd = dir.path().join("net.d");
        std::fs::create_dir(&netd).unwrap();
        std::fs::write(netd.join("20-b.conf"), br#"{"name":"default","type":"bridge"}"#).unwrap();
        std::fs::write(
            netd.join("10-a.conflist"),
            br#"{"name":"default","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(netd.join("junk.txt"), b"not json").unwrap();
        let net = find(Some(dir.path()), "default").unwrap();
        assert_eq!(net.cni_version, "1.0.0");
        assert_eq!(
            find(Some(dir.path()), "none").unwrap().plugins[0]["type"],
            "loopback"
        );
        let err = find(Some(dir.path()), "nope").unwrap_err().to_string();
        assert!(err.contains("no network named \"nope\""), "{err}");
    }

    #[test]
    fn builtins_follow_rkt() {
        let d = builtin("default").unwrap();
        assert_eq!(d.plugins[0]["ipam"]["subnet"], "172.16.28.0/24");
        assert_eq!(d.plugins[0]["ipMasq"], true);
        assert!(d.maps_ports());
        let r = builtin("default-restricted").unwrap();
        assert_eq!(r.plugins[0]["ipMasq"], false);
        assert_eq!(r.plugins[0]["ipam"]["routes"], json!([]));
    }
}
