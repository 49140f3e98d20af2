//! See `rkt_fuzz::aci_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkt_fuzz::aci_import(data));
