//! appc meta discovery: `rkt fetch example.com/app:1.0` asks
//! `https://example.com/app?ac-discovery=1` for `ac-discovery` meta tags (retrying on
//! the parent paths, down to the host), fills the first template whose every
//! `{label}` is known, and fetches the ACI and its signature from there.
//!
//! An image string is `name[:version][,label=value]...`; `os` and `arch` default to
//! this machine's, `version` to `latest`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{BackendError, FetchPolicy, ImageFinder, ImageRef, Registration};
use rkt_engine::store::Store;

use crate::aci::{self, AciLocation};
use crate::keystore::{self, Keystore, Scope};
use crate::transport::Transport;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryFinder {}

inventory::submit! {
    Registration::<dyn ImageFinder> {
        name: "discovery",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<DiscoveryFinder>(config)?)),
    }
}

/// An image to discover: its name and every label the templates may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl App {
    pub fn parse(s: &str) -> Result<App, String> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        // A version follows the last `:` after the last `/` (the host may carry a port).
        let last_slash = head.rfind('/').map_or(0, |i| i + 1);
        let (name, version) = match head[last_slash..].rfind(':') {
            Some(i) => (&head[..last_slash + i], Some(&head[last_slash + i + 1..])),
            None => (head, None),
        };
        if name.is_empty() || name.starts_with('/') || name.contains("//") {
            return Err(format!("{s:?} is not an image name (e.g. example.com/app:1.0)"));
        }
        let mut labels = BTreeMap::new();
        labels.insert("os".to_string(), std::env::consts::OS.to_string());
        labels.insert("arch".to_string(), appc_arch().to_string());
        labels.insert("version".to_string(), "latest".to_string());
        if let Some(version) = version {
            if version.is_empty() {
                return Err(format!("{s:?}: empty version after `:`"));
            }
            labels.insert("version".to_string(), version.to_string());
        }
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("{s:?}: label {part:?} is not key=value"));
            };
            if key.is_empty() || value.is_empty() || key == "name" {
                return Err(format!("{s:?}: bad label {part:?}"));
            }
            labels.insert(key.to_string(), value.to_string());
        }
        Ok(App {
            name: name.to_string(),
            labels,
        })
    }

    /// A canonical form, the key the store remembers this discovery under.
    fn key(&self) -> String {
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("discovery:{},{}", self.name, labels.join(","))
    }

    /// Fills `{name}`, `{ext}` and every `{label}`; None when one is left unknown.
    fn render(&self, template: &str, ext: &str) -> Option<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}')? + open;
            let var = &rest[open + 1..close];
            let value = match var {
                "name" => self.name.as_str(),
                "ext" => ext,
                label => self.labels.get(label)?.as_str(),
            };
            out.push_str(value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    /// The name, then each parent path: `a.com/b/c`, `a.com/b`, `a.com`.
    fn candidates(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut current = self.name.as_str();
        loop {
            out.push(current);
            match current.rfind('/') {
                Some(cut) => current = &current[..cut],
                None => return out,
            }
        }
    }
}

/// appc's architecture names (Go's): amd64, arm64, ...
fn appc_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        other => other,
    }
}

/// What one discovery page said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Endpoints {
    /// (prefix, URL template) from `ac-discovery`.
    templates: Vec<(String, String)>,
    /// (prefix, key URL) from `ac-discovery-pubkeys`.
    pubkeys: Vec<(String, String)>,
}

/// The `<meta name=... content=...>` tags of an HTML page, in order.
fn meta_tags(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<meta").map(|i| i + at) {
        let Some(end) = lower[start..].find('>').map(|i| i + start) else {
            break;
        };
        let tag = &html[start + 5..end];
        let attrs = attributes(tag);
        if let (Some(name), Some(content)) = (attrs.get("name"), attrs.get("content")) {
            out.push((name.clone(), content.clone()));
        }
        at = end;
    }
    out
}

