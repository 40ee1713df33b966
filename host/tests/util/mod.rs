//! Helpers shared by the integration tests: the host in-process on port 0 ([`TestServer`]), the
//! real binary as a child process ([`HostProcess`]), the test components and raw HTTP.
#![allow(dead_code)] // each test module uses a different subset

pub mod fleet;
pub mod gcs;
pub mod otlp;
pub mod peers;
pub mod prometheus;
pub mod registry;
pub mod registry_proxy;
pub mod static_server;
pub mod wasmsign2_cli;
pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use echo_host::app::App;
use echo_host::cli::config::Cli;
use tokio::sync::oneshot;

/// The echo component built from `guest/` (by host/build.rs).
pub fn echo_wasm() -> &'static Path {
    Path::new(env!("ECHO_GUEST_WASM"))
}

/// The misbehaving test component (`testing/components/misbehave`): behaviour by path.
pub fn misbehave_wasm() -> &'static Path {
    Path::new(env!("MISBEHAVE_WASM"))
}

/// The p3 (`wasi:http/service`) build of the echo component (`guest-p3/`).
pub fn echo_p3_wasm() -> &'static Path {
    Path::new(env!("ECHO_GUEST_P3_WASM"))
}

/// The p3 build of the misbehaving test component (`testing/components/misbehave-p3`).
pub fn misbehave_p3_wasm() -> &'static Path {
    Path::new(env!("MISBEHAVE_P3_WASM"))
}

/// The host in this process, serving on `127.0.0.1:<free port>` with the given flags, exactly
/// as `echo-host serve FLAGS` would configure it. Stops (gracefully) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The `--component` source watcher, stopped with the server.
    watcher: Option<echo_host::app::start::Watchers>,
}

impl TestServer {
    /// Starts with `flags` (e.g. `["--component", path, "--request-timeout", "1s"]`).
    pub async fn start(flags: &[&str]) -> TestServer {
        Self::try_start(flags).await.unwrap_or_else(|e| panic!("server failed to start: {e:#}"))
    }

    pub async fn try_start(flags: &[&str]) -> anyhow::Result<TestServer> {
        let mut argv = vec!["echo-host", "--listen-addr", "127.0.0.1", "--log-format", "text"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv)?;
        let config = cli.serve.validate()?;
        echo_host::util::logging::init_logging(config.log_format);
        let app = echo_host::app::start::load_app(&config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(echo_host::serve::server::run(
            listener,
            app.clone(),
            async move {
                let _ = stop.await;
            },
            config.shutdown_grace,
        ));
        let watcher = echo_host::app::start::start_watching(&app, &config);
        Ok(TestServer { addr, app, shutdown: Some(shutdown), task: Some(task), watcher })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Asks the server to stop and waits for `server::run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("stopped once").await?
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> String {
        client().get(self.url("/.well-known/echo-host/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one un-labelled (or fully labelled) sample, e.g. `echo_host_guest_traps_total`.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads `name{labels} value` from Prometheus text; panics naming the sample when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("metric `{sample}` not found in:\n{text}"))
}

/// A response read whole.
pub struct Reply {
    pub version: reqwest::Version,
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
            .to_str()
            .expect("ASCII header")
    }

    pub fn request_id(&self) -> &str {
        self.header("echo-host-request-id")
    }

    /// The host's error bodies name the request id that its header carries.
    pub fn assert_names_request_id(&self) {
        let id = self.request_id();
        assert!(!id.is_empty(), "empty request id header");
        assert!(
            self.body.contains(&format!("request id {id}")),
            "the body should name the request id `{id}`: {:?}",
            self.body
        );
    }
}

/// `GET url`, read whole; panics naming the URL on a transport error.
pub async fn get(client: &reqwest::Client, url: String) -> Reply {
    let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let version = response.version();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_else(|e| panic!("reading the body of GET {url} failed: {e}"));
    Reply { version, status, headers, body }
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// An h2c (HTTP/2 prior knowledge) client.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Sends raw bytes on a fresh TCP connection and returns everything the server sends back
/// until it closes the connection or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// The status code of a raw HTTP/1 response.
pub fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The `echo-host` binary [`HostProcess`] runs: this build's, or `ECHO_HOST_TEST_BIN` (a copy
/// that a build elsewhere in a shared target directory cannot replace mid-run, a release build,
/// or an older one to compare with).
pub fn host_binary() -> std::ffi::OsString {
    std::env::var_os("ECHO_HOST_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_echo-host").into())
}

/// The real `echo-host` binary as a child process, with stdout captured line by line.
pub struct HostProcess {
    pub child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl HostProcess {
    /// Starts `echo-host` with `PORT` set to a free port and `args`, and waits until it answers.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> HostProcess {
        Self::start_command(Command::new(host_binary()), args, env)
    }

    /// Like [`HostProcess::start`], with the process allowed on one CPU only (`taskset -c 0`), as
    /// on a 1-vCPU Cloud Run instance.
    pub fn start_on_one_core(args: &[&str], env: &[(&str, &str)]) -> HostProcess {
        let mut command = Command::new("taskset");
        command.arg("-c").arg("0").arg(host_binary());
        Self::start_command(command, args, env)
    }

    fn start_command(command: Command, args: &[&str], env: &[(&str, &str)]) -> HostProcess {
        let mut host = Self::spawn_command(command, args, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !host.listening() {
            if let Ok(Some(status)) = host.child.try_wait() {
                panic!("echo-host exited during start-up with {status}");
            }
            assert!(Instant::now() < deadline, "echo-host did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// Starts `echo-host` like [`HostProcess::start`] without waiting for it to listen (a host
    /// that is not to become ready).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> HostProcess {
        Self::spawn_command(Command::new(env!("CARGO_BIN_EXE_echo-host")), args, env)
    }

    /// Whether its port accepts connections.
    pub fn listening(&self) -> bool {
        TcpStream::connect(self.addr).is_ok()
    }

    fn spawn_command(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> HostProcess {
        let port = peers::free_port();
        command
            .args(args)
            .env("PORT", port.to_string())
            .env("ECHO_HOST_LISTEN_ADDR", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("failed to start echo-host");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        HostProcess { child, addr, lines }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a stdout line containing `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Polls the Prometheus text at `metrics_url` (a blocking client, for `#[test]`s driving a child
/// process or a container) until `sample` satisfies `done` or `patience` runs out; returns the
/// last value read, for the caller to assert on. Lets a test wait for what it needs to have
/// happened (a request in flight, a guest instantiated) instead of sleeping and hoping.
pub fn poll_metric_until(
    metrics_url: &str,
    sample: &str,
    patience: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let deadline = Instant::now() + patience;
    loop {
        let text = client
            .get(metrics_url)
            .send()
            .and_then(|response| response.text())
            .unwrap_or_else(|e| panic!("GET {metrics_url} failed: {e}"));
        let value = metric_value(&text, sample);
        if done(value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the real binary with `args` (a CLI subcommand) and waits up to `timeout`.
pub fn run_cli(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`echo-host {}` did not exit within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                args.join(" "),
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}
