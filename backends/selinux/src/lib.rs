//! Labelers: SELinux process and mount labels for a pod (`selinux`), and the
//! no-op labeler (`none`) for machines without SELinux. The engine picks
//! `selinux` when it is available (selinuxfs mounted, enforcing or
//! permissive) and `none` otherwise; `--labeler=NAME` overrides.
//!
//! As rkt (through the container SELinux library), each pod gets the
//! policy's container contexts (`lxc_contexts`: `process` and `file`) with a
//! level of its own: `s0:cX,cY`, a random pair of MCS categories, so one pod's
//! processes cannot touch another pod's files. Beyond rkt, pairs are allocated
//! under a lock in one table ([`MCS_TABLE`] below the root), so two pods never
//! share one; an entry whose pod directory is gone is reclaimed by the next
//! allocation (the Labeler has no gc hook, and needs none).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rkt_engine::pod::PodInfo;
use rkt_engine::stage::{Availability, BackendError, Labeler, Labels, Registration};
use uuid::Uuid;

/// Below the labeler's root: the MCS allocation table, `cX,cY PODS-DIR UUID` a line.
pub const MCS_TABLE: &str = "run/rkt-rs/selinux-mcs";

/// Categories c0..c1023, as the container SELinux library draws them.
const CATEGORIES: u32 = 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelinuxLabeler {
    /// Where `/sys/fs/selinux`, `/etc/selinux` and `/run` are looked up: `/`,
    /// or a fake root in tests.
    pub root: PathBuf,
}

impl Default for SelinuxLabeler {
    fn default() -> Self {
        SelinuxLabeler {
            root: PathBuf::from("/"),
        }
    }
}

/// The no-op labeler: pods run with the caller's labels.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoLabeler {}

inventory::submit! {
    Registration::<dyn Labeler> {
        name: "selinux",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<SelinuxLabeler>(config)?)),
    }
}

inventory::submit! {
    Registration::<dyn Labeler> {
        name: "none",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<NoLabeler>(config)?)),
    }
}

impl Labeler for NoLabeler {
    fn name(&self) -> &'static str {
        "none"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn labels(&self, _pod: &PodInfo) -> Result<Labels, BackendError> {
        Ok(Labels::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disabled,
    Permissive,
    Enforcing,
}

/// Pod contexts come from a loaded policy, which selinuxfs exports: mounted
/// and reading `enforce` means SELinux is on.
pub fn mode(root: &Path) -> Mode {
    match std::fs::read_to_string(root.join("sys/fs/selinux/enforce")).map(|s| s.trim().to_string()) {
        Ok(v) if v == "1" => Mode::Enforcing,
        Ok(v) if v == "0" => Mode::Permissive,
        _ => Mode::Disabled,
    }
}

fn other(msg: String) -> BackendError {
    BackendError::Other(format!("selinux: {msg}"))
}

impl SelinuxLabeler {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        SelinuxLabeler { root: root.into() }
    }

    /// `SELINUXTYPE=` of /etc/selinux/config (`targeted` when unset).
    fn policy_type(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/selinux/config"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
                    .map(|v| v.trim().trim_matches('"').to_string())
                    .next_back()
            })
            .filter(|v| !v.is_empty() && !v.contains('/'))
            .unwrap_or_else(|| "targeted".to_string())
    }

    /// The policy's container contexts: (process, file).
    fn base_contexts(&self) -> Result<(String, String), BackendError> {
        let path = self
            .root
            .join("etc/selinux")
            .join(self.policy_type())
            .join("contexts/lxc_contexts");
        let text =
            std::fs::read_to_string(&path).map_err(|e| other(format!("reading {}: {e}", path.display())))?;
        let value = |key: &str| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .filter(|v| v.split(':').count() >= 3)
        };
        match (value("process"), value("file")) {
            (Some(p), Some(f)) => Ok((p, f)),
            _ => Err(other(format!(
                "{} names no process and file contexts",
                path.display()
            ))),
        }
    }

    /// Reads the MCS table under its lock, lets `change` edit its entries and
    /// writes them back (durably) before the lock is dropped.
    fn with_table<T>(
        &self,
        change: impl FnOnce(&mut Vec<McsEntry>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let table = self.root.join(MCS_TABLE);
        let io = |what: &str, e: std::io::Error| other(format!("{what} {}: {e}", table.display()));
        if let Some(dir) = table.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&table)
            .map_err(|e| io("opening", e))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking", e.into()))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| io("reading", e))?;
        let mut entries: Vec<McsEntry> = text.lines().filter_map(McsEntry::parse).collect();
        let result = change(&mut entries)?;
        let text: String = entries.iter().map(McsEntry::line).collect();
        file.set_len(0).map_err(|e| io("truncating", e))?;
        file.rewind().map_err(|e| io("rewinding", e))?;
        file.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        Ok(result)
    }

    /// The pod's MCS pair, allocated once per pod. Pairs of pods that vanished
    /// without a gc (their directory deleted by hand) are reclaimed here too.
    fn allocate_categories(&self, pod: &PodInfo) -> Result<(u32, u32), BackendError> {
        let uuid = pod.uuid.to_string();
        let pods = pod
            .path
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.with_table(|entries| {
            entries.retain(|e| e.uuid == uuid || e.live());
            if let Some(mine) = entries.iter().find(|e| e.uuid == uuid) {
                return Ok(mine.pair);
            }
            if entries.len() as u32 >= CATEGORIES * (CATEGORIES - 1) / 2 {
                return Err(other("every MCS category pair is taken".into()));
            }
            let pair = loop {
                let a = random_u32() % CATEGORIES;
                let b = random_u32() % CATEGORIES;
                if a == b {
                    continue;
                }
                let pair = (a.min(b), a.max(b));
                if !entries.iter().any(|e| e.pair == pair) {
                    break pair;
                }
            };
            entries.push(McsEntry { pair, pods, uuid });
            Ok(pair)
        })
    }
}

