//! Link options of the `rkt` binary that only the binary needs.

fn main() {
    // The static-pie binary relocates itself at every exec (~14,500 relative
    // relocations). Packed as RELR (glibc >= 2.36 applies them in static-pie too)
    // the table shrinks from ~350 KB of RELA to a few KB, so an exec reads and
    // faults in far less of the file. Only with a linker that knows the option.
    if linker_knows_pack_relative_relocs() {
        println!("cargo:rustc-link-arg-bin=rkt=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
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
    let dir = std::path::Path::new(&out_dir);
    let source = dir.join("relr-probe.c");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    std::process::Command::new("cc")
        .arg(&source)
        .arg("-o")
        .arg(dir.join("relr-probe"))
        .arg("-Wl,-z,pack-relative-relocs")
        .output()
        .is_ok_and(|out| out.status.success() && out.stderr.is_empty())
}
