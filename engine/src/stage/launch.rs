//! From a pod manifest and an app's rootfs to a launch plan: the exact argv,
//! environment, credentials, working directory and bind mounts of one app.
//!
//! One definition shared by every stage1 (fly in stage0's child, the stage1 init
//! inside nspawn pods and VMs), so an app starts the same way everywhere.
//!
//! Everything read from the image (`/etc/passwd`, `/etc/group`, files named as
//! user or group) is opened through [`fsutil::open_in_root`], so an image's symlink
//! can never make the planner read a file of the host.

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::fsutil;
use crate::pod::layout;
use crate::schema::{App, PodManifest, RuntimeApp, VolumeKind};

/// A fully resolved app, ready for a stage1 to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLaunch {
    pub name: String,
    /// argv[0] is the program as the image names it; resolved against PATH at exec.
    pub argv: Vec<String>,
    /// Final environment, in a stable order, with rkt's precedence applied.
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub supplementary_gids: Vec<u32>,
    /// Absolute path inside the app's rootfs.
    pub working_directory: String,
    pub binds: Vec<VolumeBind>,
}

impl AppLaunch {
    /// The value of `name` in the planned environment.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A volume bound into the app: `source` on the host, `target` inside the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub volume: String,
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    pub recursive: bool,
}

/// Why an app cannot be planned; every message names the app.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("app {app:?}: not in the pod manifest")]
    UnknownApp { app: String },
    #[error("app {app:?}: the pod manifest has no app section (nothing to execute)")]
    NoAppSection { app: String },
    #[error("app {app:?}: exec is empty")]
    EmptyExec { app: String },
    #[error("app {app:?}: {what} contains a NUL byte")]
    NulByte { app: String, what: String },
    #[error("app {app:?}: environment variable name {name:?} is invalid")]
    InvalidEnvName { app: String, name: String },
    #[error("app {app:?}: {what} is empty")]
    EmptyIdentity { app: String, what: &'static str },
    #[error("app {app:?}: user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { app: String, user: String },
    #[error("app {app:?}: group {group:?} not found in the image's /etc/group")]
    UnknownGroup { app: String, group: String },
    #[error("app {app:?}: reading {path} in the image: {source}")]
    ImageRead {
        app: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("app {app:?}: working directory {dir:?} is not an absolute path")]
    RelativeWorkingDirectory { app: String, dir: String },
    #[error("app {app:?}: mount at {target:?} names volume {volume:?}, which the pod does not define")]
    UnknownVolume {
        app: String,
        volume: String,
        target: String,
    },
    #[error("app {app:?}: host volume {volume:?} has no source")]
    HostVolumeWithoutSource { app: String, volume: String },
    #[error("app {app:?}: mount of volume {volume:?} has an empty target path")]
    EmptyMountTarget { app: String, volume: String },
}

/// rkt's default PATH for apps.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Plans `app` of the pod at `pod_dir`. `rootfs` is a directory fd of the app's
/// root filesystem as the app will see it (for an overlay: the mounted overlay).
///
/// The manifest's `RuntimeApp.app` is the effective app: stage0 merged the image's
/// app with `--exec`, args, `--set-env` and `--inherit-env` at prepare time, so it is
/// the only thing read here.
pub fn plan_app(
    pod_dir: &Path,
    manifest: &PodManifest,
    app: &str,
    rootfs: BorrowedFd<'_>,
) -> Result<AppLaunch, LaunchError> {
    let runtime = manifest
        .app(app)
        .ok_or_else(|| LaunchError::UnknownApp { app: app.to_string() })?;
    let spec = runtime
        .app
        .as_ref()
        .ok_or_else(|| LaunchError::NoAppSection { app: app.to_string() })?;
    if spec.exec.is_empty() {
        return Err(LaunchError::EmptyExec { app: app.to_string() });
    }
    for (i, arg) in spec.exec.iter().enumerate() {
        if arg.contains('\0') {
            return Err(LaunchError::NulByte {
                app: app.to_string(),
                what: format!("exec argument {i}"),
            });
        }
    }

    let ids = Identity::resolve(app, spec, rootfs)?;
    let env = plan_env(app, spec, &ids)?;

    let working_directory = match spec.working_directory.as_deref() {
        None | Some("") => "/".to_string(),
        Some(dir) if dir.starts_with('/') => dir.to_string(),
        Some(dir) => {
            return Err(LaunchError::RelativeWorkingDirectory {
                app: app.to_string(),
                dir: dir.to_string(),
            });
        }
    };

    let binds = plan_binds(pod_dir, manifest, runtime, spec)?;

    Ok(AppLaunch {
        name: app.to_string(),
        argv: spec.exec.clone(),
        env,
        uid: ids.uid,
        gid: ids.gid,
        supplementary_gids: spec.supplementary_gids.clone(),
        working_directory,
        binds,
    })
}

