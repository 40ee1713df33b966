//! Every committed input of the guest fuzz targets (query, pyrepr, json: `fuzz/corpus/<target>` and
//! `fuzz/regressions/<target>`) through the same check its libFuzzer target runs
//! (`fuzz/checks/guest.rs`), without libFuzzer: what fuzzing found once stays found.

#[path = "../../../fuzz/checks/guest.rs"]
mod checks;

use std::path::PathBuf;

/// Runs `check` on each file of `fuzz/corpus/<target>` (libFuzzer's, minimized) and
/// `fuzz/regressions/<target>` (named inputs: findings, hand-made seeds), naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
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
fn query_corpus() {
    replay("query", checks::query);
}

#[test]
fn pyrepr_corpus() {
    replay("pyrepr", checks::pyrepr);
}

#[test]
fn json_corpus() {
    replay("json", checks::json);
}
