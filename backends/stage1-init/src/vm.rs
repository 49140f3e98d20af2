//! The init's VM role: PID 1 of a guest booted by the kvm stage1, started by the
//! kernel from the initramfs as `/init stage1-init vm`.
//!
//! It brings the guest up — kernel filesystems, the modules listed in the
//! initramfs (dependencies first), the apps' stdout and stderr on two
//! virtio-serial ports, the pod's stage1 rootfs over 9p, the network stage0
//! described — then chroots into the share and runs the pod exactly as the
//! container role does. Each app's exit code lands in `rkt/status/<app>` on the
//! share; the guest then ends through the isa-debug-exit port (QEMU exits at
//! once), falling back to a power-off.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use rkt_engine::pod::protocol::{self, VmConfig, VmInterface, VmRoute};

use crate::InitError;

/// Where the share is mounted before the init chroots into it.
const SHARE: &str = "/pod";

/// Where the apps' share is mounted before it is bound into the pod's share
/// (outside the chroot).
const CACHED_APPS: &str = "/apps";

/// The I/O port of QEMU's isa-debug-exit device (`iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u64 = 0xf4;

/// How long virtio devices may take to show up after their driver loads (the
/// console ports are announced by the host asynchronously).
const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// How often the guest looks for a stop request on the share.
const STOP_POLL: Duration = Duration::from_millis(250);

pub fn main() -> i32 {
    IN_VM.store(true, std::sync::atomic::Ordering::Relaxed);
    let code = match bring_up() {
        Ok(config) => {
            watch_for_stop();
            crate::vm_sandbox::start(config.sandbox);
            crate::run_pod()
        }
        Err(e) => {
            eprintln!("stage1: {e}");
            crate::fail(&e)
        }
    };
    power_off(code)
}

/// A thread that turns stage0's stop request into a SIGTERM to the init,
/// which then stops every app as in a container. The signals the init reads
/// through its signalfd are blocked before the thread starts, so it inherits
/// the mask and the SIGTERM stays pending for the signalfd. (PID 1 drops a
/// signal it neither handles nor blocks.) The thread only sleeps and stats;
/// glibc's fork keeps malloc usable in the apps' children.
fn watch_for_stop() {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in crate::STOP_SIGNALS {
        set.add(s);
    }
    set.add(nix::sys::signal::Signal::SIGCHLD);
    if nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let request = protocol::vm_stop_request().inside();
    let enter_dir = protocol::vm_enter_dir().inside();
    let _ = std::thread::Builder::new()
        .name("stop-watch".into())
        .spawn(move || {
            // First after a pause: the pod's start has the share to itself.
            loop {
                std::thread::sleep(STOP_POLL);
                if request.exists() {
                    break;
                }
                start_enter_requests(&enter_dir);
            }
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        });
}

/// Claims each new `rkt enter` request and starts a fresh copy of this binary
/// to run it ([`crate::vm_enter`]): a new single-threaded process, where the
/// fork before the command's exec is safe. The init's reaper collects it like
/// any orphan; the runner itself waits for the command and records its code.
fn start_enter_requests(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let request = entry.path();
        let claimed = request.join(protocol::VM_ENTER_CLAIMED);
        if std::fs::rename(request.join(protocol::VM_ENTER_REQUEST), &claimed).is_err() {
            continue;
        }
        let started = std::process::Command::new("/proc/self/exe")
            .arg(protocol::INIT_ROLE_ARG)
            .arg(protocol::VM_ENTER_ROLE_ARG)
            .arg(&request)
            .stdin(std::process::Stdio::null())
            .spawn();
        if let Err(e) = started {
            let message = format!("enter: starting the runner: {e}");
            let _ =
                rkt_engine::fsutil::replace_file(&request.join(protocol::VM_ENTER_ERROR), message.as_bytes());
        }
    }
}

