//! The guest's initramfs (cpio "newc", uncompressed: the kernel unpacks it
//! without a decompressor): the static `rkt` binary as `/init`, the kernel
//! modules the VM role needs with their dependencies, and the order to load
//! them in ([`protocol::VM_MODULES_ORDER`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rkt_engine::pod::protocol;

use crate::KvmError;

/// A cpio archive in the "newc" format, built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, &[], (0, 0));
    }
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, S_IFREG | mode, data, (0, 0));
    }
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | mode, &[], (major, minor));
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.data
    }
}

/// `modules.dep` as a map from a module's name (`virtio_net`) to its path
/// (relative to the modules directory) and direct dependencies' paths.
pub struct ModulesDep {
    by_name: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// Module names compare with `-` and `_` as one (as modprobe does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModulesDep {
    pub fn parse(text: &str) -> ModulesDep {
        let mut by_name = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            by_name.insert(module_name(&module), module.clone());
            deps.insert(module, rest.split_whitespace().map(str::to_string).collect());
        }
        ModulesDep { by_name, deps }
    }

    /// The paths to load for `wanted`, every module after its dependencies.
    /// Names in `builtin` need nothing; any other unknown name is an error.
    pub fn load_order(&self, wanted: &[&str], builtin: &BTreeSet<String>) -> Result<Vec<String>, KvmError> {
        self.load_order_after(wanted, builtin, &[])
    }

    /// As [`ModulesDep::load_order`], leaving out what `loaded` (an earlier
    /// order) already brings.
    pub fn load_order_after(
        &self,
        wanted: &[&str],
        builtin: &BTreeSet<String>,
        loaded: &[String],
    ) -> Result<Vec<String>, KvmError> {
        let mut order = Vec::new();
        let mut seen: BTreeSet<String> = loaded.iter().cloned().collect();
        for name in wanted {
            let name = name.replace('-', "_");
            if builtin.contains(&name) {
                continue;
            }
            let path = self.by_name.get(&name).ok_or_else(|| {
                KvmError::Invalid(format!("kernel module {name} is neither a module nor built in"))
            })?;
            self.visit(path, &mut seen, &mut order);
        }
        Ok(order)
    }

    /// The modules `path` needs loaded first (their paths).
    pub fn direct_deps(&self, path: &str) -> &[String] {
        self.deps.get(path).map_or(&[], Vec::as_slice)
    }

    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for dep in self.deps.get(path).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_string());
    }
}

/// Names from `modules.builtin` (`kernel/fs/ext4/ext4.ko` -> `ext4`).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// The part of an ELF executable the kernel loads: up to the end of its last
/// segment. What follows (debug info, symbols, section headers) never reaches
/// memory; cutting it keeps a debug build's 150 MB out of the guest's RAM. The
/// section header fields are cleared since the table is gone.
pub fn loadable_prefix(elf: &[u8]) -> Result<Vec<u8>, KvmError> {
    let bad = |why: &str| KvmError::Invalid(format!("the rkt binary: {why}"));
    if elf.get(0..5) != Some(b"\x7fELF\x02") || elf.get(5) != Some(&1) {
        return Err(bad("not a little-endian 64-bit ELF file"));
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let phoff = u64_at(0x20).ok_or_else(|| bad("truncated"))? as usize;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(|| bad("truncated"))?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(|| bad("truncated"))?);
    let mut end = phoff + phentsize * phnum;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let offset = u64_at(ph + 0x08).ok_or_else(|| bad("truncated program header"))?;
        let filesz = u64_at(ph + 0x20).ok_or_else(|| bad("truncated program header"))?;
        end = end.max((offset + filesz) as usize);
    }
    let mut out = elf
        .get(..end)
        .ok_or_else(|| bad("a segment lies outside the file"))?
        .to_vec();
    // e_shoff (8 bytes), then e_shnum and e_shstrndx.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(out)
}

/// The modules every pod's guest loads: the virtio transport of the machine,
/// the 9p share and the console ports.
pub fn base_modules(transport: &str) -> Vec<&str> {
    vec![transport, "9pnet_virtio", "9p", "virtio_console"]
}

