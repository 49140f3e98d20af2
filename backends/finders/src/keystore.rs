//! Trusted signing keys, kept in rkt's layout so an admin's existing trust carries over:
//!
//! ```text
//! <config>/trustedkeys/root.d/<fingerprint>                 trusted for every image
//! <config>/trustedkeys/prefix.d/<prefix>/<fingerprint>      trusted for names under <prefix>
//! ```
//!
//! under both the local (`--local-config`, written by `rkt trust`) and the system
//! (`--system-config`) directory. A key file holds one armored public key; its name is
//! the key's fingerprint in lowercase hex.
//!
//! Verifying an image = its detached signature was made by a key trusted for the
//! image's name (the name in its manifest) or one of the name's parent prefixes.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use rkt_engine::stage::ConfigDirs;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not an OpenPGP public key: {0}")]
    BadKey(String),
    #[error("{0}")]
    BadPrefix(String),
    #[error("not an OpenPGP signature: {0}")]
    BadSignature(String),
    #[error("no keys are trusted for {name:?} (add one with `rkt trust --prefix={name} KEY`)")]
    NoKeys { name: String },
    #[error("signed by key {issuer}, which is not trusted for {name:?}")]
    Untrusted { name: String, issuer: String },
    #[error("signed by key {issuer}, which is not among the trusted keys")]
    UnknownSigner { issuer: String },
    #[error("bad signature from key {fingerprint}: {reason}")]
    Invalid { fingerprint: String, reason: String },
    #[error("{0}")]
    Read(String),
}

/// A key read from the keystore, with where it was found.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: SignedPublicKey,
    pub path: PathBuf,
}

/// Parses one armored (or binary) OpenPGP public key and checks its self-signatures.
pub fn parse_key(bytes: &[u8]) -> Result<SignedPublicKey, TrustError> {
    let key = match SignedPublicKey::from_armor_single(bytes) {
        Ok((key, _headers)) => key,
        Err(armored) => {
            SignedPublicKey::from_bytes(bytes).map_err(|_| TrustError::BadKey(armored.to_string()))?
        }
    };
    key.verify_bindings()
        .map_err(|e| TrustError::BadKey(format!("its self-signatures do not verify: {e}")))?;
    Ok(key)
}

/// The key's fingerprint as rkt names key files: lowercase hex.
pub fn fingerprint(key: &SignedPublicKey) -> String {
    format!("{:x}", key.fingerprint())
}

/// The fingerprint as gpg shows it for a person to compare: groups of four.
pub fn fingerprint_for_review(key: &SignedPublicKey) -> String {
    let hex = format!("{:X}", key.fingerprint());
    let groups: Vec<&str> = hex
        .as_bytes()
        .chunks(4)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    groups.join(" ")
}

/// The key's user IDs (`Name <email>`), for review.
pub fn user_ids(key: &SignedPublicKey) -> Vec<String> {
    key.details
        .users
        .iter()
        .map(|user| String::from_utf8_lossy(user.id.id()).into_owned())
        .collect()
}

/// Where a key is trusted: for every image (`--root`) or for names under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Root,
    Prefix(String),
}

/// A prefix is an image name (`example.com/app`): it becomes a directory path, so
/// only its own path components are allowed.
fn check_prefix(prefix: &str) -> Result<(), TrustError> {
    let ok = !prefix.is_empty()
        && prefix.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':'))
        });
    if ok {
        Ok(())
    } else {
        Err(TrustError::BadPrefix(format!(
            "{prefix:?} is not a valid image name prefix (e.g. example.com/app)"
        )))
    }
}

#[derive(Debug, Clone)]
pub struct Keystore {
    dirs: ConfigDirs,
}

impl Keystore {
    pub fn new(dirs: &ConfigDirs) -> Self {
        Keystore { dirs: dirs.clone() }
    }

    fn scope_dir(config: &Path, scope: &Scope) -> PathBuf {
        let keys = config.join("trustedkeys");
        match scope {
            Scope::Root => keys.join("root.d"),
            Scope::Prefix(prefix) => keys.join("prefix.d").join(prefix),
        }
    }