/// A step of the bring-up in the kernel log, where its timestamp says how long
/// it took (`rkt run --debug` shows the log; `quiet` hides this level).
/// Set once the init runs as a VM's PID 1: only there do the shared steps of
/// [`crate::run_pod`] leave their marks in the kernel log.
static IN_VM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once the guest has been restored from a snapshot ([`await_resume`]).
static RESTORED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A step of the pod's start in the guest's kernel log (`rkt run --debug`
/// shows it with the kernel's timestamp); nothing outside a VM.
pub(crate) fn mark_in_vm(step: &str) {
    if IN_VM.load(std::sync::atomic::Ordering::Relaxed) {
        mark(step);
    }
}

fn mark(step: &str) {
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        use std::io::Write;
        let _ = kmsg.write_all(format!("<6>rkt-init: {step}\n").as_bytes());
    }
}

/// The guest up and the init in the share; the VM config stage0 wrote.
fn bring_up() -> Result<VmConfig, InitError> {
    mount_kernel_filesystems(Path::new(""))?;
    mark("kernel filesystems mounted");
    // `lo` needs neither a module nor the pod's config: it comes up on the
    // other vCPU while this one loads the modules.
    let loopback = std::thread::Builder::new()
        .name("loopback".into())
        .spawn(|| set_up(&inet_socket()?, "lo"))
        .map_err(|e| InitError::io("starting the loopback thread", e))?;
    let order = Path::new(protocol::VM_MODULES_ORDER);
    let modules = crate::kmod::ModulesDir::open(order.parent().unwrap_or(Path::new("/")))?;
    let list = |path: &'static str| path.rsplit('/').next().unwrap_or(path);
    modules.load_list(list(protocol::VM_MODULES_ORDER))?;
    mark("modules loaded");
    if std::env::args().any(|a| a == protocol::VM_SNAPSHOT_ARG) {
        await_resume()?;
        mark("resumed");
    }
    // QEMU announces the console ports while the guest mounts the share and
    // sets up its network: they are waited for last.
    mount_share()?;
    mark("share mounted");
    let config_path = protocol::vm_config().inside();
    let bytes = std::fs::read(&config_path)
        .map_err(|e| InitError::io(format!("reading {}", config_path.display()), e))?;
    let config: VmConfig = serde_json::from_slice(&bytes)
        .map_err(|e| InitError::Invalid(format!("{}: {e}", config_path.display())))?;
    if !config.hostname.is_empty() {
        nix::unistd::sethostname(&config.hostname)
            .map_err(|e| InitError::io("setting the hostname", e.into()))?;
    }
    if !config.interfaces.is_empty() {
        modules.load_list(list(protocol::VM_NET_MODULES_ORDER))?;
    }
    loopback
        .join()
        .map_err(|_| InitError::Invalid("bringing lo up: the thread panicked".into()))??;
    configure_network(&config)?;
    mark("network configured");
    redirect_output()?;
    mark("console ports open");
    Ok(config)
}

/// The snapshot point: stage0 saves the guest while it waits here, and every
/// pod restored from that snapshot continues from the read below with its
/// own [`VmResume`]. What follows the read must not rely on anything learned
/// before it about the pod (there was no pod yet).
fn await_resume() -> Result<(), InitError> {
    use std::io::{BufRead, Write};
    let dev = wait_for(
        &format!("the virtio-serial port {}", protocol::VM_BOOT_PORT),
        || find_port(protocol::VM_BOOT_PORT),
    )?;
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(|e| InitError::io(format!("opening {}", dev.display()), e))?;
    let mut writer = &port;
    writer
        .write_all(format!("{}\n", protocol::VM_BOOT_READY).as_bytes())
        .map_err(|e| InitError::io("announcing the snapshot point", e))?;
    let mut line = String::new();
    std::io::BufReader::new(&port)
        .read_line(&mut line)
        .map_err(|e| InitError::io("reading the resume message", e))?;
    let resume: protocol::VmResume = serde_json::from_str(line.trim())
        .map_err(|e| InitError::Invalid(format!("the resume message: {e}")))?;
    let now = libc::timespec {
        tv_sec: resume.realtime_secs,
        tv_nsec: resume.realtime_nanos,
    };
    // SAFETY: clock_settime reads the timespec it is given.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } != 0 {
        return Err(InitError::io(
            "setting the clock",
            std::io::Error::last_os_error(),
        ));
    }
    reseed_random(&resume.seed)?;
    RESTORED.store(true, std::sync::atomic::Ordering::Relaxed);
    writer
        .write_all(format!("{}\n", protocol::VM_BOOT_RESUMED).as_bytes())
        .map_err(|e| InitError::io("acknowledging the resume message", e))
}

