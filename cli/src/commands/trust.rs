//! `rkt trust`: trust a key for an image name prefix (or for every image, `--root`),
//! after the user has seen its fingerprint.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use clap::Args;
use rkt_backend_finders::discovery;
use rkt_backend_finders::keystore::{self, Keystore, Scope};
use rkt_backend_finders::transport::Transport;
use rkt_engine::stage::InsecureOptions;

use crate::flags::{GlobalFlags, refuse};

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Image name prefix the key is trusted for (e.g. example.com/app)
    #[arg(long)]
    pub prefix: Option<String>,
    /// Trust the key for every image, whatever its name
    #[arg(long)]
    pub root: bool,
    /// Do not ask for confirmation of the key's fingerprint
    #[arg(long)]
    pub skip_fingerprint_review: bool,
    /// Allow fetching keys over plain http
    #[arg(long)]
    pub insecure_allow_http: bool,
    /// Key files or http(s) URLs (armored or binary OpenPGP public keys); none: the
    /// keys the prefix's discovery page names
    #[arg(value_name = "KEY-URL-OR-FILE")]
    pub keys: Vec<String>,
}

pub fn trust(global: &GlobalFlags, args: TrustArgs) -> Result<u8> {
    refuse(
        args.root && args.prefix.is_some(),
        "--root and --prefix cannot be used together",
    )?;
    let scope = match (&args.prefix, args.root) {
        (Some(prefix), false) => Scope::Prefix(prefix.clone()),
        (None, true) => Scope::Root,
        _ => bail!("one of --prefix=NAME or --root is required"),
    };
    let insecure = InsecureOptions {
        http: global.insecure_options.http || args.insecure_allow_http,
        ..global.insecure_options
    };
    let keys = match (&scope, args.keys.is_empty()) {
        (_, false) => args.keys.clone(),
        // rkt's way: the keys the prefix's discovery page names.
        (Scope::Prefix(prefix), true) => discovery::discover_keys(&Transport::new(&insecure), prefix)?,
        (Scope::Root, true) => bail!("--root needs a key file or URL"),
    };
    let store = Keystore::new(&global.config_dirs());
    for location in &keys {
        let bytes = read_key(location, &insecure)?;
        let key = keystore::parse_key(&bytes).with_context(|| location.clone())?;
        let err = &mut std::io::stderr();
        match &scope {
            Scope::Prefix(prefix) => writeln!(err, "Prefix: {prefix:?}")?,
            Scope::Root => writeln!(err, "Root: trusted for every image")?,
        }
        writeln!(err, "Key: {location:?}")?;
        writeln!(
            err,
            "GPG key fingerprint is: {}",
            keystore::fingerprint_for_review(&key)
        )?;
        for user in keystore::user_ids(&key) {
            writeln!(err, "\t{user}")?;
        }
        if !args.skip_fingerprint_review && !confirmed()? {
            bail!("not trusting {location:?}: not confirmed");
        }
        let path = store.trust(&scope, &key).with_context(|| location.clone())?;
        match &scope {
            Scope::Prefix(prefix) => {
                eprintln!(
                    "Added key for prefix {prefix:?} at {:?}",
                    path.display().to_string()
                )
            }
            Scope::Root => eprintln!("Added root key at {:?}", path.display().to_string()),
        }
    }
    Ok(0)
}

fn read_key(location: &str, insecure: &InsecureOptions) -> Result<Vec<u8>> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(Transport::new(insecure).get_small(location, &[])?);
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    std::fs::read(path).with_context(|| format!("cannot read key {path}"))
}

/// Asks on the terminal; from a pipe, reads the answer without prompting twice.
fn confirmed() -> Result<bool> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Are you sure you want to trust this key (yes/no)? ");
    }
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer)? == 0 {
        bail!("no answer on stdin; pass --skip-fingerprint-review to trust without asking");
    }
    Ok(matches!(answer.trim(), "yes" | "y"))
}
