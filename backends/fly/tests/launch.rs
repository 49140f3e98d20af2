//! Root integration tests of the fly launcher against a real busybox image.
//!
//! Each test lays out a pod directory by hand (the pod state machine is not
//! needed: `launch` is the whole of `Stage1::run` but the state transition) in its
//! own tempdir and checks, besides its own assertion, that the host's mount table
//! gained nothing. Tests are serialized: signal forwarding is per process.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod launch {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use rkt_backend_fly::{FlyError, FlyStage1, enter_app, launch};
    use rkt_engine::pod::layout::{self, AppRootfs};
    use rkt_engine::pod::{PodInfo, PodState};
    use rkt_engine::schema::PodManifest;
    use rkt_engine::stage::Stage1;
    use serde_json::json;

    static SERIAL: Mutex<()> = Mutex::new(());

    const APP: &str = "app";
    const APPLETS: &[&str] = &[
        "sh", "env", "id", "pwd", "cat", "touch", "sleep", "test", "grep", "true", "ls", "echo", "readlink",
    ];

    fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            true
        } else {
            eprintln!("skipped: needs root");
            false
        }
    }

    /// A busybox image: /bin/busybox plus applet symlinks, passwd, group, /srv.
    fn make_image(root: &Path) {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("srv")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1234:2345:web:/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nwebgrp:x:2345:web\n").unwrap();
        std::fs::write(root.join("etc/motd"), "orig\n").unwrap();
    }

    struct TestPod {
        tmp: tempfile::TempDir,
        pod: PathBuf,
        /// Where the image's files are on the host (the copy, or the overlay's lower).
        image: PathBuf,
        /// A host directory every app can write to, bound at /out.
        out: PathBuf,
    }

    impl TestPod {
        fn new(overlay: bool) -> TestPod {
            let tmp = tempfile::tempdir().unwrap();
            let pod = tmp.path().join("pod");
            std::fs::create_dir_all(layout::appsinfo(&pod, APP)).unwrap();
            let (image, spec) = if overlay {
                let lower = tmp.path().join("lower");
                let spec = AppRootfs::Overlay { lower: lower.clone() };
                (lower, spec)
            } else {
                (layout::app_rootfs(&pod, APP), AppRootfs::Copy)
            };
            make_image(&image);
            std::fs::write(
                layout::app_rootfs_spec(&pod, APP),
                serde_json::to_vec(&spec).unwrap(),
            )
            .unwrap();
            let out = tmp.path().join("out");
            std::fs::create_dir(&out).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
            TestPod { tmp, pod, image, out }
        }

        /// Writes the pod manifest: `app` is the effective app; /out is always mounted.
        fn manifest(
            &self,
            app: serde_json::Value,
            mut volumes: Vec<serde_json::Value>,
            mut mounts: Vec<serde_json::Value>,
        ) -> PodManifest {
            volumes.push(json!({"name": "out", "kind": "host", "source": self.out.to_str().unwrap()}));
            mounts.push(json!({"volume": "out", "path": "/out"}));
            let m: PodManifest = serde_json::from_value(json!({
                "acVersion": "0.8.11",
                "acKind": "PodManifest",
                "apps": [{"name": APP, "image": {"id": "sha512-00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"}, "app": app, "mounts": mounts}],
                "volumes": volumes,
            }))
            .unwrap();
            self.write(&m);
            m
        }

        fn write(&self, m: &PodManifest) {
            std::fs::write(layout::manifest(&self.pod), m.to_json()).unwrap();
            // What stage0's prepare does before any stage1 sees the pod.
            layout::create_host_dirs(&self.pod, m).unwrap();
        }

        fn out(&self, name: &str) -> String {
            std::fs::read_to_string(self.out.join(name)).unwrap_or_else(|e| panic!("/out/{name}: {e}"))
        }

        fn info(&self, state: PodState) -> PodInfo {
            PodInfo {
                uuid: uuid::Uuid::nil(),
                state,
                path: self.pod.clone(),
            }
        }
    }

    fn sh(script: &str) -> serde_json::Value {
        json!({"exec": ["sh", "-c", script], "user": "0", "group": "0"})
    }

    fn mount_points() -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect()
    }

    /// Runs `f` serialized, then asserts the host's mount table gained nothing
    /// below the test's tempdir or at any path fly mounts on inside an app.
    fn checked<T>(tp: &TestPod, f: impl FnOnce() -> T) -> T {
        let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = mount_points();
        let result = f();
        let after = mount_points();
        let watched = [
            "/dev", "/proc", "/sys", "/tmp", "/etc", "/out", "/ro", "/srv", "/scratch",
        ];
        let leaked: Vec<&String> = after
            .iter()
            .filter(|p| !before.contains(p))
            .filter(|p| Path::new(p.as_str()).starts_with(tp.tmp.path()) || watched.contains(&p.as_str()))
            .collect();
        assert!(leaked.is_empty(), "mounts left on the host: {leaked:?}");
        let count = |v: &[String], p: &str| v.iter().filter(|x| x.as_str() == p).count();
        for p in watched {
            assert_eq!(count(&before, p), count(&after, p), "mount count changed at {p}");
        }
        result
    }

    #[test]
    fn launch_exit_code_propagates_and_is_recorded() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        tp.manifest(sh("exit 7"), vec![], vec![]);
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!((exit.app.as_str(), exit.code), (APP, 7));
        let status = std::fs::read_to_string(layout::app_status(&tp.pod, APP)).unwrap();
        assert_eq!(status, "7");
        let pid: i32 = std::fs::read_to_string(tp.pod.join(layout::PID))
            .unwrap()
            .parse()
            .unwrap();
        assert!(pid > 1);
    }

    #[test]
    fn launch_app_gets_default_signals_and_no_stray_fds() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        tp.manifest(
            sh("grep -E '^Sig(Ign|Blk)' /proc/self/status > /out/sig; ls /proc/self/fd > /out/fds"),
            vec![],
            vec![],
        );
        // A directory fd of the pod, CLOEXEC like the pod lock: must not reach the app.
        // Moved to a high number so it cannot be confused with ls's own fd 3.
        let dir = rkt_engine::fsutil::open_dir(&tp.pod).unwrap();
        let lock = nix::fcntl::fcntl(&dir, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(200)).unwrap();
        let lock_fd = lock.to_string();
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        // Ignored signals pass through exec (that is how nohup works), except
        // SIGPIPE, which only Rust's runtime ignored.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let own_ignored = own
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .map(|h| u64::from_str_radix(h, 16).unwrap())
            .unwrap();
        let pipe = 1u64 << (libc::SIGPIPE - 1);
        assert_ne!(own_ignored & pipe, 0, "the test runs with SIGPIPE ignored");
        let want = own_ignored & !pipe;
        assert_eq!(
            tp.out("sig"),
            format!("SigBlk:\t0000000000000000\nSigIgn:\t{want:016x}\n")
        );
        let fds: Vec<String> = tp.out("fds").lines().map(str::to_string).collect();
        assert!(!fds.contains(&lock_fd), "lock fd {lock_fd} leaked: {fds:?}");
        nix::unistd::close(lock).unwrap();
        // stdin, stdout, stderr, the directory ls itself reads, and whatever this
        // test process inherited without CLOEXEC (cargo's jobserver): fly passes
        // inherited fds through like any exec, and adds none of its own.
        let mut allowed: Vec<String> = ["0", "1", "2", "3"].map(String::from).to_vec();
        allowed.extend(inherited_fds());
        assert!(fds.iter().all(|f| allowed.contains(f)), "{fds:?} vs {allowed:?}");
    }

    /// This process's fds that would survive exec.
    fn inherited_fds() -> Vec<String> {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let names: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names
            .into_iter()
            .filter(|n| {
                let fd: i32 = n.parse().unwrap();
                // SAFETY: borrowed for one fcntl(F_GETFD); if it is the read_dir fd
                // (closed by now), F_GETFD fails harmlessly with EBADF.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                fcntl(fd, FcntlArg::F_GETFD)
                    .map(|f| !FdFlag::from_bits_truncate(f).contains(FdFlag::FD_CLOEXEC))
                    .unwrap_or(false)
            })
            .collect()
    }

    #[test]
    fn launch_killed_by_a_signal_is_128_plus_n() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        tp.manifest(sh("kill -9 $$"), vec![], vec![]);
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 128 + 9);
    }

    #[test]
    fn launch_env_cwd_and_credentials_are_seen_inside() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let app = json!({
            "exec": ["sh", "-c", "env > /out/env; pwd > /out/pwd; id -u > /out/uid; id -g > /out/gid; id -G > /out/groups"],
            "user": "web",
            "group": "webgrp",
            "workingDirectory": "/srv",
            "environment": [
                {"name": "HOME", "value": "/home/override"},
                {"name": "FOO", "value": "set-env"},
                {"name": "AC_APP_NAME", "value": "spoofed"},
            ],
        });
        let mut m = tp.manifest(app, vec![], vec![]);
        // Set on the struct: the JSON spelling of supplementaryGIDs is the schema's.
        m.apps[0].app.as_mut().unwrap().supplementary_gids = vec![3456];
        tp.write(&m);

        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        let env = tp.out("env");
        let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| -> Vec<&str> { vars.iter().filter(|(n, _)| *n == k).map(|(_, v)| *v).collect() };
        assert_eq!(
            get("PATH"),
            ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        );
        assert_eq!(get("HOME"), ["/home/override"]);
        assert_eq!(get("USER"), ["web"]);
        assert_eq!(get("LOGNAME"), ["web"]);
        assert_eq!(get("SHELL"), ["/bin/sh"]);
        assert_eq!(get("FOO"), ["set-env"]);
        assert_eq!(get("AC_APP_NAME"), [APP]);
        assert_eq!(tp.out("pwd").trim(), "/srv");
        assert_eq!(tp.out("uid").trim(), "1234");
        assert_eq!(tp.out("gid").trim(), "2345");
        assert_eq!(tp.out("groups").trim(), "2345 3456");
    }

    #[test]
    fn launch_binds_volumes_read_write_read_only_file_and_empty() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let ro = tp.tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(ro.join("hello"), "hello from the host\n").unwrap();
        let file = tp.tmp.path().join("hostfile");
        std::fs::write(&file, "a single file\n").unwrap();
        let script = "cat /ro/hello > /out/ro-content; \
                      if touch /ro/new 2>/dev/null; then echo writable; else echo readonly; fi > /out/ro-state; \
                      cat /etc/hostfile > /out/file; \
                      if echo x >> /etc/hostfile 2>/dev/null; then echo writable; else echo readonly; fi > /out/file-state; \
                      touch /scratch/made-inside";
        tp.manifest(
            sh(script),
            vec![
                json!({"name": "ro", "kind": "host", "source": ro.to_str().unwrap(), "readOnly": true}),
                json!({"name": "file", "kind": "host", "source": file.to_str().unwrap(), "readOnly": true}),
                json!({"name": "scratch", "kind": "empty", "mode": "0700"}),
            ],
            vec![
                json!({"volume": "ro", "path": "/ro"}),
                json!({"volume": "file", "path": "/etc/hostfile"}),
                json!({"volume": "scratch", "path": "/scratch"}),
            ],
        );
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        assert_eq!(tp.out("ro-content"), "hello from the host\n");
        assert_eq!(tp.out("ro-state").trim(), "readonly");
        assert!(!ro.join("new").exists());
        assert_eq!(tp.out("file"), "a single file\n");
        assert_eq!(tp.out("file-state").trim(), "readonly");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a single file\n");
        let scratch = layout::empty_volume(&tp.pod, "scratch");
        assert!(scratch.join("made-inside").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&scratch).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // The file target was created in the image (a copy here), not on the host.
        assert!(tp.image.join("etc/hostfile").is_file());
    }

    /// `readOnly` means the whole volume: a submount inside a recursive host volume
    /// is read-only in the pod too (a bind plus remount covered only the top).
    #[test]
    fn launch_read_only_recursive_volume_is_read_only_all_the_way_down() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let ro = tp.tmp.path().join("ro");
        let sub = ro.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        struct Detach(PathBuf);
        impl Drop for Detach {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _detach = Detach(sub.clone());
        tp.manifest(
            sh("for d in /ro /ro/sub; do if touch $d/new 2>/dev/null; then echo writable; else echo readonly; fi; done > /out/states"),
            vec![json!({"name": "ro", "kind": "host", "source": ro.to_str().unwrap(), "readOnly": true, "recursive": true})],
            vec![json!({"volume": "ro", "path": "/ro"})],
        );
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        assert_eq!(
            tp.out("states"),
            "readonly\nreadonly\n",
            "top and submount both read-only"
        );
        assert!(!sub.join("new").exists() && !ro.join("new").exists());
        // The host's own view of the submount is untouched: still writable there.
        std::fs::write(sub.join("host-can-write"), b"x").unwrap();
    }

    /// A mountPoint path with `..` (image data) must name one directory for the
    /// bind and for the read-only remount that follows it.
    #[test]
    fn launch_read_only_volume_at_a_dotdot_target_stays_read_only() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let ro = tp.tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        tp.manifest(
            // Wherever the volume ended up, try writing into it.
            sh("touch /tmp/new /tmp/x/new 2>/dev/null; exit 0"),
            vec![json!({"name": "ro", "kind": "host", "source": ro.to_str().unwrap(), "readOnly": true})],
            vec![json!({"volume": "ro", "path": "/tmp/x/.."})],
        );
        // Refusing the target is as good as keeping it read-only; writable is not.
        match checked(&tp, || launch(&tp.pod)) {
            Ok(exit) => assert_eq!(exit.code, 0),
            Err(e) => assert!(e.to_string().contains("volume \"ro\""), "{e}"),
        }
        assert!(!ro.join("new").exists(), "the read-only host volume was written");
    }

    #[test]
    fn launch_overlay_writes_stay_in_the_upper_dir() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(true);
        tp.manifest(
            sh("echo new > /newfile && echo changed > /etc/motd && cat /etc/motd > /out/motd"),
            vec![],
            vec![],
        );
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        assert_eq!(tp.out("motd"), "changed\n");
        assert!(!tp.image.join("newfile").exists());
        assert_eq!(
            std::fs::read_to_string(tp.image.join("etc/motd")).unwrap(),
            "orig\n"
        );
        let upper = layout::overlay_upper(&tp.pod, APP);
        assert_eq!(std::fs::read_to_string(upper.join("newfile")).unwrap(), "new\n");
        // Outside the app's namespace the mount point is just an empty directory.
        let mnt = layout::app_rootfs(&tp.pod, APP);
        assert_eq!(std::fs::read_dir(mnt).unwrap().count(), 0);
    }

    #[test]
    fn launch_overlay_is_volatile_so_its_unmount_syncs_nothing() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(true);
        // The app's own view of its root mount (fields 5 and later of mountinfo).
        tp.manifest(
            sh("while read -r id parent dev root point rest; do if [ \"$point\" = / ]; then echo \"$rest\"; fi; done < /proc/self/mountinfo > /out/root"),
            vec![],
            vec![],
        );
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        let root = tp.out("root");
        assert!(root.contains(" overlay "), "the root is not the overlay: {root}");
        assert!(root.contains("volatile"), "the overlay is not volatile: {root}");
    }

    #[test]
    fn launch_pre_exec_failures_are_clean_errors() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        tp.manifest(
            json!({"exec": ["/bin/nope"], "user": "0", "group": "0"}),
            vec![],
            vec![],
        );
        let err = checked(&tp, || launch(&tp.pod)).unwrap_err();
        assert!(matches!(err, FlyError::Child(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#"fly: exec "/bin/nope": No such file or directory"#
        );
        assert!(!layout::app_status(&tp.pod, APP).exists());

        tp.manifest(
            json!({"exec": ["nope"], "user": "0", "group": "0"}),
            vec![],
            vec![],
        );
        let err = checked(&tp, || launch(&tp.pod)).unwrap_err();
        assert_eq!(err.to_string(), r#"fly: exec "nope": No such file or directory"#);

        tp.manifest(
            json!({"exec": ["/bin/true"], "user": "nginx", "group": "0"}),
            vec![],
            vec![],
        );
        let err = checked(&tp, || launch(&tp.pod)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"fly: app "app": user "nginx" not found in the image's /etc/passwd"#
        );

        tp.manifest(
            json!({"exec": ["/bin/true"], "user": "0", "group": "0", "workingDirectory": "/missing"}),
            vec![],
            vec![],
        );
        let err = checked(&tp, || launch(&tp.pod)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"fly: chdir to working directory "/missing": No such file or directory"#
        );
    }

    #[test]
    fn launch_image_dev_symlinked_to_etc_stays_inside_the_image() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        std::os::unix::fs::symlink("/etc", tp.image.join("dev")).unwrap();
        let host_etc_before = std::fs::read_dir("/etc").unwrap().count();
        tp.manifest(
            sh("test -c /etc/null && grep -q ' /etc ' /proc/self/mountinfo && echo inside > /out/r"),
            vec![],
            vec![],
        );
        let exit = checked(&tp, || launch(&tp.pod)).unwrap();
        assert_eq!(exit.code, 0);
        assert_eq!(tp.out("r").trim(), "inside");
        assert!(!Path::new("/etc/null").exists());
        assert_eq!(std::fs::read_dir("/etc").unwrap().count(), host_etc_before);
    }

    #[test]
    fn launch_image_symlink_to_a_host_path_is_resolved_inside_the_image() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        // The image's /sys names, by absolute path, a directory of the host (not
        // below /tmp: the app's tmpfs would hide it inside the image).
        let host = tempfile::tempdir_in("/var/tmp").unwrap();
        let host_dir = host.path().to_path_buf();
        std::os::unix::fs::symlink(&host_dir, tp.image.join("sys")).unwrap();
        tp.manifest(sh("exit 0"), vec![], vec![]);
        let err = checked(&tp, || launch(&tp.pod)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fly: creating /sys in the app's rootfs: No such file or directory"
        );
        // Once the same path exists inside the image, the host's /sys lands there.
        let inside = tp.image.join(host_dir.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        tp.manifest(
            sh("test -d /sys/kernel && test -d \"$(readlink /sys)/kernel\""),
            vec![],
            vec![],
        );
        assert_eq!(checked(&tp, || launch(&tp.pod)).unwrap().code, 0);
        assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&inside).unwrap().count(), 0);
        assert!(!mount_points().iter().any(|p| Path::new(p).starts_with(&host_dir)));
    }

    /// Mount targets come from the image (its mountPoints, its symlinks). None may
    /// be resolved through the host's /dev, /proc or /sys bound into the app:
    /// creating a target there writes to the host's kernel filesystems (a
    /// directory in the host's devtmpfs, a cgroup in its cgroupfs).
    #[test]
    fn launch_mount_targets_never_create_anything_in_the_hosts_dev() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let tag = format!("rkt-review-{}", std::process::id());
        let direct = Path::new("/dev").join(format!("{tag}-direct"));
        let via_link = Path::new("/dev").join(format!("{tag}-link"));
        std::os::unix::fs::symlink("/dev", tp.image.join("hostdev")).unwrap();
        tp.manifest(
            sh("exit 0"),
            vec![],
            vec![
                json!({"volume": "out", "path": direct.join("x").to_str().unwrap()}),
                json!({"volume": "out", "path": format!("/hostdev/{tag}-link/y")}),
            ],
        );
        let result = checked(&tp, || launch(&tp.pod));
        let created: Vec<&Path> = [&direct, &via_link]
            .into_iter()
            .map(PathBuf::as_path)
            .filter(|p| p.exists())
            .collect();
        for p in &created {
            let _ = std::fs::remove_dir_all(p);
        }
        assert!(created.is_empty(), "created in the host's /dev: {created:?}");
        assert_eq!(result.unwrap().code, 0);
    }

    /// A FIFO in the pod's /out volume that any app user may open.
    fn fifo(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        path
    }

    /// Opens `fifo` for reading, which blocks until the app opens it for writing:
    /// the app itself says "I am running". `opened` fires then; `closed` fires with
    /// what was read once every writer is gone (the app exited or closed it).
    /// Bounded by the caller's `recv_timeout`, never by polling.
    fn watch(fifo: &Path) -> (mpsc::Receiver<()>, mpsc::Receiver<String>) {
        let (opened_tx, opened) = mpsc::channel();
        let (closed_tx, closed) = mpsc::channel();
        let path = fifo.to_path_buf();
        std::thread::spawn(move || {
            let mut file = std::fs::File::open(&path).unwrap();
            let _ = opened_tx.send(());
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut text);
            let _ = closed_tx.send(text);
        });
        (opened, closed)
    }

    const BOUND: Duration = Duration::from_secs(30);

    #[test]
    fn launch_then_enter_and_stop() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        let ready = fifo(&tp.out, "ready");
        tp.manifest(
            sh("touch /tmp/marker; echo up > /out/ready; exec sleep 30"),
            vec![],
            vec![],
        );
        let fly = FlyStage1::default();
        let (_opened, said) = watch(&ready);
        let code = checked(&tp, || {
            std::thread::scope(|s| {
                let running = s.spawn(|| launch(&tp.pod));
                // The app is running (and its pid, recorded before exec, is on disk).
                assert_eq!(
                    said.recv_timeout(BOUND).expect("the app never said it runs"),
                    "up\n"
                );
                let argv = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
                // /tmp is the app's own tmpfs: only visible from inside its namespace.
                assert_eq!(
                    enter_app(&tp.pod, APP, &argv(&["test", "-f", "/tmp/marker"])).unwrap(),
                    0
                );
                let info = tp.info(PodState::Running);
                assert_eq!(fly.enter(&info, APP, &argv(&["sh", "-c", "exit 3"])).unwrap(), 3);
                let same_env = argv(&["sh", "-c", "test \"$AC_APP_NAME\" = app && test \"$(pwd)\" = /"]);
                assert_eq!(fly.enter(&info, APP, &same_env).unwrap(), 0);
                assert!(
                    !Path::new("/tmp/marker").exists(),
                    "the app's /tmp is its own tmpfs"
                );
                assert!(
                    fly.enter(&tp.info(PodState::Exited), APP, &argv(&["true"]))
                        .is_err()
                );
                // stop signals only a pod whose lock is held, as stage0's would be.
                let _lock = nix::fcntl::Flock::lock(
                    std::fs::File::open(&tp.pod).unwrap(),
                    nix::fcntl::FlockArg::LockExclusiveNonblock,
                )
                .unwrap();
                fly.stop(&info, false).unwrap();
                running.join().unwrap()
            })
        })
        .unwrap();
        assert_eq!(code.code, 128 + 15);
    }

    /// Not a test on its own: the body of `launch_killed_rkt_leaves_no_orphan`'s
    /// subprocess (this test binary, run again with FLY_ORPHAN_POD set).
    #[test]
    fn launch_orphan_helper() {
        if let Some(pod) = std::env::var_os("FLY_ORPHAN_POD") {
            let _ = launch(Path::new(&pod));
        }
    }

    fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd to us and nobody else owns it.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(i32::try_from(fd).unwrap()) }
    }

    fn readable_within(fd: &std::os::fd::OwnedFd, bound: Duration) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(bound.as_millis()).unwrap_or(u16::MAX);
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)), Ok(n) if n > 0)
    }

    fn alive(pid: i32) -> bool {
        // Gone, or a zombie nobody reaped yet: either way it runs no more.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    #[test]
    fn launch_killed_rkt_leaves_no_orphan() {
        if !root_or_skip() {
            return;
        }
        let tp = TestPod::new(false);
        // A non-root app: changing uid clears the parent-death signal, fly re-arms it.
        let alive_fifo = fifo(&tp.out, "alive");
        // The app holds the FIFO open for as long as it lives.
        tp.manifest(
            json!({"exec": ["sh", "-c", "exec sleep 30 > /out/alive"], "user": "web", "group": "webgrp"}),
            vec![],
            vec![],
        );
        let (opened, closed) = watch(&alive_fifo);
        checked(&tp, || {
            let mut rkt = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "launch::launch_orphan_helper",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("FLY_ORPHAN_POD", &tp.pod)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Opened by the app as user web: it is past its credential change.
            opened.recv_timeout(BOUND).expect("the app never started");
            let app: i32 = std::fs::read_to_string(tp.pod.join(layout::PID))
                .unwrap()
                .parse()
                .unwrap();
            let exited = pidfd(app);
            rkt.kill().unwrap();
            rkt.wait().unwrap();
            // A pidfd turns readable once the process has exited, not merely closed
            // its files (which is when the FIFO reports EOF).
            assert!(
                readable_within(&exited, BOUND),
                "the orphaned app {app} is still alive"
            );
            assert!(!alive(app), "pid {app} still runs");
            drop(closed);
        });
    }
}