struct McsEntry {
    pair: (u32, u32),
    pods: PathBuf,
    uuid: String,
}

impl McsEntry {
    fn parse(line: &str) -> Option<Self> {
        let (pair, rest) = line.split_once(' ')?;
        let (pods, uuid) = rest.rsplit_once(' ')?;
        let (a, b) = pair.split_once(',')?;
        let a = a.strip_prefix('c')?.parse().ok()?;
        let b = b.strip_prefix('c')?.parse().ok()?;
        Some(McsEntry {
            pair: (a, b),
            pods: PathBuf::from(pods),
            uuid: uuid.to_string(),
        })
    }
    fn line(&self) -> String {
        format!(
            "c{},c{} {} {}\n",
            self.pair.0,
            self.pair.1,
            self.pods.display(),
            self.uuid
        )
    }
    fn live(&self) -> bool {
        std::fs::read_dir(&self.pods)
            .map(|states| states.flatten().any(|s| s.path().join(&self.uuid).exists()))
            .unwrap_or(false)
    }
}

/// `user:role:type:LEVEL` with the level replaced by `s0:cA,cB`.
pub fn with_categories(context: &str, (a, b): (u32, u32)) -> String {
    let fields: Vec<&str> = context.splitn(4, ':').collect();
    format!("{}:{}:{}:s0:c{a},c{b}", fields[0], fields[1], fields[2])
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        // The table, not chance, keeps pods apart; the clock still spreads them.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }
}

