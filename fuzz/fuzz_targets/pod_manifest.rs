//! See `rkt_fuzz::pod_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::pod_manifest(data));
