//! Every committed input of the guest fuzz targets (query, pyrepr, json: `fuzz/corpus/<target>` and
//! `fuzz/regressions/<target>`) through the same check its libFuzzer target runs
//! (`fuzz/checks/guest.rs`), without libFuzzer: what fuzzing found once stays found.

#[path = "../../../fuzz/checks/guest.rs"]
mod checks;

#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

/// `fuzz/` in the repository.
fn fuzz_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn query_corpus() {
    replay::replay(&fuzz_dir(), "query", checks::query);
}

#[test]
fn pyrepr_corpus() {
    replay::replay(&fuzz_dir(), "pyrepr", checks::pyrepr);
}

#[test]
fn json_corpus() {
    replay::replay(&fuzz_dir(), "json", checks::json);
}
