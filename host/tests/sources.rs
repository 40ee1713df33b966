//! Component sources end to end: a watched file (rename into place, overwrite in place, garbage)
//! and a polled URL (conditional requests, errors, hangs, truncation, redirects), each against
//! the real server, real files and a real HTTP server on loopback. Two tests swap 50 times under
//! continuous load and print the swap latency.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::static_server::{Mode, StaticServer};
use crate::util::{self, TestServer, client};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Echo,
    Misbehave,
}

/// The two test components and the version header each is served under.
struct Components {
    echo: Vec<u8>,
    misbehave: Vec<u8>,
    echo_version: String,
    misbehave_version: String,
}

impl Components {
    fn load() -> Arc<Components> {
        let echo = std::fs::read(util::echo_wasm()).unwrap();
        let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
        let version = |bytes: &[u8]| format!("sha256:{}", &hex::encode(Sha256::digest(bytes))[..12]);
        Arc::new(Components {
            echo_version: version(&echo),
            misbehave_version: version(&misbehave),
            echo,
            misbehave,
        })
    }

    fn bytes(&self, which: Which) -> &[u8] {
        match which {
            Which::Echo => &self.echo,
            Which::Misbehave => &self.misbehave,
        }
    }

    /// Checks one response to `GET /`: 200, a known version header, and a body from that version.
    async fn check(&self, response: reqwest::Response) -> Result<Which, String> {
        let status = response.status();
        let version = response
            .headers()
            .get("echo-host-component")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_string();
        let marker = response.headers().get("x-component").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.text().await.map_err(|e| format!("body of a {status} from {version}: {e:#}"))?;
        if status != 200 {
            return Err(format!("{status} from {version}: {body:?}"));
        }
        if version == self.echo_version {
            if !body.starts_with("Received GET request.") || marker.is_some() {
                return Err(format!("echo's header but body {body:?} (x-component {marker:?})"));
            }
            Ok(Which::Echo)
        } else if version == self.misbehave_version {
            if body != "misbehave ok" || marker.as_deref() != Some("misbehave") {
                return Err(format!("misbehave's header but body {body:?} (x-component {marker:?})"));
            }
            Ok(Which::Misbehave)
        } else {
            Err(format!("unknown version {version}: {body:?}"))
        }
    }

    /// `GET /` once, checked.
    async fn serving(&self, client: &reqwest::Client, server: &TestServer) -> Which {
        let response = client.get(server.url("/")).send().await.unwrap();
        self.check(response).await.unwrap_or_else(|e| panic!("bad response: {e}"))
    }

