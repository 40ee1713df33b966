//! Builds the wasm components the host embeds (the echo guest) or its tests load (`testing/components`),
//! and sets how the `echo-host` binary is linked.
//!
//! They are workspace members built for `wasm32-wasip2` by a nested `cargo build` with its own target
//! directory: the outer cargo holds the lock on `target/` for the whole build, so sharing it would
//! deadlock. Paths reach the code as `*_WASM` env vars (`cargo:rustc-env`), which the integration tests
//! see as well.

use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";
const WASM_PROFILE: &str = "guest-release";
/// (package, env var that gets the path of its `.wasm`)
const COMPONENTS: &[(&str, &str)] = &[
    ("echo-guest", "ECHO_GUEST_WASM"),
    ("misbehave", "MISBEHAVE_WASM"),
    // The p3 (`wasi:http/service`) builds of both.
    ("echo-guest-p3", "ECHO_GUEST_P3_WASM"),
    ("misbehave-p3", "MISBEHAVE_P3_WASM"),
    // Swap-rejection cases: a component of another world (`wasi:cli/run`), and one importing an
    // interface no host provides.
    ("cli-command", "CLI_COMMAND_WASM"),
    ("custom-import", "CUSTOM_IMPORT_WASM"),
];

fn main() {
    link_relocations_packed();
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["guest", "guest-p3", "wit", "testing/components", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("wasm");

    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // One build per component: building them together would unify their dependencies'
    // features, and the no_std echo guest must not get the `std` that test components enable.
    for (package, _) in COMPONENTS {
        let status = Command::new(&cargo)
            .current_dir(&workspace)
            .args(["build", "--target", WASM_TARGET, "--profile", WASM_PROFILE, "-p", package])
            .arg("--target-dir")
            .arg(&target_dir)
            // The outer build's flags are for the host, not for wasm.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .status()
            .expect("failed to run `cargo build` for the wasm components");
        assert!(status.success(), "building the wasm component `{package}` failed (see the output above)");
    }

    for (package, var) in COMPONENTS {
        let wasm = artifact(&target_dir, package);
        assert!(wasm.exists(), "`{}` was not produced", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
}

/// On glibc, the binary's ~50k relative relocations as a `DT_RELR` table (12 KB) instead of `.rela.dyn`
/// (1.2 MB), which the loader read at every start and which then stayed resident: measured -1.2 to
/// -1.9 MiB of RSS under load and a faster start. Needs binutils 2.38+ to link and glibc 2.36+ where it
/// runs (Debian 12, this project's build and CI machines, has both). The container's static musl
/// build is left as it is.
fn link_relocations_packed() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

fn artifact(target_dir: &Path, package: &str) -> PathBuf {
    target_dir.join(WASM_TARGET).join(WASM_PROFILE).join(format!("{}.wasm", package.replace('-', "_")))
}

/// A fresh machine has the toolchain but not the wasm target; add it rather than fail.
fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(true); // no rustup: assume the toolchain was set up another way
    if !installed {
        let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "`rustup target add {WASM_TARGET}` failed; install the target by hand"
        );
    }
}
