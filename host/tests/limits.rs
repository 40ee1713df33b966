//! Every limit the host enforces is a flag with a default (see `config.rs`); each test here sets one
//! low, hits it over real HTTP, and checks the answer, the metric that counts it, and that the
//! server goes on serving afterwards.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{TestServer, client, echo_wasm, get, h2c_client, misbehave_wasm, raw_status};

/// What a test waits for at most before it calls a missing outcome a failure. Generous: the machine
/// is shared and noisy; no test asserts a duration tighter than this.
const PATIENCE: Duration = Duration::from_secs(30);

const ECHO_BODY_PREFIX: &str = "Received POST data: ";

fn misbehave() -> &'static str {
    misbehave_wasm().to_str().expect("UTF-8 path")
}

fn echo() -> &'static str {
    echo_wasm().to_str().expect("UTF-8 path")
}

/// `/ok` on misbehave answers 200: the server survived whatever the test just did.
async fn assert_misbehave_ok(server: &TestServer) {
    let reply = get(&client(), server.url("/ok")).await;
    assert_eq!(reply.status, StatusCode::OK, "/ok after a failure: {:?}", reply.body);
    assert_eq!(reply.body, "misbehave ok");
}

/// Polls the metrics endpoint until `sample` satisfies `done` or [`PATIENCE`] passes; returns the
/// last value seen (the caller asserts on it, so a timeout fails with the real number).
async fn wait_metric(server: &TestServer, sample: &str, done: impl Fn(f64) -> bool) -> f64 {
    wait_metric_for(server, sample, PATIENCE, done).await
}

async fn wait_metric_for(
    server: &TestServer,
    sample: &str,
    patience: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + patience;
    loop {
        let value = server.metric(sample).await;
        if done(value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the whole streamed body chunk by chunk: the bytes that arrived, and whether the body
/// ended cleanly (`Ok`) or broke off (`Err`).
async fn read_streamed(mut response: reqwest::Response) -> (Vec<u8>, Result<(), reqwest::Error>) {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return (bytes, Ok(())),
            Err(error) => return (bytes, Err(error)),
        }
    }
}

/// One HTTP/1.1 response read off a raw connection: status, lower-cased head, body.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response with a `Content-Length` (or none, for bodiless statuses) from `reader`.
fn read_raw_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<RawResponse> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed inside the response head: {head:?}"),
            ));
        }
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            break;
        }
    }
    let status = raw_status(head.as_bytes());
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("numeric content-length"))
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(RawResponse { status, head, body })
}

// ------------------------------------------------------------------------------------------------
// --request-timeout
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_stops_busy_and_waiting_guests_with_504() {
    let server = TestServer::start(&["--component", misbehave(), "--request-timeout", "1s"]).await;
    let client = client();
    let timeouts_before = server.metric("echo_host_request_timeouts_total").await;

    // A guest computing forever: only epoch interruption stops it.
    let started = Instant::now();
    let reply = get(&client, server.url("/loop")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "/loop: {:?}", reply.body);
    reply.assert_names_request_id();
    assert!(started.elapsed() < PATIENCE, "/loop took {:?} with a 1 s deadline", started.elapsed());
    assert_misbehave_ok(&server).await;

    // A guest waiting (on a 5 s timer) past the deadline.
    let started = Instant::now();
    let reply = get(&client, server.url("/sleep?ms=5000")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "/sleep?ms=5000: {:?}", reply.body);
    reply.assert_names_request_id();
    assert!(started.elapsed() < PATIENCE, "/sleep took {:?} with a 1 s deadline", started.elapsed());
    assert_misbehave_ok(&server).await;

    let timeouts =
        wait_metric(&server, "echo_host_request_timeouts_total", |v| v >= timeouts_before + 2.0).await;
    assert_eq!(
        timeouts,
        timeouts_before + 2.0,
        "/loop and /sleep should each count once as a request timeout"
    );
}

