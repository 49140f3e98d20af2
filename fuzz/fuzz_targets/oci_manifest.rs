//! See `rkt_fuzz::oci_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::oci_manifest(data));
