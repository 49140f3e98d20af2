//! Images from remote sources through the real `rkt` binary, against real servers the
//! tests start on 127.0.0.1: http(s) URLs with ETag / max-age caching, redirects and
//! broken downloads; detached signatures made by gpg and checked against keys added
//! by `rkt trust`. Every refusal is a one-line 254 with the store unchanged.

mod common;
#[path = "common/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{harness, one_line_254};
use http::{Route, Server};
use rkt_conformance::harness::RunOutput;
use rkt_conformance::registry::{Layer, busybox_layer, oci_layout, sha256};
use rkt_conformance::{AciSpec, Rkt};

const NAME: &str = "example.com/remote/app";

/// Everything below `dir` (names only), to prove a failed command changed nothing.
fn snapshot(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                out.push(e.path());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Files in the store's temp dir: a finished or failed fetch leaves none.
fn temp_files(h: &Rkt) -> Vec<PathBuf> {
    snapshot(&h.dir.join("cas").join("tmp"))
}

fn image_bytes(h: &Rkt, spec: &AciSpec) -> Vec<u8> {
    std::fs::read(h.image(spec).expect("build image")).expect("read image")
}

/// Puts an unrelated image in the store, so the store's directories exist and a
/// snapshot taken now compares like with like.
fn warm(h: &Rkt) {
    let local = h.image(&AciSpec::busybox("example.com/other")).expect("image");
    let out = h.rkt(&["fetch", "--insecure-options=image", local.to_str().expect("utf8")]);
    assert_eq!(out.code, 0, "{}", out.describe());
}

fn fetch(h: &Rkt, extra: &[&str], url: &str) -> RunOutput {
    let mut args = vec!["fetch"];
    args.extend_from_slice(extra);
    args.push(url);
    h.rkt(&args)
}

/// A throwaway gpg home with one signing key; gnupg from Debian.
struct Gpg {
    home: tempfile::TempDir,
    pub user: String,
}

impl Gpg {
    fn new(test: &str, user: &str) -> Option<Gpg> {
        if Command::new("gpg").arg("--version").output().is_err() {
            eprintln!("{test}: skipped: needs gnupg (gpg)");
            return None;
        }
        let home = tempfile::Builder::new()
            .prefix("rkt-gpg-")
            .tempdir()
            .expect("gpg home");
        let gpg = Gpg {
            home,
            user: user.to_string(),
        };
        gpg.run(&[
            "--quick-gen-key",
            &format!("{user} <{user}@example.com>"),
            "ed25519",
            "sign",
            "never",
        ]);
        Some(gpg)
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The armored public key, written to a file.
    fn export(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pub.asc", self.user));
        std::fs::write(&path, self.run(&["--armor", "--export", &self.user])).expect("write key");
        path
    }

    fn fingerprint(&self) -> String {
        let text =
            String::from_utf8(self.run(&["--with-colons", "--fingerprint", &self.user])).expect("utf8");
        text.lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint")
            .to_ascii_lowercase()
    }

    /// An armored detached signature of `data`.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("data");
        std::fs::write(&input, data).expect("write data");
        let output = dir.path().join("data.asc");
        self.run(&[
            "--local-user",
            &self.user,
            "--armor",
            "--detach-sign",
            "--output",
            output.to_str().expect("utf8 path"),
            input.to_str().expect("utf8 path"),
        ]);
        std::fs::read(output).expect("read signature")
    }
}

/// The config dirs a test's keys live in (never the machine's /etc/rkt).
struct Config {
    local: PathBuf,
    system: PathBuf,
}

impl Config {
    fn new(h: &Rkt) -> Config {
        let local = h.work().join("etc-rkt");
        let system = h.work().join("usr-lib-rkt");
        Config { local, system }
    }
    fn flags(&self) -> Vec<String> {
        vec![
            format!("--local-config={}", self.local.display()),
            format!("--system-config={}", self.system.display()),
        ]
    }
    fn trust(&self, h: &Rkt, scope: &str, key: &Path) -> RunOutput {
        let mut args: Vec<String> = self.flags();
        args.extend([
            "trust".to_string(),
            scope.to_string(),
            "--skip-fingerprint-review".to_string(),
            key.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        h.rkt(&args)
    }
    fn fetch(&self, h: &Rkt, insecure: &str, image: &str) -> RunOutput {
        let mut args: Vec<String> = self.flags();
        args.extend([
            "fetch".to_string(),
            format!("--insecure-options={insecure}"),
            image.to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        h.rkt(&args)
    }
}

#[test]
fn http_image_is_fetched_once_and_refetched_only_when_changed() {
    let Some(h) = harness("http_image_is_fetched_once_and_refetched_only_when_changed") else {
        return;
    };
    let server = Server::start();
    let v1 = image_bytes(&h, &AciSpec::busybox(NAME));
    server.route("/app.aci", Route::ok(v1.clone()).etag("\"v1\""));
    let url = server.url("/app.aci");

    let first = fetch(&h, &["--insecure-options=image,http"], &url);
    assert_eq!(first.code, 0, "{}", first.describe());
    assert_eq!(
        first.stderr, "",
        "no progress output when stderr is not a terminal"
    );
    let id = first.stdout.trim().to_string();
    assert!(id.starts_with("sha512-"), "{}", first.describe());
    assert_eq!(server.hits("/app.aci"), 1);
    // The same bytes from a local file give the same ID: the URL's content was stored.
    let local = h.image(&AciSpec::busybox(NAME)).expect("image");
    let from_file = h.rkt(&["fetch", "--insecure-options=image", local.to_str().expect("utf8")]);
    assert_eq!(from_file.stdout.trim(), id);

    // pull-policy new (the default): the store answers, the server is not asked.
    let again = fetch(&h, &["--insecure-options=image,http"], &url);
    assert_eq!(again.stdout.trim(), id, "{}", again.describe());
    assert_eq!(server.hits("/app.aci"), 1, "{:?}", server.log());

    // update: a conditional GET, answered 304, nothing downloaded.
    let update = fetch(
        &h,
        &["--insecure-options=image,http", "--pull-policy=update"],
        &url,
    );
    assert_eq!(update.stdout.trim(), id, "{}", update.describe());
    assert_eq!(server.hits("/app.aci"), 2);

    // The image changes on the server: update fetches the new one.
    let mut spec = AciSpec::busybox(NAME);
    spec.files.push(("/version".into(), b"2".to_vec(), 0o644));
    server.route("/app.aci", Route::ok(image_bytes(&h, &spec)).etag("\"v2\""));
    let changed = fetch(
        &h,
        &["--insecure-options=image,http", "--pull-policy=update"],
        &url,
    );
    assert_eq!(changed.code, 0, "{}", changed.describe());
    assert_ne!(changed.stdout.trim(), id);
    assert_eq!(server.hits("/app.aci"), 3);

    // never: the store only, even for a URL.
    server.remove("/app.aci");
    let never = fetch(
        &h,
        &["--insecure-options=image,http", "--pull-policy=never"],
        &url,
    );
    assert_eq!(never.stdout.trim(), changed.stdout.trim(), "{}", never.describe());
    assert_eq!(server.hits("/app.aci"), 3);
    assert!(temp_files(&h).is_empty(), "{:?}", temp_files(&h));
}

#[test]
fn max_age_spares_the_request_and_never_needs_the_store() {
    let Some(h) = harness("max_age_spares_the_request_and_never_needs_the_store") else {
        return;
    };
    let server = Server::start();
    let url = server.url("/cached.aci");
    let never = fetch(
        &h,
        &["--insecure-options=image,http", "--pull-policy=never"],
        &url,
    );
    one_line_254(&never, "not in the store");
    assert_eq!(server.hits("/cached.aci"), 0);

    let bytes = image_bytes(&h, &AciSpec::busybox(NAME));
    server.route(
        "/cached.aci",
        Route::ok(bytes)
            .etag("\"c\"")
            .cache_control("public, max-age=3600"),
    );
    let first = fetch(&h, &["--insecure-options=image,http"], &url);
    assert_eq!(first.code, 0, "{}", first.describe());
    let update = fetch(
        &h,
        &["--insecure-options=image,http", "--pull-policy=update"],
        &url,
    );
    assert_eq!(update.stdout, first.stdout, "{}", update.describe());
    assert_eq!(
        server.hits("/cached.aci"),
        1,
        "fresh for an hour: not asked again"
    );
}

#[test]
fn redirects_are_followed_and_the_image_runs() {
    let Some(h) = harness("redirects_are_followed_and_the_image_runs") else {
        return;
    };
    let server = Server::start();
    let mut spec = AciSpec::busybox(NAME);
    spec.exec = vec!["/bin/sh".into(), "-c".into(), "echo remote-ok; exit 3".into()];
    server.route("/real/app.aci", Route::ok(image_bytes(&h, &spec)));
    server.route("/app.aci", Route::redirect(&server.url("/real/app.aci")));
    let out = h.rkt(&[
        "run",
        "--insecure-options=image,http",
        "--stage1=fly",
        &server.url("/app.aci"),
    ]);
    assert_eq!(out.code, 3, "{}", out.describe());
    assert!(out.stdout.contains("remote-ok"), "{}", out.describe());
    assert_eq!(server.hits("/real/app.aci"), 1);
}

#[test]
fn plain_http_needs_the_insecure_option() {
    let Some(h) = harness("plain_http_needs_the_insecure_option") else {
        return;
    };
    let server = Server::start();
    server.route("/app.aci", Route::ok(image_bytes(&h, &AciSpec::busybox(NAME))));
    warm(&h);
    let before = snapshot(&h.dir);
    let out = fetch(&h, &["--insecure-options=image"], &server.url("/app.aci"));
    one_line_254(&out, "--insecure-options=http");
    assert_eq!(server.hits("/app.aci"), 0, "refused before sending anything");
    assert_eq!(snapshot(&h.dir), before);
}

#[test]
fn broken_downloads_leave_the_store_unchanged() {
    let Some(h) = harness("broken_downloads_leave_the_store_unchanged") else {
        return;
    };
    let server = Server::start();
    let bytes = image_bytes(&h, &AciSpec::busybox(NAME));
    server.route("/truncated.aci", Route::ok(bytes.clone()).truncated());
    // A tampered blob: the bytes of a tar cut in the middle of an entry.
    server.route("/garbage.aci", Route::ok(bytes[..bytes.len() / 3].to_vec()));
    warm(&h);
    let before = snapshot(&h.dir);
    for (path, mentions) in [
        ("/truncated.aci", "/truncated.aci"),
        ("/garbage.aci", "/garbage.aci"),
        ("/missing.aci", "404"),
    ] {
        let out = fetch(&h, &["--insecure-options=image,http"], &server.url(path));
        one_line_254(&out, mentions);
        assert_eq!(snapshot(&h.dir), before, "{path} changed the store");
    }
}

#[test]
fn concurrent_fetches_of_one_url_agree() {
    let Some(h) = harness("concurrent_fetches_of_one_url_agree") else {
        return;
    };
    let server = Server::start();
    server.route("/app.aci", Route::ok(image_bytes(&h, &AciSpec::busybox(NAME))));
    let url = server.url("/app.aci");
    let children: Vec<_> = (0..6)
        .map(|_| {
            h.command(&["fetch", "--insecure-options=image,http", &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rkt fetch")
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    let index: Vec<_> = snapshot(&h.dir.join("cas").join("index"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(index.len(), 1, "{index:?}");
    assert!(temp_files(&h).is_empty(), "{:?}", temp_files(&h));
}

#[test]
fn signed_http_images_need_a_trusted_key() {
    let test = "signed_http_images_need_a_trusted_key";
    let Some(h) = harness(test) else { return };
    let Some(owner) = Gpg::new(test, "owner") else {
        return;
    };
    let Some(stranger) = Gpg::new(test, "stranger") else {
        return;
    };
    let config = Config::new(&h);
    let server = Server::start();
    let bytes = image_bytes(&h, &AciSpec::busybox(NAME));
    server.route("/app.aci", Route::ok(bytes.clone()));
    let url = server.url("/app.aci");

    // Unsigned: refused.
    warm(&h);
    let before = snapshot(&h.dir);
    one_line_254(&config.fetch(&h, "http", &url), "no signature");
    assert_eq!(snapshot(&h.dir), before);

    // Signed, but no key trusted yet.
    server.route("/app.aci.asc", Route::ok(owner.sign(&bytes)));
    one_line_254(&config.fetch(&h, "http", &url), "no keys are trusted");
    assert_eq!(snapshot(&h.dir), before);

    // A key trusted for a parent prefix of the image's name verifies it.
    let key = owner.export(h.work());
    let trusted = config.trust(&h, "--prefix=example.com/remote", &key);
    assert_eq!(trusted.code, 0, "{}", trusted.describe());
    let key_file = config
        .local
        .join("trustedkeys/prefix.d/example.com/remote")
        .join(owner.fingerprint());
    assert!(
        key_file.is_file(),
        "{} missing: {}",
        key_file.display(),
        trusted.describe()
    );

    // Signed by a stranger: refused.
    server.route("/app.aci.asc", Route::ok(stranger.sign(&bytes)));
    one_line_254(&config.fetch(&h, "http", &url), "not among the trusted keys");
    // Trusted, but for other names only: still refused, once the image's name is read.
    let stranger_key = stranger.export(h.work());
    assert_eq!(config.trust(&h, "--prefix=other.org", &stranger_key).code, 0);
    one_line_254(
        &config.fetch(&h, "http", &url),
        &format!("not trusted for \"{NAME}\""),
    );
    // The owner's signature over different bytes: refused.
    server.route("/app.aci.asc", Route::ok(owner.sign(b"something else")));
    one_line_254(&config.fetch(&h, "http", &url), "bad signature");
    assert_eq!(snapshot(&h.dir), before);

    server.route("/app.aci.asc", Route::ok(owner.sign(&bytes)));
    let good = config.fetch(&h, "http", &url);
    assert_eq!(good.code, 0, "{}", good.describe());
    assert!(good.stdout.trim().starts_with("sha512-"));
    assert!(temp_files(&h).is_empty(), "{:?}", temp_files(&h));
}

#[test]
fn local_images_verify_with_a_signature_beside_or_given() {
    let test = "local_images_verify_with_a_signature_beside_or_given";
    let Some(h) = harness(test) else { return };
    let Some(owner) = Gpg::new(test, "owner") else {
        return;
    };
    let config = Config::new(&h);
    let image = h.image(&AciSpec::busybox(NAME)).expect("image");
    let bytes = std::fs::read(&image).expect("read");
    let image_arg = image.to_str().expect("utf8");

    one_line_254(&config.fetch(&h, "none", image_arg), "no signature found");
    let key = owner.export(h.work());
    // --root: trusted for every name.
    assert_eq!(config.trust(&h, "--root", &key).code, 0);
    assert!(
        config
            .local
            .join("trustedkeys/root.d")
            .join(owner.fingerprint())
            .is_file()
    );

    let elsewhere = h.work().join("detached.sig");
    std::fs::write(&elsewhere, owner.sign(&bytes)).expect("write sig");
    let mut args = config.flags();
    args.extend([
        "fetch".to_string(),
        format!("--signature={}", elsewhere.display()),
        image_arg.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let given = h.rkt(&args);
    assert_eq!(given.code, 0, "{}", given.describe());

    let beside = PathBuf::from(format!("{image_arg}.asc"));
    std::fs::write(&beside, owner.sign(b"not the image")).expect("write sig");
    one_line_254(&config.fetch(&h, "none", image_arg), "bad signature");
    std::fs::write(&beside, owner.sign(&bytes)).expect("write sig");
    let found = config.fetch(&h, "none", image_arg);
    assert_eq!(found.code, 0, "{}", found.describe());
    assert_eq!(found.stdout, given.stdout);
}

#[test]
fn trust_shows_the_fingerprint_and_asks() {
    let test = "trust_shows_the_fingerprint_and_asks";
    let Some(h) = harness(test) else { return };
    let Some(owner) = Gpg::new(test, "owner") else {
        return;
    };
    let config = Config::new(&h);
    let key = owner.export(h.work());
    let ask = |answer: &str| {
        let mut args = config.flags();
        args.extend([
            "trust".to_string(),
            "--prefix=example.com/app".to_string(),
            key.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = h
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trust");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(answer.as_bytes())
            .expect("answer");
        child.wait_with_output().expect("wait")
    };
    let prefix_dir = config.local.join("trustedkeys/prefix.d/example.com/app");
    let refused = ask("no\n");
    assert_eq!(refused.status.code(), Some(254));
    let shown = String::from_utf8_lossy(&refused.stderr).to_string();
    let spaced = owner.fingerprint().to_ascii_uppercase();
    assert!(shown.contains(&spaced[..4]), "fingerprint shown: {shown}");
    assert!(shown.contains("owner@example.com"), "{shown}");
    assert!(!prefix_dir.exists(), "refused key was stored");

    let accepted = ask("yes\n");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(prefix_dir.join(owner.fingerprint()).is_file());

    // No key given: the prefix's discovery page names it (ac-discovery-pubkeys).
    let server = Server::start();
    let prefix = format!("{}/keys", server.addr);
    let page = format!(
        "<html><head><meta name=\"ac-discovery-pubkeys\" content=\"{prefix} {}\"></head></html>",
        server.url("/pub.asc")
    );
    server.route("/keys", Route::ok(page.into_bytes()));
    server.route("/pub.asc", Route::ok(std::fs::read(&key).expect("key")));
    let mut args = config.flags();
    args.extend([
        "trust".to_string(),
        format!("--prefix={prefix}"),
        "--insecure-allow-http".to_string(),
        "--skip-fingerprint-review".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let discovered = h.rkt(&args);
    assert_eq!(discovered.code, 0, "{}", discovered.describe());
    assert!(
        config
            .local
            .join("trustedkeys/prefix.d")
            .join(&prefix)
            .join(owner.fingerprint())
            .is_file(),
        "{}",
        discovered.describe()
    );
    assert_eq!(server.hits("/pub.asc"), 1);

    // A file that is not a key: one line, nothing stored.
    let junk = h.work().join("junk.asc");
    std::fs::write(&junk, b"not a key").expect("write");
    one_line_254(&config.trust(&h, "--prefix=example.com/junk", &junk), "junk.asc");
    assert!(
        !config
            .local
            .join("trustedkeys/prefix.d/example.com/junk")
            .exists()
    );
}

/// A discovery page naming `template` for every image under `prefix`.
fn discovery_page(prefix: &str, templates: &[&str]) -> Vec<u8> {
    let mut html = String::from("<html><head>\n");
    for template in templates {
        html.push_str(&format!(
            "<meta name=\"ac-discovery\" content=\"{prefix} {template}\">\n"
        ));
    }
    html.push_str("</head><body>rkt images</body></html>\n");
    html.into_bytes()
}

#[test]
fn discovery_finds_a_signed_image_by_name_and_version() {
    let test = "discovery_finds_a_signed_image_by_name_and_version";
    let Some(h) = harness(test) else { return };
    let Some(owner) = Gpg::new(test, "owner") else {
        return;
    };
    let config = Config::new(&h);
    let server = Server::start();
    let host = server.addr.clone();
    let name = format!("{host}/app");
    // The first template needs a label the image string does not give: skipped.
    let page = discovery_page(
        &name,
        &[
            &format!("http://{host}/nope/{{name}}-{{channel}}.{{ext}}"),
            &format!("http://{host}/aci/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}"),
        ],
    );
    server.route("/app", Route::ok(page));
    let bytes = image_bytes(&h, &AciSpec::busybox(NAME));
    let image_path = format!("/aci/{name}-1.0-linux-amd64.aci");
    server.route(&image_path, Route::ok(bytes.clone()));
    server.route(&format!("{image_path}.asc"), Route::ok(owner.sign(&bytes)));
    let key = owner.export(h.work());
    assert_eq!(config.trust(&h, "--prefix=example.com/remote", &key).code, 0);

    let image = format!("{name}:1.0");
    let first = config.fetch(&h, "http", &image);
    assert_eq!(first.code, 0, "{}", first.describe());
    assert!(first.stdout.trim().starts_with("sha512-"));
    assert_eq!(server.hits("/app"), 1, "{:?}", server.log());
    assert_eq!(server.hits(&image_path), 1);
    assert!(
        server.log().iter().any(|p| p == "/app?ac-discovery=1"),
        "{:?}",
        server.log()
    );
    // Known now: the store answers, nothing is asked.
    let again = config.fetch(&h, "http", &image);
    assert_eq!(again.stdout, first.stdout, "{}", again.describe());
    assert_eq!(server.hits("/app"), 1);
    // Another version is discovered anew, and the server has none.
    let missing = config.fetch(&h, "http", &format!("{name}:2.0"));
    one_line_254(&missing, "2.0");
}

#[test]
fn discovery_retries_on_parent_paths_and_takes_label_queries() {
    let Some(h) = harness("discovery_retries_on_parent_paths_and_takes_label_queries") else {
        return;
    };
    let server = Server::start();
    let host = server.addr.clone();
    // Only the host's root page answers; the name's own paths are 404.
    let page = discovery_page(
        &host,
        &[&format!(
            "http://{host}/images/{{name}}/{{channel}}-{{version}}.{{ext}}"
        )],
    );
    server.route("/", Route::ok(page));
    let name = format!("{host}/team/app");
    let image_path = format!("/images/{name}/beta-3.1.aci");
    server.route(&image_path, Route::ok(image_bytes(&h, &AciSpec::busybox(NAME))));

    warm(&h);
    let before = snapshot(&h.dir);
    let unlabelled = fetch(&h, &["--insecure-options=image,http"], &format!("{name}:3.1"));
    one_line_254(&unlabelled, "channel");
    assert_eq!(snapshot(&h.dir), before);

    let out = fetch(
        &h,
        &["--insecure-options=image,http"],
        &format!("{name}:3.1,channel=beta"),
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        server.hits("/team/app") >= 1 && server.hits("/team") >= 1,
        "{:?}",
        server.log()
    );
    assert_eq!(server.hits(&image_path), 1);
}

#[test]
fn discovery_without_an_answer_is_one_line() {
    let Some(h) = harness("discovery_without_an_answer_is_one_line") else {
        return;
    };
    let server = Server::start();
    warm(&h);
    let before = snapshot(&h.dir);
    let out = fetch(
        &h,
        &["--insecure-options=image,http"],
        &format!("{}/ghost:1", server.addr),
    );
    one_line_254(&out, "no image endpoint");
    assert_eq!(snapshot(&h.dir), before);
}

// ---------------------------------------------------------------------------
// docker:// and OCI layouts

/// The script the test images run: proves layer order and whiteouts from inside.
const WHITEOUT_CHECK: &str = "test -e /data/keep && ! test -e /data/gone && test -e /data/dir/new \
     && ! test -e /data/dir/old && test /bin/linked -ef /bin/busybox && echo \"$GREETING from $(pwd)\"";

fn layers() -> (Layer, Layer, Layer) {
    let base = busybox_layer().expect("busybox layer");
    let mut data = Layer::default();
    for (path, body) in [("data/keep", "k"), ("data/gone", "g"), ("data/dir/old", "o")] {
        data.files.push((path.into(), body.as_bytes().to_vec(), 0o644));
    }
    let mut whiteouts = Layer::default();
    whiteouts.files.push(("data/.wh.gone".into(), Vec::new(), 0o644));
    whiteouts
        .files
        .push(("data/dir/.wh..wh..opq".into(), Vec::new(), 0o644));
    whiteouts
        .files
        .push(("data/dir/new".into(), b"n".to_vec(), 0o644));
    (base, data, whiteouts)
}

#[test]
fn oci_layouts_and_archives_run_with_whiteouts_applied() {
    let Some(h) = harness("oci_layouts_and_archives_run_with_whiteouts_applied") else {
        return;
    };
    let (base, data, whiteouts) = layers();
    let layout = h.work().join("layout");
    oci_layout(&layout, &[("v1", vec![&base, &data, &whiteouts])], WHITEOUT_CHECK).expect("layout");
    let spec = format!("oci:{}:v1", layout.display());
    let out = h.rkt(&["run", "--insecure-options=image", "--stage1=fly", &spec]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stdout.contains("hello from /data"), "{}", out.describe());

    // The same layout as a tar archive gives the same image.
    // Named like the directory: the image name comes from it.
    let archive = h.work().join("layout.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let from_dir = h.rkt(&["fetch", "--insecure-options=image", &spec]);
    let from_archive = h.rkt(&[
        "fetch",
        "--insecure-options=image",
        &format!("oci-archive:{}:v1", archive.display()),
    ]);
    assert_eq!(from_archive.code, 0, "{}", from_archive.describe());
    assert_eq!(from_dir.stdout, from_archive.stdout);

    // Four processes rendering one new image at once agree on it: one image, no
    // temp files left.
    let mut extra = Layer::default();
    extra.files.push(("extra/file".into(), b"e".to_vec(), 0o644));
    oci_layout(&layout, &[("v3", vec![&base, &data, &extra])], "true").expect("layout");
    let v3 = format!("oci:{}:v3", layout.display());
    let children: Vec<_> = (0..4)
        .map(|_| {
            h.command(&["fetch", "--insecure-options=image", &v3])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rkt fetch")
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert!(temp_files(&h).is_empty(), "{:?}", temp_files(&h));

    // A tampered layer blob (one not in the store yet): one line, the store gains nothing.
    let mut unique = Layer::default();
    unique.files.push(("only/here".into(), b"u".to_vec(), 0o644));
    let digests = oci_layout(&layout, &[("v2", vec![&base, &unique])], "true").expect("layout");
    let blob = layout.join("blobs/sha256").join(&digests["v2"][1][7..]);
    std::fs::write(&blob, b"tampered").expect("tamper");
    let before = snapshot(&h.dir);
    let tampered = h.rkt(&[
        "fetch",
        "--insecure-options=image",
        &format!("oci:{}:v2", layout.display()),
    ]);
    one_line_254(&tampered, "digest");
    assert_eq!(snapshot(&h.dir), before);
}

#[test]
fn docker_images_share_layers_and_download_only_new_ones() {
    let test = "docker_images_share_layers_and_download_only_new_ones";
    let Some(h) = harness(test) else { return };
    let Some(registry) = common::registry(test) else {
        return;
    };
    let (base, data, whiteouts) = layers();
    let layout = h.work().join("layout");
    oci_layout(
        &layout,
        &[("v1", vec![&base, &data]), ("v2", vec![&base, &data, &whiteouts])],
        WHITEOUT_CHECK,
    )
    .expect("layout");
    registry.push(&layout, "v1", "team/app").expect("push v1");
    registry.push(&layout, "v2", "team/app").expect("push v2");
    let (v1, v2) = (
        registry.layers("team/app", "v1").expect("v1 layers"),
        registry.layers("team/app", "v2").expect("v2 layers"),
    );
    assert_eq!(v2.len(), 3);
    assert_eq!(v1[..], v2[..2], "the push shares the first two layers");
    let url = |tag: &str| format!("docker://{}/team/app:{tag}", registry.addr);

    let first = h.rkt(&["fetch", "--insecure-options=image,http", &url("v1")]);
    assert_eq!(first.code, 0, "{}", first.describe());
    for digest in &v1 {
        assert_eq!(registry.blob_gets(digest), 1, "{digest}");
    }
    let out = h.rkt(&["run", "--insecure-options=image,http", "--stage1=fly", &url("v2")]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(out.stdout.contains("hello from /data"), "{}", out.describe());
    // v2 shares v1's two layers: only its third was transferred.
    for digest in &v1 {
        assert_eq!(registry.blob_gets(digest), 1, "{digest} downloaded again");
    }
    assert_eq!(registry.blob_gets(&v2[2]), 1);

    // By digest, and an unknown tag: one line, store unchanged.
    let v1_digest = registry.tag_digest("team/app", "v1").expect("v1 digest");
    let gets_before = v1.iter().map(|d| registry.blob_gets(d)).sum::<usize>();
    let by_digest = h.rkt(&[
        "fetch",
        "--insecure-options=image,http",
        &format!("docker://{}/team/app@{v1_digest}", registry.addr),
    ]);
    assert_eq!(by_digest.code, 0, "{}", by_digest.describe());
    let gets_after = v1.iter().map(|d| registry.blob_gets(d)).sum::<usize>();
    assert_eq!(
        gets_before, gets_after,
        "by digest: the layers came from the store"
    );
    let before = snapshot(&h.dir);
    let missing = h.rkt(&["fetch", "--insecure-options=image,http", &url("nope")]);
    one_line_254(&missing, "404");
    assert_eq!(snapshot(&h.dir), before);
}

#[test]
fn registry_errors_are_one_line_and_change_nothing() {
    let Some(h) = harness("registry_errors_are_one_line_and_change_nothing") else {
        return;
    };
    let server = Server::start();
    let host = server.addr.clone();
    // Basic auth required, no credentials configured.
    server.route(
        "/v2/locked/app/manifests/v1",
        Route::ok(Vec::new())
            .status(401)
            .header("WWW-Authenticate", "Basic realm=\"r\""),
    );
    // Token auth: the token is fetched, and the registry still refuses it.
    server.route(
        "/v2/token/app/manifests/v1",
        Route::ok(Vec::new()).status(401).header(
            "WWW-Authenticate",
            &format!("Bearer realm=\"http://{host}/token\",service=\"test\""),
        ),
    );
    server.route("/token", Route::ok(br#"{"token":"abc"}"#.to_vec()));
    // A manifest whose layer blob does not match its digest.
    let layer = busybox_layer().expect("busybox layer").tar().expect("tar");
    let config = br#"{"config":{"Cmd":["/bin/sh"]}}"#.to_vec();
    let claimed = sha256(&layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": claimed, "size": layer.len()}]
    });
    server.route(
        "/v2/bad/app/manifests/v1",
        Route::ok(serde_json::to_vec(&manifest).expect("json"))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
    );
    server.route(
        &format!("/v2/bad/app/blobs/{}", sha256(&config)),
        Route::ok(config),
    );
    server.route(
        &format!("/v2/bad/app/blobs/{claimed}"),
        Route::ok(b"not the layer".to_vec()),
    );

    warm(&h);
    let before = snapshot(&h.dir);
    let fetch_docker = |repo: &str| {
        h.rkt(&[
            "fetch",
            "--insecure-options=image,http",
            &format!("docker://{host}/{repo}:v1"),
        ])
    };
    one_line_254(&fetch_docker("locked/app"), "401");
    one_line_254(&fetch_docker("token/app"), "401");
    assert_eq!(server.hits("/token"), 1, "{:?}", server.log());
    one_line_254(&fetch_docker("bad/app"), "digest");
    one_line_254(&fetch_docker("missing/app"), "404");
    assert_eq!(snapshot(&h.dir), before);
    // Without --insecure-options=image: refused before any request.
    let hits = server.log().len();
    one_line_254(
        &h.rkt(&[
            "fetch",
            "--insecure-options=http",
            &format!("docker://{host}/bad/app:v1"),
        ]),
        "--insecure-options=image",
    );
    assert_eq!(server.log().len(), hits);
}

#[test]
fn registry_credentials_come_from_auth_d() {
    let Some(h) = harness("registry_credentials_come_from_auth_d") else {
        return;
    };
    let server = Server::start();
    let host = server.addr.clone();
    let (base, _, _) = layers();
    let layer = base.tar().expect("tar");
    let config = br#"{"config":{"Cmd":["/bin/sh","-c","echo authorized"]}}"#.to_vec();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}]
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    // "u:p" in base64.
    let basic = "Basic dTpw";
    let serve = |repo: &str, auth: &str, challenge: &str| {
        let routes = [
            (format!("/v2/{repo}/manifests/v1"), manifest.clone()),
            (format!("/v2/{repo}/blobs/{}", sha256(&config)), config.clone()),
            (format!("/v2/{repo}/blobs/{}", sha256(&layer)), layer.clone()),
        ];
        for (path, body) in routes {
            server.route(
                &path,
                Route::ok(body)
                    .requires(auth)
                    .header("WWW-Authenticate", challenge),
            );
        }
    };
    serve("basic/app", basic, "Basic realm=\"test\"");
    serve(
        "bearer/app",
        "Bearer tok",
        &format!("Bearer realm=\"http://{host}/token\",service=\"test\""),
    );
    server.route(
        "/token",
        Route::ok(br#"{"token":"tok"}"#.to_vec())
            .requires(basic)
            .header("WWW-Authenticate", "Basic realm=\"token\""),
    );
    let config_dir = h.work().join("etc-rkt");
    std::fs::create_dir_all(config_dir.join("auth.d")).expect("auth.d");
    std::fs::write(
        config_dir.join("auth.d/test.json"),
        serde_json::to_vec(&serde_json::json!({
            "rktKind": "dockerAuth", "rktVersion": "v1",
            "registries": [host], "credentials": {"user": "u", "password": "p"}
        }))
        .expect("json"),
    )
    .expect("write auth");
    let local = format!("--local-config={}", config_dir.display());
    for repo in ["basic/app", "bearer/app"] {
        let image = format!("docker://{host}/{repo}:v1");
        let out = h.rkt(&[
            &local,
            "run",
            "--insecure-options=image,http",
            "--stage1=fly",
            &image,
        ]);
        assert_eq!(out.code, 0, "{repo}: {}", out.describe());
        assert!(out.stdout.contains("authorized"), "{}", out.describe());
    }
    assert_eq!(server.hits("/token"), 1, "{:?}", server.log());
}

/// `openssl s_server -WWW`: files from `dir` over https with a self-signed
/// certificate; killed on drop.
struct TlsServer {
    child: std::process::Child,
    addr: String,
}

impl TlsServer {
    fn start(test: &str, dir: &Path) -> Option<TlsServer> {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("{test}: skipped: needs openssl");
            return None;
        }
        let generated = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // A server certificate, not a CA: it is its own trust anchor in the tests.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(dir)
            .output()
            .expect("openssl req");
        assert!(
            generated.status.success(),
            "{}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new("openssl")
            .args([
                "s_server", "-WWW", "-cert", "cert.pem", "-key", "key.pem", "-accept", &addr,
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        // Ready once it prints ACCEPT; EOF first means it died.
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("ACCEPT"));
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_server did not start");
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(TlsServer { child, addr })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn unverified_tls_needs_the_insecure_option() {
    let test = "unverified_tls_needs_the_insecure_option";
    let Some(h) = harness(test) else { return };
    let www = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        www.path().join("app.aci"),
        image_bytes(&h, &AciSpec::busybox(NAME)),
    )
    .expect("write image");
    let Some(server) = TlsServer::start(test, www.path()) else {
        return;
    };
    let url = format!("https://{}/app.aci", server.addr);
    warm(&h);
    let before = snapshot(&h.dir);
    let refused = fetch(&h, &["--insecure-options=image"], &url);
    one_line_254(&refused, "--insecure-options=tls");
    assert_eq!(snapshot(&h.dir), before);
    let allowed = fetch(&h, &["--insecure-options=image,tls"], &url);
    assert_eq!(allowed.code, 0, "{}", allowed.describe());
    assert!(allowed.stdout.trim().starts_with("sha512-"));
}

#[test]
fn discovery_over_verified_https_can_trust_the_keys_it_names() {
    let test = "discovery_over_verified_https_can_trust_the_keys_it_names";
    let Some(h) = harness(test) else { return };
    let Some(owner) = Gpg::new(test, "owner") else {
        return;
    };
    let www = tempfile::tempdir().expect("tempdir");
    let Some(server) = TlsServer::start(test, www.path()) else {
        return;
    };
    let host = server.addr.clone();
    // The image's name sits under the prefix the page trusts keys for ("127.0.0.1";
    // an AC name cannot carry the port).
    let bytes = image_bytes(&h, &AciSpec::busybox("127.0.0.1/app"));
    let page = format!(
        "<meta name=\"ac-discovery\" content=\"{host}/app https://{host}/app-{{version}}.{{ext}}\">\n\
         <meta name=\"ac-discovery-pubkeys\" content=\"127.0.0.1 https://{host}/pub.asc\">\n"
    );
    let files: [(&str, Vec<u8>); 4] = [
        ("app?ac-discovery=1", page.into_bytes()),
        ("app-1.0.aci", bytes.clone()),
        ("app-1.0.aci.asc", owner.sign(&bytes)),
        ("pub.asc", std::fs::read(owner.export(h.work())).expect("key")),
    ];
    for (name, body) in files {
        std::fs::write(www.path().join(name), body).expect("write");
    }
    let config = Config::new(&h);
    let cert = www.path().join("cert.pem");
    let fetch_with = |extra: &[&str]| {
        let mut args = config.flags();
        args.push("fetch".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{host}/app:1.0"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h
            .command(&args)
            .env("SSL_CERT_FILE", &cert)
            .output()
            .expect("rkt");
        RunOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    one_line_254(&fetch_with(&[]), "no keys are trusted");
    let trusted = fetch_with(&["--trust-keys-from-https"]);
    assert_eq!(trusted.code, 0, "{}", trusted.describe());
    let key_file = config
        .local
        .join("trustedkeys/prefix.d/127.0.0.1")
        .join(owner.fingerprint());
    assert!(key_file.is_file(), "{}", trusted.describe());
}

#[test]
fn downloads_show_progress_on_a_terminal() {
    let Some(h) = harness("downloads_show_progress_on_a_terminal") else {
        return;
    };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("downloads_show_progress_on_a_terminal: skipped: needs script (bsdutils)");
        return;
    }
    let server = Server::start();
    server.route("/app.aci", Route::ok(image_bytes(&h, &AciSpec::busybox(NAME))));
    let command = format!(
        "{} --dir={} fetch --insecure-options=image,http {}",
        common::bin().display(),
        h.dir.display(),
        server.url("/app.aci")
    );
    // script(1) gives rkt a pseudo-terminal and copies what it drew to stdout.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert!(drawn.contains("Downloading"), "{drawn}");
    assert!(drawn.contains("sha512-"), "{drawn}");
}
