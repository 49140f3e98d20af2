//! Kernel modules of the VM role: stage0 put them in the initramfs with two
//! lists, each in load order (dependencies first): what every pod needs (the
//! virtio transport, the 9p share, the console ports) and what only a pod with
//! a network needs ([`protocol::VM_NET_MODULES_ORDER`]), loaded only then.
//! Each line names a module, then the modules of the same list it depends on.
//!
//! Under TCG a module costs what the guest's CPU spends relocating it and
//! probing its devices (stage0 stripped the signatures, whose check cost
//! more), and the waits for the other vCPUs its loading involves. The
//! loader takes whichever module has its dependencies loaded, with
//! [`LOAD_WORKERS`] workers.
//!
//! [`protocol::VM_NET_MODULES_ORDER`]: rkt_engine::pod::protocol::VM_NET_MODULES_ORDER

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::InitError;

/// One module at a time. Loading a module makes the guest's kernel flush
/// every CPU's TLB and wait for the others (IPIs) several times; while a
/// vCPU is idle such a wait costs one host wake-up, but with every vCPU busy
/// loading (TCG, host cores shared with QEMU's own threads) the waits meet
/// descheduled vCPUs: measured here with 2 vCPUs on 2 host cores, 9 modules
/// took 200 ms one at a time and 180-760 ms two at a time.
const LOAD_WORKERS: usize = 1;

/// The initramfs's modules directory, held open: the lists are read after
/// the init has chrooted into the pod's share.
pub struct ModulesDir(std::fs::File);

impl ModulesDir {
    pub fn open(dir: &Path) -> Result<ModulesDir, InitError> {
        std::fs::File::open(dir)
            .map(ModulesDir)
            .map_err(|e| InitError::io(format!("opening {}", dir.display()), e))
    }

    /// Loads every module named in the list `name`, each after the modules
    /// it depends on, up to one at a time per CPU; one already loaded or
    /// built in is fine.
    pub fn load_list(&self, name: &str) -> Result<(), InitError> {
        let list = std::fs::read_to_string(self.path(name))
            .map_err(|e| InitError::io(format!("reading the modules list {name}"), e))?;
        load_in_dependency_order(&parse_list(&list), LOAD_WORKERS, |module| {
            load(&self.path(module))
        })
    }

    /// `name` in the directory through its descriptor, wherever `/` is now.
    fn path(&self, name: &str) -> std::path::PathBuf {
        Path::new(&format!("/proc/self/fd/{}", self.0.as_raw_fd())).join(name)
    }
}

fn load(path: &Path) -> Result<(), InitError> {
    let file =
        std::fs::File::open(path).map_err(|e| InitError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: finit_module reads the module from the open fd; the parameter
    // string is a valid NUL-terminated empty string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(InitError::io(format!("loading {}", path.display()), err));
        }
    }
    Ok(())
}

/// A module of a list and the modules of the same list it needs first.
#[derive(Debug, PartialEq, Eq)]
struct Listed<'a> {
    name: &'a str,
    deps: Vec<&'a str>,
}

/// The non-empty, non-comment lines of a modules list: `NAME [DEP...]`.
fn parse_list(list: &str) -> Vec<Listed<'_>> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(Listed {
                name: words.next()?,
                deps: words.collect(),
            })
        })
        .collect()
}

/// What the workers share: the modules not started yet (in list order), those
/// loaded, how many are loading, and the first failure (which stops the rest).
struct Schedule<'a> {
    pending: Vec<&'a Listed<'a>>,
    loaded: BTreeSet<&'a str>,
    loading: usize,
    failed: Option<InitError>,
}