/// The modules a guest loads only when its pod has a network.
pub fn net_modules() -> Vec<&'static str> {
    vec!["virtio_net"]
}

/// The modules to put in the initramfs, each list in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleLists {
    /// Loaded by every guest ([`protocol::VM_MODULES_ORDER`]).
    pub base: Vec<String>,
    /// Loaded by a guest with a network ([`protocol::VM_NET_MODULES_ORDER`]).
    pub net: Vec<String>,
    /// Cut each module's appended signature: the guest kernel accepts
    /// unsigned modules and checking a signature costs more than relocating
    /// the module under TCG (they come from the host's own /lib/modules).
    pub strip_signatures: bool,
    /// Each module's direct dependencies (paths, as in `modules.dep`): the
    /// lists name those of the same list, so the guest loads the rest of a
    /// list side by side.
    pub deps: BTreeMap<String, Vec<String>>,
}

impl ModuleLists {
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.base.iter().chain(&self.net)
    }
}

/// Whether a kernel with this `config-<release>` loads unsigned modules: it
/// must not force signatures nor lock itself down. Unknown (no config): no.
pub fn loads_unsigned_modules(config: Option<&str>) -> bool {
    let Some(config) = config else {
        return false;
    };
    let set = |option: &str| config.lines().any(|l| l.trim() == format!("{option}=y"));
    !set("CONFIG_MODULE_SIG_FORCE")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY")
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The module without its appended signature (`[signature][struct
/// module_signature: 12 bytes, the signature's length big-endian last][magic]`);
/// an unsigned module as it is.
pub fn strip_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(SIGNATURE_MAGIC) else {
        return module;
    };
    let Some(info_start) = body.len().checked_sub(12) else {
        return module;
    };
    let info = &body[info_start..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    // Signer and key id lengths: zero for the PKCS#7 signatures kernels make.
    let extra = usize::from(info[3]) + usize::from(info[4]);
    match info_start.checked_sub(sig_len + extra) {
        Some(end) => &body[..end],
        None => module,
    }
}

/// Builds the archive: `init` (the stage1 init), device nodes the kernel
/// needs before /dev is mounted, and `modules/` with both lists.
pub fn build(init: &[u8], modules_dir: &Path, modules: &ModuleLists) -> Result<Vec<u8>, KvmError> {
    let mut cpio = Cpio::default();
    for dir in ["dev", "proc", "sys", "pod", "modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, init);
    let mut index = 0;
    for (list_path, order) in [
        (protocol::VM_MODULES_ORDER, &modules.base),
        (protocol::VM_NET_MODULES_ORDER, &modules.net),
    ] {
        let list_path = list_path.trim_start_matches('/');
        let in_archive = Path::new(list_path).parent().unwrap_or(Path::new(""));
        let names: BTreeMap<&str, String> = order
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let file = path.rsplit('/').next().unwrap_or(path);
                (path.as_str(), format!("{:02}-{file}", index + i))
            })
            .collect();
        let mut list = String::new();
        for path in order {
            let source = modules_dir.join(path);
            let bytes = std::fs::read(&source)
                .map_err(|e| KvmError::io(format!("reading {}", source.display()), e))?;
            let bytes = if modules.strip_signatures {
                strip_signature(&bytes)
            } else {
                &bytes
            };
            let name = &names[path.as_str()];
            index += 1;
            cpio.file(&in_archive.join(name).to_string_lossy(), 0o644, bytes);
            list.push_str(&list_line(name, modules.deps.get(path), &names));
        }
        cpio.file(list_path, 0o644, list.as_bytes());
    }
    Ok(cpio.finish())
}