/// The credentials of the app and what the image's passwd says about its user.
struct Identity {
    uid: u32,
    gid: u32,
    /// The passwd entry of `uid`, when the image has one.
    user: Option<PasswdEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    home: String,
    shell: String,
}

impl Identity {
    fn resolve(app: &str, spec: &App, rootfs: BorrowedFd<'_>) -> Result<Self, LaunchError> {
        if spec.user.is_empty() {
            return Err(LaunchError::EmptyIdentity {
                app: app.to_string(),
                what: "user",
            });
        }
        if spec.group.is_empty() {
            return Err(LaunchError::EmptyIdentity {
                app: app.to_string(),
                what: "group",
            });
        }
        // passwd is read at most once: for a user name, or for HOME/SHELL/USER of a uid.
        let passwd = read_image_file(app, rootfs, "/etc/passwd")?;
        let entries: Vec<PasswdEntry> = passwd.as_deref().map(parse_passwd).unwrap_or_default();

        let uid = match id_of(app, rootfs, &spec.user)? {
            Some(uid) => uid,
            None => entries
                .iter()
                .find(|e| e.name == spec.user)
                .map(|e| e.uid)
                .ok_or_else(|| LaunchError::UnknownUser {
                    app: app.to_string(),
                    user: spec.user.clone(),
                })?,
        };
        let gid = match id_of_group(app, rootfs, &spec.group)? {
            Some(gid) => gid,
            None => {
                let group = read_image_file(app, rootfs, "/etc/group")?;
                group
                    .as_deref()
                    .and_then(|text| find_group(text, &spec.group))
                    .ok_or_else(|| LaunchError::UnknownGroup {
                        app: app.to_string(),
                        group: spec.group.clone(),
                    })?
            }
        };
        let user = entries.into_iter().find(|e| e.uid == uid);
        Ok(Identity { uid, gid, user })
    }
}

/// appc's user field: a number, an absolute path of a file in the image (its
/// owner), or a name (None here: looked up by the caller).
fn id_of(app: &str, rootfs: BorrowedFd<'_>, user: &str) -> Result<Option<u32>, LaunchError> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok(Some(n));
    }
    if user.starts_with('/') {
        return owner_of(app, rootfs, user).map(|m| Some(m.uid()));
    }
    Ok(None)
}

fn id_of_group(app: &str, rootfs: BorrowedFd<'_>, group: &str) -> Result<Option<u32>, LaunchError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(Some(n));
    }
    if group.starts_with('/') {
        return owner_of(app, rootfs, group).map(|m| Some(m.gid()));
    }
    Ok(None)
}

fn owner_of(app: &str, rootfs: BorrowedFd<'_>, path: &str) -> Result<std::fs::Metadata, LaunchError> {
    let read_err = |source: std::io::Error| LaunchError::ImageRead {
        app: app.to_string(),
        path: path.to_string(),
        source,
    };
    let fd = fsutil::open_in_root(rootfs, Path::new(path), OFlag::O_PATH, Mode::empty()).map_err(read_err)?;
    // fstat works on O_PATH fds; std's File::metadata is exactly fstat.
    std::fs::File::from(fd).metadata().map_err(read_err)
}

/// Reads a small text file of the image; `None` when it does not exist.
fn read_image_file(app: &str, rootfs: BorrowedFd<'_>, path: &str) -> Result<Option<String>, LaunchError> {
    let read_err = |source: std::io::Error| LaunchError::ImageRead {
        app: app.to_string(),
        path: path.to_string(),
        source,
    };
    let fd = match fsutil::open_in_root(
        rootfs,
        Path::new(path),
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(1 << 20) as usize);
    file.read_to_end(&mut bytes).map_err(read_err)?;
    // Non-UTF-8 bytes in a GECOS field must not make every user unknown.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines and comments are skipped.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let _gid = f.next()?;
            let _gecos = f.next()?;
            let home = f.next()?;
            let shell = f.next().unwrap_or("");
            if name.is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: name.to_string(),
                uid,
                home: home.to_string(),
                shell: shell.to_string(),
            })
        })
        .collect()
}

