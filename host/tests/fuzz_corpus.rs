//! Every committed input of the host fuzz targets (host_config, host_admin, host_store: `fuzz/corpus/<target>` and
//! `fuzz/regressions/<target>`) through the same check its libFuzzer target runs
//! (`fuzz/checks/host.rs`), without libFuzzer: what fuzzing found once stays found.

#[path = "../../fuzz/checks/host.rs"]
mod checks;

use std::path::PathBuf;

/// Runs `check` on each file of `fuzz/corpus/<target>` (libFuzzer's, minimized) and
/// `fuzz/regressions/<target>` (named inputs: findings, hand-made seeds), naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", corpus.display()))
        .chain(std::fs::read_dir(fuzz.join("regressions").join(target)).into_iter().flatten())
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "`{}` has no corpus: run `make fuzz` and commit it", corpus.display());
    for input in &inputs {
        let data = std::fs::read(input).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", input.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!(
                "`{}` breaks the `{target}` property: reproduce with `cargo fuzz run {target} <file>` (fuzz/README.md)",
                input.display()
            );
        }
    }
}

#[test]
fn host_config_corpus() {
    replay("host_config", checks::config);
}

#[test]
fn host_admin_corpus() {
    replay("host_admin", checks::admin);
}

#[test]
fn host_store_corpus() {
    replay("host_store", checks::store);
}
