//! rkt's position-sensitive image arguments:
//! `IMAGE [--exec=CMD] [--mount volume=V,target=P] [--name=N] [--signature=F] [-- ARGS... [---]] IMAGE...`
//!
//! clap parses the pod-wide flags up to the first image; everything from the first
//! image on is parsed here, because a per-app flag binds to the image before it and
//! `--` hands the following words to that image's app verbatim until a lone `---`.

use anyhow::{Context, Result, bail};
use rkt_engine::runner::AppRequest;
use rkt_engine::schema::Mount;

/// Per-app flags rkt accepts after an image.
const PER_APP_FLAGS: &[&str] = &["--exec", "--mount", "--name", "--signature"];

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
                bail!(
                    "--{name} is not a per-app flag; pod-wide flags go before the first image \
                     (per-app flags: {})",
                    PER_APP_FLAGS.join(", ")
                );
            }
            let value = match inline {
                Some(v) => v,
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
                _ => unreachable!("checked against PER_APP_FLAGS above"),
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
    }
}