/// The response has started (200 and a first line) when the deadline passes: the status can no
/// longer change, so the body must break off rather than end as if complete. Whether the host's
/// deadline timer or the epoch interruption of the guest notices first is a race, so several go
/// at once, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_cuts_a_response_that_already_started() {
    const AT_ONCE: usize = 8;
    const ROUNDS: usize = 2;
    let server = TestServer::start(&["--component", misbehave(), "--request-timeout", "1s"]).await;
    let timeouts_before = server.metric("echo_host_request_timeouts_total").await;
    let client = client();
    let mut clean_ends = Vec::new();
    for round in 0..ROUNDS {
        let requests = (0..AT_ONCE).map(|i| {
            let client = client.clone();
            let url = server.url(&format!("/loop-after-response?i={i}"));
            async move {
                let response = client.get(url).send().await.expect("head of /loop-after-response");
                assert_eq!(response.status(), StatusCode::OK);
                tokio::time::timeout(PATIENCE, read_streamed(response))
                    .await
                    .expect("the streaming body was not cut within 30 s of a 1 s deadline")
            }
        });
        for (i, (bytes, end)) in futures::future::join_all(requests).await.into_iter().enumerate() {
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                "started\n",
                "round {round}, request {i}: the bytes sent before the deadline"
            );
            if end.is_ok() {
                clean_ends.push(format!("round {round}, request {i}"));
            }
        }
        assert_misbehave_ok(&server).await;
    }
    assert!(
        clean_ends.is_empty(),
        "{} of {} responses cut by the deadline ended cleanly, as if complete: {clean_ends:?}",
        clean_ends.len(),
        AT_ONCE * ROUNDS
    );
    let expected = timeouts_before + (AT_ONCE * ROUNDS) as f64;
    let timeouts = wait_metric(&server, "echo_host_request_timeouts_total", |v| v >= expected).await;
    assert_eq!(
        timeouts, expected,
        "each response cut by the deadline should count once as a request timeout"
    );
}

// ------------------------------------------------------------------------------------------------
// --max-memory
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_traps_the_guest_that_crosses_it() {
    let server = TestServer::start(&["--component", misbehave(), "--max-memory", "32MiB"]).await;
    let client = client();
    let traps_before = server.metric("echo_host_guest_traps_total").await;

    let reply = get(&client, server.url("/alloc")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "/alloc (unbounded): {:?}", reply.body);
    reply.assert_names_request_id();

    // One allocation past the limit at once fails the same way.
    let reply = get(&client, server.url("/alloc?mb=64")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "/alloc?mb=64: {:?}", reply.body);
    reply.assert_names_request_id();

    // Under the limit is fine, and each request gets a fresh memory.
    for _ in 0..3 {
        let reply = get(&client, server.url("/alloc?mb=8")).await;
        assert_eq!(reply.status, StatusCode::OK, "/alloc?mb=8: {:?}", reply.body);
        assert_eq!(reply.body, "allocated 8 MiB");
    }
    assert_misbehave_ok(&server).await;

    let traps = wait_metric(&server, "echo_host_guest_traps_total", |v| v >= traps_before + 2.0).await;
    assert!(
        traps >= traps_before + 2.0,
        "both out-of-memory requests should count as traps: {traps_before} -> {traps}"
    );
}

// ------------------------------------------------------------------------------------------------
// --max-body
// ------------------------------------------------------------------------------------------------

const MIB: usize = 1 << 20;

/// Sends a request head declaring `declared` body bytes and only 4 of them, then reads until the
/// server closes the connection (or [`PATIENCE`] passes): the raw answer, and whether it closed.
async fn declare_and_stall(addr: SocketAddr, declared: usize) -> (Vec<u8>, bool) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\nabcd");
        stream.write_all(head.as_bytes()).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                // A reset after the response also means the server closed the connection.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false, // timed out
            }
        };
        (response, closed)
    })
    .await
    .unwrap()
}

