//! Warm boot: a pod's VM starts from a snapshot of a guest that has already
//! booted its kernel and loaded its modules, instead of booting. Under TCG
//! that is most of a pod's start (here ~1.5 s of ~2 s).
//!
//! The first pod of its kind (the same QEMU, boot files, machine, accelerator,
//! memory, vCPUs and devices: [`Snapshot::key`]) makes the snapshot. Its VM
//! boots with [`protocol::VM_SNAPSHOT_ARG`] on the kernel command line, so the
//! init stops at [`protocol::VM_BOOT_PORT`] once its modules are loaded (before
//! it has seen anything of the pod). The guest's RAM is a file QEMU maps
//! shared; with the `x-ignore-shared` migration capability QEMU leaves it out
//! of the migration stream, which then holds only the devices' state (tens of
//! KB). That QEMU migrates into the cache and quits, and the pod is restored
//! from the files like every later one: QEMU maps the RAM file private (copy on
//! write: the pods share its pages in the host's page cache, none can change
//! it), loads the devices' state and runs on. Each restored guest first gets
//! the wall clock and a fresh random seed ([`protocol::VmResume`]).
//!
//! The trade-off: pods restored from one snapshot share the guest kernel's
//! address-space layout (KASLR) and what it drew from its random generator
//! before the snapshot. `"snapshots": false` in the kvm stage1 config boots
//! every pod instead.
//!
//! A snapshot is two files in the boot-file cache, `snapshot-<key>.ram` and
//! `snapshot-<key>.state`, written as temps, fsynced and renamed (the state
//! last: it marks a complete snapshot); [`crate::cache::prune`] drops those
//! no pod has used for an hour. Whatever goes wrong here, the pod boots.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{FcntlArg, FdFlag, Flock, FlockArg};
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, VmResume};

use crate::KvmError;
use crate::process::Qemu;
use crate::qemu::QemuArgs;

/// How long a snapshotting guest may take to boot and load its modules
/// (seconds under TCG; much more on a loaded machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long QEMU may take to answer a QMP command or a restored guest to
/// acknowledge its resume message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub const FILE_PREFIX: &str = "snapshot-";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another pod holds the snapshot's lock: it is making it.
    #[error("another pod is making this snapshot")]
    Busy,
    #[error(transparent)]
    Failed(#[from] KvmError),
}

/// A snapshot's files in the cache (they may not exist yet).
#[derive(Debug, Clone)]
pub struct Snapshot {
    key: String,
    ram: PathBuf,
    state: PathBuf,
    memory_mb: u64,
}

impl Snapshot {
    /// What a snapshot depends on: QEMU's binary (path and stat), the boot
    /// files (their cache names carry a hash of their content) and every
    /// QEMU argument that shapes the machine, except the pod's own paths.
    pub fn key(
        cache: &Path,
        qemu: &Path,
        boot_files: (&Path, &Path),
        args: &QemuArgs,
        sandbox: bool,
    ) -> Option<Snapshot> {
        let shape = format!(
            "v1 {:?} {:?} mem={} cpus={} tsc={} nics={} sandbox={sandbox} cmdline={:?} vmlinux={} initramfs={}",
            args.machine,
            args.accel,
            args.memory_mb,
            args.cpus,
            args.tsc_khz,
            args.nics.len(),
            args.kernel_cmdline(),
            boot_files.0.display(),
            boot_files.1.display(),
        );
        let key = fsutil::stat_key(&[qemu], &shape)?;
        Some(Snapshot {
            ram: cache.join(format!("{FILE_PREFIX}{key}.ram")),
            state: cache.join(format!("{FILE_PREFIX}{key}.state")),
            key,
            memory_mb: args.memory_mb,
        })
    }

    pub fn exists(&self) -> bool {
        self.state.is_file() && self.ram.is_file()
    }

    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// The cache directory the snapshot's files live in.
    fn dir(&self) -> &Path {
        self.ram.parent().unwrap_or(Path::new("/"))
    }

    fn failure_path(&self) -> PathBuf {
        self.state.with_extension("failed")
    }

    /// Why making this snapshot failed, if it did within the cache's grace
    /// period (pruning then removes the record): a QEMU without what
    /// snapshots need costs no failed save at every pod.
    pub fn failure(&self) -> Option<String> {
        std::fs::read_to_string(self.failure_path()).ok()
    }

