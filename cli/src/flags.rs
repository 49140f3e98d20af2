//! Flags shared by several commands, and the value parsers rkt's flags need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use rkt_engine::pod::PodsDir;
use rkt_engine::runner::Runtime;
use rkt_engine::stage::{ConfigDirs, InsecureOptions};
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// rkt data directory
    #[arg(long, global = true, default_value = crate::DEFAULT_DIR, env = "RKT_DIR")]
    pub dir: PathBuf,
    /// Print out more debug information to stderr
    #[arg(long, global = true)]
    pub debug: bool,
    /// Comma-separated list of security features to disable: none, image, tls,
    /// ondisk, http, pubkey, capabilities, paths, seccomp, all-fetch, all-run, all
    #[arg(long, global = true, default_value = "none", value_parser = parse_insecure_options)]
    pub insecure_options: InsecureOptions,
    /// Local configuration directory
    #[arg(long, global = true, default_value = "/etc/rkt")]
    pub local_config: PathBuf,
    /// System configuration directory
    #[arg(long, global = true, default_value = "/usr/lib/rkt")]
    pub system_config: PathBuf,
    /// User configuration directory
    #[arg(long, global = true)]
    pub user_config: Option<PathBuf>,
    /// Security labels for pods: auto (selinux where SELinux is enabled, else
    /// none), selinux or none
    #[arg(long, global = true, default_value = "auto")]
    pub labeler: String,
}

impl GlobalFlags {
    pub fn runtime(&self) -> Result<Runtime> {
        let mut runtime = Runtime::open(&self.dir)?;
        runtime.labeler = Some(self.labeler.clone());
        Ok(runtime)
    }

    /// Where `rkt trust` keeps keys and `auth.d` lives.
    pub fn config_dirs(&self) -> ConfigDirs {
        ConfigDirs {
            local: self.local_config.clone(),
            system: self.system_config.clone(),
        }
    }

    /// For commands that only read: creates nothing under `--dir`.
    pub fn runtime_read_only(&self) -> Result<Runtime> {
        Ok(Runtime::existing(&self.dir)?)
    }
}

pub fn parse_insecure_options(value: &str) -> Result<InsecureOptions, String> {
    let mut opts = InsecureOptions::default();
    for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "image" => opts.image = true,
            "tls" => opts.tls = true,
            "http" => opts.http = true,
            "pubkey" => opts.pubkey = true,
            "capabilities" => opts.capabilities = true,
            "paths" => opts.paths = true,
            "seccomp" => opts.seccomp = true,
            // Accepted for compatibility: on-disk verification is not done per run.
            "ondisk" => {}
            "all-fetch" => {
                opts.image = true;
                opts.tls = true;
                opts.http = true;
                opts.pubkey = true;
            }
            "all-run" => {
                opts.capabilities = true;
                opts.paths = true;
                opts.seccomp = true;
            }
            "all" => {
                opts = InsecureOptions {
                    image: true,
                    tls: true,
                    http: true,
                    pubkey: true,
                    capabilities: true,
                    paths: true,
                    seccomp: true,
                }
            }
            other => {
                return Err(format!(
                    "{other:?} is not a security feature; allowed: none, image, tls, ondisk, http, \
                     pubkey, capabilities, paths, seccomp, all-fetch, all-run, all"
                ));
            }
        }
    }
    Ok(opts)
}

/// Go-style durations as rkt takes them (`30m`, `0s`, `1h30m`, `24h0m0s`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{value:?}: missing unit (use e.g. 30s, 5m, 1h)"))?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{value:?} is not a duration (use e.g. 30s, 5m, 1h)"))?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{value:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h)"
                ));
            }
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = tail;
    }
    Ok(total)
}

/// rkt's `--wait`-style flags: a bool, or a duration (negative: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    For(Duration),
}

pub fn parse_wait(value: &str) -> Result<Wait, String> {
    match value {
        "true" => Ok(Wait::Forever),
        "false" => Ok(Wait::No),
        v if v.starts_with('-') => Ok(Wait::Forever),
        v => match parse_duration(v)? {
            d if d.is_zero() => Ok(Wait::No),
            d => Ok(Wait::For(d)),
        },
    }
}

/// rkt's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    #[value(name = "json-pretty")]
    JsonPretty,
}

pub fn print_json<T: serde::Serialize>(value: &T, format: Format) -> Result<()> {
    let text = match format {
        Format::Json => serde_json::to_string(value)?,
        // rkt indents with tabs (Go's json.MarshalIndent(v, "", "\t")).
        Format::JsonPretty => {
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))?;
            String::from_utf8(out)?
        }
    };
    println!("{text}");
    Ok(())
}

/// The pod a command acts on: a UUID (or unambiguous prefix) on the command line,
/// or `--uuid-file` (the file `--uuid-file-save` wrote).
pub fn resolve_pod(pods: &PodsDir, uuid: Option<&str>, uuid_file: Option<&Path>) -> Result<Uuid> {
    match (uuid, uuid_file) {
        (_, Some(file)) => Ok(rkt_engine::runner::read_uuid_file(file)?),
        (Some(prefix), None) => Ok(pods.resolve(prefix)?),
        (None, None) => bail!("a pod UUID is required (or --uuid-file)"),
    }
}

/// Runs `act` on every pod named by `uuids` (or `--uuid-file`), going on after a
/// failure: each failure is one line on stderr, prefixed with `command`, and the
/// exit code is 254 if any failed.
pub fn for_each_pod(
    command: &str,
    pods: &PodsDir,
    uuids: &[String],
    uuid_file: Option<&Path>,
    mut act: impl FnMut(Uuid) -> Result<()>,
) -> u8 {
    let named: Vec<Option<&str>> = match uuid_file {
        Some(_) => vec![None],
        None => uuids.iter().map(|u| Some(u.as_str())).collect(),
    };
    let mut failed = false;
    for uuid in named {
        if let Err(e) = resolve_pod(pods, uuid, uuid_file).and_then(&mut act) {
            eprintln!("{command}: {}", crate::one_line(&e));
            failed = true;
        }
    }
    if failed { crate::EXIT_RKT_ERROR } else { 0 }
}

pub fn refuse(condition: bool, message: &str) -> Result<()> {
    if condition {
        bail!("{message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h0m0s"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn waits_parse() {
        assert_eq!(parse_wait("true"), Ok(Wait::Forever));
        assert_eq!(parse_wait("false"), Ok(Wait::No));
        assert_eq!(parse_wait("0s"), Ok(Wait::No));
        assert_eq!(parse_wait("-1s"), Ok(Wait::Forever));
        assert_eq!(parse_wait("2s"), Ok(Wait::For(Duration::from_secs(2))));
    }

    #[test]
    fn insecure_options_parse_and_refuse_unknown_words() {
        let o = parse_insecure_options("image,http").expect("parse");
        assert!(o.image && o.http && !o.tls);
        assert!(parse_insecure_options("all").expect("parse").seccomp);
        assert!(parse_insecure_options("imgae").is_err());
    }
}
