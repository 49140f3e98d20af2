//! The scenarios of issue 11. Each runs its sides interleaved (the order rotating
//! every round) so that a burst of load elsewhere on the machine lands on all sides
//! alike, and returns samples for the table. Targets are read off, never asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use rkt_conformance::AciSpec;

use crate::bigimage;
use crate::httpserve::FileServer;
use crate::measure::{self, Measured};
use crate::peers::{self, Peers};
use crate::report::{Outcome, Side};
use crate::stats::{Sample, Target, Unit};

/// Stamp file in the work dir: its mtime is when the last run removed its pods.
const LAST_CLEAN_UP: &str = "last-clean-up";

/// How long ext4 without a journal (this machine's root filesystem) passes over
/// freed inodes when it allocates new ones: 60 s, or 300 s while their inode
/// table block is dirty, which new inodes in the same block group keep it. Each
/// skipped inode costs a buffer lookup, so right after a run removed ~30,000
/// (1,100 pods), creating a pod's inodes nearby took 7-15 ms instead of ~3.5:
/// the next run would measure the previous run's clean-up, not rkt.
pub const FREED_INODE_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Measurement hygiene, not synchronisation: waits out [`FREED_INODE_WINDOW`]
/// after the previous run's clean-up in this work dir, then flushes dirty
/// pages so no writeback overlaps the first scenario. Returns the wait.
pub fn settle(work: &Path) -> std::time::Duration {
    let since_clean_up = std::fs::metadata(work.join(LAST_CLEAN_UP))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let wait = since_clean_up
        .and_then(|age| FREED_INODE_WINDOW.checked_sub(age))
        .unwrap_or_default();
    if !wait.is_zero() {
        eprintln!(
            "bench: the last run removed its pods {}s ago; waiting {}s for ext4 to stop passing over their freed inodes",
            since_clean_up.unwrap_or_default().as_secs(),
            wait.as_secs()
        );
        std::thread::sleep(wait);
    }
    nix::unistd::sync();
    wait
}

pub const ALL: [&str; 11] = [
    "fly",
    "nspawn",
    "seccomp",
    "net",
    "fetch",
    "kvm",
    "series",
    "big-image",
    "list-gc",
    "rss",
    "concurrent",
];

/// Everything the scenarios share: the binary, the work dir, the peers and the
/// busybox image both sides run.
pub struct Bench {
    pub rkt: PathBuf,
    pub work: PathBuf,
    pub runs: usize,
    pub peers: Peers,
    busybox_aci: PathBuf,
    /// The busybox image, fetched into `main` and rendered there.
    main: DataDir,
    /// A copy of rkt's rendered busybox tree for unshare, crun and runc.
    peer_rootfs: PathBuf,
    /// The same for nspawn, which writes into it.
    nspawn_rootfs: PathBuf,
    /// crun spec bundle around `peer_rootfs`, when crun is there.
    bundle: Option<PathBuf>,
    container_serial: AtomicU64,
}

/// One `--dir` with the busybox image in its store.
struct DataDir {
    path: PathBuf,
    image: String,
}

impl Bench {
    pub fn new(rkt: PathBuf, work: PathBuf, runs: usize, peers: Peers) -> Result<Bench> {
        let busybox_aci = work.join("busybox.aci");
        AciSpec::busybox("example.com/busybox").write(&busybox_aci)?;
        let mut bench = Bench {
            main: DataDir {
                path: PathBuf::new(),
                image: String::new(),
            },
            peer_rootfs: work.join("peer-rootfs"),
            nspawn_rootfs: work.join("nspawn-rootfs"),
            bundle: None,
            rkt,
            work,
            runs,
            peers,
            busybox_aci,
            container_serial: AtomicU64::new(0),
        };
        bench.main = bench.data_dir("main")?;
        // The first run renders the tree; every scenario measures runs after it.
        measure::run(&mut bench.run_fly(&bench.main))?;
        let tree = rendered_tree(&bench.main.path)?;
        peers::copy_rootfs(&tree, &bench.peer_rootfs)?;
        peers::copy_rootfs(&tree, &bench.nspawn_rootfs)?;
        if let Ok(crun) = &bench.peers.crun {
            let bundle = bench.work.join("bundle");
            peers::oci_bundle(crun, &bundle, &bench.peer_rootfs)?;
            bench.bundle = Some(bundle);
        }
        Ok(bench)
    }

    pub fn scenario(&self, name: &str) -> Result<Vec<Outcome>> {
        match name {
            "fly" => self.fly().map(|o| vec![o]),
            "nspawn" => self.nspawn().map(|o| vec![o]),
            "seccomp" => self.seccomp().map(|o| vec![o]),
            "net" => self.net().map(|o| vec![o]),
            "fetch" => self.fetch().map(|o| vec![o]),
            "kvm" => self.kvm().map(|o| vec![o]),
            "series" => self.series().map(|o| vec![o]),
            "big-image" => self.big_image().map(|o| vec![o]),
            "list-gc" => self.list_gc(),
            "rss" => self.rss().map(|o| vec![o]),
            "concurrent" => self.concurrent().map(|o| vec![o]),
            other => bail!("unknown scenario {other:?}; known: {}", ALL.join(", ")),
        }
    }