/// `name:password:gid:members`: the gid of the first group called `name`.
fn find_group(text: &str, name: &str) -> Option<u32> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        f.next()?.parse().ok()
    })
}

/// rkt's precedence, later wins: defaults < the app's environment (which already
/// holds --inherit-env < image < --set-env) < `AC_APP_NAME`. A variable keeps the
/// position it first appeared at, so the order is stable and has no duplicates.
fn plan_env(app: &str, spec: &App, ids: &Identity) -> Result<Vec<(String, String)>, LaunchError> {
    let user = ids.user.as_ref();
    let home = match user {
        Some(u) if !u.home.is_empty() => u.home.clone(),
        _ if ids.uid == 0 => "/root".to_string(),
        _ => "/".to_string(),
    };
    let name = user
        .map(|u| u.name.clone())
        .unwrap_or_else(|| ids.uid.to_string());
    let shell = match user {
        Some(u) if !u.shell.is_empty() => u.shell.clone(),
        _ => "/bin/sh".to_string(),
    };

    let mut env: Vec<(String, String)> = Vec::with_capacity(6 + spec.environment.len());
    env.push(("PATH".into(), DEFAULT_PATH.into()));
    env.push(("HOME".into(), home));
    env.push(("USER".into(), name.clone()));
    env.push(("LOGNAME".into(), name));
    env.push(("SHELL".into(), shell));
    for var in &spec.environment {
        if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
            return Err(LaunchError::InvalidEnvName {
                app: app.to_string(),
                name: var.name.clone(),
            });
        }
        if var.value.contains('\0') {
            return Err(LaunchError::NulByte {
                app: app.to_string(),
                what: format!("environment variable {}", var.name),
            });
        }
        set_env(&mut env, &var.name, &var.value);
    }
    set_env(&mut env, "AC_APP_NAME", app);
    Ok(env)
}

fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => value.clone_into(v),
        None => env.push((name.to_string(), value.to_string())),
    }
}

