//! Keeping the binary's own pages out of a short command's memory footprint.
//!
//! `rkt` is one static binary with every command in it (the gRPC and CRI services,
//! remote image fetching, ...), several MB of code of which `rkt run` touches a few
//! hundred KB. On a page fault in a file mapping the kernel maps up to 64 KB of
//! neighbouring cached pages too ("fault-around"), all counted in the process's
//! RSS: a run's peak RSS was mostly code it never executed. `MADV_RANDOM` turns
//! fault-around off for the binary's mappings, so only touched pages are mapped.
//! The cost is a few more minor faults, each for a page already in the page cache.

unsafe extern "C" {
    // Defined by the linker (GNU ld and lld alike): the ELF header, i.e. the start
    // of the first segment, and the end of .bss, the end of the last one.
    static __ehdr_start: u8;
    static _end: u8;
}

/// Call first thing in `main`; children inherit the advice across fork.
pub fn no_fault_around() {
    // Only the symbols' addresses are taken; nothing is read through them.
    let start = std::ptr::addr_of!(__ehdr_start) as usize;
    let end = std::ptr::addr_of!(_end) as usize;
    let page = 4096;
    let start = start & !(page - 1);
    let len = end.saturating_sub(start);
    // SAFETY: MADV_RANDOM only changes how the kernel pages these mappings in; it
    // never changes their content. Unmapped gaps in the range (between segments)
    // make madvise return ENOMEM after it has advised every mapped part, which is
    // all we want, so the result is ignored.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_RANDOM) };
}
