//! libFuzzer target: `echo_fuzz::guest::query` (see fuzz/checks/guest.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echo_fuzz::guest::query(data));
