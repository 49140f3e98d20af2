//! See `rkt_fuzz::discovery_meta`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::discovery_meta(data));