    pub fn record_failure(&self, error: &KvmError) {
        let _ = fsutil::replace_file(&self.failure_path(), error.to_string().as_bytes());
    }

    /// Forgets a snapshot that failed to restore.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.ram);
    }

    /// Boots a VM with `argv` (the pod's, its kernel command line with the
    /// snapshot argument) up to the snapshot point and saves it. Err: no
    /// snapshot (another pod is making it, or this one failed); the caller
    /// boots.
    pub fn create(
        &self,
        argv: &[OsString],
        spawn: &dyn Fn(&[OsString]) -> Result<Qemu, KvmError>,
    ) -> Result<(), CreateError> {
        let dir = self.dir();
        let lock_path = dir.join(format!("{FILE_PREFIX}{}.lock", self.key));
        let lock = File::create(&lock_path)
            .map_err(|e| KvmError::io(format!("creating {}", lock_path.display()), e))?;
        let Ok(_making) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
            return Err(CreateError::Busy);
        };
        // Pruning waits for no one: while it cannot take the cache's lock it
        // leaves the temps below alone.
        let _cache = crate::cache::hold_shared(dir)?;
        if self.exists() {
            return Ok(());
        }
        let suffix = format!(".tmp-{}-{}", std::process::id(), fsutil::unique_suffix());
        let temp = |path: &Path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            dir.join(format!("{suffix}-{name}"))
        };
        let (ram_temp, state_temp) = (temp(&self.ram), temp(&self.state));
        let made = self.save(argv, spawn, &ram_temp, &state_temp);
        if made.is_err() {
            let _ = std::fs::remove_file(&ram_temp);
            let _ = std::fs::remove_file(&state_temp);
        }
        Ok(made?)
    }

    fn save(
        &self,
        argv: &[OsString],
        spawn: &dyn Fn(&[OsString]) -> Result<Qemu, KvmError>,
        ram_temp: &Path,
        state_temp: &Path,
    ) -> Result<(), KvmError> {
        // Handed to QEMU over QMP (`getfd`), not inherited.
        let state: OwnedFd = create_private(state_temp)?.into();
        // QEMU would create the RAM file readable by all; it opens this one.
        // (The guest's memory holds its kernel's layout and random state.)
        drop(create_private(ram_temp)?);
        let vm = self.start_vm(argv, (ram_temp, true), &[], spawn, |qmp, boot| {
            boot.expect(protocol::VM_BOOT_READY, BOOT_TIMEOUT)?;
            qmp.pass_fd("state", &state)?;
            qmp.execute("migrate", serde_json::json!({ "uri": "fd:state" }))?;
            qmp.wait_migration()?;
            qmp.execute("quit", serde_json::json!({})).map(drop)
        })?;
        vm.wait()?;
        let sync = |path: &Path| {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| KvmError::io(format!("syncing {}", path.display()), e))
        };
        sync(ram_temp)?;
        sync(state_temp)?;
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(|e| KvmError::io(format!("renaming {}", from.display()), e))
        };
        rename(ram_temp, &self.ram)?;
        rename(state_temp, &self.state)?;
        let dir = self.dir();
        fsutil::fsync_dir(dir).map_err(|e| KvmError::io(format!("syncing {}", dir.display()), e))
    }

    /// Starts the pod's VM from the snapshot: `argv` as for
    /// [`Snapshot::create`]. Returns once the guest has taken its resume
    /// message; Err: QEMU is gone (the caller boots instead).
    pub fn restore(
        &self,
        argv: &[OsString],
        spawn: &dyn Fn(&[OsString]) -> Result<Qemu, KvmError>,
    ) -> Result<Qemu, KvmError> {
        let state = File::open(&self.state)
            .map_err(|e| KvmError::io(format!("opening {}", self.state.display()), e))?;
        // QEMU opens the RAM file through this descriptor: the pair stays
        // together whatever replaces the snapshot's names meanwhile.
        let ram =
            File::open(&self.ram).map_err(|e| KvmError::io(format!("opening {}", self.ram.display()), e))?;
        let ram_path = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), ram.as_raw_fd()));
        // Used: pruning goes by this mtime.
        let _ = state.set_modified(SystemTime::now());
        let state = Inherited::new(state.into())?;
        let incoming = ["-incoming", "defer"];
        self.start_vm(argv, (&ram_path, false), &incoming, spawn, |qmp, boot| {
            qmp.execute(
                "migrate-incoming",
                serde_json::json!({ "uri": format!("fd:{}", state.raw()) }),
            )?;
            boot.send(&resume_message()?)?;
            boot.expect(protocol::VM_BOOT_RESUMED, ANSWER_TIMEOUT)
        })
    }

    /// QEMU started with `argv`, the guest's RAM in `ram` (shared while a
    /// snapshot is made, private when one is restored), its monitor (with
    /// `x-ignore-shared` on) and the boot port on inherited sockets, and
    /// `extra` arguments; `talk` then speaks to both. A VM `talk` fails on is
    /// killed.
    fn start_vm(
        &self,
        argv: &[OsString],
        (ram, share): (&Path, bool),
        extra: &[&str],
        spawn: &dyn Fn(&[OsString]) -> Result<Qemu, KvmError>,
        talk: impl FnOnce(&mut Qmp, &mut BootChannel) -> Result<(), KvmError>,
    ) -> Result<Qemu, KvmError> {
        let qmp = QemuSocket::new()?;
        let boot = QemuSocket::new()?;
        let mut argv = argv.to_vec();
        argv.extend(channel_argv(qmp.qemu_fd(), boot.qemu_fd()));
        argv.extend(memory_argv(self.memory_mb, ram, share));
        argv.extend(extra.iter().map(OsString::from));
        let vm = spawn(&argv)?;
        let (qmp, boot) = (qmp.connected(), boot.connected());
        let talked = (|| {
            let mut qmp = Qmp::connect(qmp)?;
            qmp.ignore_shared_memory()?;
            talk(&mut qmp, &mut BootChannel::new(boot)?)
        })();
        match talked {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.kill();
                Err(e)
            }
        }
    }
}

