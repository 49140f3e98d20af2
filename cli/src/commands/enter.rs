//! `rkt enter [--app=NAME] UUID [CMD [ARGS...]]`: runs a command inside a running
//! pod's app through its stage1; rkt's exit code is the command's.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_engine::pod::{PodState, layout};
use rkt_engine::runner::pod_stage1;
use rkt_engine::schema::PodManifest;

use crate::flags::{GlobalFlags, resolve_pod};

/// What runs when no command is given.
const DEFAULT_COMMAND: &str = "/bin/sh";

#[derive(Debug, Args)]
pub struct EnterArgs {
    /// The app to enter (required when the pod has more than one)
    #[arg(long)]
    pub app: Option<String>,
    /// Read the pod UUID from this file (then every argument is the command)
    #[arg(long)]
    pub uuid_file: Option<PathBuf>,
    /// UUID [CMD [ARGS...]]; flags after the UUID belong to the command
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "UUID [CMD]"
    )]
    pub words: Vec<String>,
}

pub fn enter(global: &GlobalFlags, args: EnterArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let (uuid, command) = match (&args.uuid_file, args.words.split_first()) {
        (Some(file), _) => (resolve_pod(&runtime.pods, None, Some(file))?, &args.words[..]),
        (None, Some((uuid, command))) => (resolve_pod(&runtime.pods, Some(uuid), None)?, command),
        (None, None) => bail!("a pod UUID is required (or --uuid-file)"),
    };
    let info = runtime.pods.info(&uuid)?;
    if info.state != PodState::Running {
        bail!(
            "pod {uuid} is {}, not running; only a running pod can be entered",
            info.state
        );
    }
    let bytes = std::fs::read(layout::manifest(&info.path))
        .with_context(|| format!("pod {uuid}: cannot read its manifest"))?;
    let manifest =
        PodManifest::from_json(&bytes).with_context(|| format!("pod {uuid}: invalid pod manifest"))?;
    let app = choose_app(&manifest, args.app.as_deref())?;
    let argv = if command.is_empty() {
        vec![DEFAULT_COMMAND.to_string()]
    } else {
        command.to_vec()
    };
    let code = pod_stage1(&info.path)?.enter(&info, &app, &argv)?;
    Ok(super::exit_byte(code))
}

/// `--app` if given and in the pod, else the pod's only app.
fn choose_app(manifest: &PodManifest, wanted: Option<&str>) -> Result<String> {
    let names: Vec<&str> = manifest.apps.iter().map(|a| a.name.as_str()).collect();
    match (wanted, names.as_slice()) {
        (Some(name), _) if names.contains(&name) => Ok(name.to_string()),
        (Some(name), _) => bail!("the pod has no app {name:?} (apps: {})", names.join(", ")),
        (None, [one]) => Ok(one.to_string()),
        (None, []) => bail!("the pod has no apps"),
        (None, several) => bail!(
            "the pod has several apps ({}); choose one with --app=NAME",
            several.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(apps: &[&str]) -> PodManifest {
        let id = format!("sha512-{}", "a".repeat(128));
        let apps: Vec<_> = apps
            .iter()
            .map(|n| serde_json::json!({"name": n, "image": {"id": id}}))
            .collect();
        let json = serde_json::json!({"acVersion": "0.8.11", "acKind": "PodManifest", "apps": apps});
        PodManifest::from_json(json.to_string().as_bytes()).expect("manifest")
    }

    #[test]
    fn the_only_app_is_chosen_without_app_flag() {
        assert_eq!(choose_app(&manifest(&["web"]), None).expect("one app"), "web");
        assert_eq!(
            choose_app(&manifest(&["web"]), Some("web")).expect("named"),
            "web"
        );
    }

    #[test]
    fn several_apps_need_app_flag_and_a_wrong_name_is_refused() {
        let pod = manifest(&["web", "db"]);
        let err = choose_app(&pod, None).expect_err("ambiguous");
        assert!(
            err.to_string().contains("--app") && err.to_string().contains("web, db"),
            "{err}"
        );
        assert_eq!(choose_app(&pod, Some("db")).expect("named"), "db");
        let err = choose_app(&pod, Some("nope")).expect_err("unknown");
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }
}
