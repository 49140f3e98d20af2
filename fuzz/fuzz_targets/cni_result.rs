//! See `rkt_fuzz::cni_result`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::cni_result(data));
