//! libFuzzer entry for the `config` target (tests/fuzz/targets.rs).
#![no_main]

// each entry uses one of the shared targets
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::config(data));