fn plan_binds(
    pod_dir: &Path,
    manifest: &PodManifest,
    runtime: &RuntimeApp,
    spec: &App,
) -> Result<Vec<VolumeBind>, LaunchError> {
    let app = runtime.name.as_str();
    runtime
        .mounts
        .iter()
        .map(|mount| {
            let name = mount.volume.as_str();
            let volume = manifest
                .volumes
                .iter()
                .find(|v| v.name.as_str() == name)
                .ok_or_else(|| LaunchError::UnknownVolume {
                    app: app.to_string(),
                    volume: name.to_string(),
                    target: mount.path.clone(),
                })?;
            if mount.path.is_empty() {
                return Err(LaunchError::EmptyMountTarget {
                    app: app.to_string(),
                    volume: name.to_string(),
                });
            }
            let source = match volume.kind {
                VolumeKind::Host => match volume.source.as_deref() {
                    Some(s) if !s.is_empty() => PathBuf::from(s),
                    _ => {
                        return Err(LaunchError::HostVolumeWithoutSource {
                            app: app.to_string(),
                            volume: name.to_string(),
                        });
                    }
                },
                VolumeKind::Empty => layout::empty_volume(pod_dir, name),
            };
            // rkt: the volume's own readOnly wins; without one, the image's
            // mountPoint of the same name decides; the default is read-write.
            let read_only = volume.read_only.unwrap_or_else(|| {
                spec.mount_points
                    .iter()
                    .any(|mp| mp.name.as_str() == name && mp.read_only)
            });
            // Host volumes are recursive binds unless said otherwise (rkt >= 1.0);
            // an empty volume is a fresh directory with nothing below to recurse into.
            let recursive = volume.recursive.unwrap_or(volume.kind == VolumeKind::Host);
            Ok(VolumeBind {
                volume: name.to_string(),
                source,
                target: mount.path.clone(),
                read_only,
                recursive,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests build their own inputs; a panic is a failure report
mod tests {
    use super::*;
    use crate::schema::{ACName, EnvVar, Mount};
    use std::os::fd::{AsFd, OwnedFd};

    struct Image {
        dir: tempfile::TempDir,
        root: OwnedFd,
    }

    impl Image {
        fn new(passwd: Option<&str>, group: Option<&str>) -> Image {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            if let Some(p) = passwd {
                std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
            }
            if let Some(g) = group {
                std::fs::write(dir.path().join("etc/group"), g).unwrap();
            }
            let root = fsutil::open_dir(dir.path()).unwrap();
            Image { dir, root }
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.root.as_fd()
        }
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/ash\n\
                          # a comment\n\
                          broken line\n\
                          nginx:x:101:102:nginx:/var/lib/nginx:/sbin/nologin\n\
                          nobody:x:65534:65534:nobody:/nonexistent:\n";
    const GROUP: &str = "root:x:0:\nwww:x:102:nginx\n";

    fn manifest(app: serde_json::Value, extra: serde_json::Value) -> PodManifest {
        let mut v = serde_json::json!({
            "acVersion": "0.8.11",
            "acKind": "PodManifest",
            "apps": [{
                "name": "web",
                "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
                "app": app,
            }],
        });
        if let serde_json::Value::Object(extra) = extra {
            for (k, val) in extra {
                if k == "mounts" {
                    v["apps"][0]["mounts"] = val;
                } else {
                    v[k] = val;
                }
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn app(user: &str, group: &str) -> serde_json::Value {
        serde_json::json!({"exec": ["/bin/web", "--port=80"], "user": user, "group": group})
    }

    fn plan(m: &PodManifest, img: &Image) -> Result<AppLaunch, LaunchError> {
        plan_app(Path::new("/pods/p1"), m, "web", img.fd())
    }

    #[test]
    fn names_resolve_through_the_images_passwd_and_group() {
        let img = Image::new(Some(PASSWD), Some(GROUP));
        let mut m = manifest(app("nginx", "www"), serde_json::json!({}));
        // Set on the struct: the JSON spelling is the schema module's business.
        if let Some(a) = m.apps[0].app.as_mut() {
            a.supplementary_gids = vec![5, 7];
        }
        let l = plan(&m, &img).unwrap();
        assert_eq!((l.uid, l.gid), (101, 102));
        assert_eq!(l.supplementary_gids, vec![5, 7]);
        assert_eq!(l.argv, vec!["/bin/web", "--port=80"]);
        assert_eq!(l.working_directory, "/");
        assert_eq!(l.env_var("HOME"), Some("/var/lib/nginx"));
        assert_eq!(l.env_var("USER"), Some("nginx"));
        assert_eq!(l.env_var("LOGNAME"), Some("nginx"));
        assert_eq!(l.env_var("SHELL"), Some("/sbin/nologin"));
    }

    #[test]
    fn numeric_ids_need_no_passwd_and_get_rkts_fallbacks() {
        let img = Image::new(None, None);
        let l = plan(&manifest(app("0", "0"), serde_json::json!({})), &img).unwrap();
        assert_eq!((l.uid, l.gid), (0, 0));
        assert_eq!(l.env_var("HOME"), Some("/root"));
        assert_eq!(l.env_var("USER"), Some("0"));
        assert_eq!(l.env_var("SHELL"), Some("/bin/sh"));

        let l = plan(&manifest(app("1000", "1000"), serde_json::json!({})), &img).unwrap();
        assert_eq!(l.env_var("HOME"), Some("/"));
        assert_eq!(l.env_var("LOGNAME"), Some("1000"));
    }

    #[test]
    fn numeric_uid_still_takes_home_and_name_from_passwd() {
        let img = Image::new(Some(PASSWD), None);
        let l = plan(&manifest(app("65534", "0"), serde_json::json!({})), &img).unwrap();
        assert_eq!(l.env_var("USER"), Some("nobody"));
        assert_eq!(l.env_var("HOME"), Some("/nonexistent"));
        // An empty shell field falls back like a missing entry.
        assert_eq!(l.env_var("SHELL"), Some("/bin/sh"));
    }

    #[test]
    fn user_and_group_may_name_a_file_whose_owner_is_used() {
        let img = Image::new(None, None);
        let f = img.dir.path().join("etc/owned");
        std::fs::write(&f, "").unwrap();
        std::os::unix::fs::chown(&f, Some(4321), Some(8765)).ok();
        let meta = std::fs::metadata(&f).unwrap();
        let l = plan(
            &manifest(app("/etc/owned", "/etc/owned"), serde_json::json!({})),
            &img,
        )
        .unwrap();
        assert_eq!((l.uid, l.gid), (meta.uid(), meta.gid()));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_app() {
        let img = Image::new(Some(PASSWD), Some(GROUP));
        let err = plan(&manifest(app("httpd", "0"), serde_json::json!({})), &img).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"app "web": user "httpd" not found in the image's /etc/passwd"#
        );
        let err = plan(&manifest(app("0", "staff"), serde_json::json!({})), &img).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"app "web": group "staff" not found in the image's /etc/group"#
        );
        let img = Image::new(None, None);
        let err = plan(&manifest(app("nginx", "0"), serde_json::json!({})), &img).unwrap_err();
        assert!(matches!(err, LaunchError::UnknownUser { .. }), "{err}");
    }

    #[test]
    fn a_symlinked_passwd_never_reads_the_host() {
        // The "host" passwd knows nginx; the image's /etc/passwd points at it by
        // absolute path. Resolved inside the image root that path does not exist.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "nginx:x:101:101::/home/nginx:/bin/sh\n").unwrap();
        let host_group = host.path().join("group");
        std::fs::write(&host_group, "www:x:102:\n").unwrap();
        let img = Image::new(None, None);
        std::os::unix::fs::symlink(&host_passwd, img.dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(&host_group, img.dir.path().join("etc/group")).unwrap();

        let err = plan(&manifest(app("nginx", "0"), serde_json::json!({})), &img).unwrap_err();
        assert!(matches!(err, LaunchError::UnknownUser { .. }), "{err}");
        let err = plan(&manifest(app("0", "www"), serde_json::json!({})), &img).unwrap_err();
        assert!(matches!(err, LaunchError::UnknownGroup { .. }), "{err}");
        // `..` does not climb out either.
        let img2 = Image::new(None, None);
        let rel = format!("../../../../../../../..{}", host_passwd.display());
        std::os::unix::fs::symlink(rel, img2.dir.path().join("etc/passwd")).unwrap();
        let err = plan(&manifest(app("nginx", "0"), serde_json::json!({})), &img2).unwrap_err();
        assert!(matches!(err, LaunchError::UnknownUser { .. }), "{err}");
    }

    #[test]
    fn a_symlinked_passwd_inside_the_image_is_followed_inside_it() {
        let img = Image::new(None, None);
        std::fs::create_dir_all(img.dir.path().join("usr/share")).unwrap();
        std::fs::write(img.dir.path().join("usr/share/passwd"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/usr/share/passwd", img.dir.path().join("etc/passwd")).unwrap();
        let l = plan(&manifest(app("nginx", "0"), serde_json::json!({})), &img).unwrap();
        assert_eq!(l.uid, 101);
    }

    #[test]
    fn env_precedence_is_defaults_then_app_then_ac_app_name() {
        let img = Image::new(Some(PASSWD), Some(GROUP));
        let mut a = app("nginx", "www");
        // As stage0 writes it: --inherit-env < image < --set-env already merged.
        a["environment"] = serde_json::json!([
            {"name": "FOO", "value": "set-env"},
            {"name": "HOME", "value": "/srv"},
            {"name": "PATH", "value": "/opt/bin"},
            {"name": "AC_APP_NAME", "value": "spoofed"},
            {"name": "BAR", "value": "x=y"},
        ]);
        let l = plan(&manifest(a, serde_json::json!({})), &img).unwrap();
        let got: Vec<(&str, &str)> = l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("PATH", "/opt/bin"),
                ("HOME", "/srv"),
                ("USER", "nginx"),
                ("LOGNAME", "nginx"),
                ("SHELL", "/sbin/nologin"),
                ("FOO", "set-env"),
                ("AC_APP_NAME", "web"),
                ("BAR", "x=y"),
            ]
        );
    }

    #[test]
    fn defaults_alone_end_with_ac_app_name() {
        let img = Image::new(None, None);
        let l = plan(&manifest(app("0", "0"), serde_json::json!({})), &img).unwrap();
        let names: Vec<&str> = l.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "AC_APP_NAME"]);
        assert_eq!(l.env_var("PATH"), Some(DEFAULT_PATH));
    }

    #[test]
    fn bad_env_names_and_nul_bytes_are_refused() {
        let img = Image::new(None, None);
        // The schema refuses these at parse; plan_app also guards manifests built in code.
        let mut m = manifest(app("0", "0"), serde_json::json!({}));
        if let Some(a) = m.apps[0].app.as_mut() {
            a.environment = vec![EnvVar {
                name: "A=B".into(),
                value: "1".into(),
            }];
        }
        let err = plan(&m, &img).unwrap_err();
        assert!(matches!(err, LaunchError::InvalidEnvName { .. }), "{err}");
        let mut a = app("0", "0");
        a["exec"] = serde_json::json!(["/bin/x", "a\u{0}b"]);
        let err = plan(&manifest(a, serde_json::json!({})), &img).unwrap_err();
        assert!(matches!(err, LaunchError::NulByte { .. }), "{err}");
    }

    #[test]
    fn working_directory_defaults_to_root_and_must_be_absolute() {
        let img = Image::new(None, None);
        let mut a = app("0", "0");
        a["workingDirectory"] = serde_json::json!("/srv/www");
        let l = plan(&manifest(a, serde_json::json!({})), &img).unwrap();
        assert_eq!(l.working_directory, "/srv/www");
        let mut m = manifest(app("0", "0"), serde_json::json!({}));
        if let Some(a) = m.apps[0].app.as_mut() {
            a.working_directory = Some("srv".into());
        }
        let err = plan(&m, &img).unwrap_err();
        assert!(
            matches!(err, LaunchError::RelativeWorkingDirectory { .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_app_section_or_exec_are_errors() {
        let img = Image::new(None, None);
        let mut m = manifest(app("0", "0"), serde_json::json!({}));
        m.apps[0].app = None;
        let err = plan(&m, &img).unwrap_err();
        assert!(matches!(err, LaunchError::NoAppSection { .. }), "{err}");
        let mut a = app("0", "0");
        a["exec"] = serde_json::json!([]);
        let err = plan(&manifest(a, serde_json::json!({})), &img).unwrap_err();
        assert_eq!(err.to_string(), r#"app "web": exec is empty"#);
        let err = plan_app(Path::new("/p"), &m, "db", img.fd()).unwrap_err();
        assert!(matches!(err, LaunchError::UnknownApp { .. }), "{err}");
    }

    #[test]
    fn mounts_become_binds_with_rkt_defaults() {
        let img = Image::new(None, None);
        let mut a = app("0", "0");
        a["mountPoints"] = serde_json::json!([
            {"name": "data", "path": "/data", "readOnly": true},
            {"name": "conf", "path": "/conf", "readOnly": true},
        ]);
        let m = manifest(
            a,
            serde_json::json!({
                "volumes": [
                    {"name": "data", "kind": "host", "source": "/srv/data"},
                    {"name": "conf", "kind": "host", "source": "/etc/app", "readOnly": false, "recursive": false},
                    {"name": "scratch", "kind": "empty"},
                    {"name": "logs", "kind": "host", "source": "/var/log", "readOnly": true},
                ],
                "mounts": [
                    {"volume": "data", "path": "/data"},
                    {"volume": "conf", "path": "/etc/app"},
                    {"volume": "scratch", "path": "/scratch"},
                    {"volume": "logs", "path": "/logs"},
                ],
            }),
        );
        let l = plan(&m, &img).unwrap();
        let bind = |volume: &str, source: &str, target: &str, read_only, recursive| VolumeBind {
            volume: volume.into(),
            source: source.into(),
            target: target.into(),
            read_only,
            recursive,
        };
        assert_eq!(
            l.binds,
            vec![
                // The image's mountPoint says read-only and the volume is silent.
                bind("data", "/srv/data", "/data", true, true),
                // The volume's explicit readOnly=false wins over the mountPoint.
                bind("conf", "/etc/app", "/etc/app", false, false),
                bind("scratch", "/pods/p1/volumes/scratch", "/scratch", false, false),
                bind("logs", "/var/log", "/logs", true, true),
            ]
        );
    }

    #[test]
    fn a_mount_of_an_unknown_volume_or_a_sourceless_host_volume_is_an_error() {
        let img = Image::new(None, None);
        let mut m = manifest(app("0", "0"), serde_json::json!({}));
        m.apps[0].mounts = vec![Mount {
            volume: ACName::new("nope").unwrap(),
            path: "/x".into(),
        }];
        let err = plan(&m, &img).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"app "web": mount at "/x" names volume "nope", which the pod does not define"#
        );
        let mut m = manifest(
            app("0", "0"),
            serde_json::json!({
                "volumes": [{"name": "v", "kind": "host", "source": "/srv"}],
                "mounts": [{"volume": "v", "path": "/x"}],
            }),
        );
        m.volumes[0].source = None;
        let err = plan(&m, &img).unwrap_err();
        assert!(
            matches!(err, LaunchError::HostVolumeWithoutSource { .. }),
            "{err}"
        );
    }

    #[test]
    fn passwd_parsing_tolerates_junk() {
        let e = parse_passwd("a:x:1:1::/h:/s\n:x:2:2::/:/\nb:x:notanumber:1::/:/\nc:x:3:3::/c\n");
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(e[1].shell, "");
        assert_eq!(find_group("# x\nwheel:x:10:a,b\n", "wheel"), Some(10));
        assert_eq!(find_group("wheel:x:ten:\n", "wheel"), None);
    }
}
