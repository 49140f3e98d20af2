//! The one HTTP client every remote source shares: plain http and unverified TLS
//! only when the user asked (`--insecure-options=http` / `tls`), redirects followed,
//! every failure one line naming the URL.
//!
//! Blocking I/O on the calling thread: a fetch downloads one stream at a time into
//! the store, so an async runtime would buy nothing here and cost start-up time.

use std::io::Read;
use std::time::Duration;

use rkt_engine::stage::{BackendError, InsecureOptions};
use ureq::http::{Response, StatusCode};

const MAX_REDIRECTS: u32 = 10;
/// Documents (discovery pages, manifests, signatures, tokens) are small; a server
/// sending more is broken or hostile.
pub const SMALL_BODY_MAX: u64 = 16 << 20;

pub struct Transport {
    agent: ureq::Agent,
    insecure: InsecureOptions,
}

impl Transport {
    pub fn new(insecure: &InsecureOptions) -> Self {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(insecure.tls)
            .root_certs(root_certs())
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            // A redirect from https to plain http is refused unless http is allowed.
            .https_only(!insecure.http)
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .timeout_connect(Some(Duration::from_secs(30)))
            .user_agent(concat!("rkt-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Transport {
            agent: config.into(),
            insecure: *insecure,
        }
    }

    pub fn insecure(&self) -> &InsecureOptions {
        &self.insecure
    }

    /// Refuses plain http before any byte is sent, naming the option that allows it.
    pub fn check_scheme(&self, url: &str) -> Result<(), BackendError> {
        if url.starts_with("https://") || (self.insecure.http && url.starts_with("http://")) {
            return Ok(());
        }
        if url.starts_with("http://") {
            return Err(BackendError::Other(format!(
                "{url}: plain http is refused; pass --insecure-options=http to allow it"
            )));
        }
        Err(BackendError::Other(format!("{url}: not an http(s) URL")))
    }

    /// GET with extra headers; any status comes back (the caller decides).
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response<ureq::Body>, BackendError> {
        self.check_scheme(url)?;
        let mut request = self.agent.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.call().map_err(|e| self.describe(url, e))
    }

    /// GET of a small document that must answer 200; returns its bytes.
    pub fn get_small(&self, url: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, BackendError> {
        let response = self.get(url, headers)?;
        expect_ok(url, &response)?;
        read_small(url, response)
    }

    fn describe(&self, url: &str, error: ureq::Error) -> BackendError {
        // Certificate failures arrive as rustls errors or wrapped in I/O errors.
        let tls_failure = matches!(error, ureq::Error::Rustls(_) | ureq::Error::Tls(_))
            || error.to_string().contains("certificate");
        let hint = match &error {
            _ if tls_failure && !self.insecure.tls => {
                " (pass --insecure-options=tls to skip certificate checks)"
            }
            ureq::Error::RequireHttpsOnly(_) => " (pass --insecure-options=http to allow plain http)",
            _ => "",
        };
        BackendError::Other(format!("GET {url}: {error}{hint}"))
    }
}

/// The certificates https is verified against, found the way rkt (Go) and curl
/// find them: `$SSL_CERT_FILE`, else the system bundle (so an admin's own CA
/// counts), else Mozilla's roots built into the binary.
fn root_certs() -> ureq::tls::RootCerts {
    use ureq::tls::{PemItem, RootCerts, parse_pem};
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let Ok(pem) = std::fs::read(&path) else {
        return RootCerts::WebPki;
    };
    let certs: Vec<_> = parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        tracing::warn!(path = %path.display(), "no certificates found; using the built-in roots");
        return RootCerts::WebPki;
    }
    RootCerts::new_with_certs(&certs)
}

/// A one-line error for a status other than 200.
pub fn expect_ok<B>(url: &str, response: &Response<B>) -> Result<(), BackendError> {
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    Err(BackendError::Other(format!(
        "GET {url}: the server answered {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )))
}

pub fn read_small(url: &str, response: Response<ureq::Body>) -> Result<Vec<u8>, BackendError> {
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(SMALL_BODY_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::Other(format!("GET {url}: {e}")))?;
    if bytes.len() as u64 > SMALL_BODY_MAX {
        return Err(BackendError::Other(format!(
            "GET {url}: the answer is larger than {} MiB",
            SMALL_BODY_MAX >> 20
        )));
    }
    Ok(bytes)
}

pub fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `max-age=N` from a Cache-Control header; `no-cache`/`no-store` mean "ask every time".
pub fn max_age(cache_control: Option<&str>) -> Option<u64> {
    let value = cache_control?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return None;
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n.trim_matches('"').parse().ok();
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age(Some("public, max-age=60")), Some(60));
        assert_eq!(max_age(Some("max-age=60, no-cache")), None);
        assert_eq!(max_age(Some("private")), None);
        assert_eq!(max_age(None), None);
    }

    #[test]
    fn plain_http_needs_the_option() {
        let strict = Transport::new(&InsecureOptions::default());
        let err = strict
            .check_scheme("http://127.0.0.1/x.aci")
            .expect_err("refused");
        assert!(err.to_string().contains("--insecure-options=http"), "{err}");
        assert!(strict.check_scheme("https://127.0.0.1/x.aci").is_ok());
        let lax = Transport::new(&InsecureOptions {
            http: true,
            ..Default::default()
        });
        assert!(lax.check_scheme("http://127.0.0.1/x.aci").is_ok());
    }
}
