//! Sources hardened (issue 14): URLs printed without credentials, a signed URL's signature next
//! to its path, transient rejections retried and deterministic ones not (until `touch`), FIFOs
//! refused without blocking, and a watched `.cwasm` with `--allow-precompiled`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::util::static_server::{Mode, StaticServer};
use crate::util::{self, HostProcess, TestServer, client};

/// Generous: every wait here ends on an observable event well before this.
const WAIT: Duration = Duration::from_secs(30);

const TOKEN: &str = "source-hardening-token-0123456789";

fn version(bytes: &[u8]) -> String {
    format!("sha256:{}", &hex::encode(Sha256::digest(bytes))[..12])
}

fn rename_into_place(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

async fn info(addr: &str) -> serde_json::Value {
    client()
        .get(format!("http://{addr}/.well-known/echo-host/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (up to [`WAIT`]) for `condition`, checked every 50 ms.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn served_version(addr: &str) -> String {
    let response = client().get(format!("http://{addr}/")).send().await.unwrap();
    response.headers().get("echo-host-component").unwrap().to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_credentials_shows_them_nowhere() {
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    let origin = StaticServer::start(echo.clone(), None).await;
    let url = format!("http://user:secret@{}/c.wasm?X-Goog-Signature=topsecret&a=1", origin.addr);
    let host = HostProcess::start(
        &["--component", &url, "--poll-interval", "200ms"],
        &[("ECHO_HOST_ADMIN_TOKEN", TOKEN)],
    );
    let addr = host.addr.to_string();
    // A rejection and a swap, so the URL is also in a rejection record and the history.
    origin.set(b"not a component", None, Mode::Normal);
    until("the bad version to be rejected", || async { info(&addr).await["swaps"]["rejections"] == 1 }).await;
    origin.set(&misbehave, None, Mode::Normal);
    until("the swap", || async { served_version(&addr).await == version(&misbehave) }).await;

    let info =
        client().get(host.url("/.well-known/echo-host/info")).send().await.unwrap().text().await.unwrap();
    let history = client()
        .get(host.url("/.well-known/echo-host/admin/history"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = host.lines().join("\n");
    for (what, text) in [("info", &info), ("history", &history), ("the log", &logs)] {
        assert!(!text.contains("secret"), "{what} shows a credential:\n{text}");
        assert!(!text.contains("user:"), "{what} shows the userinfo:\n{text}");
    }
    // The source is still there, its query keys kept.
    let shown = format!("http://{}/c.wasm?X-Goog-Signature=REDACTED&a=REDACTED", origin.addr);
    assert!(info.contains(&shown), "{info}");
    assert!(history.contains(&shown), "{history}");
    assert!(logs.contains(&shown), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_takes_its_signature_from_the_path_with_the_query_kept() {
    let dir = util::scratch_dir();
    let key = dir.path().join("key");
    let public = echo_host::util::signing::keygen(&key).unwrap();
    let path = util::write_file(dir.path(), "c.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let signature = std::fs::read(echo_host::util::signing::sign_file(&key, &path).unwrap()).unwrap();
    let echo = std::fs::read(&path).unwrap();
    // The static server answers by path: `/c.wasm.sig?...` is the signature, `/c.wasm?...sig`
    // the component.
    let origin = StaticServer::start(echo.clone(), Some(signature)).await;
    let url = format!("{}?X-Goog-Signature=abc&x=1", origin.url());
    let server = TestServer::start(&["--component", &url, "--trusted-key", public.to_str().unwrap()]).await;
    assert_eq!(served_version(&server.addr.to_string()).await, version(&echo));

    // A signature over its own limit names that limit, not `--max-component-size`.
    origin.set(&echo, Some(&vec![b'A'; 70 * 1024]), Mode::Normal);
    let error = TestServer::try_start(&["--component", &url, "--trusted-key", public.to_str().unwrap()])
        .await
        .err()
        .expect("a 70 KiB signature must be refused");
    let error = format!("{error:#}");
    assert!(error.contains("a signature is at most 64 KiB"), "{error}");
    assert!(!error.contains("--max-component-size"), "{error}");
    assert!(!error.contains("abc"), "{error}");
}

/// A port nothing listens on yet (bound, then released).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Answers every request on `listener` with 200 `ok`, on a thread, until the test ends.
fn serve_ok(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_probe_failure_is_retried_until_the_candidate_goes_live() {
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    // The probe needs an upstream that is down at first: misbehave answers 502 until it is up.
    let port = unused_port();
    let probe = format!("GET /fetch?url=http://127.0.0.1:{port}/");
    let rule = format!("127.0.0.1:{port}");
    let server = TestServer::start(&[
        "--component",
        path.to_str().unwrap(),
        "--poll-interval",
        "200ms",
        "--swap-probe",
        &probe,
        "--allow-outbound",
        &rule,
    ])
    .await;
    let addr = server.addr.to_string();
    rename_into_place(&path, &misbehave);
    // Retried with no change to the file: a second rejection of the same candidate.
    until("the probe failure to be retried", || async {
        info(&addr).await["swaps"]["rejections"].as_u64().unwrap() >= 2
    })
    .await;
    let last = info(&addr).await["swaps"]["last_rejection"].clone();
    assert!(last["reason"].as_str().unwrap().contains("502"), "{last}");
    serve_ok(TcpListener::bind(("127.0.0.1", port)).unwrap());
    until("the retried candidate to go live", || async {
        served_version(&addr).await == version(&misbehave)
    })
    .await;
    assert!(server.metric("echo_host_swap_retries_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_rejection_is_not_retried_until_touch() {
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let server =
        TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "100ms"]).await;
    let addr = server.addr.to_string();
    rename_into_place(&path, b"garbage, not a component");
    until("the garbage to be rejected", || async { info(&addr).await["swaps"]["rejections"] == 1 }).await;
    // Ten poll intervals: a watcher retrying it would have done so by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(info(&addr).await["swaps"]["rejections"], 1, "a deterministic rejection was retried");
    assert_eq!(server.metric("echo_host_swap_retries_total").await, 0.0);
    // `touch`: the same bytes, a new mtime, submitted (and rejected) again.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(file);
    until("the touched file to be checked again", || async { info(&addr).await["swaps"]["rejections"] == 2 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_signature_never_blocks_the_file_watcher() {
    let dir = util::scratch_dir();
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    let path = util::write_file(dir.path(), "c.wasm", &echo);
    let sig = dir.path().join("c.wasm.sig");
    let host = HostProcess::start(&["--component", path.to_str().unwrap(), "--poll-interval", "200ms"], &[]);
    let addr = host.addr.to_string();
    mkfifo(&sig);
    rename_into_place(&path, &misbehave);
    let line = host.wait_for_line("is a FIFO", WAIT).expect("the FIFO is refused with an error naming it");
    assert!(line.contains(&sig.display().to_string()), "{line}");
    assert_eq!(served_version(&addr).await, version(&echo));
    // The watcher is not stuck in an open(2): with the FIFO gone, the new version goes live.
    std::fs::remove_file(&sig).unwrap();
    until("the new version", || async { served_version(&addr).await == version(&misbehave) }).await;
}

#[test]
fn a_fifo_at_start_up_fails_fast_naming_it() {
    let dir = util::scratch_dir();
    let fifo = dir.path().join("fifo.wasm");
    mkfifo(&fifo);
    let (status, _, stderr) = util::run_cli(&["--component", fifo.to_str().unwrap()], WAIT);
    assert!(!status.success());
    assert!(stderr.contains(&fifo.display().to_string()) && stderr.contains("not a"), "{stderr}");

    let path = util::write_file(dir.path(), "c.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let sig: PathBuf = dir.path().join("c.wasm.sig");
    mkfifo(&sig);
    let (status, _, stderr) = util::run_cli(&["--component", path.to_str().unwrap()], WAIT);
    assert!(!status.success());
    assert!(stderr.contains(&sig.display().to_string()) && stderr.contains("is a FIFO"), "{stderr}");
}

fn compile(input: &Path, output: &Path) -> Vec<u8> {
    let status = Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["compile", input.to_str().unwrap(), "-o", output.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "echo-host compile {}", input.display());
    std::fs::read(output).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_cwasm_swaps_with_allow_precompiled_and_nothing_else_takes_one() {
    let dir = util::scratch_dir();
    let path = dir.path().join("c.cwasm");
    let echo = compile(util::echo_wasm(), &path);
    let misbehave = compile(util::misbehave_wasm(), &dir.path().join("m.cwasm"));
    let token = util::write_file(dir.path(), "token", TOKEN.as_bytes());
    let server = TestServer::start(&[
        "--component",
        path.to_str().unwrap(),
        "--allow-precompiled",
        "--poll-interval",
        "200ms",
        "--admin-token-file",
        token.to_str().unwrap(),
    ])
    .await;
    let addr = server.addr.to_string();
    assert_eq!(served_version(&addr).await, version(&echo));
    rename_into_place(&path, &misbehave);
    until("the swap to the new .cwasm", || async { served_version(&addr).await == version(&misbehave) })
        .await;
    // An upload is never native code, whatever the flag.
    let response = client()
        .put(server.url("/.well-known/echo-host/admin/component"))
        .bearer_auth(TOKEN)
        .body(echo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body = response.text().await.unwrap();
    assert!(body.contains("only from the `--component` file"), "{body}");
}