/// Mixes `seed` into the kernel's entropy pool, credited, and makes the
/// generator reseed from it now: pods restored from one snapshot would
/// otherwise draw the same random numbers.
fn reseed_random(seed: &[u8]) -> Result<(), InitError> {
    /// `struct rand_pool_info` with room for the seed.
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 64],
    }
    // <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let mut info = PoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; 64],
    };
    let len = seed.len().min(info.buf.len());
    info.buf[..len].copy_from_slice(&seed[..len]);
    info.buf_size = len as libc::c_int;
    info.entropy_count = (len * 8) as libc::c_int;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| InitError::io("opening /dev/urandom", e))?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow
    // its two ints; `info` is such a struct with buf_size within its buffer.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, &info as *const PoolInfo) };
    if rc < 0 {
        return Err(InitError::io("adding entropy", std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc < 0 {
        return Err(InitError::io(
            "reseeding the random generator",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    std::fs::create_dir_all(target)
        .map_err(|e| InitError::io(format!("creating {}", target.display()), e))?;
    mount_on_dir(source, target, fstype, flags, data)
}

/// Mounts onto `target`, a directory that exists (the initramfs's and the
/// stage1 rootfs's `dev`, `proc`, `sys`: made by stage0). Over the share a
/// check first would cost a walk of its own.
fn mount_on_dir(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| InitError::mount(format!("{fstype} on {}", target.display()), e))
}

/// /proc, /sys and /dev (with pts and shm) below `root`.
fn mount_kernel_filesystems(root: &Path) -> Result<(), InitError> {
    let at = |p: &str| PathBuf::from(format!("{}{p}", root.display()));
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on_dir("proc", &at("/proc"), "proc", nosuid, None)?;
    mount_on_dir("sysfs", &at("/sys"), "sysfs", nosuid, None)?;
    mount_on_dir(
        "devtmpfs",
        &at("/dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount(
        "devpts",
        &at("/dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount(
        "shm",
        &at("/dev/shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}

/// The apps' output leaves the guest on two virtio-serial ports (no terminal
/// in between: no CR/LF rewriting, no kernel messages mixed in).
fn redirect_output() -> Result<(), InitError> {
    let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())
        .map_err(|e| InitError::io("opening /dev/null", e.into()))?;
    dup_onto(&null, 0)?;
    for (name, fd) in [(protocol::VM_STDOUT_PORT, 1), (protocol::VM_STDERR_PORT, 2)] {
        let dev = wait_for(&format!("the virtio-serial port {name}"), || find_port(name))?;
        let port = nix::fcntl::open(&dev, OFlag::O_WRONLY, Mode::empty())
            .map_err(|e| InitError::io(format!("opening {}", dev.display()), e.into()))?;
        dup_onto(&port, fd)?;
    }
    Ok(())
}

fn dup_onto(fd: &OwnedFd, target: i32) -> Result<(), InitError> {
    // SAFETY: dup2 onto a standard descriptor number; both are valid fds and
    // the old target (the console) is closed by the kernel.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(InitError::io(
            format!("dup2 onto fd {target}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// `/dev/vportNpM` of the port named `name`, once its device node exists.
pub(crate) fn find_port(name: &str) -> Option<PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for port in ports.flatten() {
        let named = std::fs::read_to_string(port.path().join("name")).ok()?;
        if named.trim() == name {
            let dev = Path::new("/dev").join(port.file_name());
            return dev.exists().then_some(dev);
        }
    }
    None
}

/// Polls `probe` until it yields or [`DEVICE_WAIT`] has passed. Devices appear
/// through interrupts and work queues after their driver is loaded; there is no
/// event the init can wait on without udev.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T, InitError> {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return Ok(found);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(InitError::Invalid(format!("{what} did not appear")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Mounts the stage1 rootfs, gives it kernel filesystems and makes it `/`.
fn mount_share() -> Result<(), InitError> {
    let share = Path::new(SHARE);
    // cache=mmap: executables are paged in through the guest's page cache
    // (faster exec of the apps' binaries); every other read, write and lookup
    // still goes to the host, so status files, volumes and the stop request
    // stay coherent.
    mount(
        protocol::VM_SHARE_TAG,
        share,
        "9p",
        MsFlags::empty(),
        Some("trans=virtio,version=9p2000.L,msize=262144,access=client,cache=mmap"),
    )?;
    cache_app_roots(share)?;
    mount_kernel_filesystems(share)?;
    mount_cgroups(share)?;
    nix::unistd::chdir(share).map_err(|e| InitError::io(format!("chdir {SHARE}"), e.into()))?;
    nix::unistd::chroot(".").map_err(|e| InitError::io("chroot into the pod's share", e.into()))?;
    nix::unistd::chdir("/").map_err(|e| InitError::io("chdir /", e.into()))?;
    pin_control_dirs();
    Ok(())
}

/// The share's directories whose paths the init resolves more than once
/// (their parent `rkt` stays with them): each app's status is written
/// through a temporary file and a rename, each of its /etc files is checked,
/// statted and opened before it is bound.
const CONTROL_DIRS: [&str; 2] = ["rkt/status", "rkt/etc"];

/// Held open for the guest's life (see [`pin_control_dirs`]).
static PINNED_DIRS: std::sync::OnceLock<Vec<OwnedFd>> = std::sync::OnceLock::new();

/// The uncached share forgets a dentry as soon as nothing uses it, so every
/// path through it is walked again from the share's root, a 9p round trip
/// (and a stat) per component. Holding its control directories open keeps
/// their dentries (and their parents'): a status, config or stop-request path
/// then costs the walk of its last component only. Their contents stay
/// uncached.
fn pin_control_dirs() {
    let pinned = CONTROL_DIRS
        .iter()
        .filter_map(|dir| {
            nix::fcntl::open(
                Path::new("/").join(dir).as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
        })
        .collect();
    let _ = PINNED_DIRS.set(pinned);
}

/// The apps' roots (`opt/stage2`) through their own share
/// ([`protocol::VM_APPS_SHARE_TAG`]) with `cache=loose`: the guest keeps their
/// dentries and attributes, where an uncached share walks every path from its
/// root again (QEMU opens each component on the host), hundreds of round trips
/// while an app's root is assembled and its binary started. Only the guest
/// uses an app's root while the pod runs (the host reads the `rkt/` files,
/// which stay on the uncached share); what the apps write there reaches the
/// host by the `sync` before power-off.
fn cache_app_roots(share: &Path) -> Result<(), InitError> {
    let roots = share.join("opt/stage2");
    // Held while the cached share is bound over it: the bind finds the
    // dentries the check looked up instead of walking the path again.
    let Ok(roots_dir) = nix::fcntl::open(
        &roots,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(());
    };
    let cached = Path::new(CACHED_APPS);
    mount(
        protocol::VM_APPS_SHARE_TAG,
        cached,
        "9p",
        MsFlags::empty(),
        Some("trans=virtio,version=9p2000.L,msize=262144,access=client,cache=loose"),
    )?;
    let bound = nix::mount::mount(Some(cached), &roots, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| InitError::mount(format!("the cached app roots on {}", roots.display()), e));
    drop(roots_dir);
    bound
}

/// cgroup2 with the memory and cpu controllers handed down, so each app gets
/// its own cgroup with its limits ([`protocol::OwnCgroup`]).
fn mount_cgroups(share: &Path) -> Result<(), InitError> {
    let root = share.join(protocol::VM_CGROUP_ROOT.trim_start_matches('/'));
    mount(
        "cgroup2",
        &root,
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let control = root.join("cgroup.subtree_control");
    std::fs::write(&control, "+memory +cpu")
        .map_err(|e| InitError::io(format!("writing +memory +cpu to {}", control.display()), e))
}

/// A socket for the interface and route ioctls.
fn inet_socket() -> Result<OwnedFd, InitError> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(InitError::io("socket(AF_INET)", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// The pod's interfaces and routes (`lo` is up already).
fn configure_network(config: &VmConfig) -> Result<(), InitError> {
    if config.interfaces.is_empty() && config.routes.is_empty() {
        return Ok(());
    }
    let sock = inet_socket()?;
    // NICs restored from a snapshot have the MAC addresses of the pod that
    // made it: they are told apart by their order instead (the config lists
    // them in QEMU's device order, which is the order of their virtio
    // device numbers) and take the pod's addresses (the device's receive
    // filter follows, VIRTIO_NET_F_CTRL_MAC_ADDR).
    let restored_nics = if RESTORED.load(std::sync::atomic::Ordering::Relaxed) {
        let wanted = config.interfaces.len();
        wait_for(&format!("{wanted} network interfaces"), || {
            Some(virtio_nics_in_device_order()).filter(|nics| nics.len() >= wanted)
        })?
    } else {
        Vec::new()
    };
    for (i, iface) in config.interfaces.iter().enumerate() {
        let current = match restored_nics.get(i) {
            Some(current) => {
                set_mac(&sock, current, &iface.mac)?;
                current.clone()
            }
            None => wait_for(&format!("the network interface with MAC {}", iface.mac), || {
                interface_with_mac(&iface.mac)
            })?,
        };
        if current != iface.name {
            rename(&sock, &current, &iface.name)?;
        }
        configure_interface(&sock, iface)?;
    }
    // Routes to a gateway need the gateway's own route first.
    let (direct, via): (Vec<&VmRoute>, Vec<&VmRoute>) =
        config.routes.iter().partition(|r| r.gateway.is_none());
    for route in direct.into_iter().chain(via) {
        add_route(&sock, route)?;
    }
    Ok(())
}

/// The virtio NICs' names, by their virtio device number (`virtioN`).
fn virtio_nics_in_device_order() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut nics: Vec<(u32, String)> = entries
        .flatten()
        .filter_map(|e| {
            let driver = std::fs::read_link(e.path().join("device/driver")).ok()?;
            if driver.file_name()? != "virtio_net" {
                return None;
            }
            let device = std::fs::read_link(e.path().join("device")).ok()?;
            let number = virtio_number(&device.file_name()?.to_string_lossy())?;
            Some((number, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    nics.sort();
    nics.into_iter().map(|(_, name)| name).collect()
}

/// `virtio12` -> 12.
fn virtio_number(device: &str) -> Option<u32> {
    device.strip_prefix("virtio")?.parse().ok()
}

fn set_mac(sock: &OwnedFd, name: &str, mac: &str) -> Result<(), InitError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()
        .filter(|b: &Vec<u8>| b.len() == 6)
        .ok_or_else(|| InitError::Invalid(format!("bad MAC address {mac:?}")))?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr = unsafe { std::mem::zeroed() };
    address.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in address.sa_data.iter_mut().zip(&bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = address;
    ioctl(
        sock,
        libc::SIOCSIFHWADDR,
        (&raw mut req).cast(),
        &format!("setting {name}'s MAC address to {mac}"),
    )
}

fn interface_with_mac(mac: &str) -> Option<String> {
    let entries = std::fs::read_dir("/sys/class/net").ok()?;
    entries.flatten().find_map(|e| {
        let address = std::fs::read_to_string(e.path().join("address")).ok()?;
        address
            .trim()
            .eq_ignore_ascii_case(mac)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn ifreq(name: &str) -> Result<libc::ifreq, InitError> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(InitError::Invalid(format!("interface name {name:?} is too long")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(sock: &OwnedFd, request: libc::Ioctl, arg: *mut libc::c_void, what: &str) -> Result<(), InitError> {
    // SAFETY: every caller passes a pointer to the struct `request` expects
    // (ifreq or rtentry), alive for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, arg) } < 0 {
        return Err(InitError::io(what.to_string(), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the family to interpret the rest.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

fn set_up(sock: &OwnedFd, name: &str) -> Result<(), InitError> {
    let mut req = ifreq(name)?;
    let what = format!("bringing {name} up");
    ioctl(sock, libc::SIOCGIFFLAGS, (&raw mut req).cast(), &what)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(sock, libc::SIOCSIFFLAGS, (&raw mut req).cast(), &what)
}

fn rename(sock: &OwnedFd, from: &str, to: &str) -> Result<(), InitError> {
    let mut req = ifreq(from)?;
    let new = ifreq(to)?;
    req.ifr_ifru.ifru_newname = new.ifr_name;
    ioctl(
        sock,
        libc::SIOCSIFNAME,
        (&raw mut req).cast(),
        &format!("renaming {from} to {to}"),
    )
}

fn configure_interface(sock: &OwnedFd, iface: &VmInterface) -> Result<(), InitError> {
    let ip: Ipv4Addr = iface
        .address
        .parse()
        .map_err(|_| InitError::Invalid(format!("{}: bad address {:?}", iface.name, iface.address)))?;
    let what = format!(
        "configuring {} as {}/{}",
        iface.name, iface.address, iface.prefix_len
    );
    let mut req = ifreq(&iface.name)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(sock, libc::SIOCSIFADDR, (&raw mut req).cast(), &what)?;
    let mut req = ifreq(&iface.name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(netmask(iface.prefix_len));
    ioctl(sock, libc::SIOCSIFNETMASK, (&raw mut req).cast(), &what)?;
    set_up(sock, &iface.name)
}

/// `a.b.c.d/n` (or a bare address: /32).
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    match s.split_once('/') {
        Some((ip, len)) => Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?)),
        None => Some((s.parse().ok()?, 32)),
    }
}

fn add_route(sock: &OwnedFd, route: &VmRoute) -> Result<(), InitError> {
    let bad = || InitError::Invalid(format!("route {route:?}: bad address"));
    let (dst, len) = parse_cidr(&route.destination).ok_or_else(bad)?;
    let device = CString::new(route.device.as_str()).map_err(|_| bad())?;
    // SAFETY: rtentry is plain data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(dst);
    rt.rt_genmask = sockaddr(netmask(len));
    rt.rt_flags = libc::RTF_UP;
    if len == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    if let Some(gw) = &route.gateway {
        rt.rt_gateway = sockaddr(gw.parse().map_err(|_| bad())?);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt.rt_dev = device.as_ptr().cast_mut();
    let what = format!("adding the route to {} on {}", route.destination, route.device);
    match ioctl(sock, libc::SIOCADDRT, (&raw mut rt).cast(), &what) {
        // The kernel made the subnet route itself when the address was set.
        Err(InitError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Ends the VM: the pod's exit code through isa-debug-exit (QEMU exits with
/// `code << 1 | 1` without a guest shutdown), else an ACPI power-off.
fn power_off(code: i32) -> ! {
    mark("powering off");
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Ok(port) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
        use std::os::unix::fs::FileExt;
        let _ = port.write_at(&[(code & 0xff) as u8], DEBUG_EXIT_PORT);
    }
    // SAFETY: reboot(2) with a constant command; it returns only on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // PID 1 must never return: the kernel would panic.
    loop {
        nix::unistd::pause();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn virtio_device_numbers_order_numerically() {
        assert_eq!(virtio_number("virtio3"), Some(3));
        assert_eq!(virtio_number("virtio12"), Some(12));
        assert_eq!(virtio_number("virtio"), None);
        assert_eq!(virtio_number("eth0"), None);
    }

    #[test]
    fn netmasks_and_cidrs() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(parse_cidr("0.0.0.0/0"), Some((Ipv4Addr::UNSPECIFIED, 0)));
        assert_eq!(
            parse_cidr("172.16.28.1"),
            Some((Ipv4Addr::new(172, 16, 28, 1), 32))
        );
        assert_eq!(parse_cidr("1.2.3.4/33"), None);
        assert_eq!(parse_cidr("x/8"), None);
    }
}
