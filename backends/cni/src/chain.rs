//! Running a network's plugin chain: ADD in order, each plugin given the previous
//! one's result (`prevResult`) and, when it declares the capability, the port
//! mappings (`runtimeConfig`); DEL in reverse order with the cached result.

use std::path::Path;

use serde_json::{Value, json};

use crate::CniError;
use crate::client::{self, Invocation, Op};
use crate::config::declares_port_mappings;
use crate::record::Attachment;

fn plugin_config(attachment: &Attachment, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    let net = &attachment.network;
    if let Value::Object(map) = &mut conf {
        map.insert("name".into(), json!(net.name));
        map.insert("cniVersion".into(), json!(net.cni_version));
        if let Some(prev) = prev {
            map.insert("prevResult".into(), prev.clone());
        }
        if let Some(mappings) = &attachment.port_mappings
            && declares_port_mappings(plugin)
        {
            map.insert("runtimeConfig".into(), json!({ "portMappings": mappings }));
        }
    }
    conf
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

fn invocation<'a>(
    attachment: &'a Attachment,
    container_id: &'a str,
    netns: Option<&'a Path>,
) -> Invocation<'a> {
    Invocation {
        container_id,
        netns,
        ifname: &attachment.ifname,
        args: attachment.args.as_deref(),
    }
}

/// ADD through the whole chain; returns the last plugin's result.
pub fn add(attachment: &Attachment, container_id: &str, netns: Option<&Path>) -> Result<Value, CniError> {
    let inv = invocation(attachment, container_id, netns);
    let mut prev: Option<Value> = None;
    for plugin in &attachment.network.plugins {
        let binary = client::find_plugin(plugin_type(plugin))?;
        client::check_version(&binary, &attachment.network.cni_version)?;
        let conf = plugin_config(attachment, plugin, prev.as_ref());
        let result = client::exec(&binary, Op::Add, &inv, &conf)?;
        prev = Some(result);
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL through the chain, last plugin first; every plugin runs even when an
/// earlier one failed.
pub fn del(attachment: &Attachment, container_id: &str, netns: Option<&Path>) -> Result<(), Vec<CniError>> {
    let inv = invocation(attachment, container_id, netns);
    // prevResult on DEL exists from 0.4.0 on; older plugins do not expect it.
    let legacy = matches!(
        attachment.network.cni_version.as_str(),
        "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1"
    );
    let prev = attachment.result.as_ref().filter(|r| !legacy && !r.is_null());
    let mut errors = Vec::new();
    for plugin in attachment.network.plugins.iter().rev() {
        let outcome = client::find_plugin(plugin_type(plugin)).and_then(|binary| {
            client::exec(&binary, Op::Del, &inv, &plugin_config(attachment, plugin, prev))
        });
        if let Err(e) = outcome {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::builtin;
    use crate::ports::PortMapping;

    #[test]
    fn plugins_get_the_network_name_version_prev_result_and_their_capabilities() {
        let mapping = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: Some("127.0.0.1".into()),
        };
        let attachment = Attachment::new(builtin("default").unwrap(), "eth0", None, Some(vec![mapping]));
        let prev = json!({"cniVersion": "0.4.0", "ips": [{"address": "172.16.28.2/24"}]});
        let ptp = plugin_config(&attachment, &attachment.network.plugins[0], None);
        assert_eq!(
            (ptp["name"].as_str(), ptp["cniVersion"].as_str()),
            (Some("default"), Some("0.4.0"))
        );
        assert!(ptp.get("prevResult").is_none() && ptp.get("runtimeConfig").is_none());
        let portmap = plugin_config(&attachment, &attachment.network.plugins[1], Some(&prev));
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]})
        );
    }
}