/// Runs `load` on every module of `modules` from up to `workers` threads (the
/// caller's among them), a module only once every dependency it names that is
/// in the list has loaded. Names a list leaves out are taken as loaded
/// (another list, or built in).
fn load_in_dependency_order(
    modules: &[Listed<'_>],
    workers: usize,
    load: impl Fn(&str) -> Result<(), InitError> + Sync,
) -> Result<(), InitError> {
    let listed: BTreeSet<&str> = modules.iter().map(|m| m.name).collect();
    let state = Mutex::new(Schedule {
        pending: modules.iter().collect(),
        loaded: BTreeSet::new(),
        loading: 0,
        failed: None,
    });
    let changed = Condvar::new();
    let worker = || {
        let Ok(mut s) = state.lock() else {
            return;
        };
        loop {
            if s.failed.is_some() || s.pending.is_empty() {
                return;
            }
            let ready = s
                .pending
                .iter()
                .position(|m| m.deps.iter().all(|d| !listed.contains(d) || s.loaded.contains(d)));
            match ready {
                Some(at) => {
                    let module = s.pending.remove(at);
                    s.loading += 1;
                    drop(s);
                    let outcome = load(module.name);
                    let Ok(mut again) = state.lock() else {
                        return;
                    };
                    again.loading -= 1;
                    match outcome {
                        Ok(()) => {
                            again.loaded.insert(module.name);
                        }
                        Err(e) => {
                            again.failed.get_or_insert(e);
                        }
                    }
                    changed.notify_all();
                    s = again;
                }
                None if s.loading == 0 => {
                    let names: Vec<&str> = s.pending.iter().map(|m| m.name).collect();
                    s.failed = Some(InitError::Invalid(format!(
                        "the modules {names:?} depend on each other in a cycle"
                    )));
                    changed.notify_all();
                    return;
                }
                None => match changed.wait(s) {
                    Ok(next) => s = next,
                    Err(_) => return,
                },
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..workers.clamp(1, modules.len().max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    let failed = state
        .into_inner()
        .map(|s| s.failed)
        .unwrap_or_else(|p| p.into_inner().failed);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_each_module_and_its_dependencies() {
        let list = "# deps first\n00-virtio_ring.ko\n\n 01-virtio.ko 00-virtio_ring.ko \n";
        assert_eq!(
            parse_list(list),
            [
                Listed {
                    name: "00-virtio_ring.ko",
                    deps: vec![]
                },
                Listed {
                    name: "01-virtio.ko",
                    deps: vec!["00-virtio_ring.ko"]
                },
            ]
        );
    }

    /// The microvm base list: every module must find its dependencies loaded,
    /// whatever the number of workers.
    #[test]
    fn every_module_loads_after_its_dependencies_with_any_number_of_workers() {
        let list = "ring\nvirtio ring\nmmio virtio ring\n9pnet\n9pnet_virtio 9pnet virtio ring\n\
                    netfs\nfscache netfs\n9p 9pnet fscache netfs\nconsole virtio ring\n";
        let modules = parse_list(list);
        for workers in [1, 2, 4, 64] {
            let loaded = Mutex::new(Vec::<String>::new());
            load_in_dependency_order(&modules, workers, |name| {
                let mut done = loaded.lock().unwrap();
                let module = modules.iter().find(|m| m.name == name).unwrap();
                for dep in &module.deps {
                    assert!(done.iter().any(|d| d == dep), "{name} before {dep}");
                }
                done.push(name.to_string());
                Ok(())
            })
            .unwrap();
            assert_eq!(loaded.into_inner().unwrap().len(), modules.len());
        }
    }

    #[test]
    fn a_failure_stops_the_modules_that_need_it_and_is_reported() {
        let modules = parse_list("a\nb a\nc\n");
        let started = Mutex::new(Vec::<String>::new());
        let err = load_in_dependency_order(&modules, 2, |name| {
            started.lock().unwrap().push(name.to_string());
            if name == "a" {
                return Err(InitError::Invalid("a: no such module".into()));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("a: no such module"), "{err}");
        assert!(!started.into_inner().unwrap().contains(&"b".to_string()));
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let modules = parse_list("a b\nb a\n");
        let err = load_in_dependency_order(&modules, 2, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn lists_are_read_through_the_directorys_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net.order"), "# nothing\n").unwrap();
        let modules = ModulesDir::open(dir.path()).unwrap();
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        modules.load_list("net.order").unwrap();
        assert!(modules.load_list("missing.order").is_err());
        std::fs::rename(&moved, dir.path()).unwrap();
    }
}
