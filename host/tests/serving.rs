//! The host serving components: echo over HTTP/1.1 and h2c, the well-known endpoints, the
//! version header, precompiled components, start-up validation and the metrics.

use std::time::Duration;

use crate::util::{self, HostProcess, TestServer, client, h2c_client, metric_value};

const SEED_GET: &str = "Received GET request. Query params: ImmutableMultiDict([('name', 'world')])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_builtin_echo_component_over_http1_and_h2c() {
    let server = TestServer::start(&[]).await;
    for client in [client(), h2c_client()] {
        let response = client.get(server.url("/?name=world")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let version = response.headers()["echo-host-component"].to_str().unwrap().to_string();
        assert_eq!(version, format!("sha256:{}", &server.app.registry.active().sha256[..12]));
        assert!(response.headers().contains_key("echo-host-request-id"));
        assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(response.text().await.unwrap(), SEED_GET);

        let response =
            client.post(server.url("/any/path")).body(&b"hello \xff data"[..]).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.unwrap()[..], b"Received POST data: hello \xff data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_endpoints_answer_without_the_component() {
    let server = TestServer::start(&["--component", util::misbehave_wasm().to_str().unwrap()]).await;
    let client = client();

    let health = client.get(server.url("/.well-known/echo-host/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("echo-host-component"));
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let info: serde_json::Value =
        client.get(server.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap();
    let bytes = std::fs::read(util::misbehave_wasm()).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(info["component"]["sha256"], sha.as_str());
    assert_eq!(info["component"]["size"], bytes.len() as u64);
    assert!(info["component"]["source"].as_str().unwrap().starts_with("file:"));
    assert!(info["component"]["loaded_at"].as_str().unwrap().contains('T'));
    assert_eq!(info["host"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["limits"]["concurrency"], 80);
    assert_eq!(info["limits"]["request_timeout"], 300.0);

    let missing = client.get(server.url("/.well-known/echo-host/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let post = client.post(server.url("/.well-known/echo-host/health")).send().await.unwrap();
    assert_eq!(post.status(), 405);

    // Everything else reaches the component, including look-alike prefixes.
    let guest = client.get(server.url("/.well-known/echo-hostile")).send().await.unwrap();
    assert_eq!(guest.headers()["x-component"], "misbehave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let server = TestServer::start(&["--component", util::misbehave_wasm().to_str().unwrap()]).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(client.get(server.url("/ok")).send().await.unwrap().status(), 200);
    }
    assert_eq!(client.get(server.url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(client.get(server.url("/trap")).send().await.unwrap().status(), 500);

    // The trap's 500 can reach the client (the guest dropped its response) before the guest
    // task, on the other worker thread, has counted the trap: scrape until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut earlier_scrapes = 0.0;
    let text = loop {
        let text = server.metrics().await;
        if metric_value(&text, "echo_host_guest_traps_total") >= 1.0 || std::time::Instant::now() > deadline {
            break text;
        }
        earlier_scrapes += 1.0;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    // A scrape is counted once its body has gone out: this one is not in its own text, earlier
    // ones (only when the trap was late) may be.
    let ok = metric_value(&text, "echo_host_requests_total{class=\"2xx\"}");
    assert!((3.0..=3.0 + earlier_scrapes).contains(&ok), "{earlier_scrapes} earlier scrapes: {text}");
    assert_eq!(metric_value(&text, "echo_host_requests_total{class=\"4xx\"}"), 1.0);
    assert_eq!(metric_value(&text, "echo_host_requests_total{class=\"5xx\"}"), 1.0);
    assert_eq!(metric_value(&text, "echo_host_guest_traps_total"), 1.0);
    assert_eq!(metric_value(&text, "echo_host_request_duration_seconds_count"), 5.0);
    assert_eq!(metric_value(&text, "echo_host_instantiation_seconds_count"), 5.0);
    // Host endpoints are answered before they are counted: nothing is in flight.
    assert_eq!(metric_value(&text, "echo_host_requests_in_flight"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompiled_components_need_the_explicit_flag() {
    let dir = util::scratch_dir();
    let cwasm = dir.path().join("echo.cwasm");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["compile", util::echo_wasm().to_str().unwrap(), "-o", cwasm.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());

    let refused = TestServer::try_start(&["--component", cwasm.to_str().unwrap()]).await;
    let error = format!("{:#}", refused.err().expect("a .cwasm must be refused without the flag"));
    assert!(error.contains("--allow-precompiled"), "{error}");

    let server = TestServer::start(&["--component", cwasm.to_str().unwrap(), "--allow-precompiled"]).await;
    let body = client().get(server.url("/?name=world")).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, SEED_GET);
}

/// The value a `.cwasm` records for a Cranelift ISA flag: wasmtime writes its settings as postcard
/// (`name` as length + bytes, then `FlagValue::Bool`, variant 2, and the bool), and refuses to
/// load a file whose enabled flags the CPU lacks.
fn isa_flag_in(cwasm: &[u8], name: &str) -> Option<bool> {
    let mut key = vec![name.len() as u8];
    key.extend_from_slice(name.as_bytes());
    let at = cwasm.windows(key.len()).position(|w| w == key.as_slice())? + key.len();
    match cwasm.get(at..at + 2)? {
        [2, 0] => Some(false),
        [2, 1] => Some(true),
        other => panic!("`{name}` is followed by {other:?}, not a FlagValue::Bool"),
    }
}

/// An image is built on one machine and runs on others: `compile` must not use the builder's
/// AVX-512 (the default), unless asked to with `--native`.
#[cfg(target_arch = "x86_64")]
#[test]
fn compile_emits_code_for_any_x86_64_server_cpu() {
    let dir = util::scratch_dir();
    let compile = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
            .args(["compile", util::echo_wasm().to_str().unwrap(), "-o", out.to_str().unwrap()])
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    let portable = compile("portable.cwasm", &[]);
    for flag in ["has_avx512f", "has_avx512vl", "has_avx512dq", "has_avx512bitalg", "has_avx512vbmi"] {
        assert_eq!(isa_flag_in(&portable, flag), Some(false), "`{flag}` in the default .cwasm");
    }
    // AVX2 stays on where the CPU has it: the baseline is Haswell, not the 2003 one.
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(isa_flag_in(&portable, "has_avx2"), Some(true));
    }
    let native = compile("native.cwasm", &["--native"]);
    assert_eq!(
        isa_flag_in(&native, "has_avx512f"),
        Some(std::arch::is_x86_feature_detected!("avx512f")),
        "`--native` follows this CPU"
    );
}

/// On one core (Cloud Run's 1 vCPU) the host runs a single-threaded runtime: a guest computing
/// in a loop must not stall the other requests (the epoch tick makes it yield), and a swap's
/// compile must not stop the serving either.
#[test]
fn one_core_keeps_serving_beside_a_busy_guest_and_a_swap() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let dir = util::scratch_dir();
    let token = util::write_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes());
    let misbehave = util::misbehave_wasm().to_str().unwrap();
    // The loop runs to this deadline: it must outlive the ten requests and the swap below, each
    // request beside the busy guest taking about 0.6 s here (some 9 s gone once swapped).
    let host = HostProcess::start_on_one_core(
        &[
            "--component",
            misbehave,
            "--request-timeout",
            "20s",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    let serving = host.wait_for_line("serving HTTP", Duration::from_secs(10)).expect("no start-up line");
    assert!(serving.contains("CurrentThread"), "expected a current-thread runtime on one core: {serving}");

    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let spin = |client: reqwest::blocking::Client, url: String| {
        std::thread::spawn(move || client.get(url).send().map(|r| r.status().as_u16()))
    };
    let looping = spin(client.clone(), host.url("/loop"));
    // The loop is running in the guest once its instance exists: nothing else has reached the
    // guest yet, and the host calls the handler right after instantiating, with no await between.
    let metrics = host.url("/.well-known/echo-host/metrics");
    let instantiated = util::poll_metric_until(
        &metrics,
        "echo_host_instantiation_seconds_count",
        Duration::from_secs(30),
        |n| n >= 1.0,
    );
    assert_eq!(instantiated, 1.0, "the looping request never reached the guest");
    for _ in 0..10 {
        let response = client.get(host.url("/ok")).send().unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(!looping.is_finished(), "the looping guest ended before the other requests were served");

    let upload = client
        .put(host.url("/.well-known/echo-host/admin/component"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(util::echo_wasm()).unwrap())
        .send()
        .unwrap();
    assert_eq!(upload.status(), 200, "{}", upload.text().unwrap_or_default());
    let body = client.get(host.url("/?name=world")).send().unwrap().text().unwrap();
    assert_eq!(body, SEED_GET);
    assert_eq!(looping.join().unwrap().unwrap(), 504, "the loop stops at its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_fail_the_start_with_a_clear_reason() {
    let dir = util::scratch_dir();
    let cases: &[(&str, &[u8], &str)] = &[
        ("empty.wasm", b"", "empty"),
        ("garbage.wasm", b"definitely not wasm", "not a wasm component"),
        ("core.wasm", b"\0asm\x01\0\0\0", "core wasm module"),
    ];
    for (name, bytes, expected) in cases {
        let path = util::write_file(dir.path(), name, bytes);
        let error = TestServer::try_start(&["--component", path.to_str().unwrap()]).await.err();
        let error = format!("{:#}", error.unwrap_or_else(|| panic!("`{name}` must be refused")));
        assert!(error.contains(expected), "`{name}`: {error}");
    }
    let truncated = std::fs::read(util::echo_wasm()).unwrap();
    let path = util::write_file(dir.path(), "truncated.wasm", &truncated[..truncated.len() / 2]);
    assert!(TestServer::try_start(&["--component", path.to_str().unwrap()]).await.is_err());
}

#[test]
fn invalid_flags_exit_before_binding_the_port() {
    let port = util::peers::free_port();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["--concurrency", "0"])
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--concurrency"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host"))
        .args(["--request-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a duration"));

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_echo-host")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--component", "--request-timeout", "--max-body", "--concurrency", "[env: PORT="] {
        assert!(help.contains(flag), "--help lacks `{flag}`:\n{help}");
    }
}

#[test]
fn json_logs_follow_cloud_logging_and_carry_guest_output() {
    let host = HostProcess::start(
        &["--component", util::misbehave_wasm().to_str().unwrap()],
        &[("GOOGLE_CLOUD_PROJECT", "my-project"), ("K_SERVICE", "echo")],
    );
    let startup = host.wait_for_line("loaded component", Duration::from_secs(10)).expect("start-up log");
    let startup: serde_json::Value = serde_json::from_str(&startup).unwrap();
    assert_eq!(startup["severity"], "INFO");
    assert!(startup["message"].as_str().unwrap().contains("ms"), "{startup}");

    let client = reqwest::blocking::Client::new();
    let response = client
        .get(host.url("/log?x=1"))
        .header("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1")
        .header("user-agent", "log-test")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["echo-host-request-id"].to_str().unwrap().to_string();

    let access = host.wait_for_line("\"httpRequest\"", Duration::from_secs(10)).expect("an access log");
    let access: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["severity"], "INFO");
    assert_eq!(access["httpRequest"]["requestMethod"], "GET");
    assert_eq!(access["httpRequest"]["status"], 200);
    assert_eq!(access["httpRequest"]["userAgent"], "log-test");
    assert!(access["httpRequest"]["latency"].as_str().unwrap().ends_with('s'));
    assert_eq!(
        access["logging.googleapis.com/trace"],
        "projects/my-project/traces/105445aa7843bc8bf206b12000100000"
    );
    assert_eq!(access["request_id"], request_id.as_str());

    let stdout_line =
        host.wait_for_line("misbehave stdout line", Duration::from_secs(10)).expect("guest stdout");
    let stdout_line: serde_json::Value = serde_json::from_str(&stdout_line).unwrap();
    assert_eq!(stdout_line["request_id"], request_id.as_str());
    assert_eq!(stdout_line["stream"], "stdout");
    let stderr_line =
        host.wait_for_line("misbehave stderr line", Duration::from_secs(10)).expect("guest stderr");
    let stderr_line: serde_json::Value = serde_json::from_str(&stderr_line).unwrap();
    assert_eq!(stderr_line["severity"], "WARNING");

    for line in host.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["severity"].is_string(), "{line}");
    }
}

#[test]
fn sigterm_drains_requests_in_flight_and_exits_zero() {
    let mut host = HostProcess::start(
        &["--component", util::misbehave_wasm().to_str().unwrap(), "--shutdown-grace", "9s"],
        &[],
    );
    let url = host.url("/stream?chunks=20&ms=100");
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let response = reqwest::blocking::get(url)?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.text()?))
            })
        })
        .collect();
    // Let the three requests start streaming.
    let metrics_url = host.url("/.well-known/echo-host/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::blocking::get(&metrics_url).unwrap().text().unwrap();
        if metric_value(&text, "echo_host_requests_in_flight") >= 3.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "requests never got in flight:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(10)).expect("echo-host did not exit within 10 s");
    assert!(status.success(), "exit status {status}");
    for request in in_flight {
        let (status, body) = request.join().unwrap().expect("request in flight failed during drain");
        assert_eq!(status, 200);
        assert_eq!(body.lines().count(), 20, "{body}");
        assert!(body.ends_with("chunk 19\n"), "{body}");
    }
    // The listener is gone: new connections are refused.
    assert!(std::net::TcpStream::connect(host.addr).is_err());
    assert!(host.lines().iter().any(|l| l.contains("shutdown requested")));
}

#[test]
fn sigterm_cuts_requests_that_outlive_the_grace_period() {
    let mut host = HostProcess::start(
        &["--component", util::misbehave_wasm().to_str().unwrap(), "--shutdown-grace", "1s"],
        &[],
    );
    let url = host.url("/sleep?ms=30000");
    let slow = std::thread::spawn(move || reqwest::blocking::get(url).map(|r| r.status()));
    let metrics_url = host.url("/.well-known/echo-host/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric_value(
        &reqwest::blocking::get(&metrics_url).unwrap().text().unwrap(),
        "echo_host_requests_in_flight",
    ) < 1.0
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    host.signal("INT");
    let status = host.wait_exit(Duration::from_secs(10)).expect("echo-host did not exit");
    assert!(status.success(), "exit status {status}");
    assert!(slow.join().unwrap().is_err(), "the slow request must be cut, not answered");
    assert!(host.lines().iter().any(|l| l.contains("grace period over")), "{:#?}", host.lines());
}

/// A request the shutdown grace cuts is the server's doing (#32): its access-log line says
/// `shutdown` with 503 (or, once its head went out, that head's status), not `client_gone` 499.
#[test]
fn a_request_cut_by_the_shutdown_grace_is_logged_as_shutdown() {
    let mut host = HostProcess::start(
        &["--component", util::misbehave_wasm().to_str().unwrap(), "--shutdown-grace", "1s"],
        &[],
    );
    let waiting = host.url("/sleep?ms=30000");
    let streaming = host.url("/stream?chunks=30&ms=1000");
    let clients: Vec<_> = [waiting, streaming]
        .into_iter()
        .map(|url| std::thread::spawn(move || reqwest::blocking::get(url).and_then(|r| r.text())))
        .collect();
    let metrics_url = host.url("/.well-known/echo-host/metrics");
    let in_flight =
        util::poll_metric_until(&metrics_url, "echo_host_requests_in_flight", Duration::from_secs(20), |n| {
            n >= 2.0
        });
    assert_eq!(in_flight, 2.0, "both requests in flight");
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(10)).expect("echo-host did not exit");
    assert!(status.success(), "exit status {status}");
    for client in clients {
        assert!(client.join().unwrap().is_err(), "a request past the grace must be cut, not answered");
    }
    let lines = host.lines();
    let access = |path: &str| {
        lines
            .iter()
            .find(|line| line.contains(&format!("\"requestUrl\":\"{}", host.url(path))))
            .unwrap_or_else(|| panic!("no access-log line for {path}: {lines:#?}"))
            .clone()
    };
    let cut_waiting = access("/sleep?ms=30000");
    assert!(cut_waiting.contains("\"outcome\":\"shutdown\""), "{cut_waiting}");
    assert!(cut_waiting.contains("\"status\":503"), "{cut_waiting}");
    let cut_streaming = access("/stream?chunks=30&ms=1000");
    assert!(cut_streaming.contains("\"outcome\":\"shutdown\""), "{cut_streaming}");
    assert!(cut_streaming.contains("\"status\":200"), "the head that went out: {cut_streaming}");
}

/// `--log-format text` into a pipe (a file, a log collector) is plain text (#32): colour codes
/// only when stdout is a terminal.
#[test]
fn text_logs_into_a_pipe_have_no_colour_codes() {
    let host = HostProcess::start(
        &["--component", util::echo_wasm().to_str().unwrap(), "--log-format", "text"],
        &[],
    );
    let response = reqwest::blocking::get(host.url("/?colour=none")).expect("GET");
    assert_eq!(response.status(), 200);
    let line = host
        .wait_for_line("colour=none", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no access-log line: {:#?}", host.lines()));
    assert!(line.contains("INFO"), "a text line with its level: {line:?}");
    let coloured: Vec<_> = host.lines().into_iter().filter(|line| line.contains("\x1b[")).collect();
    assert!(coloured.is_empty(), "colour codes in a piped text log: {coloured:#?}");
}
