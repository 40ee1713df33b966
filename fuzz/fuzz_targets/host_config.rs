//! libFuzzer target: `echo_fuzz::host::config` (see fuzz/checks/host.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echo_fuzz::host::config(data));
