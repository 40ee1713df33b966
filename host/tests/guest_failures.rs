//! A bad guest never takes the host down: every way the `misbehave` component fails becomes a 500
//! naming the request id, counted in the metrics, and the next request is served as usual over
//! HTTP/1.1 and h2c. Plus what a guest is denied: the file system, the host's environment, and
//! outbound HTTP not listed in `--allow-outbound`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Reply, TestServer, client, get, h2c_client, misbehave_wasm};

fn misbehave() -> &'static str {
    misbehave_wasm().to_str().expect("UTF-8 path")
}

/// A misbehaviour, and whether the guest traps doing it (as opposed to returning without a
/// response). `/set-twice` has its own test below.
const FAILURES: &[(&str, bool)] =
    &[("/trap", true), ("/panic", true), ("/recurse", true), ("/never-respond", false)];

/// `sha256:` and the first 12 hex digits of the component's digest.
fn assert_component_header(reply: &Reply, what: &str) {
    let value = reply.header("echo-host-component");
    let hex =
        value.strip_prefix("sha256:").unwrap_or_else(|| panic!("{what}: echo-host-component {value:?}"));
    assert!(
        hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{what}: echo-host-component should be sha256: and 12 lower-case hex digits, got {value:?}"
    );
}

/// A 500 from the host naming the request: `(request id ID)` in the body, the same ID in
/// `echo-host-request-id`, and the component version. Returns the id.
fn assert_failure_reply(reply: &Reply, what: &str) -> String {
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {:?}", reply.body);
    let id = reply.header("echo-host-request-id").to_string();
    assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()), "{what}: request id {id:?}");
    let named = reply
        .body
        .split("request id ")
        .nth(1)
        .map(|rest| rest.trim_end().trim_end_matches(')'))
        .unwrap_or_else(|| panic!("{what}: the body does not name the request id: {:?}", reply.body));
    assert_eq!(named, id, "{what}: the id in the body and in `echo-host-request-id` differ");
    assert_component_header(reply, what);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guest_failure_is_a_500_naming_the_request_and_the_host_keeps_serving() {
    let server = TestServer::start(&["--component", misbehave()]).await;
    let traps_before = server.metric("echo_host_guest_traps_total").await;
    let errors_before = server.metric("echo_host_requests_total{class=\"5xx\"}").await;
    let mut failures = 0.0;
    let mut traps = 0.0;
    let mut ids = std::collections::HashSet::new();
    let mut component = None;

    for (protocol, client, version) in
        [("HTTP/1.1", client(), Version::HTTP_11), ("h2c", h2c_client(), Version::HTTP_2)]
    {
        for &(path, traps_here) in FAILURES {
            let what = format!("{path} over {protocol}");
            let reply = get(&client, server.url(path)).await;
            assert_eq!(reply.version, version, "{what}");
            let id = assert_failure_reply(&reply, &what);
            failures += 1.0;
            if traps_here {
                traps += 1.0;
            }
            assert!(ids.insert(id.clone()), "{what}: request id {id} was given out twice");
            let header = reply.header("echo-host-component").to_string();
            assert_eq!(
                component.get_or_insert(header.clone()),
                &header,
                "{what}: a different component version"
            );

            // Right after: the host serves on both protocols.
            for (ok_protocol, ok_client) in [("HTTP/1.1", crate::util::client()), ("h2c", h2c_client())] {
                let ok = get(&ok_client, server.url("/ok")).await;
                assert_eq!(ok.status, StatusCode::OK, "/ok over {ok_protocol} after {what}: {:?}", ok.body);
                assert_eq!(ok.body, "misbehave ok");
                assert_component_header(&ok, &format!("/ok after {what}"));
            }
            // And the same keep-alive connection (or h2 connection) is still usable.
            let ok = get(&client, server.url("/ok")).await;
            assert_eq!(ok.status, StatusCode::OK, "/ok over the same {protocol} client after {what}");
        }
    }

    // The counters are written as each response ends; the last may trail the client by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (trap_count, error_count) = loop {
        let text = server.metrics().await;
        let trap_count = crate::util::metric_value(&text, "echo_host_guest_traps_total");
        let error_count = crate::util::metric_value(&text, "echo_host_requests_total{class=\"5xx\"}");
        if (trap_count >= traps_before + traps && error_count >= errors_before + failures)
            || std::time::Instant::now() > deadline
        {
            break (trap_count, error_count);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        trap_count - traps_before,
        traps,
        "guest traps counted (trap, panic, recurse on both protocols)"
    );
    assert_eq!(
        error_count - errors_before,
        failures,
        "5xx responses counted: one per failure caused, no more"
    );
}

