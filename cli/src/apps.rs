//! rkt's position-sensitive image arguments:
//! `IMAGE [--exec=CMD] [--mount volume=V,target=P] [--name=N] [--signature=F]
//! [--memory=Q] [--cpu=Q] [--cpu-shares=N] [--caps-retain=CAPS] [--caps-remove=CAPS]
//! [--seccomp=mode=M,errno=E,SYSCALLS] [--oom-score-adj=N] [--readonly-rootfs]
//! [-- ARGS... [---]] IMAGE...`
//!
//! clap parses the pod-wide flags up to the first image; everything from the first
//! image on is parsed here, because a per-app flag binds to the image before it and
//! `--` hands the following words to that image's app verbatim until a lone `---`.

use anyhow::{Context, Result, bail};
use rkt_engine::runner::AppRequest;
use rkt_engine::schema::{Isolator, Mount};

/// Per-app flags rkt accepts after an image.
const PER_APP_FLAGS: &[&str] = &[
    "--exec",
    "--mount",
    "--name",
    "--signature",
    "--memory",
    "--cpu",
    "--cpu-shares",
    "--caps-retain",
    "--caps-remove",
    "--seccomp",
    "--oom-score-adj",
    "--readonly-rootfs",
];

/// Per-app flags that take no value (`--readonly-rootfs`, or `=true|false`).
const SWITCHES: &[&str] = &["readonly-rootfs"];

pub fn parse_apps(words: &[String]) -> Result<Vec<AppRequest>> {
    let mut apps: Vec<AppRequest> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        if word == "--" {
            let app = apps.last_mut().context("\"--\" must follow an image")?;
            while i < words.len() && words[i] != "---" {
                app.args.push(words[i].clone());
                i += 1;
            }
            i += 1; // skip the closing "---", if any
            continue;
        }
        if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if !PER_APP_FLAGS.contains(&format!("--{name}").as_str()) {
                // Before any image, every flag this command knows was taken by the
                // command line parser already (e.g. `prepare --net`: only
                // run and run-prepared take it).
                if apps.is_empty() {
                    bail!("unknown flag --{name} (see --help for this command's flags)");
                }
                bail!(
                    "--{name} is not a per-app flag; pod-wide flags go before the first image \
                     (per-app flags: {})",
                    PER_APP_FLAGS.join(", ")
                );
            }
            let value = match inline {
                Some(v) => v,
                None if SWITCHES.contains(&name) => "true".to_string(),
                None => {
                    let v = words.get(i).with_context(|| format!("--{name} needs a value"))?;
                    i += 1;
                    v.clone()
                }
            };
            let app = apps
                .last_mut()
                .with_context(|| format!("--{name} must follow the image it applies to"))?;
            match name {
                "exec" => app.exec = Some(value),
                "mount" => app
                    .mounts
                    .push(Mount::from_flag(&value).with_context(|| format!("--mount {value:?}"))?),
                "name" => app.name = Some(value),
                "signature" => app.signature = Some(value.into()),
                "readonly-rootfs" => {
                    app.read_only_rootfs = value
                        .parse()
                        .with_context(|| format!("--readonly-rootfs={value}: want true or false"))?
                }
                _ => {
                    let isolator =
                        isolator_flag(name, &value).with_context(|| format!("--{name}={value}"))?;
                    app.isolators.retain(|i| i.name != isolator.name);
                    app.isolators.push(isolator);
                }
            }
            continue;
        }
        apps.push(AppRequest {
            image: word.clone(),
            ..AppRequest::default()
        });
    }
    Ok(apps)
}

/// The isolator a per-app resource or security flag stands for.
fn isolator_flag(name: &str, value: &str) -> Result<Isolator> {
    fn list(v: &str) -> Vec<&str> {
        v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }
    Ok(match name {
        "memory" => Isolator::memory_from_flag(value)?,
        "cpu" => Isolator::cpu_from_flag(value)?,
        "cpu-shares" => Isolator::cpu_shares(value.parse().context("want a number of shares")?)?,
        "oom-score-adj" => Isolator::oom_score_adj(value.parse().context("want an integer")?)?,
        "caps-retain" => Isolator::capabilities_retain(&list(value))?,
        "caps-remove" => Isolator::capabilities_remove(&list(value))?,
        "seccomp" => seccomp_flag(value)?,
        other => bail!("--{other} is not an isolator flag"),
    })
}