/// A chunked (no `Content-Length`) request body of `chunks` chunks of `size` bytes of `byte`.
fn chunked_body(chunks: usize, size: usize, byte: u8) -> reqwest::Body {
    let stream =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, Infallible>(Bytes::from(vec![byte; size]))));
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_refuses_a_declared_length_over_it_before_reading_the_body() {
    let server = TestServer::start(&["--component", echo(), "--max-body", "1MiB"]).await;
    let too_large_before = server.metric("echo_host_body_too_large_total").await;

    // Only 4 of the 10 MiB declared are ever sent: a server that waited for the body before
    // answering would time out here instead.
    let (response, closed) = declare_and_stall(server.addr, 10 * MIB).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(!response.is_empty(), "no answer within 30 s to a 10 MiB Content-Length with a 1 MiB limit");
    assert_eq!(raw_status(&response), 413, "{text}");
    assert!(text.contains("request body of 10485760 bytes exceeds the 1048576-byte limit"), "{text}");
    assert!(text.contains("echo-host-request-id: "), "{text}");
    assert!(text.contains("connection: close"), "the unread body makes the connection unusable: {text}");
    assert!(closed, "the server should close the connection after the 413: {text}");

    let too_large =
        wait_metric(&server, "echo_host_body_too_large_total", |v| v >= too_large_before + 1.0).await;
    assert_eq!(too_large, too_large_before + 1.0, "the 413 should count once");
    let reply = get(&client(), server.url("/?after=413")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_stops_a_chunked_body_crossing_it() {
    let server = TestServer::start(&["--component", echo(), "--max-body", "1MiB"]).await;
    let too_large_before = server.metric("echo_host_body_too_large_total").await;

    // 2 MiB with no length: 413 if the guest had not answered yet, or the response cut (the echo
    // starts its answer before reading the body); never a 200 carrying all of it.
    let total = 2 * MIB;
    let sent = client().post(server.url("/upload")).body(chunked_body(32, 64 * 1024, b'x')).send().await;
    match sent {
        Err(error) => eprintln!("chunked over the limit: request cut ({error})"),
        Ok(response) if response.status() == StatusCode::PAYLOAD_TOO_LARGE => {}
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK, "chunked over the limit: unexpected status");
            let (bytes, end) =
                tokio::time::timeout(PATIENCE, read_streamed(response)).await.expect("body cut in time");
            assert!(
                end.is_err() && bytes.len() < ECHO_BODY_PREFIX.len() + total,
                "a {total}-byte chunked body through a 1 MiB limit: {} bytes, ended {end:?}",
                bytes.len()
            );
            assert!(
                bytes.len() <= ECHO_BODY_PREFIX.len() + MIB,
                "{} bytes were echoed: more than the 1 MiB limit reached the guest",
                bytes.len()
            );
        }
    }

    // The metric's help: "Requests refused or cut for exceeding `--max-body` (413)".
    let too_large =
        wait_metric(&server, "echo_host_body_too_large_total", |v| v >= too_large_before + 1.0).await;
    assert_eq!(too_large, too_large_before + 1.0, "the chunked body stopped at the limit should count once");
    let reply = get(&client(), server.url("/?after=cut")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_accepts_a_body_exactly_at_it() {
    let server = TestServer::start(&["--component", echo(), "--max-body", "1MiB"]).await;
    let too_large_before = server.metric("echo_host_body_too_large_total").await;

    let body = vec![b'y'; MIB];
    let response = client().post(server.url("/upload")).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.bytes().await.expect("a body of exactly the limit, with a length");
    assert_eq!(echoed.len(), ECHO_BODY_PREFIX.len() + MIB);
    assert!(echoed.starts_with(ECHO_BODY_PREFIX.as_bytes()) && echoed[ECHO_BODY_PREFIX.len()..] == body[..]);

    let response =
        client().post(server.url("/upload")).body(chunked_body(16, MIB / 16, b'z')).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.bytes().await.expect("a chunked body of exactly the limit");
    assert_eq!(echoed.len(), ECHO_BODY_PREFIX.len() + MIB, "a chunked body of exactly the limit");
    assert!(echoed[ECHO_BODY_PREFIX.len()..].iter().all(|&b| b == b'z'));

    assert_eq!(server.metric("echo_host_body_too_large_total").await, too_large_before);
}

// ------------------------------------------------------------------------------------------------
// --concurrency
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_503_with_retry_after_then_recovers() {
    let server = TestServer::start(&["--component", misbehave(), "--concurrency", "2"]).await;
    let overloaded_before = server.metric("echo_host_overloaded_total").await;

    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            // Long enough that the third request surely comes while both still sleep.
            let url = server.url("/sleep?ms=5000");
            tokio::spawn(async move { get(&client(), url).await })
        })
        .collect();
    // The metrics endpoint takes no permit, so it can watch the two sleepers occupy both.
    let in_flight = wait_metric(&server, "echo_host_requests_in_flight", |v| v >= 2.0).await;
    assert!(in_flight >= 2.0, "the two sleepers never showed as in flight ({in_flight})");

    let reply = get(&client(), server.url("/ok")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a third request at --concurrency 2: {:?}",
        reply.body
    );
    let retry_after = reply.header("retry-after");
    assert!(retry_after.parse::<u64>().is_ok(), "retry-after should be seconds: {retry_after:?}");
    assert!(reply.body.contains("concurrent requests"), "{:?}", reply.body);

    for sleeper in sleepers {
        let reply = sleeper.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "a sleeper holding a permit: {:?}", reply.body);
        assert_eq!(reply.body, "slept 5000 ms");
    }
    // Permits are back: two at once succeed again.
    let (first, second) = (client(), client());
    let (a, b) = tokio::join!(get(&first, server.url("/ok")), get(&second, server.url("/sleep?ms=10")));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK), "{:?} {:?}", a.body, b.body);

    let overloaded = server.metric("echo_host_overloaded_total").await;
    assert!(
        overloaded >= overloaded_before + 1.0,
        "the 503 should be counted: {overloaded_before} -> {overloaded}"
    );
}

