//! OTLP collectors on loopback, for the trace tests:
//!
//! - [`Receiver`]: `testing/otlp/receiver.py` (its docstring tells what it owns), which decodes
//!   OTLP/gRPC and OTLP/HTTP exports with the official `opentelemetry-proto` protobufs and writes
//!   every span as a JSON line that [`Receiver::spans`] reads. It can be slow (`--delay`) or
//!   refuse every export (`--refuse`).
//! - [`Blackhole`]: a listener that accepts connections and never answers nor reads.
//!
//! Everything here blocks, for plain `#[test]`s that drive [`super::HostProcess`]es.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::peers;

/// How long the receiver may take to print its ports: the first start installs its venv.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// `receiver.py` as a child process, killed on drop.
pub struct Receiver {
    child: Child,
    pub grpc: u16,
    pub http: u16,
    out: tempfile::NamedTempFile,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_with(&[])
    }

    /// With extra flags: `--delay SECONDS`, `--refuse`.
    pub fn start_with(flags: &[&str]) -> Receiver {
        let out = tempfile::Builder::new().prefix("otlp-spans-").suffix(".jsonl").tempfile().unwrap();
        let script = peers::workspace_root().join("testing").join("otlp").join("receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--out")
            .arg(out.path())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the OTLP receiver did not print its ports within {READY_TIMEOUT:?}")
        });
        let ports: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the OTLP receiver printed `{line}`, not its ports ({e})"));
        let port = |key: &str| ports[key].as_u64().and_then(|p| u16::try_from(p).ok()).expect("a port");
        Receiver { grpc: port("grpc"), http: port("http"), child, out }
    }

    /// The OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// The OTLP/HTTP base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub fn out_path(&self) -> PathBuf {
        self.out.path().to_path_buf()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits (up to `patience`) until the spans received satisfy `done`; returns them. Panics
    /// naming `what`, with the spans received, when they never do.
    pub fn wait_for(&self, what: &str, patience: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + patience;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received within {patience:?}; the spans received:\n{}",
                spans.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A collector that accepts TCP connections and then never reads nor answers; it holds them
/// until dropped. Counts the connections it took.
pub struct Blackhole {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&held);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Some(held) = sink.upgrade() else { return };
                if let Ok(stream) = stream {
                    held.lock().unwrap().push(stream);
                }
            }
        });
        Blackhole { addr, held }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// A loopback port nothing listens on: a collector that is down.
pub fn down_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
