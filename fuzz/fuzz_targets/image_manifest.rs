//! See `rkt_fuzz::image_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::image_manifest(data));