impl Labeler for SelinuxLabeler {
    fn name(&self) -> &'static str {
        "selinux"
    }

    fn availability(&self) -> Availability {
        match mode(&self.root) {
            Mode::Disabled => Availability::Unavailable(format!(
                "SELinux is not enabled ({} is not mounted)",
                self.root.join("sys/fs/selinux").display()
            )),
            Mode::Permissive | Mode::Enforcing => Availability::Available,
        }
    }

    fn labels(&self, pod: &PodInfo) -> Result<Labels, BackendError> {
        if mode(&self.root) == Mode::Disabled {
            return Ok(Labels::default());
        }
        let (process, file) = self.base_contexts()?;
        let pair = self.allocate_categories(pod)?;
        Ok(Labels {
            process: Some(with_categories(&process, pair)),
            mount: Some(with_categories(&file, pair)),
        })
    }

    fn release(&self, pod: &Uuid) -> Result<(), BackendError> {
        // Nothing was ever allocated where there is no table (SELinux off).
        if !self.root.join(MCS_TABLE).exists() {
            return Ok(());
        }
        let uuid = pod.to_string();
        self.with_table(|entries| {
            entries.retain(|e| e.uuid != uuid);
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rkt_engine::pod::PodState;

    fn fake_root(enforce: Option<&str>) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        if let Some(v) = enforce {
            std::fs::create_dir_all(root.path().join("sys/fs/selinux")).unwrap();
            std::fs::write(root.path().join("sys/fs/selinux/enforce"), v).unwrap();
        }
        let policy = root.path().join("etc/selinux/mls-test/contexts");
        std::fs::create_dir_all(&policy).unwrap();
        std::fs::write(
            root.path().join("etc/selinux/config"),
            "SELINUX=enforcing\nSELINUXTYPE=mls-test\n",
        )
        .unwrap();
        std::fs::write(
            policy.join("lxc_contexts"),
            "# container contexts\nprocess = \"system_u:system_r:container_t:s0\"\n\
             content = \"system_u:object_r:virt_var_lib_t:s0\"\n\
             file = \"system_u:object_r:container_file_t:s0\"\n",
        )
        .unwrap();
        root
    }

    fn pod(root: &Path) -> PodInfo {
        let uuid = uuid::Uuid::new_v4();
        let path = root.join("var/pods/run").join(uuid.to_string());
        std::fs::create_dir_all(&path).unwrap();
        PodInfo {
            uuid,
            state: PodState::Running,
            path,
        }
    }

    fn level(context: &str) -> &str {
        context.splitn(4, ':').nth(3).unwrap()
    }

    #[test]
    fn disabled_selinux_gives_no_labels_and_is_unavailable() {
        let root = fake_root(None);
        let l = SelinuxLabeler::at(root.path());
        assert!(matches!(l.availability(), Availability::Unavailable(why) if why.contains("not enabled")));
        assert_eq!(l.labels(&pod(root.path())).unwrap(), Labels::default());
        assert!(!root.path().join(MCS_TABLE).exists());
    }

    #[test]
    fn enabled_selinux_labels_each_pod_with_its_own_category_pair() {
        for enforce in ["1", "0"] {
            let root = fake_root(Some(enforce));
            let l = SelinuxLabeler::at(root.path());
            assert_eq!(l.availability(), Availability::Available);
            let mut levels = Vec::new();
            for _ in 0..40 {
                let p = pod(root.path());
                let labels = l.labels(&p).unwrap();
                let process = labels.process.unwrap();
                let mount = labels.mount.unwrap();
                assert!(
                    process.starts_with("system_u:system_r:container_t:s0:c"),
                    "{process}"
                );
                assert!(
                    mount.starts_with("system_u:object_r:container_file_t:s0:c"),
                    "{mount}"
                );
                assert_eq!(level(&process), level(&mount));
                // Asked again (run-prepared after prepare), the pod keeps its pair.
                assert_eq!(l.labels(&p).unwrap().process.unwrap(), process);
                levels.push(level(&process).to_string());
            }
            let mut unique = levels.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), levels.len(), "{levels:?}");
            let (a, b) = levels[0].trim_start_matches("s0:").split_once(',').unwrap();
            let (a, b): (u32, u32) = (a[1..].parse().unwrap(), b[1..].parse().unwrap());
            assert!(a < b && b < CATEGORIES);
        }
    }

    #[test]
    fn a_vanished_pods_pair_is_reclaimed() {
        let root = fake_root(Some("1"));
        let l = SelinuxLabeler::at(root.path());
        let gone = pod(root.path());
        l.labels(&gone).unwrap();
        std::fs::remove_dir(&gone.path).unwrap();
        let kept = pod(root.path());
        l.labels(&kept).unwrap();
        let table = std::fs::read_to_string(root.path().join(MCS_TABLE)).unwrap();
        assert_eq!(table.lines().count(), 1, "{table}");
        assert!(table.contains(&kept.uuid.to_string()));
    }

    #[test]
    fn gc_releases_a_pods_pair() {
        let root = fake_root(Some("1"));
        let l = SelinuxLabeler::at(root.path());
        let first = pod(root.path());
        let second = pod(root.path());
        l.labels(&first).unwrap();
        l.labels(&second).unwrap();
        l.release(&first.uuid).unwrap();
        let table = std::fs::read_to_string(root.path().join(MCS_TABLE)).unwrap();
        assert_eq!(table.lines().count(), 1, "{table}");
        assert!(table.contains(&second.uuid.to_string()), "{table}");
        l.release(&first.uuid).unwrap();
    }

    #[test]
    fn releasing_without_a_table_creates_none() {
        let root = fake_root(None);
        SelinuxLabeler::at(root.path()).release(&Uuid::new_v4()).unwrap();
        assert!(!root.path().join(MCS_TABLE).exists());
    }

    #[test]
    fn a_policy_without_container_contexts_is_a_clear_error() {
        let root = fake_root(Some("1"));
        std::fs::write(
            root.path().join("etc/selinux/mls-test/contexts/lxc_contexts"),
            "# empty\n",
        )
        .unwrap();
        let err = SelinuxLabeler::at(root.path())
            .labels(&pod(root.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lxc_contexts") && err.contains("no process"),
            "{err}"
        );
    }

    #[test]
    fn categories_replace_the_level() {
        assert_eq!(
            with_categories("system_u:system_r:container_t:s0", (3, 700)),
            "system_u:system_r:container_t:s0:c3,c700"
        );
        assert_eq!(with_categories("u:r:t:s0-s0:c0.c1023", (1, 2)), "u:r:t:s0:c1,c2");
    }
}