    /// Stores `key` as trusted for `scope` in the local config directory; returns
    /// the file written. Storing the same key twice rewrites the same file.
    pub fn trust(&self, scope: &Scope, key: &SignedPublicKey) -> Result<PathBuf, TrustError> {
        if let Scope::Prefix(prefix) = scope {
            check_prefix(prefix)?;
        }
        let dir = Self::scope_dir(&self.dirs.local, scope);
        std::fs::create_dir_all(&dir).map_err(|source| TrustError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(fingerprint(key));
        let armored = key
            .to_armored_bytes(Default::default())
            .map_err(|e| TrustError::BadKey(e.to_string()))?;
        rkt_engine::fsutil::atomic_write(&path, &armored).map_err(|source| TrustError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Every key trusted for `name`: root keys and the keys of each prefix of the
    /// name (`a.com/b/c`, `a.com/b`, `a.com`), local directory first.
    pub fn keys_for(&self, name: &str) -> Result<Vec<TrustedKey>, TrustError> {
        let mut scopes = vec![Scope::Root];
        if check_prefix(name).is_ok() {
            let mut prefix = name;
            loop {
                scopes.push(Scope::Prefix(prefix.to_string()));
                match prefix.rfind('/') {
                    Some(cut) => prefix = &prefix[..cut],
                    None => break,
                }
            }
        }
        let mut keys = Vec::new();
        for config in [&self.dirs.local, &self.dirs.system] {
            for scope in &scopes {
                read_keys(&Self::scope_dir(config, scope), &mut keys)?;
            }
        }
        Ok(keys)
    }

    /// Every key in both config directories, whatever it is trusted for.
    pub fn all_keys(&self) -> Result<Vec<TrustedKey>, TrustError> {
        let mut keys = Vec::new();
        for config in [&self.dirs.local, &self.dirs.system] {
            read_keys(&Self::scope_dir(config, &Scope::Root), &mut keys)?;
            let mut pending = vec![config.join("trustedkeys").join("prefix.d")];
            while let Some(dir) = pending.pop() {
                read_keys(&dir, &mut keys)?;
                let Ok(listing) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in listing.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        pending.push(entry.path());
                    }
                }
            }
        }
        Ok(keys)
    }

    /// Whether the key with `fingerprint` is trusted for `name`.
    pub fn trusts(&self, name: &str, fingerprint: &str) -> Result<bool, TrustError> {
        Ok(self
            .keys_for(name)?
            .iter()
            .any(|k| self::fingerprint(&k.key) == fingerprint))
    }

    /// Checks that `signature` (armored or binary, detached) signs the bytes `data`
    /// yields and was made by a key trusted for `name`; returns that key's fingerprint.
    pub fn verify(&self, name: &str, data: impl Read, signature: &[u8]) -> Result<String, TrustError> {
        let keys = self.keys_for(name)?;
        if keys.is_empty() {
            return Err(TrustError::NoKeys {
                name: name.to_string(),
            });
        }
        verify_with(&keys, Some(name), data, signature)
    }
}

/// Verifies `data` against `signature` with the one key of `keys` that made it;
/// `name` (the image name the keys were chosen for, if any) only words the errors.
pub fn verify_with(
    keys: &[TrustedKey],
    name: Option<&str>,
    data: impl Read,
    signature: &[u8],
) -> Result<String, TrustError> {
    let signature = parse_signature(signature)?;
    let issuers = issuer_names(&signature);
    let matches = |id: &[u8], fp: &[u8]| {
        signature
            .signature
            .issuer_key_id()
            .iter()
            .any(|k| k.as_ref() == id)
            || signature
                .signature
                .issuer_fingerprint()
                .iter()
                .any(|f| f.as_bytes() == fp)
    };
    for trusted in keys {
        let primary = &trusted.key;
        let owner = fingerprint(primary);
        let verdict = if matches(primary.legacy_key_id().as_ref(), primary.fingerprint().as_bytes()) {
            signature.signature.verify(primary, data)
        } else if let Some(sub) = primary
            .public_subkeys
            .iter()
            .find(|sub| matches(sub.legacy_key_id().as_ref(), sub.fingerprint().as_bytes()))
        {
            signature.signature.verify(sub, data)
        } else {
            continue;
        };
        // The data has been consumed by the one key that claims the signature.
        return verdict.map(|()| owner.clone()).map_err(|e| TrustError::Invalid {
            fingerprint: owner,
            reason: e.to_string(),
        });
    }
    Err(match name {
        Some(name) => TrustError::Untrusted {
            name: name.to_string(),
            issuer: issuers,
        },
        None => TrustError::UnknownSigner { issuer: issuers },
    })
}

fn parse_signature(bytes: &[u8]) -> Result<DetachedSignature, TrustError> {
    match DetachedSignature::from_armor_single(bytes) {
        Ok((sig, _headers)) => Ok(sig),
        Err(armored) => {
            DetachedSignature::from_bytes(bytes).map_err(|_| TrustError::BadSignature(armored.to_string()))
        }
    }
}

fn issuer_names(signature: &DetachedSignature) -> String {
    let mut names: Vec<String> = signature
        .signature
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:x}"))
        .collect();
    if names.is_empty() {
        names = signature
            .signature
            .issuer_key_id()
            .iter()
            .map(|k| hex::encode(k.as_ref()))
            .collect();
    }
    if names.is_empty() {
        "(unknown)".to_string()
    } else {
        names.join(",")
    }
}

/// Appends the keys in `dir` (one file per key); a missing directory holds none.
fn read_keys(dir: &Path, out: &mut Vec<TrustedKey>) -> Result<(), TrustError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TrustError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| TrustError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if is_file && !hidden {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        let file = std::fs::File::open(&path).map_err(|source| TrustError::Io {
            path: path.clone(),
            source,
        })?;
        let mut bytes = Vec::new();
        BufReader::new(file)
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .map_err(|source| TrustError::Io {
                path: path.clone(),
                source,
            })?;
        match parse_key(&bytes) {
            Ok(key) => out.push(TrustedKey { key, path }),
            // One unreadable file must not lock the admin out of every image.
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping unreadable trusted key"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_path_components_only() {
        assert!(check_prefix("example.com/app").is_ok());
        assert!(check_prefix("127.0.0.1:8080/app").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "..", "a/.", "a b"] {
            assert!(check_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn empty_keystore_has_no_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Keystore::new(&ConfigDirs {
            local: dir.path().join("local"),
            system: dir.path().join("system"),
        });
        assert!(store.keys_for("example.com/app").expect("list").is_empty());
        let err = store
            .verify("example.com/app", &b"data"[..], b"garbage")
            .expect_err("no keys");
        assert!(matches!(err, TrustError::NoKeys { .. }), "{err}");
        let err = verify_with(&[], None, &b"data"[..], b"garbage").expect_err("garbage");
        assert!(matches!(err, TrustError::BadSignature(_)), "{err}");
    }
}
