//! libFuzzer target: `echo_fuzz::host::store` (see fuzz/checks/host.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echo_fuzz::host::store(data));
