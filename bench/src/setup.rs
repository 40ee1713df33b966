//! Everything the benchmark runs, built or installed on first use: the release `echo-host` (whose
//! build script also builds the echo and misbehave components), the native echo, the pinned
//! `wasmtime` CLI, `wrk`, and a venv with Flask 3.1 and gunicorn for the seed app.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The `wasmtime` CLI the interop tests pin (`host/tests/util/peers.rs`), and its features.
pub const WASMTIME_CLI_VERSION: &str = "48.0.8";
const WASMTIME_CLI_FEATURES: &str =
    "run,serve,component-model-async,cranelift,cache,pooling-allocator,parallel-compilation";

/// Where everything lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub echo_host: PathBuf,
    pub native_echo: PathBuf,
    pub wasmtime: PathBuf,
    pub wrk: PathBuf,
    pub echo_wasm: PathBuf,
    pub misbehave_wasm: PathBuf,
    pub python: PathBuf,
    pub gunicorn: PathBuf,
    pub flask_dir: PathBuf,
    /// Scratch space: logs, the `.cwasm`, the wasmtime cache, swap files (`target/bench`).
    pub work: PathBuf,
    pub results: PathBuf,
}

impl Paths {
    pub fn new() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf();
        let target = root.join("target");
        let wasm = target.join("wasm/wasm32-wasip2/guest-release");
        let venv = target.join("bench-venv");
        Paths {
            // `ECHO_BENCH_ECHO_HOST=/path/to/echo-host` measures another build (a patched host)
            // against the same peers.
            echo_host: std::env::var_os("ECHO_BENCH_ECHO_HOST")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("release/echo-host")),
            native_echo: target.join("release/native-echo"),
            wasmtime: target.join("tools/bin/wasmtime"),
            wrk: PathBuf::from("wrk"),
            echo_wasm: wasm.join("echo_guest.wasm"),
            misbehave_wasm: wasm.join("misbehave.wasm"),
            python: venv.join("bin/python"),
            gunicorn: venv.join("bin/gunicorn"),
            flask_dir: root.join("testing/flask"),
            work: target.join("bench"),
            results: root.join("bench/results"),
            root,
        }
    }
}

fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// `cargo`, without the variables `cargo run` set for this binary: build scripts (ring's) track
/// `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR`, ..., so passing them on would make every
/// nested build re-run them and relink echo-host (minutes), and the next plain build again.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo_run = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_CFG_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_RUSTC_CURRENT_DIR" | "OUT_DIR"
            );
        if set_by_cargo_run {
            command.env_remove(key);
        }
    }
    command
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds or installs whatever is missing. `build` also re-runs the cargo builds (no-ops when
/// fresh) so the numbers are always for the current sources.
pub fn prepare(paths: &mut Paths, build: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.work)?;
    std::fs::create_dir_all(&paths.results)?;
    if build || !paths.echo_host.exists() {
        progress("cargo build --release -p echo-host (also builds the echo and misbehave components)");
        run(
            cargo().current_dir(&paths.root).args(["build", "--release", "-p", "echo-host"]),
            "cargo build -p echo-host",
        )?;
    }
    if build || !paths.native_echo.exists() {
        progress("cargo build --release -p echo-bench --bin native-echo");
        run(
            cargo().current_dir(&paths.root).args([
                "build",
                "--release",
                "-p",
                "echo-bench",
                "--bin",
                "native-echo",
            ]),
            "cargo build --bin native-echo",
        )?;
    }
    for wasm in [&paths.echo_wasm, &paths.misbehave_wasm] {
        if !wasm.exists() {
            bail!("`{}` is missing after building echo-host", wasm.display());
        }
    }
    ensure_wasmtime(paths)?;
    ensure_wrk(paths)?;
    ensure_venv(paths)?;
    Ok(())
}

fn ensure_wasmtime(paths: &Paths) -> anyhow::Result<()> {
    let version = Command::new(&paths.wasmtime).arg("--version").output();
    if let Ok(out) = version
        && String::from_utf8_lossy(&out.stdout).contains(WASMTIME_CLI_VERSION)
    {
        return Ok(());
    }
    progress(&format!(
        "installing wasmtime-cli {WASMTIME_CLI_VERSION} into target/tools (about 15 min on 2 cores, once)"
    ));
    run(
        cargo()
            .current_dir(&paths.root)
            .args(["install", "--locked", &format!("wasmtime-cli@{WASMTIME_CLI_VERSION}")])
            .args(["--no-default-features", "--features", WASMTIME_CLI_FEATURES, "--root"])
            .arg(paths.root.join("target/tools")),
        "cargo install wasmtime-cli",
    )
}

fn ensure_wrk(paths: &mut Paths) -> anyhow::Result<()> {
    let works = |p: &Path| {
        Command::new(p).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    };
    for candidate in [PathBuf::from("wrk"), PathBuf::from("/usr/bin/wrk")] {
        if works(&candidate) {
            paths.wrk = candidate;
            return Ok(());
        }
    }
    progress("installing wrk: apt-get update && apt-get install -y wrk");
    run(Command::new("apt-get").arg("update").stdout(Stdio::null()), "apt-get update")?;
    run(Command::new("apt-get").args(["install", "-y", "wrk"]).stdout(Stdio::null()), "apt-get install wrk")?;
    paths.wrk = PathBuf::from("/usr/bin/wrk");
    Ok(())
}

fn ensure_venv(paths: &Paths) -> anyhow::Result<()> {
    let ready = Command::new(&paths.python)
        .args([
            "-c",
            "import gunicorn, importlib.metadata as m; assert m.version('flask').startswith('3.1.')",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return Ok(());
    }
    let venv = paths.python.parent().and_then(Path::parent).context("venv path")?;
    progress(&format!("creating {} with Flask 3.1 and gunicorn", venv.display()));
    if !paths.python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv), "python3 -m venv")?;
    }
    run(
        Command::new(&paths.python).args(["-m", "pip", "install", "--quiet", "flask==3.1.*", "gunicorn"]),
        "pip install flask gunicorn",
    )
}