// ------------------------------------------------------------------------------------------------
// --header-read-timeout
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_a_slow_client_and_keeps_serving_others() {
    let server = TestServer::start(&["--component", echo(), "--header-read-timeout", "1s"]).await;

    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // An unfinished head: no blank line, ever.
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // Others are served while the slow client holds its connection.
    let reply = get(&client(), server.url("/?during=slowloris")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("during"), "{:?}", reply.body);

    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 1024];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "reading the slow connection: {e}")
        }
        Err(_) => panic!("the connection with an unfinished head was still open after 15 s (got {text:?})"),
    }
    if !received.is_empty() {
        assert_eq!(raw_status(&received), 408, "the only acceptable answer to a slow head: {text}");
    }
    eprintln!("slow head closed after {:?}", started.elapsed());

    let reply = get(&client(), server.url("/?after=slowloris")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ------------------------------------------------------------------------------------------------
// --max-headers, --max-header-bytes
// ------------------------------------------------------------------------------------------------

fn request_with_headers(headers: &[(String, String)]) -> Vec<u8> {
    let mut request = String::from("GET /?h=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

fn numbered_headers(count: usize) -> Vec<(String, String)> {
    (0..count).map(|i| (format!("x-header-{i}"), format!("value-{i}"))).collect()
}

async fn raw(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || crate::util::raw_exchange(addr, &request, PATIENCE)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_headers_answers_431_over_http1() {
    let server = TestServer::start(&["--component", echo(), "--max-headers", "20"]).await;
    // Host and Connection count too: 2 + 10 is under the limit.
    let response = raw(server.addr, request_with_headers(&numbered_headers(10))).await;
    assert_eq!(raw_status(&response), 200, "{}", String::from_utf8_lossy(&response));
    let response = raw(server.addr, request_with_headers(&numbered_headers(50))).await;
    assert_eq!(
        raw_status(&response),
        431,
        "50 headers with --max-headers 20: {}",
        String::from_utf8_lossy(&response)
    );
    let reply = get(&client(), server.url("/?after=431")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A head over `--max-headers` is the host's to answer over HTTP/1.1 as over h2c (#32): the 431
/// carries the request id and the component's version, has its access-log line and is counted,
/// for a head just over the limit and for one many times over it.
#[test]
fn an_http1_head_over_max_headers_is_answered_logged_and_counted_by_the_host() {
    let host = crate::util::HostProcess::start(&["--component", echo(), "--max-headers", "20"], &[]);
    let metrics_url = host.url("/.well-known/echo-host/metrics");
    let four_xx = "echo_host_requests_total{class=\"4xx\"}";
    let before = crate::util::poll_metric_until(&metrics_url, four_xx, PATIENCE, |_| true);
    for count in [21, 50, 900] {
        let response =
            crate::util::raw_exchange(host.addr, &request_with_headers(&numbered_headers(count)), PATIENCE);
        let text = String::from_utf8_lossy(&response).into_owned();
        assert_eq!(raw_status(&response), 431, "{count} headers with --max-headers 20: {text}");
        let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        let id = head
            .lines()
            .find_map(|line| line.strip_prefix("echo-host-request-id: "))
            .unwrap_or_else(|| panic!("no request id on the 431 for {count} headers: {text}"))
            .to_owned();
        assert!(head.contains("\r\necho-host-component: sha256:"), "{text}");
        let line = host
            .wait_for_line(&format!("\"request_id\":\"{id}\""), PATIENCE)
            .unwrap_or_else(|| panic!("no access-log line for request {id}: {:#?}", host.lines()));
        assert!(line.contains("\"outcome\":\"head_too_large\"") && line.contains("\"status\":431"), "{line}");
    }
    let after = crate::util::poll_metric_until(&metrics_url, four_xx, PATIENCE, |n| n >= before + 3.0);
    assert_eq!(after, before + 3.0, "the three 431s are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_answers_431_over_http1() {
    let server = TestServer::start(&["--component", echo(), "--max-header-bytes", "8KiB"]).await;
    let response = raw(server.addr, request_with_headers(&[("x-big".into(), "a".repeat(4 * 1024))])).await;
    assert_eq!(raw_status(&response), 200, "a 4 KiB header under an 8 KiB limit");
    let response = raw(server.addr, request_with_headers(&[("x-big".into(), "a".repeat(20 * 1024))])).await;
    assert_eq!(
        raw_status(&response),
        431,
        "a 20 KiB header with --max-header-bytes 8KiB: {}",
        String::from_utf8_lossy(&response)
    );
    let reply = get(&client(), server.url("/?after=431")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// The HTTP/1.1 read buffer is larger than the header limit (so a streamed body is read in large
/// pieces): a head between the two is refused after parsing, one past the buffer by hyper, and
/// the host serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_past_max_header_bytes_gets_431_below_and_above_the_read_buffer() {
    let server = TestServer::start(&["--component", echo()]).await;
    for kib in [100, 200, 390, 600] {
        let request = request_with_headers(&[("x-big".into(), "a".repeat(kib * 1024))]);
        let addr = server.addr;
        let response = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            // hyper may answer and close before it has read a head past its buffer.
            let _ = std::io::Write::write_all(&mut stream, &request);
            let mut response = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut response);
            response
        })
        .await
        .unwrap();
        let first_line = String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned();
        // Past the buffer hyper closes with the rest of the head unread, so the kernel may reset
        // the connection before the client reads the 431: refused either way, never served.
        if kib > 400 && response.is_empty() {
            continue;
        }
        assert_eq!(
            raw_status(&response),
            431,
            "a {kib} KiB header with the default 64 KiB --max-header-bytes: {first_line}"
        );
    }
    let reply = get(&client(), server.url("/?after=431")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// `config.rs` accepts `--max-header-bytes` down to 1 KiB and documents "larger gets 431"; hyper's
/// read buffer cannot go under 8 KiB, so the host has to enforce smaller limits some other way (or
/// refuse them at start-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_below_8kib_is_enforced() {
    let server = TestServer::start(&["--component", echo(), "--max-header-bytes", "2KiB"]).await;
    let response = raw(server.addr, request_with_headers(&[("x-big".into(), "a".repeat(4 * 1024))])).await;
    assert_eq!(
        raw_status(&response),
        431,
        "a 4 KiB header with --max-header-bytes 2KiB: {}",
        String::from_utf8_lossy(&response).lines().next().unwrap_or_default()
    );
}

/// The header limits are the server's, not HTTP/1.1's: an h2c request over them is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_apply_to_h2c_too() {
    let server =
        TestServer::start(&["--component", echo(), "--max-headers", "20", "--max-header-bytes", "8KiB"])
            .await;
    let h2 = h2c_client();

    let response = h2.get(server.url("/?h2=big")).header("x-big", "a".repeat(20 * 1024)).send().await;
    match response {
        Ok(response) => {
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "a 20 KiB header over h2c"
            );
        }
        // Refusing the stream outright is also a refusal.
        Err(error) => eprintln!("20 KiB header over h2c refused: {error}"),
    }

    let mut request = h2.get(server.url("/?h2=many"));
    for (name, value) in numbered_headers(50) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "50 headers over h2c with --max-headers 20"
        ),
        Err(error) => eprintln!("50 headers over h2c refused: {error}"),
    }

    let reply = get(&h2c_client(), server.url("/?after=431")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ------------------------------------------------------------------------------------------------
// HTTP/2 streams per connection
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_multiplexes_300_concurrent_requests_on_one_connection() {
    let server = TestServer::start(&["--component", echo(), "--concurrency", "1000"]).await;
    let h2 = h2c_client();
    let requests = (0..300).map(|i| {
        let h2 = h2.clone();
        let url = server.url(&format!("/?n={i}"));
        async move {
            let response = h2.get(&url).send().await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            let version = response.version();
            let status = response.status();
            let body = response.text().await.unwrap_or_else(|e| panic!("body {i}: {e}"));
            (i, version, status, body)
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(requests))
        .await
        .expect("300 multiplexed requests did not finish within 120 s");
    for (i, version, status, body) in replies {
        assert_eq!(version, reqwest::Version::HTTP_2, "request {i}");
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert!(body.contains(&format!("('n', '{i}')")), "request {i}: {body}");
    }
    let five_xx = server.metric("echo_host_requests_total{class=\"5xx\"}").await;
    assert_eq!(five_xx, 0.0, "none of the streams past the per-connection limit may fail");
}

// ------------------------------------------------------------------------------------------------
// Many keep-alive connections
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keep_alive_connections_each_serve_two_requests() {
    const CONNECTIONS: usize = 1000;
    let server = TestServer::start(&["--component", echo(), "--concurrency", "1000"]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut connections: Vec<BufReader<TcpStream>> = (0..CONNECTIONS)
            .map(|i| {
                let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                BufReader::new(stream)
            })
            .collect();
        for round in 0..2 {
            for (i, connection) in connections.iter_mut().enumerate() {
                let request = format!("GET /?i={i}&round={round} HTTP/1.1\r\nHost: x\r\n\r\n");
                connection.get_mut().write_all(request.as_bytes()).unwrap_or_else(|e| {
                    panic!("round {round}, connection {i}: writing failed (closed?): {e}")
                });
            }
            for (i, connection) in connections.iter_mut().enumerate() {
                let response = read_raw_response(connection)
                    .unwrap_or_else(|e| panic!("round {round}, connection {i}: no response: {e}"));
                let body = String::from_utf8_lossy(&response.body);
                assert_eq!(response.status, 200, "round {round}, connection {i}: {body}");
                assert!(
                    body.contains(&format!("('i', '{i}')"))
                        && body.contains(&format!("('round', '{round}')")),
                    "round {round}, connection {i}: {body}"
                );
                assert!(
                    !response.head.contains("connection: close"),
                    "round {round}, connection {i}: {}",
                    response.head
                );
            }
        }
    })
    .await
    .unwrap();
    let ok = server.metric("echo_host_requests_total{class=\"2xx\"}").await;
    assert!(ok >= 2.0 * CONNECTIONS as f64, "2xx count {ok}");
}

// ------------------------------------------------------------------------------------------------
// --max-connections
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_connections_until_one_closes() {
    let server = TestServer::start(&["--component", echo(), "--max-connections", "2"]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let open = |name: &str| {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut reader = BufReader::new(stream);
            reader
                .get_mut()
                .write_all(format!("GET /?c={name} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            reader
        };
        // Two connections, each served once and kept open: the limit is reached.
        let mut first = open("first");
        assert_eq!(read_raw_response(&mut first).unwrap().status, 200);
        let mut second = open("second");
        assert_eq!(read_raw_response(&mut second).unwrap().status, 200);

        // A third connects (the kernel's backlog takes it) but is not served while both are open.
        let mut third = open("third");
        third.get_mut().set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut byte = [0u8; 1];
        match third.get_mut().peek(&mut byte) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            other => panic!("a third connection was served past --max-connections 2: {other:?}"),
        }

        // One closes: the third is accepted and answered.
        drop(first);
        third.get_mut().set_read_timeout(Some(PATIENCE)).unwrap();
        let response = read_raw_response(&mut third).expect("the third connection once a slot freed");
        assert_eq!(response.status, 200);
        assert!(String::from_utf8_lossy(&response.body).contains("('c', 'third')"));
        // The one left open still works.
        second.get_mut().write_all(b"GET /?c=again HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_raw_response(&mut second).unwrap().status, 200);
    })
    .await
    .unwrap();
}

// ------------------------------------------------------------------------------------------------
// Clients that go away
// ------------------------------------------------------------------------------------------------

/// Polls the requests in flight, as the metrics endpoint reports them, for up to 10 s.
async fn wait_in_flight(server: &TestServer, done: impl Fn(f64) -> bool) -> f64 {
    wait_metric_for(server, "echo_host_requests_in_flight", Duration::from_secs(10), done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_request_body_frees_its_request() {
    let server = TestServer::start(&["--component", echo()]).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").await.unwrap();
    stream.write_all(&[b'q'; 1000]).await.unwrap();
    // The echo sends its head at once: the request is in the guest, waiting for the rest.
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(server.app.metrics.serve.in_flight.get() >= 1);
    drop(stream);

    let in_flight = wait_in_flight(&server, |v| v == 0.0).await;
    assert_eq!(in_flight, 0.0, "the abandoned upload is still counted in flight");
    let reply = get(&client(), server.url("/?after=disconnect")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = client().post(server.url("/upload")).body("intact").send().await.unwrap();
    assert_eq!(reply.text().await.unwrap(), format!("{ECHO_BODY_PREFIX}intact"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_response_stream_frees_its_request() {
    let server = TestServer::start(&["--component", misbehave()]).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // 1000 chunks at 50 ms would run for 50 s: only noticing the client left ends it within the
    // 10 s the check below waits.
    stream.write_all(b"GET /stream?chunks=1000&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("chunk 0\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("first chunk").unwrap();
        assert!(n > 0, "closed before the first chunk: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    assert!(server.app.metrics.serve.in_flight.get() >= 1);
    drop(stream);

    let in_flight = wait_in_flight(&server, |v| v == 0.0).await;
    assert_eq!(in_flight, 0.0, "the abandoned stream is still counted in flight");
    assert_misbehave_ok(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_reports_no_requests_in_flight() {
    let server = TestServer::start(&["--component", echo()]).await;
    let reply = get(&client(), server.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The GET's permit is held until its guest has stopped, which may come a little after its
    // last byte (a busy machine): scrapes are read until it is free. Were the scrape counting
    // itself, none would read 0.
    let in_flight = wait_in_flight(&server, |v| v == 0.0).await;
    assert_eq!(in_flight, 0.0, "nothing is being served but the scrape itself");
}