    /// Removes the data dirs this run made (pods first, through rkt's own gc),
    /// and notes when, for the next run's [`settle`].
    pub fn clean_up(&self) -> Result<()> {
        let data = self.work.join("data");
        if let Ok(entries) = std::fs::read_dir(&data) {
            for entry in entries.flatten() {
                let _ = measure::run(&mut self.rkt_in(&entry.path(), &["gc", "--grace-period=0s"]));
            }
        }
        remove(&data)?;
        std::fs::write(self.work.join(LAST_CLEAN_UP), b"")?;
        Ok(())
    }

    // --- commands -------------------------------------------------------------

    fn rkt_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.rkt);
        cmd.arg(format!("--dir={}", dir.display())).args(args);
        cmd
    }

    fn run_stage1(&self, data: &DataDir, stage1: &str) -> Command {
        // The host's network, as the bare peers have.
        self.run_on_net(data, stage1, "host")
    }

    fn run_on_net(&self, data: &DataDir, stage1: &str, net: &str) -> Command {
        let stage1 = format!("--stage1={stage1}");
        let net = format!("--net={net}");
        self.rkt_in(
            &data.path,
            &[
                "run",
                "--insecure-options=image",
                &stage1,
                &net,
                &data.image,
                "--exec",
                "/bin/true",
            ],
        )
    }

    fn run_fly(&self, data: &DataDir) -> Command {
        self.run_stage1(data, "fly")
    }

    fn gc(&self, data: &DataDir) -> Result<Measured> {
        measure::run(&mut self.rkt_in(&data.path, &["gc", "--grace-period=0s"]))
    }

    fn unshare_chroot(&self) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "chroot"]).arg(&self.peer_rootfs).arg("/bin/true");
        cmd
    }

    /// `crun run` or `runc run` of the bundle, each container with a new ID.
    fn oci_run(&self, runtime: &Path) -> Option<Command> {
        let bundle = self.bundle.as_ref()?;
        let serial = self.container_serial.fetch_add(1, Ordering::Relaxed);
        let name = runtime.file_name()?.to_string_lossy().into_owned();
        let mut cmd = Command::new(runtime);
        cmd.arg("--root")
            .arg(self.work.join(format!("{name}-state")))
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(format!("bench-{}-{serial}", std::process::id()));
        Some(cmd)
    }

    fn crun(&self) -> Option<Command> {
        self.oci_run(self.peers.crun.as_ref().ok()?)
    }

    fn runc(&self) -> Option<Command> {
        self.oci_run(self.peers.runc.as_ref().ok()?)
    }

    fn nspawn_bare(&self) -> Option<Command> {
        let mut cmd = Command::new(self.peers.nspawn.as_ref().ok()?);
        cmd.args(["--register=no", "--keep-unit", "-q", "-D"])
            .arg(&self.nspawn_rootfs)
            .arg("/bin/true");
        Some(cmd)
    }

    /// A fresh `--dir` under the work dir with the busybox image fetched.
    fn data_dir(&self, name: &str) -> Result<DataDir> {
        let path = self.work.join("data").join(name);
        if path.exists() {
            let _ = measure::run(&mut self.rkt_in(&path, &["gc", "--grace-period=0s"]));
            remove(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        let aci = self.busybox_aci.display().to_string();
        let out = self
            .rkt_in(&path, &["fetch", "--insecure-options=image", &aci])
            .output()?;
        let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !image.starts_with("sha512-") {
            bail!("rkt fetch {aci}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(DataDir { path, image })
    }

    fn rounds(&self, divisor: usize, floor: usize) -> usize {
        (self.runs / divisor).max(floor)
    }

    // --- scenarios --------------------------------------------------------------

    /// 1: one `/bin/true` pod, image in the store and its tree rendered.
    fn fly(&self) -> Result<Outcome> {
        let mut fly = Sample::new("`rkt run --stage1=fly IMAGE-ID --exec /bin/true`", Unit::Millis);
        let mut unshare = Sample::new("`unshare -m chroot ROOTFS /bin/true`", Unit::Millis);
        let mut crun = Sample::new("`crun run` (OCI bundle, same rootfs)", Unit::Millis);
        let mut runc = Sample::new("`runc run` (OCI bundle, same rootfs)", Unit::Millis);
        let mut fly_cpu = Sample::new("fly CPU", Unit::Millis);
        let mut unshare_cpu = Sample::new("unshare CPU", Unit::Millis);
        for round in 0..self.runs {
            for side in rotation(round, 4) {
                match side {
                    0 => {
                        let m = measure::run(&mut self.run_fly(&self.main))?;
                        fly.push(m.millis());
                        fly_cpu.push(m.cpu_millis());
                    }
                    1 => {
                        let m = measure::run(&mut self.unshare_chroot())?;
                        unshare.push(m.millis());
                        unshare_cpu.push(m.cpu_millis());
                    }
                    2 => push_optional(&mut crun, self.crun())?,
                    _ => push_optional(&mut runc, self.runc())?,
                }
            }
            if round % 50 == 49 {
                // Keeps the pod count flat, so late runs do not see a longer list.
                self.gc(&self.main)?;
            }
        }
        self.gc(&self.main)?;
        Ok(Outcome::Compared {
            scenario: "`--stage1=fly` /bin/true".into(),
            subject: fly,
            peers: vec![
                Side {
                    sample: unshare,
                    target: Some(Target::AtMost(2.0)),
                },
                self.peer_side(crun, &self.peers.crun, Some(Target::Below(0.5))),
                self.peer_side(runc, &self.peers.runc, None),
            ],
            notes: vec![format!(
                "CPU time (user + sys, from getrusage) of one fly run: median {}; of `unshare -m chroot`: {}.",
                show_median(&fly_cpu),
                show_median(&unshare_cpu)
            )],
        })
    }

    /// 2: an nspawn pod against the bare systemd-nspawn it wraps; runs once the
    /// nspawn stage1 is in the binary and can run here.
    fn nspawn(&self) -> Result<Outcome> {
        let scenario = "`--stage1=nspawn` /bin/true".to_string();
        if let Err(reason) = self.stage1_available("nspawn")? {
            return Ok(Outcome::Skipped { scenario, reason });
        }
        let Some(_) = self.nspawn_bare() else {
            let reason = self.peers.nspawn.as_ref().err().cloned().unwrap_or_default();
            return Ok(Outcome::Skipped {
                scenario,
                reason: format!("skipped: {reason}"),
            });
        };
        let mut rkt = Sample::new(
            "`rkt run --stage1=nspawn --net=host IMAGE-ID --exec /bin/true`",
            Unit::Millis,
        );
        let mut bare = Sample::new(
            "`systemd-nspawn --register=no --keep-unit -q -D ROOTFS /bin/true`",
            Unit::Millis,
        );
        let mut rkt_cpu = Sample::new("rkt nspawn CPU", Unit::Millis);
        let mut bare_cpu = Sample::new("bare nspawn CPU", Unit::Millis);
        for round in 0..self.rounds(2, 10) {
            for side in rotation(round, 2) {
                let (sample, cpu, cmd) = if side == 0 {
                    (&mut rkt, &mut rkt_cpu, self.run_stage1(&self.main, "nspawn"))
                } else {
                    let Some(cmd) = self.nspawn_bare() else { continue };
                    (&mut bare, &mut bare_cpu, cmd)
                };
                let m = measure::run(&mut { cmd })?;
                sample.push(m.millis());
                cpu.push(m.cpu_millis());
            }
            if round % 50 == 49 {
                self.gc(&self.main)?;
            }
        }
        self.gc(&self.main)?;
        Ok(Outcome::Compared {
            scenario,
            subject: rkt,
            peers: vec![Side {
                sample: bare,
                target: Some(Target::AtMost(1.1)),
            }],
            notes: vec![format!(
                "CPU time (user + sys) of one nspawn pod: median {} with rkt, {} with bare systemd-nspawn \
                 (rkt's pod runs under its own seccomp filter, the bare container under nspawn's).",
                show_median(&rkt_cpu),
                show_median(&bare_cpu)
            )],
        })
    }

    /// Issue 7's speed item: what each seccomp filter costs a pod's start, same
    /// run. rkt's default pod (our filter, compiled in the init; nspawn's off)
    /// against the bare nspawn with its own default filter; beside them the
    /// same rkt pod under nspawn's filter instead (`--insecure-options=seccomp`)
    /// and the bare nspawn with no filter (`SYSTEMD_SECCOMP=0`), so each
    /// filter's share of the time shows.
    fn seccomp(&self) -> Result<Outcome> {
        let scenario = "nspawn pod start, seccomp filters".to_string();
        if let Err(reason) = self.stage1_available("nspawn")? {
            return Ok(Outcome::Skipped { scenario, reason });
        }
        if self.nspawn_bare().is_none() {
            let reason = self.peers.nspawn.as_ref().err().cloned().unwrap_or_default();
            return Ok(Outcome::Skipped {
                scenario,
                reason: format!("skipped: {reason}"),
            });
        }
        let mut ours = Sample::new(
            "`rkt run --stage1=nspawn --net=host IMAGE-ID --exec /bin/true` (rkt's filter)",
            Unit::Millis,
        );
        let mut bare = Sample::new(
            "`systemd-nspawn --register=no --keep-unit -q -D ROOTFS /bin/true` (nspawn's filter)",
            Unit::Millis,
        );
        let mut theirs = Sample::new(
            "`rkt run --insecure-options=image,seccomp ...` (nspawn's filter, not ours)",
            Unit::Millis,
        );
        let mut unfiltered = Sample::new("`SYSTEMD_SECCOMP=0 systemd-nspawn ...` (no filter)", Unit::Millis);
        let mut cpu: [Sample; 4] = [
            Sample::new("ours CPU", Unit::Millis),
            Sample::new("bare CPU", Unit::Millis),
            Sample::new("theirs CPU", Unit::Millis),
            Sample::new("unfiltered CPU", Unit::Millis),
        ];
        for round in 0..self.rounds(2, 10) {
            for side in rotation(round, 4) {
                let cmd = match side {
                    0 => Some(self.run_stage1(&self.main, "nspawn")),
                    1 => self.nspawn_bare(),
                    2 => {
                        let mut cmd = self.rkt_in(
                            &self.main.path,
                            &[
                                "run",
                                "--insecure-options=image,seccomp",
                                "--stage1=nspawn",
                                "--net=host",
                                &self.main.image,
                                "--exec",
                                "/bin/true",
                            ],
                        );
                        cmd.env_remove("SYSTEMD_SECCOMP");
                        Some(cmd)
                    }
                    _ => self.nspawn_bare().map(|mut cmd| {
                        cmd.env("SYSTEMD_SECCOMP", "0");
                        cmd
                    }),
                };
                let Some(mut cmd) = cmd else { continue };
                let m = measure::run(&mut cmd)?;
                [&mut ours, &mut bare, &mut theirs, &mut unfiltered][side].push(m.millis());
                cpu[side].push(m.cpu_millis());
            }
            if round % 50 == 49 {
                self.gc(&self.main)?;
            }
        }
        self.gc(&self.main)?;
        Ok(Outcome::Compared {
            scenario,
            subject: ours,
            peers: vec![
                Side {
                    sample: bare,
                    target: Some(Target::AtMost(1.0)),
                },
                Side {
                    sample: theirs,
                    target: None,
                },
                Side {
                    sample: unfiltered,
                    target: None,
                },
            ],
            notes: vec![format!(
                "CPU time (user + sys) per pod, medians: rkt with its filter {}, bare nspawn with its filter {}, \
                 rkt under nspawn's filter {}, bare nspawn without a filter {}.",
                show_median(&cpu[0]),
                show_median(&cpu[1]),
                show_median(&cpu[2]),
                show_median(&cpu[3])
            )],
        })
    }

    /// The price of a pod network: the same nspawn pod on the default CNI network
    /// (netns + ptp + host-local + masquerade) and on the host's. The network is
    /// torn down by gc, as in rkt, so gc's cost per pod is noted beside.
    fn net(&self) -> Result<Outcome> {
        let scenario = "pod network, nspawn /bin/true".to_string();
        if let Err(reason) = self.stage1_available("nspawn")? {
            return Ok(Outcome::Skipped { scenario, reason });
        }
        let networked = self.data_dir("net-default")?;
        let mut default = Sample::new("`rkt run --stage1=nspawn --net=default` /bin/true", Unit::Millis);
        let mut host = Sample::new("`rkt run --stage1=nspawn --net=host` /bin/true", Unit::Millis);
        let mut gc_default = Sample::new("gc per pod, --net=default", Unit::Millis);
        let mut gc_host = Sample::new("gc per pod, --net=host", Unit::Millis);
        // host-local hands out a /24: gc well before the leases run out.
        const BATCH: usize = 20;
        let rounds = self.rounds(2, 10);
        for round in 0..rounds {
            for side in rotation(round, 2) {
                if side == 0 {
                    default
                        .push(measure::run(&mut self.run_on_net(&networked, "nspawn", "default"))?.millis());
                } else {
                    host.push(measure::run(&mut self.run_on_net(&self.main, "nspawn", "host"))?.millis());
                }
            }
            if round % BATCH == BATCH - 1 || round == rounds - 1 {
                let pods = (round % BATCH + 1) as f64;
                gc_default.push(self.gc(&networked)?.millis() / pods);
                gc_host.push(self.gc(&self.main)?.millis() / pods);
            }
        }
        Ok(Outcome::Compared {
            scenario,
            subject: default,
            peers: vec![Side {
                sample: host,
                target: None,
            }],
            notes: vec![format!(
                "`rkt gc` per pod (batches of up to {BATCH}): median {} on the default network (CNI DEL, netns removal), \
                 {} on the host's.",
                show_median(&gc_default),
                show_median(&gc_host)
            )],
        })
    }

    /// A remote image: `rkt fetch` of the 200 MB ACI over HTTP from 127.0.0.1,
    /// against curl piped into sha512sum and tar (what a fetch must at least do:
    /// download, hash, unpack).
    fn fetch(&self) -> Result<Outcome> {
        let aci = bigimage::big_aci(&self.work)?;
        let server = FileServer::start(&aci)?;
        let url = server.url.clone();
        let mut rkt = Sample::new(
            "`rkt fetch --insecure-options=image,http http://127.0.0.1:PORT/BIG.aci`, empty store",
            Unit::Millis,
        );
        // The pipes are escaped: the label goes into a markdown table cell.
        let mut curl = Sample::new(
            "`curl -s URL \\| tee >(sha512sum >/dev/null) \\| tar -x -C EMPTY-DIR`",
            Unit::Millis,
        );
        let mut rkt_cpu = Sample::new("rkt fetch CPU", Unit::Millis);
        let mut curl_cpu = Sample::new("curl pipeline CPU", Unit::Millis);
        let scratch = self.work.join("data").join("fetch");
        for round in 0..self.rounds(40, 3) {
            for side in rotation(round, 2) {
                remove(&scratch)?;
                std::fs::create_dir_all(&scratch)?;
                sync()?;
                let (sample, cpu, mut cmd) = if side == 0 {
                    let cmd = self.rkt_in(&scratch, &["fetch", "--insecure-options=image,http", &url]);
                    (&mut rkt, &mut rkt_cpu, cmd)
                } else {
                    let mut cmd = Command::new("bash");
                    cmd.args([
                        "-o",
                        "pipefail",
                        "-c",
                        r#"curl -sf "$1" | tee >(sha512sum >/dev/null) | tar -x -C "$2""#,
                        "fetch-peer",
                        &url,
                    ])
                    .arg(&scratch);
                    (&mut curl, &mut curl_cpu, cmd)
                };
                let m = measure::run(&mut cmd)?;
                sample.push(m.millis());
                cpu.push(m.cpu_millis());
                if side == 0 {
                    measure::run(&mut self.rkt_in(&scratch, &["gc", "--grace-period=0s"]))?;
                }
            }
        }
        remove(&scratch)?;
        Ok(Outcome::Compared {
            scenario: format!(
                "`rkt fetch` of a {} MB image over HTTP (127.0.0.1)",
                bigimage::TOTAL_BYTES / 1_000_000
            ),
            subject: rkt,
            peers: vec![Side {
                sample: curl,
                target: Some(Target::AtMost(1.2)),
            }],
            notes: vec![format!(
                "CPU time (user + sys) of one 200 MB fetch: median {} with rkt, {} with the curl pipeline; \
                 rkt also fsyncs what it stores, the pipeline does not.",
                show_median(&rkt_cpu),
                show_median(&curl_cpu)
            )],
        })
    }

    /// `Ok(Ok(()))` when `rkt version` lists the stage1 as available, else why not.
    fn stage1_available(&self, name: &str) -> Result<std::result::Result<(), String>> {
        let out = Command::new(&self.rkt).arg("version").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.split_whitespace().next() == Some(name));
        Ok(match line {
            None => Err(format!("skipped: {name} stage1 not in this build")),
            Some(l) if l.split_whitespace().nth(1) == Some("available") => Ok(()),
            Some(l) => Err(format!("skipped: {l}")),
        })
    }

    /// A `/bin/true` pod in a VM against bare QEMU booting the same vmlinux and
    /// initramfs (plus busybox and a two-line init) on the same machine, accel
    /// and devices, run in the same rounds.
    fn kvm(&self) -> Result<Outcome> {
        let scenario = "`--stage1=kvm` /bin/true".to_string();
        if let Err(reason) = self.stage1_available("kvm")? {
            return Ok(Outcome::Skipped { scenario, reason });
        }
        let data = self.data_dir("kvm")?;
        let run = || self.run_on_net(&data, "kvm", "none");
        // The first run builds the cached vmlinux and initramfs the peer boots too.
        measure::run(&mut run())?;
        let bare = crate::kvm::BareQemu::new(&self.work, &self.rkt)?;
        let mut rkt = Sample::new(
            "`rkt run --stage1=kvm --net=none IMAGE-ID --exec /bin/true`",
            Unit::Millis,
        );
        let mut qemu = Sample::new(
            "bare `qemu-system-x86_64` (same vmlinux, initramfs + busybox, machine, accel, devices)",
            Unit::Millis,
        );
        // Every pod boots, as bare QEMU does: what rkt adds to a boot.
        let mut booted = Sample::new(
            format!(
                "the same with `{}=off` (every pod boots)",
                rkt_backend_kvm::SNAPSHOTS_ENV
            ),
            Unit::Millis,
        );
        let run_booted = || {
            let mut cmd = run();
            cmd.env(rkt_backend_kvm::SNAPSHOTS_ENV, "off");
            cmd
        };
        let mut rkt_cpu = Sample::new("rkt kvm CPU", Unit::Millis);
        let mut qemu_cpu = Sample::new("bare qemu CPU", Unit::Millis);
        let mut booted_cpu = Sample::new("rkt kvm CPU, booted", Unit::Millis);
        // Boots vary by a tenth of a second between rounds: fewer than 9 rounds
        // leave the ratio's second decimal to chance.
        for round in 0..self.rounds(20, 9) {
            for side in rotation(round, 3) {
                let (sample, cpu, mut cmd) = match side {
                    0 => (&mut rkt, &mut rkt_cpu, run()),
                    1 => (&mut qemu, &mut qemu_cpu, bare.command()),
                    _ => (&mut booted, &mut booted_cpu, run_booted()),
                };
                let m = measure::run(&mut cmd)?;
                sample.push(m.millis());
                cpu.push(m.cpu_millis());
            }
            if round % 20 == 19 {
                self.gc(&data)?;
            }
        }
        self.gc(&data)?;
        let boot_overhead = match (booted.median(), qemu.median()) {
            (Some(b), Some(q)) if q > 0.0 => format!("{:.2}x", b / q),
            _ => "—".into(),
        };
        Ok(Outcome::Compared {
            scenario,
            subject: rkt,
            peers: vec![
                Side {
                    sample: qemu,
                    target: Some(Target::AtMost(1.1)),
                },
                Side {
                    sample: booted,
                    target: None,
                },
            ],
            notes: vec![format!(
                "kvm: accel {}. rkt starts a pod's VM from a snapshot of a booted guest (made by the harness's \
                 warm-up run); bare QEMU boots. A pod that boots (snapshots off) takes {boot_overhead} bare \
                 QEMU's time. CPU time (user + sys) of one VM pod: median {} with rkt, {} booted, {} with bare qemu.",
                bare.accel(),
                show_median(&rkt_cpu),
                show_median(&booted_cpu),
                show_median(&qemu_cpu)
            )],
        })
    }

    /// 3: 100 pods one after the other.
    fn series(&self) -> Result<Outcome> {
        const PODS: usize = 100;
        let mut fly = Sample::new("100 × `rkt run --stage1=fly` /bin/true", Unit::Millis);
        let mut crun = Sample::new("100 × `crun run` /bin/true", Unit::Millis);
        for round in 0..self.rounds(20, 3) {
            for side in rotation(round, 2) {
                if side == 0 {
                    fly.push(time_series(PODS, || Ok(Some(self.run_fly(&self.main))))?.unwrap_or(f64::NAN));
                    self.gc(&self.main)?;
                } else if let Some(ms) = time_series(PODS, || Ok(self.crun()))? {
                    crun.push(ms);
                }
            }
        }
        let per_pod = |s: &Sample| {
            s.median()
                .map_or("—".into(), |m| format!("{:.2} ms", m / PODS as f64))
        };
        let note = format!(
            "100 pods in a row: {} per fly pod, {} per crun container.",
            per_pod(&fly),
            per_pod(&crun)
        );
        Ok(Outcome::Compared {
            scenario: "100 pods in a row".into(),
            subject: fly,
            peers: vec![self.peer_side(crun, &self.peers.crun, Some(Target::Below(0.5)))],
            notes: vec![note],
        })
    }

    /// 4: a new 200 MB image: import + render + run, against `tar -x` of it.
    fn big_image(&self) -> Result<Outcome> {
        let aci = bigimage::big_aci(&self.work)?;
        let aci_arg = aci.display().to_string();
        let mut rkt = Sample::new(
            "`rkt run --stage1=fly BIG.aci --exec /bin/true`, empty store",
            Unit::Millis,
        );
        let mut tar = Sample::new("`tar -xf BIG.aci -C EMPTY-DIR`", Unit::Millis);
        let mut rkt_cpu = Sample::new("rkt CPU", Unit::Millis);
        let mut tar_cpu = Sample::new("tar CPU", Unit::Millis);
        let scratch = self.work.join("data").join("big");
        // Both sides wait on the disk's writeback, which drifts by 2x within a
        // minute here: 3 rounds gave 1.51x and 10 rounds 1.14x of the same build.
        for round in 0..self.rounds(40, 9) {
            for side in rotation(round, 2) {
                remove(&scratch)?;
                std::fs::create_dir_all(&scratch)?;
                // Earlier rounds' dirty pages are written back outside the timing.
                sync()?;
                if side == 0 {
                    let mut cmd = self.rkt_in(
                        &scratch,
                        &[
                            "run",
                            "--insecure-options=image",
                            "--stage1=fly",
                            &aci_arg,
                            "--exec",
                            "/bin/true",
                        ],
                    );
                    let m = measure::run(&mut cmd)?;
                    rkt.push(m.millis());
                    rkt_cpu.push(m.cpu_millis());
                    measure::run(&mut self.rkt_in(&scratch, &["gc", "--grace-period=0s"]))?;
                } else {
                    let mut cmd = Command::new("tar");
                    cmd.arg("-xf").arg(&aci).arg("-C").arg(&scratch);
                    let m = measure::run(&mut cmd)?;
                    tar.push(m.millis());
                    tar_cpu.push(m.cpu_millis());
                }
            }
        }
        remove(&scratch)?;
        Ok(Outcome::Compared {
            scenario: format!(
                "first run of a new {} MB image",
                bigimage::TOTAL_BYTES / 1_000_000
            ),
            subject: rkt,
            peers: vec![Side {
                sample: tar,
                target: Some(Target::AtMost(1.5)),
            }],
            notes: vec![format!(
                "First run of the 200 MB image, CPU time (user + sys, all threads): median {} with rkt, {} with tar.",
                show_median(&rkt_cpu),
                show_median(&tar_cpu)
            )],
        })
    }

    /// 5: `rkt list` and `rkt gc` with 100 and 1,000 pods on disk: 10x the pods may
    /// cost at most 12x the time; list stays under 50 ms.
    fn list_gc(&self) -> Result<Vec<Outcome>> {
        let small = self.data_dir("list-100")?;
        let large = self.data_dir("list-1000")?;
        self.make_exited_pods(&small, 100)?;
        self.make_exited_pods(&large, 1000)?;
        let mut list_small = Sample::new("`rkt list` (100 pods)", Unit::Millis);
        let mut list_large = Sample::new("`rkt list` (1,000 pods)", Unit::Millis);
        let mut list_small_cpu = Sample::new("list CPU, 100 pods", Unit::Millis);
        let mut list_large_cpu = Sample::new("list CPU, 1,000 pods", Unit::Millis);
        for round in 0..self.runs {
            for side in rotation(round, 2) {
                let data = if side == 0 { &small } else { &large };
                let m = measure::run(&mut self.rkt_in(&data.path, &["list", "--no-legend"]))?;
                if side == 0 {
                    list_small.push(m.millis());
                    list_small_cpu.push(m.cpu_millis());
                } else {
                    list_large.push(m.millis());
                    list_large_cpu.push(m.cpu_millis());
                }
            }
        }
        let verdict = match list_large.median() {
            Some(ms) if ms < 50.0 => "met",
            _ => "**missed**",
        };
        let list_note = format!(
            "`rkt list` with 1,000 pods: median {} wall (target < 50 ms: {verdict}), {} CPU (user + sys); \
             with 100 pods {} CPU.",
            show_median(&list_large),
            show_median(&list_large_cpu),
            show_median(&list_small_cpu)
        );

        let mut gc_small = Sample::new("`rkt gc --grace-period=0s` (100 exited pods)", Unit::Millis);
        let mut gc_large = Sample::new("`rkt gc --grace-period=0s` (1,000 exited pods)", Unit::Millis);
        let mut gc_small_cpu = Sample::new("gc CPU, 100 pods", Unit::Millis);
        let mut gc_large_cpu = Sample::new("gc CPU, 1,000 pods", Unit::Millis);
        for round in 0..self.rounds(40, 3) {
            self.make_exited_pods(&small, 100 - self.pod_count(&small)?)?;
            self.make_exited_pods(&large, 1000 - self.pod_count(&large)?)?;
            for side in rotation(round, 2) {
                let (data, sample) = if side == 0 {
                    (&small, &mut gc_small)
                } else {
                    (&large, &mut gc_large)
                };
                sync()?;
                let m = self.gc(data)?;
                sample.push(m.millis());
                if side == 0 {
                    gc_small_cpu.push(m.cpu_millis());
                } else {
                    gc_large_cpu.push(m.cpu_millis());
                }
                let left = self.pod_count(data)?;
                if left != 0 {
                    bail!("rkt gc left {left} pods in {}", data.path.display());
                }
            }
        }
        let cpu_ratio = gc_large_cpu
            .ratio_to(&gc_small_cpu)
            .map_or("—".into(), |r| format!("{r:.2}x"));
        let gc_note = format!(
            "`rkt gc` CPU time (user + sys): {} for 1,000 pods, {} for 100 ({cpu_ratio}); \
             the rest of the wall time ({} and {}) is waiting on the disk.",
            show_median(&gc_large_cpu),
            show_median(&gc_small_cpu),
            show_median(&gc_large),
            show_median(&gc_small)
        );
        Ok(vec![
            Outcome::Compared {
                scenario: "`rkt list`, 1,000 vs 100 pods".into(),
                subject: list_large,
                peers: vec![Side {
                    sample: list_small,
                    target: Some(Target::AtMost(12.0)),
                }],
                notes: vec![list_note],
            },
            Outcome::Compared {
                scenario: "`rkt gc`, 1,000 vs 100 exited pods".into(),
                subject: gc_large,
                peers: vec![Side {
                    sample: gc_small,
                    target: Some(Target::AtMost(12.0)),
                }],
                notes: vec![gc_note],
            },
        ])
    }

    /// Pods made the way users make them: real `rkt run`s of /bin/true, four at a
    /// time (about 1 s per 250 pods on 2 cores).
    fn make_exited_pods(&self, data: &DataDir, count: usize) -> Result<()> {
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while next.fetch_add(1, Ordering::Relaxed) < count {
                            measure::run(&mut self.run_fly(data))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| match w.join() {
                Ok(result) => result,
                Err(_) => bail!("a pod-making thread panicked"),
            })
        })
    }

    fn pod_count(&self, data: &DataDir) -> Result<usize> {
        let out = self.rkt_in(&data.path, &["list", "--no-legend"]).output()?;
        if !out.status.success() {
            bail!("rkt list: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    /// 6: peak RSS of the whole process tree, through GNU time (see measure.rs).
    fn rss(&self) -> Result<Outcome> {
        let time = match &self.peers.time {
            Ok(time) => time,
            Err(reason) => {
                return Ok(Outcome::Skipped {
                    scenario: "peak RSS".into(),
                    reason: format!("skipped: {reason}"),
                });
            }
        };
        let report = self.work.join("rss-report");
        let mut fly = Sample::new("`rkt run --stage1=fly` /bin/true, peak RSS", Unit::KiB);
        let mut crun = Sample::new("`crun run` /bin/true, peak RSS", Unit::KiB);
        let mut runc = Sample::new("`runc run` /bin/true, peak RSS", Unit::KiB);
        for round in 0..self.rounds(4, 10) {
            for side in rotation(round, 3) {
                let (sample, cmd) = match side {
                    0 => (&mut fly, Some(self.run_fly(&self.main))),
                    1 => (&mut crun, self.crun()),
                    _ => (&mut runc, self.runc()),
                };
                if let Some(cmd) = cmd {
                    sample.push(measure::peak_rss_kib(time, &cmd, &report)?);
                }
            }
        }
        self.gc(&self.main)?;
        let floor = measure::peak_rss_kib(time, &Command::new("true"), &report)?;
        Ok(Outcome::Compared {
            scenario: "peak RSS".into(),
            subject: fly,
            peers: vec![
                self.peer_side(crun, &self.peers.crun, Some(Target::AtMost(1.0))),
                self.peer_side(runc, &self.peers.runc, None),
            ],
            notes: vec![format!(
                "Peak RSS is GNU time's `%M` (largest process of the tree); its floor here, `time -f %M true`, is {}.",
                Unit::KiB.format(floor)
            )],
        })
    }

    /// 7: 50 pods started at once; all must succeed; throughput >= crun's, i.e. the
    /// batch takes at most as long.
    fn concurrent(&self) -> Result<Outcome> {
        const PODS: usize = 50;
        let mut fly = Sample::new("50 concurrent `rkt run --stage1=fly` /bin/true", Unit::Millis);
        let mut crun = Sample::new("50 concurrent `crun run` /bin/true", Unit::Millis);
        let mut failures = Vec::new();
        for round in 0..self.rounds(20, 3) {
            for side in rotation(round, 2) {
                let (sample, mut cmds): (_, Vec<Command>) = if side == 0 {
                    (&mut fly, (0..PODS).map(|_| self.run_fly(&self.main)).collect())
                } else {
                    (&mut crun, (0..PODS).filter_map(|_| self.crun()).collect())
                };
                if cmds.is_empty() {
                    continue;
                }
                let (elapsed, failed, first) = measure::run_concurrently(&mut cmds)?;
                sample.push(elapsed.as_secs_f64() * 1e3);
                if failed > 0 {
                    failures.push(format!(
                        "{failed}/{PODS} of {} failed: {}",
                        sample.label,
                        first.unwrap_or_default()
                    ));
                }
            }
            self.gc(&self.main)?;
        }
        let throughput = |s: &Sample| {
            s.median()
                .map_or("—".into(), |m| format!("{:.0}", PODS as f64 / m * 1e3))
        };
        let notes = vec![format!(
            "50 concurrent pods: {} pods/s with fly, {} with crun; {}.",
            throughput(&fly),
            throughput(&crun),
            if failures.is_empty() {
                "every pod of every round succeeded".to_string()
            } else {
                format!("**failures**: {}", failures.join("; "))
            }
        )];
        Ok(Outcome::Compared {
            scenario: "50 concurrent pods".into(),
            subject: fly,
            peers: vec![self.peer_side(crun, &self.peers.crun, Some(Target::AtMost(1.0)))],
            notes,
        })
    }

    fn peer_side(&self, mut sample: Sample, found: &peers::Found, target: Option<Target>) -> Side {
        if let Err(reason) = found {
            sample.label = format!("{} ({reason})", sample.label);
        }
        Side { sample, target }
    }
}

fn show_median(sample: &Sample) -> String {
    sample.median().map_or("—".into(), |m| sample.unit.format(m))
}

/// The order of `sides` sides in round `round`: 0,1,2 then 1,2,0 then 2,0,1...
fn rotation(round: usize, sides: usize) -> impl Iterator<Item = usize> {
    (0..sides).map(move |i| (round + i) % sides)
}

fn push_optional(sample: &mut Sample, cmd: Option<Command>) -> Result<()> {
    if let Some(mut cmd) = cmd {
        sample.push(measure::run(&mut cmd)?.millis());
    }
    Ok(())
}

/// Wall time of `count` commands one after another, or `None` if there is none.
fn time_series(count: usize, mut next: impl FnMut() -> Result<Option<Command>>) -> Result<Option<f64>> {
    let mut total = 0.0;
    for _ in 0..count {
        let Some(mut cmd) = next()? else {
            return Ok(None);
        };
        total += measure::run(&mut cmd)?.millis();
    }
    Ok(Some(total))
}

fn rendered_tree(data: &Path) -> Result<PathBuf> {
    std::fs::read_dir(data.join("cas/tree"))
        .with_context(|| format!("reading {}/cas/tree", data.display()))?
        .flatten()
        .map(|e| e.path().join("rootfs"))
        .find(|p| p.join("bin/true").exists())
        .context("no rendered busybox tree in the store")
}

fn remove(path: &Path) -> Result<()> {
    if path.exists() {
        rkt_engine::fsutil::remove_tree(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn sync() -> Result<()> {
    nix::unistd::sync();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_starts_each_round_with_the_next_side() {
        let rounds: Vec<Vec<usize>> = (0..3).map(|r| rotation(r, 3).collect()).collect();
        assert_eq!(rounds, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
    }
}
