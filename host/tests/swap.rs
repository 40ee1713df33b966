//! Hot swap through the admin API: authentication, the validation gate (every bad candidate
//! rejected while the old version keeps serving), rollback, a swap during a long streaming
//! request, and 50 swaps under continuous load with zero failed requests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::{self, TestServer, client};

const TOKEN: &str = "test-admin-token-0123456789";
const ADMIN: &str = "/.well-known/echo-host/admin";

pub fn sha12(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..12].to_string()
}

fn token_file(dir: &Path) -> String {
    util::write_file(dir, "token", format!("{TOKEN}\n").as_bytes()).to_str().unwrap().to_string()
}

/// A distinct but equivalent component: the same bytes plus a custom section, so it has its
/// own sha256 and must really be compiled.
fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"echo-host-test-variant";
    let payload = n.to_le_bytes();
    let mut section = Vec::new();
    section.push(name.len() as u8);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // fits in one LEB128 byte
    bytes.extend_from_slice(&section);
    bytes
}

pub async fn upload(
    server: &TestServer,
    bytes: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut request = client().put(server.url(&format!("{ADMIN}/component"))).bearer_auth(TOKEN).body(bytes);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The version header `GET /` is served with.
async fn serving_version(server: &TestServer) -> String {
    let response = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["echo-host-component"].to_str().unwrap().trim_start_matches("sha256:").to_string()
}

pub async fn start_with_admin(dir: &Path, extra: &[&str]) -> TestServer {
    let token = token_file(dir);
    let mut flags = vec!["--admin-token-file", token.as_str()];
    flags.extend_from_slice(extra);
    TestServer::start(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_absent_without_a_token_and_refuses_wrong_ones() {
    let plain = TestServer::start(&[]).await;
    for (method, path) in [("GET", "/history"), ("PUT", "/component"), ("POST", "/rollback"), ("GET", "")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client()
            .request(method, plain.url(&format!("{ADMIN}{path}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }

    let dir = util::scratch_dir();
    let server = start_with_admin(dir.path(), &[]).await;
    let history = server.url(&format!("{ADMIN}/history"));
    assert_eq!(client().get(&history).send().await.unwrap().status(), 401);
    assert_eq!(
        client().get(&history).bearer_auth("wrong-token-wrong-token").send().await.unwrap().status(),
        401
    );
    assert_eq!(client().get(&history).header("authorization", TOKEN).send().await.unwrap().status(), 401);
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    let response =
        client().put(server.url(&format!("{ADMIN}/component"))).body(misbehave).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    // Nothing was swapped by the refused upload.
    assert_eq!(serving_version(&server).await, sha12(&std::fs::read(util::echo_wasm()).unwrap()));
    let ok = client().get(&history).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let history: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(history["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_swaps_and_rollback_returns_instantly() {
    let dir = util::scratch_dir();
    let server = start_with_admin(dir.path(), &[]).await;
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();

    let (status, outcome) = upload(&server, misbehave.clone(), &[]).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["swapped"], true);
    assert_eq!(outcome["reused"], false);
    assert_eq!(serving_version(&server).await, sha12(&misbehave));

    // The same bytes again: nothing to do.
    let (status, outcome) = upload(&server, misbehave.clone(), &[]).await;
    assert_eq!((status, &outcome["swapped"]), (200, &serde_json::Value::Bool(false)));

    let rollback =
        client().post(server.url(&format!("{ADMIN}/rollback"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(rollback.status(), 200);
    let outcome: serde_json::Value = rollback.json().await.unwrap();
    assert_eq!(outcome["reused"], true);
    assert_eq!(serving_version(&server).await, sha12(&echo));

    let to = format!("{ADMIN}/rollback?to=sha256:{}", sha12(&misbehave));
    let rollback = client().post(server.url(&to)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(rollback.status(), 200);
    assert_eq!(serving_version(&server).await, sha12(&misbehave));

    let unknown = client()
        .post(server.url(&format!("{ADMIN}/rollback?to=sha256:000000000000")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let history: serde_json::Value = client()
        .get(server.url(&format!("{ADMIN}/history")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["active"], true);
    // Where the bytes came from is public; who rolled back is only in the admin events.
    assert_eq!(versions[0]["source"], "rollback (was admin upload)");
    assert_eq!(history["admin_events"][0]["call"], "POST rollback");
    assert!(history["admin_events"][0]["by"].as_str().unwrap().starts_with("admin:127.0.0.1"));
    assert_eq!(history["swaps"], 3);

    let info: serde_json::Value =
        client().get(server.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["swaps"]["count"], 3);
    assert_eq!(info["component"]["sha256"].as_str().unwrap()[..12], sha12(&misbehave));
    assert_eq!(server.metric("echo_host_swaps_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_candidate_is_rejected_and_the_old_version_keeps_serving() {
    let dir = util::scratch_dir();
    let server =
        start_with_admin(dir.path(), &["--swap-probe", "GET /probe", "--max-component-size", "4MiB"]).await;
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    let before = serving_version(&server).await;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"this is not wasm at all".to_vec(), 422, "invalid_component"),
        ("empty", Vec::new(), 422, "invalid_component"),
        ("truncated", echo[..echo.len() / 2].to_vec(), 422, "invalid_component"),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), 422, "invalid_component"),
        ("another world", std::fs::read(env!("CLI_COMMAND_WASM")).unwrap(), 422, "invalid_component"),
        ("unprovided import", std::fs::read(env!("CUSTOM_IMPORT_WASM")).unwrap(), 422, "invalid_component"),
        // misbehave answers 404 on unknown paths, so it fails `GET /probe`.
        ("fails the smoke probe", misbehave.clone(), 422, "probe_failed"),
    ];
    for (name, bytes, status, kind) in cases {
        let (got, body) = upload(&server, bytes, &[]).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["kind"], kind, "{name}: {body}");
        assert!(!body["error"].as_str().unwrap().is_empty(), "{name}: {body}");
        assert_eq!(serving_version(&server).await, before, "{name} went live");
    }
    // Too large: refused from its Content-Length, before the body is read (so a client still
    // sending may see the connection close; raw bytes make the check deterministic).
    let head = format!(
        "PUT {ADMIN}/component HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n",
        5 << 20
    );
    let addr = server.addr;
    let raw = tokio::task::spawn_blocking(move || {
        util::raw_exchange(addr, head.as_bytes(), Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert_eq!(util::raw_status(&raw), 413, "{}", String::from_utf8_lossy(&raw));
    assert!(String::from_utf8_lossy(&raw).contains("too_large"));
    assert_eq!(serving_version(&server).await, before, "a too-large upload went live");

    let info: serde_json::Value =
        client().get(server.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["swaps"]["rejections"], 7, "{info}"); // the 413 is refused before the gate
    assert!(info["swaps"]["last_rejection"]["reason"].as_str().unwrap().contains("probe"), "{info}");
    assert_eq!(server.metric("echo_host_swap_rejections_total").await, 7.0);

    // A good candidate that answers the probe still goes through.
    let (status, body) = upload(&server, variant(&echo, 1), &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_signatures_gate_every_candidate() {
    let dir = util::scratch_dir();
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();

    // A sha256 pin: only that exact component may ever serve.
    let pin = hex::encode(Sha256::digest(&echo));
    let pinned = start_with_admin(dir.path(), &["--require-sha256", &pin]).await;
    let (status, body) = upload(&pinned, misbehave.clone(), &[]).await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("sha256_pin")), "{body}");
    assert_eq!(serving_version(&pinned).await, sha12(&echo));
    drop(pinned);

    // Signatures: keygen and sign with the real binary, then serve with `--trusted-key`.
    let key = dir.path().join("signing.key");
    let run = |args: &[&str]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host")).args(args).status().unwrap();
        assert!(status.success(), "echo-host {args:?}");
    };
    run(&["keygen", key.to_str().unwrap()]);
    let public = format!("{}.pub", key.display());
    let echo_copy = util::write_file(dir.path(), "echo.wasm", &echo);
    run(&["sign", "--key", key.to_str().unwrap(), echo_copy.to_str().unwrap()]);
    let echo_sig = std::fs::read_to_string(format!("{}.sig", echo_copy.display())).unwrap();
    let misbehave_copy = util::write_file(dir.path(), "misbehave.wasm", &misbehave);
    run(&["sign", "--key", key.to_str().unwrap(), misbehave_copy.to_str().unwrap()]);
    let misbehave_sig = std::fs::read_to_string(format!("{}.sig", misbehave_copy.display())).unwrap();

    // The start-up component must be signed too: `echo.wasm.sig` sits beside it.
    let unsigned_start = dir.path().join("unsigned.wasm");
    std::fs::write(&unsigned_start, &echo).unwrap();
    let error =
        TestServer::try_start(&["--trusted-key", &public, "--component", unsigned_start.to_str().unwrap()])
            .await
            .err()
            .expect("an unsigned start-up component must be refused");
    assert!(format!("{error:#}").contains("signature"), "{error:#}");

    let signed =
        start_with_admin(dir.path(), &["--trusted-key", &public, "--component", echo_copy.to_str().unwrap()])
            .await;
    let (status, body) = upload(&signed, misbehave.clone(), &[]).await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("missing_signature")), "{body}");
    let (status, body) =
        upload(&signed, misbehave.clone(), &[("echo-host-signature", echo_sig.trim())]).await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("bad_signature")), "{body}");
    let (status, body) =
        upload(&signed, misbehave.clone(), &[("echo-host-signature", "bm90IGEgc2lnbmF0dXJl")]).await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("bad_signature")), "{body}");
    assert_eq!(serving_version(&signed).await, sha12(&echo));
    let (status, body) =
        upload(&signed, misbehave.clone(), &[("echo-host-signature", misbehave_sig.trim())]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving_version(&signed).await, sha12(&misbehave), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_uploads_from_the_command_line() {
    let dir = util::scratch_dir();
    let server = start_with_admin(dir.path(), &[]).await;
    let token = token_file(dir.path());
    let url = format!("http://{}", server.addr);
    let misbehave = util::misbehave_wasm().to_str().unwrap().to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["push", &url, &misbehave, "--token-file", &token])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["swapped"], true);
    assert_eq!(serving_version(&server).await, sha12(&std::fs::read(&misbehave).unwrap()));

    let wrong = util::write_file(dir.path(), "wrong", b"wrong-token-wrong-token");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["push", &url, &misbehave, "--token-file", wrong.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streaming_request_finishes_on_the_version_it_started_on() {
    const LINES: usize = 30;
    const PAUSE: Duration = Duration::from_millis(500);
    let dir = util::scratch_dir();
    let misbehave = util::misbehave_wasm().to_str().unwrap().to_string();
    let server = start_with_admin(dir.path(), &["--component", &misbehave]).await;
    let misbehave_sha = sha12(&std::fs::read(&misbehave).unwrap());
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let echo_sha = sha12(&echo);

    // 30 lines, 500 ms apart: the guest cannot end the stream sooner than 14.5 s after it was
    // asked for, many times what the swap's compile and probe take (about 0.5 s in a debug build).
    let asked = Instant::now();
    let mut stream = client()
        .get(server.url(&format!("/stream?chunks={LINES}&ms={}", PAUSE.as_millis())))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["echo-host-component"].to_str().unwrap(), format!("sha256:{misbehave_sha}"));
    // Reads the body as it arrives, publishing how many whole lines have come so far.
    let (arrived, mut lines) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut body = Vec::new();
        while let Some(chunk) = stream.chunk().await? {
            body.extend_from_slice(&chunk);
            arrived.send_replace(body.iter().filter(|&&b| b == b'\n').count());
        }
        Ok::<_, reqwest::Error>(String::from_utf8_lossy(&body).into_owned())
    });
    tokio::time::timeout(Duration::from_secs(30), lines.wait_for(|&n| n >= 1))
        .await
        .expect("the stream's first line never arrived")
        .expect("the reader ended before the first line");

    // The swap, while the stream runs; confirmed by a new request getting the new version.
    let (status, outcome) = upload(&server, echo, &[]).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(serving_version(&server).await, echo_sha, "new requests get the new version");
    let swapped_after = asked.elapsed();
    let lines_before_swap = *lines.borrow();
    // Both say the swap landed mid-stream: the last line had not arrived, and (not subject to how
    // promptly the reader ran) the guest's pauses cannot have added up to the stream's end yet.
    assert!(
        lines_before_swap < LINES,
        "the swap was seen only after all {LINES} lines arrived: it did not happen mid-stream"
    );
    assert!(
        swapped_after < PAUSE * (LINES as u32 - 1),
        "the swap took until {swapped_after:?} after the stream began, when it may have ended: \
         nothing shows it happened mid-stream"
    );

    let body = reader.await.unwrap().expect("the streaming response survived the swap");
    let expected: String = (0..LINES).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(body, expected, "the stream ends complete, from the version it started on");
    eprintln!(
        "swap seen {:.1} s into the stream, after {lines_before_swap} of {LINES} lines",
        swapped_after.as_secs_f64()
    );
}

/// What a response's body must look like for the component its version header names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Echo,
    Misbehave,
}

impl Kind {
    pub fn matches(self, body: &str) -> bool {
        match self {
            Kind::Echo => body.starts_with("Received GET request."),
            Kind::Misbehave => body == "misbehave ok",
        }
    }
}

/// The versions that may serve, by `sha12`, and what each answers.
pub type Known = Arc<std::sync::Mutex<HashMap<String, Kind>>>;

/// Four clients sending `GET /` while a test swaps versions, two on keep-alive connections and
/// two on a new connection per request: every answer must be a 200 from a version in `known`
/// whose body is that version's.
pub struct SwapLoad {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl SwapLoad {
    pub fn start(server: Arc<TestServer>, known: Known) -> SwapLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let clients = (0..4)
            .map(|worker| {
                let (server, stop, served, known) =
                    (server.clone(), stop.clone(), served.clone(), known.clone());
                tokio::spawn(async move {
                    let keep_alive = worker % 2 == 0;
                    let shared = client();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let client = if keep_alive {
                            shared.clone()
                        } else {
                            reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
                        };
                        if let Some(failure) = check_answer(&client, &server, &known).await {
                            failures.push(failure);
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        SwapLoad { stop, served, clients }
    }

    /// Returns once the clients have had `more` requests answered since the call.
    pub async fn serve_more(&self, more: u64) {
        let at = self.served.load(Ordering::Relaxed);
        while self.served.load(Ordering::Relaxed) < at + more {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients, asserts that no request failed and returns how many were sent.
    pub async fn finish_without_failures(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for client in self.clients {
            failures.extend(client.await.unwrap());
        }
        let total = self.served.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {total} requests failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        total
    }
}

/// One `GET /` of [`SwapLoad`]: why its answer is wrong, if it is.
async fn check_answer(client: &reqwest::Client, server: &TestServer, known: &Known) -> Option<String> {
    let response = match client.get(server.url("/")).send().await {
        Ok(response) => response,
        Err(error) => return Some(format!("request error: {error}")),
    };
    let status = response.status();
    let version = response
        .headers()
        .get("echo-host-component")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_string();
    let body = response.text().await.unwrap_or_else(|e| format!("<body error: {e}>"));
    let kind = known.lock().unwrap().get(&version).copied();
    (status != 200 || !kind.is_some_and(|k| k.matches(&body)))
        .then(|| format!("{status} {version} {kind:?} {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_swaps_under_load_fail_no_request() {
    let dir = util::scratch_dir();
    let server = Arc::new(start_with_admin(dir.path(), &["--concurrency", "1000"]).await);
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    // Every version that may serve, by sha12: filled in before each upload.
    let known: Known = Arc::new(std::sync::Mutex::new(HashMap::from([
        (sha12(&echo), Kind::Echo),
        (sha12(&misbehave), Kind::Misbehave),
    ])));

    let load = SwapLoad::start(server.clone(), known.clone());

    let mut latencies = Vec::new();
    for i in 0..50u32 {
        // Fresh bytes for the first 20 swaps (each one compiled), then the two known versions
        // alternately (reused from the kept history).
        let (base, kind) = if i % 2 == 0 { (&misbehave, Kind::Misbehave) } else { (&echo, Kind::Echo) };
        let bytes = if i < 20 { variant(base, i) } else { base.clone() };
        let expected = sha12(&bytes);
        known.lock().unwrap().insert(expected.clone(), kind);
        let started = Instant::now();
        let (status, outcome) = upload(&server, bytes, &[]).await;
        assert_eq!(status, 200, "swap {i}: {outcome}");
        while serving_version(&server).await != expected {
            assert!(started.elapsed() < Duration::from_secs(30), "swap {i} never served");
        }
        latencies.push((outcome["reused"] == false, started.elapsed()));
    }
    let total = load.finish_without_failures().await;
    assert!(total > 100, "the load clients barely ran ({total} requests)");

    for (compiled, label) in [(true, "compiled"), (false, "kept version reused")] {
        let mut ms: Vec<f64> =
            latencies.iter().filter(|(c, _)| *c == compiled).map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "admin swap latency (upload start → first response from the new version), {label}, {} swaps: median {:.1} ms, max {:.1} ms",
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
    eprintln!("requests served during the 50 swaps: {total}, failed: 0");
}
