//! Our CNI client: runs one plugin binary per call with the CNI environment and
//! the network configuration on stdin, and reads its JSON answer. Plugins run as
//! plain child processes (no async runtime): the pod waits for them anyway.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

use crate::CniError;

/// Where plugins are looked up: `$CNI_PATH` when set, else Debian's and the
/// upstream location.
pub fn plugin_dirs() -> Vec<PathBuf> {
    match std::env::var_os("CNI_PATH") {
        Some(p) if !p.is_empty() => std::env::split_paths(&p).collect(),
        _ => vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
    }
}

/// The search PATH plugins get: they run iptables, ip and friends.
fn plugin_search_path() -> String {
    const SYSTEM: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM}"),
        _ => SYSTEM.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Version,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Version => "VERSION",
        }
    }
}

/// One plugin invocation's context (the CNI_* variables).
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    /// Empty when the namespace is already gone (DEL still releases the rest).
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
}

/// A plugin error object (`{"code", "msg", "details"}`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// Finds the plugin binary for a `type`.
pub fn find_plugin(kind: &str) -> Result<PathBuf, CniError> {
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::Config(format!("invalid plugin type {kind:?}")));
    }
    let dirs = plugin_dirs();
    dirs.iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::MissingPlugin {
            plugin: kind.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Runs `plugin` with `config` on stdin; returns its stdout as JSON (ADD) or
/// Null (DEL, which prints nothing). VERSION answers likewise.
pub fn exec(plugin: &Path, command: Op, inv: &Invocation<'_>, config: &Value) -> Result<Value, CniError> {
    let kind = plugin_name(plugin);
    let stdin = serde_json::to_vec(config).map_err(|e| CniError::Config(e.to_string()))?;
    let cni_path = std::env::join_paths(plugin_dirs()).unwrap_or_default();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns.map(|p| p.as_os_str()).unwrap_or_default())
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args.unwrap_or(""))
        .env("CNI_PATH", cni_path)
        .env("PATH", plugin_search_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::Exec {
            plugin: kind.clone(),
            source: e,
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its config reports that itself.
        let _ = input.write_all(&stdin);
    }
    let out = child.wait_with_output().map_err(|e| CniError::Exec {
        plugin: kind.clone(),
        source: e,
    })?;
    if !out.status.success() {
        let error: PluginError = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| PluginError {
            code: 0,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            details: String::new(),
        });
        return Err(CniError::Plugin {
            plugin: kind,
            command: command.as_str(),
            code: error.code,
            msg: if error.msg.is_empty() {
                format!("exited with {}", out.status)
            } else {
                error.msg
            },
            details: error.details,
        });
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| CniError::BadResult {
        plugin: kind,
        reason: e.to_string(),
    })
}

fn plugin_name(plugin: &Path) -> String {
    plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, serde::Deserialize)]
struct VersionInfo {
    #[serde(rename = "supportedVersions", default)]
    supported: Vec<String>,
}

/// VERSION negotiation: refuses a configuration version the plugin does not
/// speak, with the versions it does. Answers are cached for this process.
pub fn check_version(plugin: &Path, version: &str) -> Result<(), CniError> {
    static CACHE: Mutex<BTreeMap<PathBuf, Vec<String>>> = Mutex::new(BTreeMap::new());
    let cached = CACHE.lock().ok().and_then(|c| c.get(plugin).cloned());
    let supported = match cached {
        Some(s) => s,
        None => {
            let inv = Invocation {
                container_id: "",
                netns: None,
                ifname: "",
                args: None,
            };
            let answer = exec(
                plugin,
                Op::Version,
                &inv,
                &serde_json::json!({ "cniVersion": version }),
            )?;
            let info: VersionInfo = serde_json::from_value(answer).map_err(|e| CniError::BadResult {
                plugin: plugin_name(plugin),
                reason: format!("VERSION: {e}"),
            })?;
            if let Ok(mut c) = CACHE.lock() {
                c.insert(plugin.to_path_buf(), info.supported.clone());
            }
            info.supported
        }
    };
    if supported.iter().any(|v| v == version) {
        Ok(())
    } else {
        Err(CniError::Version {
            plugin: plugin_name(plugin),
            wanted: version.to_string(),
            supported: supported.join(", "),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// These tests write executables and run them; one at a time, so no test's
    /// fork inherits another's still-open script (ETXTBSY).
    static SERIAL: Mutex<()> = Mutex::new(());

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn inv() -> Invocation<'static> {
        Invocation {
            container_id: "c1",
            netns: Some(Path::new("/run/netns/x")),
            ifname: "eth0",
            args: Some("IP=10.0.0.5"),
        }
    }

    #[test]
    fn plugins_see_the_cni_environment_and_their_config() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "echo",
            r#"read conf; printf '{"cniVersion":"1.0.0","env":"%s %s %s %s %s","conf":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$conf""#,
        );
        let out = exec(&plugin, Op::Add, &inv(), &serde_json::json!({"name": "n"})).unwrap();
        assert_eq!(out["env"], "ADD c1 /run/netns/x eth0 IP=10.0.0.5");
        assert_eq!(out["conf"]["name"], "n");
    }

    #[test]
    fn error_objects_become_clear_errors() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "failing",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range full"}'; exit 1"#,
        );
        let err = exec(&plugin, Op::Add, &inv(), &serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "CNI plugin failing ADD failed: no IP addresses available (range full) [code 11]"
        );
        let plugin = script(dir.path(), "crashing", "echo oops >&2; exit 2");
        let err = exec(&plugin, Op::Del, &inv(), &serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "CNI plugin crashing DEL failed: oops");
    }

    #[test]
    fn version_negotiation_names_what_the_plugin_speaks() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "old",
            r#"echo '{"cniVersion":"0.3.1","supportedVersions":["0.1.0","0.2.0","0.3.1"]}'"#,
        );
        check_version(&plugin, "0.3.1").unwrap();
        let err = check_version(&plugin, "1.0.0").unwrap_err().to_string();
        assert_eq!(
            err,
            "CNI plugin old does not support CNI version 1.0.0 (it supports 0.1.0, 0.2.0, 0.3.1)"
        );
    }
}
