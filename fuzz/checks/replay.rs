//! Replays the committed inputs of a fuzz target through its check, without libFuzzer (the
//! regression tests of `make test`, in `guest/core/tests` and `host/tests`).

use std::path::{Path, PathBuf};

/// Runs `check` on each file of `fuzz/corpus/<target>` (libFuzzer's, minimized) and
/// `fuzz/regressions/<target>` (named inputs: findings, hand-made seeds), naming the file that fails.
pub fn replay(fuzz: &Path, target: &str, check: fn(&[u8])) {
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