/// `NAME DEP...` with the dependencies that are in the same list (the others
/// are loaded by an earlier list or built in).
fn list_line(name: &str, deps: Option<&Vec<String>>, names: &BTreeMap<&str, String>) -> String {
    let mut line = name.to_string();
    for dep in deps.into_iter().flatten() {
        if let Some(dep) = names.get(dep.as_str()) {
            line.push(' ');
            line.push_str(dep);
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_list_line_names_the_dependencies_in_the_same_list() {
        let names: BTreeMap<&str, String> = [
            ("kernel/net/9p/9pnet.ko", "03-9pnet.ko".to_string()),
            ("kernel/net/9p/9pnet_virtio.ko", "04-9pnet_virtio.ko".to_string()),
        ]
        .into();
        let deps = vec![
            "kernel/net/9p/9pnet.ko".to_string(),
            "kernel/drivers/virtio/virtio.ko".to_string(),
        ];
        assert_eq!(
            list_line("04-9pnet_virtio.ko", Some(&deps), &names),
            "04-9pnet_virtio.ko 03-9pnet.ko\n"
        );
        assert_eq!(list_line("03-9pnet.ko", None, &names), "03-9pnet.ko\n");
    }

    const DEP: &str = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = ModulesDep::parse(DEP);
        let order = dep
            .load_order(
                &["virtio-mmio", "9pnet_virtio", "9p", "ext4"],
                &parse_builtin("kernel/fs/ext4/ext4.ko\n"),
            )
            .unwrap();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(m)).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(pos("/virtio.ko") < pos("virtio_mmio.ko"));
        assert!(pos("netfs.ko") < pos("fscache.ko"));
        assert!(pos("fscache.ko") < pos("/9p.ko"));
        assert!(pos("9pnet.ko") < pos("9pnet_virtio.ko"));
        let err = dep
            .load_order(&["nope"], &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn a_later_order_leaves_out_what_an_earlier_one_loads() {
        let dep = ModulesDep::parse(DEP);
        let base = dep.load_order(&["virtio_mmio"], &BTreeSet::new()).unwrap();
        let later = dep
            .load_order_after(&["9pnet_virtio"], &BTreeSet::new(), &base)
            .unwrap();
        assert_eq!(later, ["kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko"]);
    }

    #[test]
    fn a_signature_is_cut_and_an_unsigned_module_kept() {
        let body = b"\x7fELF module body".to_vec();
        let signature = [7u8; 5];
        let mut signed = body.clone();
        signed.extend_from_slice(&signature);
        // algo, hash, id_type, signer_len, key_id_len, 3 bytes padding, sig_len.
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(signature.len() as u32).to_be_bytes());
        signed.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(strip_signature(&signed), body.as_slice());
        assert_eq!(strip_signature(&body), body.as_slice());
        let mut truncated = b"xy".to_vec();
        truncated.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(strip_signature(&truncated), truncated.as_slice());
    }

    #[test]
    fn unsigned_modules_only_for_a_kernel_known_not_to_refuse_them() {
        let debian = "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_LOCK_DOWN_KERNEL_FORCE_NONE=y\n";
        assert!(loads_unsigned_modules(Some(debian)));
        assert!(!loads_unsigned_modules(Some("CONFIG_MODULE_SIG_FORCE=y\n")));
        assert!(!loads_unsigned_modules(Some(
            "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\n"
        )));
        assert!(!loads_unsigned_modules(None));
    }

    #[test]
    fn cpio_newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Cpio::default();
        cpio.dir("dev");
        cpio.file("init", 0o755, b"abcde");
        let data = cpio.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 4, 0);
        let text = String::from_utf8_lossy(&data);
        assert!(text.contains("init\0"));
        assert!(text.contains("abcde"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header: mode 0100755 and size 5, in hex.
        let init = text.find("init\0").unwrap();
        let header = &text[init - 110..init];
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "00000005");
    }

    #[test]
    fn the_loadable_prefix_of_this_test_binary_is_smaller_and_still_elf() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let prefix = loadable_prefix(&exe).unwrap();
        assert!(prefix.len() <= exe.len());
        assert!(prefix.starts_with(b"\x7fELF"));
        assert_eq!(&prefix[0x3c..0x40], &[0, 0, 0, 0]);
        assert!(loadable_prefix(b"#!/bin/sh\n").is_err());
    }
}
