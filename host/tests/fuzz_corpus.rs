//! Every committed input of the host fuzz targets (host_config, host_admin, host_store: `fuzz/corpus/<target>` and
//! `fuzz/regressions/<target>`) through the same check its libFuzzer target runs
//! (`fuzz/checks/host.rs`), without libFuzzer: what fuzzing found once stays found.

#[path = "../../fuzz/checks/host.rs"]
mod checks;

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

/// `fuzz/` in the repository.
fn fuzz_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn host_config_corpus() {
    replay::replay(&fuzz_dir(), "host_config", checks::config);
}

#[test]
fn host_admin_corpus() {
    replay::replay(&fuzz_dir(), "host_admin", checks::admin);
}

#[test]
fn host_store_corpus() {
    replay::replay(&fuzz_dir(), "host_store", checks::store);
}