/// `mode=retain|remove,errno=ENAME,syscall,@group,...` (mode defaults to retain).
fn seccomp_flag(value: &str) -> Result<Isolator> {
    let mut mode = "retain";
    let mut errno = None;
    let mut set = Vec::new();
    for word in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match word.split_once('=') {
            Some(("mode", m)) => mode = m,
            Some(("errno", e)) => errno = Some(e),
            Some((key, _)) => bail!("unknown option {key:?} (want mode=, errno= and syscall names)"),
            None => set.push(word),
        }
    }
    Ok(match mode {
        "retain" => Isolator::seccomp_retain(&set, errno)?,
        "remove" => Isolator::seccomp_remove(&set, errno)?,
        other => bail!("mode={other}: want retain or remove"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn per_app_flags_bind_to_the_preceding_image() {
        let apps = parse_apps(&words("a.aci --exec=/bin/sh -- -c true --- b.aci --name web")).expect("parse");
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].exec.as_deref(), Some("/bin/sh"));
        assert_eq!(apps[0].args, vec!["-c", "true"]);
        assert_eq!(apps[1].image, "b.aci");
        assert_eq!(apps[1].name.as_deref(), Some("web"));
    }

    #[test]
    fn isolator_flags_bind_to_their_app() {
        use rkt_engine::schema::IsolatorKind;
        let apps = parse_apps(&words(
            "a.aci --memory=64M --cpu 500m --readonly-rootfs --caps-remove=CAP_NET_RAW,CAP_CHOWN \
             --seccomp mode=remove,errno=ENOSYS,@docker/default-blacklist,chmod b.aci --oom-score-adj=-10",
        ))
        .expect("parse");
        assert!(apps[0].read_only_rootfs && !apps[1].read_only_rootfs);
        let kinds: Vec<IsolatorKind> = apps[0]
            .isolators
            .iter()
            .map(|i| i.kind().expect("valid"))
            .collect();
        assert!(matches!(kinds[0], IsolatorKind::Memory(m) if m.limit == Some(64_000_000)));
        assert!(matches!(kinds[1], IsolatorKind::Cpu(c) if c.limit == Some(500)));
        assert!(matches!(&kinds[2], IsolatorKind::CapabilitiesRemove(c) if c.len() == 2));
        assert!(
            matches!(&kinds[3], IsolatorKind::SeccompRemove(s) if s.errno.as_deref() == Some("ENOSYS") && s.syscalls.len() == 2)
        );
        assert_eq!(apps[1].isolators.len(), 1);
        assert!(parse_apps(&words("a.aci --memory=lots")).is_err());
        assert!(parse_apps(&words("a.aci --caps-retain=CAP_NOPE")).is_err());
        assert!(parse_apps(&words("a.aci --seccomp mode=maybe,chmod")).is_err());
    }

    #[test]
    fn args_run_to_the_end_without_a_terminator() {
        let apps = parse_apps(&words("a.aci -- --exec x ---- y")).expect("parse");
        assert_eq!(apps[0].args, vec!["--exec", "x", "----", "y"]);
        assert_eq!(apps[0].exec, None);
    }

    #[test]
    fn misplaced_flags_are_refused_with_a_reason() {
        let err = parse_apps(&words("a.aci --volume x")).expect_err("not per-app");
        assert!(
            err.to_string()
                .contains("pod-wide flags go before the first image"),
            "{err}"
        );
        assert!(parse_apps(&words("-- x")).is_err());
        assert!(parse_apps(&words("a.aci --exec")).is_err());
        // A flag this command does not take at all (`prepare --net=host`) is
        // called unknown, not misplaced.
        let err = parse_apps(&words("--net=host a.aci")).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown flag --net (see --help for this command's flags)"
        );
    }
}