    /// Waits until `GET /` answers from `which`; returns how long that took.
    async fn wait_for(&self, client: &reqwest::Client, server: &TestServer, which: Which) -> Duration {
        let started = Instant::now();
        loop {
            if self.serving(client, server).await == which {
                return started.elapsed();
            }
            assert!(started.elapsed() < WAIT, "{which:?} was not served within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Writes `bytes` beside `path` and renames it over `path`, as deploy tools do.
fn rename_into_place(path: &Path, bytes: &[u8]) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// Truncates `path`, then writes `bytes` in 8 chunks 100 ms apart: a copy a watcher can catch
/// half-way.
async fn write_slowly_in_place(path: &Path, bytes: &[u8]) {
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for (i, chunk) in bytes.chunks(bytes.len().div_ceil(8)).enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
        }
    })
    .await
    .unwrap();
}

async fn info(server: &TestServer) -> serde_json::Value {
    client().get(server.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap()
}

/// Polls `condition` every 20 ms until it holds, for at most [`WAIT`].
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client tasks sending `GET /` until stopped: half with one keep-alive client each, half with a
/// new connection per request (`Connection: close`).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(server: &TestServer, components: &Arc<Components>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, components, url) = (stop.clone(), components.clone(), server.url("/"));
                tokio::spawn(async move {
                    let keep_alive = i % 2 == 0;
                    let shared = client();
                    let (mut ok, mut failures) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let result = if keep_alive {
                            shared.get(&url).send().await
                        } else {
                            client().get(&url).header("connection", "close").send().await
                        };
                        let checked = match result {
                            Ok(response) => components.check(response).await,
                            Err(e) => Err(format!("request failed: {e:#}")),
                        };
                        match checked {
                            Ok(_) => ok += 1,
                            Err(e) => failures.push(e),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients and checks that no request failed and some succeeded; returns how
    /// many succeeded.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failures) = (0, Vec::new());
        for task in self.tasks {
            let (n, f) = task.await.unwrap();
            ok += n;
            failures.extend(f);
        }
        assert!(
            failures.is_empty(),
            "{} failed responses, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok > 0, "no request succeeded");
        ok
    }
}

/// The first swap compiles the new component; the others reuse the compiled versions kept for
/// rollback, so they are summarised apart.
fn latency_summary(latencies: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut rest = latencies[1..].to_vec();
    rest.sort();
    format!(
        "first swap (compile included) {:.0} ms; the other {}: median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(latencies[0]),
        rest.len(),
        ms(rest[rest.len() / 2]),
        ms(rest[rest.len() * 9 / 10]),
        ms(rest[0]),
        ms(rest[rest.len() - 1])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_swaps_to_a_component_renamed_into_place() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    let server =
        TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "500ms"]).await;
    let client = client();
    assert_eq!(components.serving(&client, &server).await, Which::Echo);

    rename_into_place(&path, &components.misbehave);
    let took = components.wait_for(&client, &server, Which::Misbehave).await;
    eprintln!("rename into place: misbehave served after {} ms (first compile included)", took.as_millis());
    let state = info(&server).await;
    assert_eq!(state["component"]["source"], format!("file:{}", path.display()));
    assert_eq!(state["swaps"]["count"], 1);

    rename_into_place(&path, &components.echo);
    components.wait_for(&client, &server, Which::Echo).await;
    assert_eq!(info(&server).await["swaps"]["rejections"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_never_serves_a_file_overwritten_in_place_half_way() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    let server =
        TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "500ms"]).await;
    let load = Load::start(&server, &components, 2);

    // Truncate, then write in 8 chunks with pauses: the watcher sees the file mid-copy, while
    // the clients check every response.
    write_slowly_in_place(&path, &components.misbehave).await;
    let client = client();
    let took = components.wait_for(&client, &server, Which::Misbehave).await;

    let ok = load.finish().await;
    let rejections = server.metric("echo_host_swap_rejections_total").await;
    eprintln!(
        "overwrite in place: misbehave served {} ms after the last write; {ok} responses, 0 failures, \
         {rejections} half-written versions rejected",
        took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_works_by_polling_alone_as_on_cloud_storage_fuse() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    // Watching off in the server; the polling-only watcher started by hand instead.
    let server = TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "0s"]).await;
    let watcher = tokio::spawn(echo_host::release::source::file::poll_only(
        server.app.gate.clone(),
        path.clone(),
        echo_host::release::source::WatchConfig {
            poll_interval: Duration::from_millis(300),
            fetch_timeout: Duration::from_secs(30),
            max_component_size: 64 << 20,
            storage: Default::default(),
            registry: Default::default(),
            health: Default::default(),
            allow_precompiled: false,
        },
    ));
    let load = Load::start(&server, &components, 2);
    let client = client();

    rename_into_place(&path, &components.misbehave);
    let renamed = components.wait_for(&client, &server, Which::Misbehave).await;
    // In place, slowly: the poll sees it mid-copy too.
    let started = Instant::now();
    write_slowly_in_place(&path, &components.echo).await;
    let written = started.elapsed();
    let in_place = components.wait_for(&client, &server, Which::Echo).await;
    watcher.abort();

    let ok = load.finish().await;
    eprintln!(
        "polling alone (300ms): rename served after {} ms (compile included); in-place copy took {} ms, \
         served {} ms after it; {ok} responses, 0 failures",
        renamed.as_millis(),
        written.as_millis(),
        in_place.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_keeps_the_old_version_for_garbage_empty_and_truncated_files() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    let server =
        TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "300ms"]).await;
    let client = client();
    let truncated = components.misbehave[..components.misbehave.len() / 2].to_vec();
    let bad: [(&str, &[u8], &str); 3] = [
        ("garbage", b"this is not a wasm component at all\n", "invalid component"),
        ("empty", b"", "empty"),
        ("truncated", &truncated, "invalid component"),
    ];
    for (i, (what, bytes, reason)) in bad.into_iter().enumerate() {
        if bytes.is_empty() {
            std::fs::write(&path, bytes).unwrap(); // in place
        } else {
            rename_into_place(&path, bytes);
        }
        let expected = i as u64 + 1;
        until(&format!("the {what} file to be rejected"), || async {
            info(&server).await["swaps"]["rejections"] == expected
        })
        .await;
        let state = info(&server).await;
        let last = &state["swaps"]["last_rejection"];
        assert!(last["reason"].as_str().unwrap().contains(reason), "{what}: {last}");
        assert_eq!(last["source"], format!("file:{}", path.display()));
        eprintln!("{what}: rejected with `{}`", last["reason"].as_str().unwrap());
        // The old version keeps serving, and the same bad bytes are not submitted again.
        for _ in 0..4 {
            assert_eq!(components.serving(&client, &server).await, Which::Echo);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(info(&server).await["swaps"]["rejections"], expected, "{what} resubmitted");
    }
    rename_into_place(&path, &components.misbehave);
    components.wait_for(&client, &server, Which::Misbehave).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_retries_when_the_signature_arrives_after_the_component() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let key = dir.path().join("key");
    let public = echo_host::util::signing::keygen(&key).unwrap();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    echo_host::util::signing::sign_file(&key, &path).unwrap();
    let misbehave = util::write_file(dir.path(), "m.wasm", &components.misbehave);
    let misbehave_sig =
        std::fs::read(echo_host::util::signing::sign_file(&key, &misbehave).unwrap()).unwrap();
    let server = TestServer::start(&[
        "--component",
        path.to_str().unwrap(),
        "--poll-interval",
        "300ms",
        "--trusted-key",
        public.to_str().unwrap(),
    ])
    .await;
    let client = client();

    // The component first: the old signature does not match it.
    rename_into_place(&path, &components.misbehave);
    until("the badly signed file to be rejected", || async {
        info(&server).await["swaps"]["rejections"] == 1
    })
    .await;
    assert!(info(&server).await["swaps"]["last_rejection"]["reason"].as_str().unwrap().contains("signature"));
    assert_eq!(components.serving(&client, &server).await, Which::Echo);
    // Then its signature: the same bytes are tried again.
    rename_into_place(&echo_host::util::signing::sibling(&path, "sig"), &misbehave_sig);
    components.wait_for(&client, &server, Which::Misbehave).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_swaps_with_conditional_requests_and_survives_a_misbehaving_server() {
    let components = Components::load();
    let origin = StaticServer::start(components.echo.clone(), None).await;
    let server = TestServer::start(&[
        "--component",
        &origin.url(),
        "--poll-interval",
        "500ms",
        "--fetch-timeout",
        "1s",
    ])
    .await;
    let client = client();
    assert_eq!(components.serving(&client, &server).await, Which::Echo);
    assert_eq!(info(&server).await["component"]["source"], origin.url());

    origin.set(&components.misbehave, None, Mode::Normal);
    components.wait_for(&client, &server, Which::Misbehave).await;
    until("a 304 Not Modified", || async { origin.with(|s| s.not_modified) > 0 }).await;
    assert!(origin.with(|s| s.conditional) > 0);

    // Each misbehaviour offers echo's bytes: had the host taken them, echo would serve.
    let load = Load::start(&server, &components, 2);
    for mode in [Mode::Error500, Mode::Hang, Mode::Truncated, Mode::Redirect] {
        origin.set(&components.echo, None, mode);
        until(&format!("two {mode:?} answers"), || async { origin.with(|s| s.misbehaved) >= 2 }).await;
        assert_eq!(components.serving(&client, &server).await, Which::Misbehave, "{mode:?}");
        // `info` names the failing polls while they last.
        until(&format!("the {mode:?} failure in info"), || async {
            info(&server).await["component"]["source_error"]["failures"].as_u64() >= Some(1)
        })
        .await;
        // Back to the active bytes: the validators from the last good fetch still give 304s.
        let seen = origin.with(|s| s.not_modified);
        origin.set(&components.misbehave, None, Mode::Normal);
        until(&format!("a 304 after {mode:?}"), || async { origin.with(|s| s.not_modified) > seen }).await;
        assert_eq!(components.serving(&client, &server).await, Which::Misbehave, "{mode:?}");
        until(&format!("info's source_error cleared after {mode:?}"), || async {
            info(&server).await["component"]["source_error"].is_null()
        })
        .await;
    }
    load.finish().await;
    // Failed fetches never reached the gate (a truncated body included), and each was counted.
    assert_eq!(info(&server).await["swaps"]["rejections"], 0);
    assert!(server.metric("echo_host_source_errors_total").await >= 8.0, "two failed polls per misbehaviour");
    assert_eq!(info(&server).await["swaps"]["count"], 1);

    origin.set(&components.echo, None, Mode::Normal);
    components.wait_for(&client, &server, Which::Echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_retries_when_the_signature_arrives_after_the_component() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let key = dir.path().join("key");
    let public = echo_host::util::signing::keygen(&key).unwrap();
    let sign = |name: &str, bytes: &[u8]| {
        let file = util::write_file(dir.path(), name, bytes);
        std::fs::read(echo_host::util::signing::sign_file(&key, &file).unwrap()).unwrap()
    };
    let (echo_sig, misbehave_sig) = (sign("e.wasm", &components.echo), sign("m.wasm", &components.misbehave));
    let origin = StaticServer::start(components.echo.clone(), Some(echo_sig)).await;
    let server = TestServer::start(&[
        "--component",
        &origin.url(),
        "--poll-interval",
        "300ms",
        "--trusted-key",
        public.to_str().unwrap(),
    ])
    .await;
    let client = client();
    assert_eq!(components.serving(&client, &server).await, Which::Echo);

    origin.set(&components.misbehave, None, Mode::Normal);
    until("the unsigned component to be rejected", || async {
        info(&server).await["swaps"]["rejections"] == 1
    })
    .await;
    assert!(
        info(&server).await["swaps"]["last_rejection"]["reason"].as_str().unwrap().contains("no signature")
    );
    // The component is unchanged (304s from here on); its signature appears.
    origin.set(&components.misbehave, Some(&misbehave_sig), Mode::Normal);
    components.wait_for(&client, &server, Which::Misbehave).await;
    assert_eq!(info(&server).await["swaps"]["rejections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_fetch_errors_at_start_up_name_the_url_and_the_cause() {
    let components = Components::load();
    let origin = StaticServer::start(components.echo.clone(), None).await;
    let url = origin.url();
    let truncated = format!("of {} bytes", components.echo.len());
    let cases: [(Mode, &[&str], &str); 5] = [
        (Mode::Error500, &[], "500 Internal Server Error"),
        (Mode::Redirect, &[], "redirects are not followed; point --component at the final URL"),
        (Mode::Truncated, &[], &truncated),
        (Mode::Hang, &["--fetch-timeout", "1s"], "timed out after 1s"),
        (Mode::Normal, &["--max-component-size", "1000"], "over the 1000-byte limit"),
    ];
    for (mode, extra, cause) in cases {
        origin.set(&components.echo, None, mode);
        let mut flags = vec!["--component", url.as_str()];
        flags.extend_from_slice(extra);
        let error = match TestServer::try_start(&flags).await {
            Ok(_) => panic!("{mode:?}: the server started"),
            Err(error) => format!("{error:#}"),
        };
        eprintln!("{mode:?}: {error}");
        assert!(error.contains(&url), "{mode:?}: {error}");
        assert!(error.contains(cause), "{mode:?}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_file_swaps_under_load_drop_no_request() {
    let components = Components::load();
    let dir = util::scratch_dir();
    let path = util::write_file(dir.path(), "c.wasm", &components.echo);
    let server =
        TestServer::start(&["--component", path.to_str().unwrap(), "--poll-interval", "200ms"]).await;
    let load = Load::start(&server, &components, 4);
    let client = client();
    let mut latencies = Vec::new();
    for i in 0..50 {
        let next = if i % 2 == 0 { Which::Misbehave } else { Which::Echo };
        let started = Instant::now();
        rename_into_place(&path, components.bytes(next));
        components.wait_for(&client, &server, next).await;
        latencies.push(started.elapsed());
    }
    let ok = load.finish().await;
    assert_eq!(info(&server).await["swaps"]["count"], 50);
    eprintln!(
        "file source, 50 swaps under load (poll 200ms, inotify): {ok} responses, 0 failures; \
         rename to first response from the new version: {}",
        latency_summary(&latencies)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_url_swaps_under_load_drop_no_request() {
    let components = Components::load();
    let origin = StaticServer::start(components.echo.clone(), None).await;
    let server = TestServer::start(&["--component", &origin.url(), "--poll-interval", "200ms"]).await;
    let load = Load::start(&server, &components, 4);
    let client = client();
    let mut latencies = Vec::new();
    for i in 0..50 {
        let next = if i % 2 == 0 { Which::Misbehave } else { Which::Echo };
        let started = Instant::now();
        origin.set(components.bytes(next), None, Mode::Normal);
        components.wait_for(&client, &server, next).await;
        latencies.push(started.elapsed());
    }
    let ok = load.finish().await;
    assert_eq!(info(&server).await["swaps"]["count"], 50);
    eprintln!(
        "URL source, 50 swaps under load (poll 200ms): {ok} responses, 0 failures; \
         new bytes served to first response from the new version: {}",
        latency_summary(&latencies)
    );
}