/// A new file only root can read: a snapshot's files.
fn create_private(path: &Path) -> Result<File, KvmError> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KvmError::io(format!("creating {}", path.display()), e))
}

fn resume_message() -> Result<VmResume, KvmError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| KvmError::Invalid("the host's clock is before 1970".into()))?;
    let mut seed = vec![0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| KvmError::io("reading /dev/urandom", e))?;
    Ok(VmResume {
        realtime_secs: now.as_secs() as i64,
        realtime_nanos: i64::from(now.subsec_nanos()),
        seed,
    })
}

/// QEMU's monitor and the boot port, on inherited sockets.
fn channel_argv(qmp_fd: RawFd, boot_fd: RawFd) -> Vec<OsString> {
    [
        "-chardev".to_string(),
        format!("socket,id=qmp,fd={qmp_fd}"),
        "-mon".to_string(),
        "chardev=qmp,mode=control".to_string(),
        "-chardev".to_string(),
        format!("socket,id=boot,fd={boot_fd}"),
        "-device".to_string(),
        format!("virtserialport,chardev=boot,name={}", protocol::VM_BOOT_PORT),
        // MIGRATION events: the end of a save is awaited, not polled.
        "-global".to_string(),
        "migration.x-events=on".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// The guest's RAM in `ram`: shared while a snapshot is made (the file is
/// the snapshot's RAM), private when restoring (the file stays as it is).
fn memory_argv(memory_mb: u64, ram: &Path, share: bool) -> Vec<OsString> {
    let share = if share { "on" } else { "off" };
    let backend = format!(
        "memory-backend-file,id=ram,size={memory_mb}M,mem-path={},share={share}",
        crate::qemu::escape_option(&ram.to_string_lossy())
    );
    [
        "-object".to_string(),
        backend,
        "-machine".to_string(),
        "memory-backend=ram".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// A descriptor QEMU inherits (not close-on-exec); only QEMU is forked while
/// it exists.
struct Inherited(OwnedFd);

impl Inherited {
    fn new(fd: OwnedFd) -> Result<Inherited, KvmError> {
        nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| KvmError::io("passing a descriptor to qemu", e.into()))?;
        Ok(Inherited(fd))
    }
    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A socket pair: QEMU's end inherited, ours close-on-exec.
struct QemuSocket {
    qemu_end: Inherited,
    ours: UnixStream,
}

impl QemuSocket {
    fn new() -> Result<QemuSocket, KvmError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| KvmError::io("creating a qemu channel", e))?;
        Ok(QemuSocket {
            qemu_end: Inherited::new(theirs.into())?,
            ours,
        })
    }
    fn qemu_fd(&self) -> RawFd {
        self.qemu_end.raw()
    }
    /// Once QEMU runs: our end only, so QEMU's exit ends our reads.
    fn connected(self) -> UnixStream {
        self.ours
    }
}

/// The host's end of [`protocol::VM_BOOT_PORT`]: one line each way.
struct BootChannel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl BootChannel {
    fn new(stream: UnixStream) -> Result<BootChannel, KvmError> {
        let writer = stream.try_clone().map_err(|e| KvmError::io("boot channel", e))?;
        Ok(BootChannel {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn send(&mut self, resume: &VmResume) -> Result<(), KvmError> {
        let mut line =
            serde_json::to_vec(resume).map_err(|e| KvmError::Invalid(format!("resume message: {e}")))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| KvmError::io("sending the resume message", e))
    }

    fn expect(&mut self, word: &str, timeout: Duration) -> Result<(), KvmError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| KvmError::io("boot channel", e))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| KvmError::io(format!("waiting for the guest's {word:?}"), e))?;
        if line.trim() != word {
            return Err(KvmError::Invalid(format!(
                "the guest said {:?} instead of {word:?} (or its VM ended)",
                line.trim()
            )));
        }
        Ok(())
    }
}

/// A QEMU Machine Protocol client: one JSON object per line each way;
/// events arrive between a command and its answer.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<serde_json::Value>,
}

