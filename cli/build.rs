//! Link options of the `rkt` binary that only the binary needs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Functions that `rkt run --stage1=fly` executes, in the order they first run,
/// written by `rkt-hot-functions` (benches/src/bin/rkt-hot-functions.rs).
const HOT_FUNCTIONS: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={HOT_FUNCTIONS}");
    println!("cargo:rerun-if-env-changed=RKT_KEEP_SYMBOLS");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");

    // The static-pie binary relocates itself at every exec (~14,500 relative
    // relocations). Packed as RELR (glibc >= 2.36 applies them in static-pie too)
    // the table shrinks from ~350 KB of RELA to a few KB, so an exec reads and
    // faults in far less of the file. Only with a linker that knows the option.
    let lld = release.then(rust_lld_dir).flatten();
    if lld.is_some() || linker_knows_pack_relative_relocs() {
        println!("cargo:rustc-link-arg-bin=rkt=-Wl,-z,pack-relative-relocs");
    }

    if !release {
        return;
    }
    // The hot code laid out together: the kernel maps 64 KB around each fault in a
    // cached file, so code a run needs, scattered through 9 MB of text, made ~5 MB
    // resident; grouped, it fits in a fraction. GNU ld (2.40) has no ordering
    // option; the rust-lld that ships with every rustup toolchain has.
    if let Some(dir) = lld {
        let order = Path::new(&manifest_dir()).join(HOT_FUNCTIONS);
        println!("cargo:rustc-link-arg-bin=rkt=-B{}", dir.display());
        println!("cargo:rustc-link-arg-bin=rkt=-fuse-ld=lld");
        if order.exists() {
            println!(
                "cargo:rustc-link-arg-bin=rkt=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            // Names of functions that inlining or a code change removed are expected.
            println!("cargo:rustc-link-arg-bin=rkt=-Wl,--no-warn-symbol-ordering");
        }
    } else {
        println!("cargo:warning=rust-lld not found: the rkt binary is linked without its hot-function order");
    }
    // Stripped here rather than with the profile's `strip`: the profile is part of
    // every crate's symbol hash, a link argument is not, so a build with
    // RKT_KEEP_SYMBOLS=1 has exactly the names the ordering file must list.
    if std::env::var_os("RKT_KEEP_SYMBOLS").is_none() {
        println!("cargo:rustc-link-arg-bin=rkt=-Wl,--strip-all");
    }
}

fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into())
}

/// The directory of the toolchain's `ld.lld` wrapper around rust-lld (gcc's `-B`
/// makes `-fuse-ld=lld` find it), if this toolchain ships one.
fn rust_lld_dir() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = std::env::var("HOST").ok()?;
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let dir = sysroot.join("lib/rustlib").join(host).join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}

/// GNU ld >= 2.38 and lld >= 15 accept `-z pack-relative-relocs`; older ones only
/// warn that they ignore it, so a probe link must succeed and say nothing.
fn linker_knows_pack_relative_relocs() -> bool {
    let Ok(target) = std::env::var("TARGET") else {
        return false;
    };
    let Ok(out_dir) = std::env::var("OUT_DIR") else {
        return false;
    };
    if !target.contains("linux-gnu") {
        return false;
    }
    let dir = Path::new(&out_dir);
    let source = dir.join("relr-probe.c");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    Command::new("cc")
        .arg(&source)
        .arg("-o")
        .arg(dir.join("relr-probe"))
        .arg("-Wl,-z,pack-relative-relocs")
        .output()
        .is_ok_and(|out| out.status.success() && out.stderr.is_empty())
}