/// `key="value"` / `key='value'` / `key=value` pairs, keys lowercased.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let bytes = tag.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = tag[key_start..i].to_ascii_lowercase();
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        let value = match bytes.get(i) {
            Some(&quote @ (b'"' | b'\'')) => {
                let value_start = i + 1;
                let end = tag[value_start..]
                    .find(quote as char)
                    .map_or(tag.len(), |e| e + value_start);
                i = end + 1;
                &tag[value_start..end]
            }
            _ => {
                let value_start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                &tag[value_start..i]
            }
        };
        if !key.is_empty() {
            out.insert(key, value.to_string());
        }
    }
    out
}

fn endpoints(html: &str, name: &str) -> Endpoints {
    let mut found = Endpoints::default();
    for (meta, content) in meta_tags(html) {
        let mut words = content.split_whitespace();
        let (Some(prefix), Some(url), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        match meta.as_str() {
            "ac-discovery" => found.templates.push((prefix.to_string(), url.to_string())),
            "ac-discovery-pubkeys" => found.pubkeys.push((prefix.to_string(), url.to_string())),
            _ => {}
        }
    }
    found
}

/// For fuzz/ only: the meta-tag parser over an untrusted page. Returns every
/// `(name, content)` meta tag, then the `(prefix, URL)` image templates and key
/// URLs that would apply to the app `name`.
#[doc(hidden)]
#[allow(clippy::type_complexity)]
pub fn fuzz_meta_tags(
    html: &str,
    name: &str,
) -> (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, String)>,
) {
    let found = endpoints(html, name);
    (meta_tags(html), found.templates, found.pubkeys)
}

/// What a discovery is looking for: image templates, or signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Images,
    Keys,
}