impl Qmp {
    fn connect(stream: UnixStream) -> Result<Qmp, KvmError> {
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| KvmError::io("qmp", e))?;
        let writer = stream.try_clone().map_err(|e| KvmError::io("qmp", e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(KvmError::Invalid(format!("qmp: unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<serde_json::Value, KvmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| KvmError::io("reading from qmp", e))?;
        if n == 0 {
            return Err(KvmError::Invalid("qmp: qemu closed its monitor".into()));
        }
        serde_json::from_str(&line).map_err(|e| KvmError::Invalid(format!("qmp: {e}: {line:?}")))
    }

    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, KvmError> {
        let request = request(command, arguments)?;
        self.writer
            .write_all(&request)
            .map_err(|e| KvmError::io(format!("qmp: sending {command}"), e))?;
        self.answer(command)
    }

    /// `getfd`: QEMU keeps `fd` (sent along, SCM_RIGHTS) under `name`; an
    /// outgoing migration takes no inherited descriptor number.
    fn pass_fd(&mut self, name: &str, fd: &OwnedFd) -> Result<(), KvmError> {
        let request = request("getfd", serde_json::json!({ "fdname": name }))?;
        send_with_fd(&self.writer, &request, fd.as_raw_fd())
            .map_err(|e| KvmError::io("qmp: sending getfd", e))?;
        self.answer("getfd").map(drop)
    }

    /// The answer to `command`, keeping the events that come before it.
    fn answer(&mut self, command: &str) -> Result<serde_json::Value, KvmError> {
        loop {
            let mut message = self.read()?;
            if let Some(answer) = message.get_mut("return") {
                return Ok(answer.take());
            }
            if let Some(error) = message.get("error") {
                return Err(KvmError::Invalid(format!("qmp: {command}: {}", error["desc"])));
            }
            self.events.push(message);
        }
    }

    /// RAM in a shared memory backend stays out of the migration stream.
    fn ignore_shared_memory(&mut self) -> Result<(), KvmError> {
        self.execute(
            "migrate-set-capabilities",
            serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        )
        .map(drop)
    }

    /// Until a MIGRATION event says the save completed (or failed).
    fn wait_migration(&mut self) -> Result<(), KvmError> {
        let mut seen = std::mem::take(&mut self.events).into_iter();
        loop {
            let event = match seen.next() {
                Some(event) => event,
                None => self.read()?,
            };
            if event["event"] != "MIGRATION" {
                continue;
            }
            match event["data"]["status"].as_str() {
                Some("completed") => return Ok(()),
                Some(status @ ("failed" | "cancelled")) => {
                    return Err(KvmError::Invalid(format!(
                        "qmp: the snapshot's migration {status}"
                    )));
                }
                _ => {}
            }
        }
    }
}

/// A QMP command as one line.
fn request(command: &str, arguments: serde_json::Value) -> Result<Vec<u8>, KvmError> {
    let mut line = serde_json::to_vec(&serde_json::json!({ "execute": command, "arguments": arguments }))
        .map_err(|e| KvmError::Invalid(format!("qmp: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// All of `bytes` in one message carrying `fd` (QEMU's monitor reads the
/// descriptor with the command's first bytes).
fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one cmsghdr with one int, aligned as cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space.min(std::mem::size_of_val(&control));
    // SAFETY: msg_control points at `control`, large enough for the one
    // header CMSG_FIRSTHDR returns, which is written before sendmsg reads it;
    // iov points at `bytes`, which outlives the call.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sent as usize != bytes.len() {
        return Err(std::io::Error::other("short write of a qmp command"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::qemu::Nic;

    /// The shape every snapshot test starts from: no NIC, snapshot on.
    fn args() -> QemuArgs {
        let mut args = crate::qemu::sample_args();
        args.nics.clear();
        args.snapshot = true;
        args
    }

    fn key(a: &QemuArgs) -> String {
        let qemu = std::env::current_exe().unwrap();
        let boot = (Path::new("/c/vmlinux-x"), Path::new("/c/initramfs-y.cpio"));
        Snapshot::key(Path::new("/c"), &qemu, boot, a, false).unwrap().key
    }

    #[test]
    fn the_key_ignores_the_pods_paths_and_follows_the_machines_shape() {
        let base = key(&args());
        let mut other_pod = args();
        other_pod.share = "/pods/run/b/stage1/rootfs".into();
        other_pod.vmlinux = "/proc/2/fd/7".into();
        assert_eq!(key(&other_pod), base);
        let mut bigger = args();
        bigger.memory_mb = 512;
        assert_ne!(key(&bigger), base);
        let mut networked = args();
        networked.nics.push(Nic {
            tap: "tap0".into(),
            mac: "0a:58:ac:10:1c:05".into(),
        });
        assert_ne!(key(&networked), base);
    }

    #[test]
    fn restoring_maps_the_ram_file_private_and_saving_shared() {
        let text = |v: Vec<OsString>| {
            v.into_iter()
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let save = text(memory_argv(256, Path::new("/c/a,b.ram"), true));
        assert_eq!(
            save,
            "-object memory-backend-file,id=ram,size=256M,mem-path=/c/a,,b.ram,share=on -machine memory-backend=ram"
        );
        assert!(text(memory_argv(256, Path::new("/c/x.ram"), false)).contains("share=off"));
        let channels = text(channel_argv(7, 8));
        assert!(channels.contains("socket,id=qmp,fd=7 -mon chardev=qmp,mode=control"));
        assert!(channels.contains("virtserialport,chardev=boot,name=rkt.boot"));
    }

    /// A fake QEMU monitor: events before an answer are kept, errors are
    /// errors, and a save waits for its MIGRATION event.
    #[test]
    fn qmp_answers_events_and_errors() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let monitor = std::thread::spawn(move || {
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            let mut line = String::new();
            theirs.write_all(b"{\"QMP\": {\"version\": {}}}\r\n").unwrap();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            theirs.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("\"migrate\"") && line.contains("fd:9"), "{line}");
            theirs
                .write_all(
                    b"{\"event\": \"MIGRATION\", \"data\": {\"status\": \"setup\"}}\r\n{\"return\": {}}\r\n",
                )
                .unwrap();
            theirs
                .write_all(b"{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\r\n")
                .unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            theirs
                .write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\r\n")
                .unwrap();
        });
        let mut qmp = Qmp::connect(ours).unwrap();
        qmp.execute("migrate", serde_json::json!({"uri": "fd:9"}))
            .unwrap();
        qmp.wait_migration().unwrap();
        let err = qmp
            .execute("nope", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains("no such thing"), "{err}");
        monitor.join().unwrap();
    }
}