/// `/set-twice` sets a 200 with body `first`, then calls `response-outparam::set` again on the
/// handle it gave away, and traps. It must be a 500 every time, on both protocols: the same guest
/// doing the same thing must not get a 200 on some requests and a 500 on others. Whether the host
/// sees the trap or the first body bytes first is a race, so the test sends many, some at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_the_response_twice_is_a_500_every_time() {
    const ROUNDS: usize = 20;
    const AT_ONCE: usize = 10;
    let server = TestServer::start(&["--component", misbehave()]).await;
    let traps_before = server.metric("echo_host_guest_traps_total").await;
    let mut outcomes = Vec::new();
    for (protocol, client) in [("HTTP/1.1", client()), ("h2c", h2c_client())] {
        for _ in 0..ROUNDS {
            let batch = (0..AT_ONCE).map(|_| get(&client, server.url("/set-twice")));
            for reply in futures::future::join_all(batch).await {
                outcomes.push(format!("{protocol} {} {:?}", reply.status.as_u16(), reply.body));
            }
            let ok = get(&client, server.url("/ok")).await;
            assert_eq!(ok.status, StatusCode::OK, "/ok over {protocol} after /set-twice");
        }
    }
    let sent = outcomes.len();
    let wrong: Vec<&String> = outcomes.iter().filter(|o| !o.contains(" 500 ")).collect();
    assert!(wrong.is_empty(), "{} of {sent} /set-twice requests were not 500: {wrong:?}", wrong.len());
    // Every one of them trapped, whatever the client saw.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let traps = loop {
        let traps = server.metric("echo_host_guest_traps_total").await;
        if traps >= traps_before + sent as f64 || std::time::Instant::now() > deadline {
            break traps;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(traps - traps_before, sent as f64, "each /set-twice traps once");
    // And a single one, checked like the other failures.
    let reply = get(&client(), server.url("/set-twice")).await;
    assert_failure_reply(&reply, "/set-twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_has_no_file_system() {
    let server = TestServer::start(&["--component", misbehave()]).await;
    let reply = get(&client(), server.url("/fs")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 2, "{:?}", reply.body);
    for line in lines {
        assert!(line.starts_with("err: "), "the guest reached the file system: {:?}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_sees_only_its_own_environment() {
    let server = TestServer::start(&["--component", misbehave(), "--env", "GREETING=hi"]).await;
    let reply = get(&client(), server.url("/env-all")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let vars: Vec<(&str, &str)> =
        reply.body.lines().map(|line| line.split_once('=').unwrap_or((line, ""))).collect();
    assert!(vars.contains(&("GREETING", "hi")), "--env GREETING=hi is missing: {:?}", reply.body);
    for (key, _) in &vars {
        assert!(
            matches!(*key, "GREETING" | "K_SERVICE" | "K_REVISION" | "K_CONFIGURATION"),
            "the host's `{key}` leaked into the guest: {:?}",
            reply.body
        );
    }
    // This test process certainly has these; the guest must not.
    for key in ["PATH", "HOME"] {
        assert!(!vars.iter().any(|(k, _)| *k == key), "`{key}` leaked into the guest: {:?}", reply.body);
    }
    let reply = get(&client(), server.url("/env?key=GREETING")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hi"));
}

/// A one-route HTTP/1.1 server answering `upstream-ok` to anything; counts its connections.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nupstream-ok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_is_denied_unless_allowed() {
    let (upstream, hits) = upstream().await;
    let target = format!("/fetch?url=http://{upstream}/");

    let closed = TestServer::start(&["--component", misbehave()]).await;
    let reply = get(&client(), closed.url(&target)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.body);
    assert!(reply.body.contains("HttpRequestDenied"), "{:?}", reply.body);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a denied request reached the upstream");
    // Another port on the same host is not allowed by a rule for this one either.
    let other_port = format!("127.0.0.1:{}", upstream.port().wrapping_add(1).max(1));
    let narrow = TestServer::start(&["--component", misbehave(), "--allow-outbound", &other_port]).await;
    let reply = get(&client(), narrow.url(&target)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.body);
    assert!(reply.body.contains("HttpRequestDenied"), "{:?}", reply.body);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a denied request reached the upstream");

    let rule = upstream.to_string();
    let open = TestServer::start(&["--component", misbehave(), "--allow-outbound", &rule]).await;
    let reply = get(&client(), open.url(&target)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.body.contains("upstream-ok"), "{:?}", reply.body);
    assert_eq!(reply.body, "upstream 200\nupstream-ok");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