/// Asks each candidate path in turn; the first page with a matching tag of the
/// wanted kind wins. Returns its endpoints and whether it came over https.
fn discover(transport: &Transport, app: &App, wanted: Wanted) -> Result<(Endpoints, bool), BackendError> {
    let (tag, what) = match wanted {
        Wanted::Images => ("ac-discovery", "image endpoint"),
        Wanted::Keys => ("ac-discovery-pubkeys", "public key"),
    };
    let mut tried = Vec::new();
    for candidate in app.candidates() {
        let mut schemes = vec!["https"];
        if transport.insecure().http {
            schemes.push("http");
        }
        for scheme in schemes {
            let url = format!("{scheme}://{candidate}?ac-discovery=1");
            match transport.get_small(&url, &[]) {
                Ok(page) => {
                    let found = endpoints(&String::from_utf8_lossy(&page), &app.name);
                    let hit = match wanted {
                        Wanted::Images => !found.templates.is_empty(),
                        Wanted::Keys => !found.pubkeys.is_empty(),
                    };
                    if hit {
                        tracing::debug!(url, tag, "discovered");
                        return Ok((found, scheme == "https"));
                    }
                    tried.push(format!("{url}: no matching {tag} tag"));
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
    }
    Err(BackendError::Other(format!(
        "discovery of {} found no {what} ({})",
        app.name,
        tried.join("; ")
    )))
}

/// `rkt trust --prefix=NAME` without a key: the key URLs the prefix's discovery
/// page names (`ac-discovery-pubkeys`).
pub fn discover_keys(transport: &Transport, prefix: &str) -> Result<Vec<String>, BackendError> {
    let app = App::parse(prefix).map_err(BackendError::Other)?;
    let (found, _) = discover(transport, &app, Wanted::Keys)?;
    Ok(found.pubkeys.into_iter().map(|(_, url)| url).collect())
}

/// `--trust-keys-from-https`: trusts the keys a page served over verified https
/// names, for their prefix, when no key is trusted for the image's name yet.
fn trust_discovered_keys(
    transport: &Transport,
    app: &App,
    found: &Endpoints,
    policy: &FetchPolicy,
) -> Result<(), BackendError> {
    let keystore = Keystore::new(&policy.config);
    let known = keystore
        .keys_for(&app.name)
        .map_err(|e| BackendError::Other(e.to_string()))?;
    if !known.is_empty() {
        return Ok(());
    }
    for (prefix, url) in &found.pubkeys {
        if !url.starts_with("https://") {
            continue;
        }
        let bytes = transport.get_small(url, &[])?;
        let key = keystore::parse_key(&bytes).map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        let path = keystore
            .trust(&Scope::Prefix(prefix.clone()), &key)
            .map_err(|e| BackendError::Other(e.to_string()))?;
        eprintln!(
            "Trusting key {} from {url} for prefix {prefix:?} ({})",
            keystore::fingerprint_for_review(&key),
            path.display()
        );
    }
    Ok(())
}

#[async_trait]
impl ImageFinder for DiscoveryFinder {
    fn name(&self) -> &'static str {
        "discovery"
    }

    fn handles(&self, reference: &ImageRef) -> bool {
        matches!(reference, ImageRef::Name(_))
    }

    /// Blocking I/O on the calling thread (see `transport`).
    fn needs_runtime(&self) -> bool {
        false
    }

    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError> {
        let ImageRef::Name(text) = reference else {
            return Err(BackendError::Other(format!("{reference} is not an image name")));
        };
        let app = App::parse(text).map_err(BackendError::Other)?;
        let key = app.key();
        if let Some(record) = aci::cached(store, &key, text, policy)? {
            tracing::debug!(name = text, id = %record.id, "using the stored image");
            return Ok(record.id);
        }
        let transport = Transport::new(&policy.insecure);
        let (found, over_https) = discover(&transport, &app, Wanted::Images)?;
        if policy.trust_keys_from_https && over_https && !policy.insecure.tls {
            trust_discovered_keys(&transport, &app, &found, policy)?;
        }
        let mut errors = Vec::new();
        for (_, template) in &found.templates {
            let (Some(image), Some(signature)) =
                (app.render(template, "aci"), app.render(template, "aci.asc"))
            else {
                errors.push(format!(
                    "{template}: needs a label the image string does not give"
                ));
                continue;
            };
            let location = AciLocation { image, signature };
            let previous = store
                .remote(&location.image)
                .map_err(|e| BackendError::Other(format!("{text}: {e}")))?;
            match aci::fetch(store, &transport, &location.image, &location, previous, policy) {
                Ok(id) => {
                    aci::remember(store, &key, &id)?;
                    return Ok(id);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(BackendError::Other(format!("{text}: {}", errors.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_strings_give_name_and_labels() {
        let app = App::parse("example.com/app:1.0,channel=beta").expect("parse");
        assert_eq!(app.name, "example.com/app");
        assert_eq!(app.labels["version"], "1.0");
        assert_eq!(app.labels["channel"], "beta");
        assert_eq!(app.labels["os"], "linux");
        let with_port = App::parse("127.0.0.1:8080/app").expect("parse");
        assert_eq!(with_port.name, "127.0.0.1:8080/app");
        assert_eq!(with_port.labels["version"], "latest");
        assert!(App::parse("example.com/app:").is_err());
        assert!(App::parse("example.com/app,novalue").is_err());
    }

    #[test]
    fn templates_need_every_label() {
        let app = App::parse("example.com/app:1.0").expect("parse");
        assert_eq!(
            app.render("https://h/{name}-{version}-{os}-{arch}.{ext}", "aci")
                .as_deref(),
            Some(format!("https://h/example.com/app-1.0-linux-{}.aci", appc_arch()).as_str())
        );
        assert_eq!(app.render("https://h/{name}-{channel}.{ext}", "aci"), None);
    }

    #[test]
    fn parents_are_retried_down_to_the_host() {
        let app = App::parse("a.com/b/c").expect("parse");
        assert_eq!(app.candidates(), vec!["a.com/b/c", "a.com/b", "a.com"]);
    }

    #[test]
    fn meta_tags_matching_the_name_are_kept() {
        let html = r#"<html><head>
            <meta name="ac-discovery" content="example.com https://example.com/{name}-{version}.{ext}">
            <META NAME='ac-discovery-pubkeys' CONTENT='example.com/app https://example.com/key.gpg'/>
            <meta name="ac-discovery" content="other.org https://other.org/{name}.{ext}">
            <meta charset=utf-8>
        </head></html>"#;
        let found = endpoints(html, "example.com/app");
        assert_eq!(
            found.templates,
            vec![(
                "example.com".to_string(),
                "https://example.com/{name}-{version}.{ext}".to_string()
            )]
        );
        assert_eq!(
            found.pubkeys,
            vec![(
                "example.com/app".to_string(),
                "https://example.com/key.gpg".to_string()
            )]
        );
    }
}
