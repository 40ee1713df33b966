//! The `wasmsign2` CLI (crates.io `wasmsign2-cli`, pinned), installed on first use under
//! `target/tools/`, for the signature tests to sign and verify with the real tool.
//!
//! Like the other pinned tools ([`super::peers::wasmtime_cli`], the Makefile's `cargo-deny`), it
//! is installed once per checkout, guarded by a process-wide `OnceLock` and a file lock so that
//! parallel tests and concurrent test binaries install it once. There is no prebuilt binary to
//! take from a registry, so it is built from source: `cargo install --locked` (its own
//! `Cargo.lock`) took 36 s on the two shared cores of a development machine (59 CPU-seconds).

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The version installed; `wasmsign2 --version` must say `wasmsign2-cli <this>`. The same
/// version as the `wasmsign2` library crate the host verifies with.
pub const WASMSIGN2_CLI_VERSION: &str = "0.2.8";

/// Path of the pinned `wasmsign2`, `<workspace>/target/tools/wasmsign2-cli-VERSION/bin/wasmsign2`,
/// installing it first if it is missing or reports another version (a line on stderr says so and
/// how long it took). Panics if the install fails.
pub fn wasmsign2_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(install).clone()
}

fn install() -> PathBuf {
    let root = super::peers::workspace_root()
        .join("target")
        .join("tools")
        .join(format!("wasmsign2-cli-{WASMSIGN2_CLI_VERSION}"));
    let bin = root.join("bin").join("wasmsign2");
    if reports_pinned_version(&bin) {
        return bin;
    }
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".install.lock"))
        .unwrap_or_else(|e| panic!("cannot open the install lock under {}: {e}", root.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock the install lock under {}: {e}", root.display()));
    // Someone may have installed it while we waited for the lock.
    if reports_pinned_version(&bin) {
        return bin;
    }
    progress(&format!(
        "installing wasmsign2-cli {WASMSIGN2_CLI_VERSION} (`cargo install --locked`, about a minute) into {}",
        root.display()
    ));
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "--locked", "--root"])
        .arg(&root)
        .arg(format!("wasmsign2-cli@{WASMSIGN2_CLI_VERSION}"))
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `cargo install`: {e}"));
    assert!(
        status.success(),
        "`cargo install --locked wasmsign2-cli@{WASMSIGN2_CLI_VERSION}` failed: {status}"
    );
    assert!(
        reports_pinned_version(&bin),
        "{} does not report version {WASMSIGN2_CLI_VERSION} after the install",
        bin.display()
    );
    progress(&format!("installed wasmsign2-cli {WASMSIGN2_CLI_VERSION} in {:.0?}", started.elapsed()));
    bin
}

/// Whether `bin --version` says `wasmsign2-cli <WASMSIGN2_CLI_VERSION>`.
fn reports_pinned_version(bin: &Path) -> bool {
    if !bin.is_file() {
        return false;
    }
    match Command::new(bin).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1) == Some(WASMSIGN2_CLI_VERSION)
        }
        _ => false,
    }
}

/// A progress line straight to stderr, past the test harness's capture.
fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "[wasmsign2] {message}");
}
