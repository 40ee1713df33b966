//! Hostile clients: each test plays a client that holds on to the server's resources the way a
//! broken proxy or an attacker would (an HTTP/2 window that never opens, a reader that never
//! reads, a body trickled a byte at a time, connections that never send a request, guests that
//! run on after their response) and checks that every resource comes back on time: the
//! concurrency permit, the guest, the connection, the memory. Then that others are served.
//!
//! The raw clients (h2 with a zero window, HTTP/2 frames by hand, HTTP/1.1 bytes) are in
//! `util/hostile.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::util::{self, HostProcess, TestServer, client, echo_wasm, misbehave_wasm};

#[path = "util/hostile.rs"]
pub(crate) mod raw;
use raw::{Closed, H2Frames, StreamEnd, ZeroWindowConnection, read_response, read_until_closed};

/// What a test waits for at most before it calls a missing outcome a failure. Generous: the
/// machine is shared and noisy; no test asserts a duration tighter than this.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// How long a connection that should be closed by a timeout of a second or two may stay open.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

pub(crate) const KIB: usize = 1 << 10;
pub(crate) const MIB: usize = 1 << 20;

pub(crate) fn echo() -> &'static str {
    echo_wasm().to_str().expect("UTF-8 path")
}

fn misbehave() -> &'static str {
    misbehave_wasm().to_str().expect("UTF-8 path")
}

// ------------------------------------------------------------------------------------------------
// Metrics and recovery, for the in-process server and the child process alike
// ------------------------------------------------------------------------------------------------

/// The server's Prometheus text, on a connection of its own that the server closes after the
/// answer (`Connection: close`): scraping never holds one of `--max-connections`, and never
/// leaves an idle connection behind to be counted by the connection metrics under test.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let url = format!("http://{addr}/.well-known/echo-host/metrics");
    let request = client().get(&url).header(reqwest::header::CONNECTION, "close");
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.text().await.unwrap()
}

/// The value of `sample`, or 0 when the server does not export it yet: a labelled counter
/// (`reason="idle"`) appears with its first increment. Only for the value before an event; the
/// value after it is asserted to have grown, which an absent sample cannot.
fn sample_or_zero(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn sample(addr: std::net::SocketAddr, sample: &str) -> f64 {
    sample_or_zero(&scrape(addr).await, sample)
}

/// Polls `sample` until it satisfies `done` or `patience` passes; returns the last value seen
/// (the caller asserts on it, so a timeout fails with the real number).
pub(crate) async fn wait_sample(
    addr: std::net::SocketAddr,
    name: &str,
    patience: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + patience;
    loop {
        let value = sample(addr, name).await;
        if done(value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no request holds a permit: `echo_host_requests_in_flight` is 0.
pub(crate) async fn wait_nothing_in_flight(addr: std::net::SocketAddr, patience: Duration) -> f64 {
    wait_sample(addr, "echo_host_requests_in_flight", patience, |v| v == 0.0).await
}

/// Polls `echo_host_requests_in_flight` until `done` holds or [`PATIENCE`] passes.
async fn wait_in_flight(server: &TestServer, done: impl Fn(f64) -> bool) -> f64 {
    wait_sample(server.addr, "echo_host_requests_in_flight", PATIENCE, done).await
}

/// `GET path` from a fresh HTTP/1.1 client until it answers 200 or `patience` passes: the last
/// status and body, and when it came. A 503 (no permit free) is retried; the caller asserts.
pub(crate) async fn get_until_ok(
    addr: std::net::SocketAddr,
    path: &str,
    patience: Duration,
) -> (StatusCode, String, Instant) {
    let url = format!("http://{addr}{path}");
    let deadline = Instant::now() + patience;
    let client = client();
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let attempt = tokio::time::timeout(left, async {
            let response = client.get(&url).send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .await;
        let (status, body) = match attempt {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => (StatusCode::BAD_GATEWAY, format!("transport error: {error}")),
            Err(_) => (StatusCode::REQUEST_TIMEOUT, format!("no answer within {left:?}")),
        };
        if status == StatusCode::OK || Instant::now() > deadline {
            return (status, body, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// --request-timeout against an HTTP/2 client that opens no window
// ------------------------------------------------------------------------------------------------

/// 20 POSTs on one h2c connection whose client never lets the server send a byte of body: the
/// echo's heads go out, its bodies cannot. At the deadline each stream is reset, its permit and
/// guest are freed, and another client is served, while the zero-window connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_zero_window_streams_are_reset_at_the_deadline_and_free_their_permits() {
    const STREAMS: usize = 20;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    let server =
        TestServer::start(&["--component", echo(), "--concurrency", "20", "--request-timeout", "3s"]).await;
    let timeouts_before = server.metric("echo_host_request_timeouts_total").await;

    let mut connection = ZeroWindowConnection::open(server.addr).await;
    let started = Instant::now();
    let body = Bytes::from(vec![b'w'; 64 * KIB]);
    let streams: Vec<_> =
        (0..STREAMS).map(|i| connection.post(&format!("/upload?i={i}"), body.clone())).collect();
    let in_flight = wait_in_flight(&server, |v| v >= STREAMS as f64).await;
    assert_eq!(in_flight, STREAMS as f64, "the {STREAMS} zero-window streams should each hold a permit");

    let ends = raw::join_stream_ends(streams, started + REQUEST_TIMEOUT + PATIENCE).await;
    for (i, end) in ends.iter().enumerate() {
        eprintln!("stream {i}: {end:?}");
    }
    let (status, _, _) = get_until_ok(server.addr, "/?during=zero-window", Duration::ZERO).await;
    eprintln!(
        "{:?} after the start: {} in flight, another client's GET / answered {status}",
        started.elapsed(),
        server.app.metrics.serve.in_flight.get()
    );
    for (i, end) in ends.iter().enumerate() {
        assert!(end.is_cut_at_deadline(REQUEST_TIMEOUT), "stream {i}: {end:?}");
    }
    let in_flight = wait_nothing_in_flight(server.addr, PATIENCE).await;
    assert_eq!(in_flight, 0.0, "permits still held after every zero-window stream was reset");
    assert_eq!(server.app.metrics.serve.in_flight.get(), 0);

    let (status, body, at) = get_until_ok(server.addr, "/?after=zero-window", PATIENCE).await;
    eprintln!("GET / answered {status} {:?} after the start", at - started);
    assert_eq!(status, StatusCode::OK, "another client while the zero-window connection is open: {body}");
    assert!(at - started <= REQUEST_TIMEOUT + PATIENCE, "served only {:?} after the start", at - started);
    connection.assert_open("after its streams were reset").await;

    let expected = timeouts_before + STREAMS as f64;
    let timeouts =
        wait_sample(server.addr, "echo_host_request_timeouts_total", PATIENCE, |v| v >= expected).await;
    assert_eq!(timeouts, expected, "each zero-window stream should count once as a request timeout");
}

/// VmRSS of a process in bytes, from `/proc/PID/status`.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

pub(crate) fn mib(bytes: i64) -> String {
    format!("{:+.1} MiB", bytes as f64 / MIB as f64)
}

/// One round of `connections` × `streams` zero-window POSTs of `body` on new connections: waits
/// until every stream ended and returns the connections, still open.
async fn zero_window_round(
    addr: std::net::SocketAddr,
    connections: usize,
    streams: usize,
    body: &Bytes,
    request_timeout: Duration,
) -> (Vec<ZeroWindowConnection>, Vec<StreamEnd>) {
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(ZeroWindowConnection::open(addr).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections * streams);
    for (c, connection) in opened.iter().enumerate() {
        for s in 0..streams {
            tasks.push(connection.post(&format!("/upload?c={c}&s={s}"), body.clone()));
        }
    }
    let ends = raw::join_stream_ends(tasks, started + request_timeout + PATIENCE).await;
    (opened, ends)
}

/// The memory of streams stuck behind a zero window is given back when the deadline resets them,
/// not pinned until their connections close: a second round on new connections, with the first
/// round's connections still open, reuses it instead of growing the process again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_stuck_h2_streams_is_reused_while_their_connections_stay_open() {
    const CONNECTIONS: usize = 20;
    const STREAMS: usize = 50; // 1000 in all: every one gets a permit
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    let host =
        HostProcess::start(&["--component", echo(), "--request-timeout", "3s", "--concurrency", "1000"], &[]);
    let pid = host.child.id();
    // The engine and the first instances warmed up, so the first round pays no one-time costs.
    for i in 0..20 {
        let (status, body, _) = get_until_ok(host.addr, &format!("/?warm={i}"), PATIENCE).await;
        assert_eq!(status, StatusCode::OK, "warm-up: {body}");
    }
    let body = Bytes::from(vec![b'm'; 64 * KIB]);
    let rss_before = rss_bytes(pid);

    let (first_round, ends) =
        zero_window_round(host.addr, CONNECTIONS, STREAMS, &body, REQUEST_TIMEOUT).await;
    let rss_stuck = rss_bytes(pid);
    let in_flight = wait_nothing_in_flight(host.addr, PATIENCE).await;
    let rss_first = rss_bytes(pid);
    eprintln!(
        "round 1: RSS {} MiB before, {} when the wait for its streams ended, {} once none in flight ({in_flight} in flight)",
        rss_before / MIB as u64,
        mib(rss_stuck as i64 - rss_before as i64),
        mib(rss_first as i64 - rss_before as i64),
    );
    assert_all_cut(&ends, REQUEST_TIMEOUT, "round 1");
    assert_eq!(in_flight, 0.0, "round 1 still holds permits");

    let (second_round, ends) =
        zero_window_round(host.addr, CONNECTIONS, STREAMS, &body, REQUEST_TIMEOUT).await;
    let in_flight = wait_nothing_in_flight(host.addr, PATIENCE).await;
    let rss_second = rss_bytes(pid);
    let first_growth = rss_first as i64 - rss_before as i64;
    let second_growth = rss_second as i64 - rss_first as i64;
    eprintln!(
        "round 2: RSS {} over round 1 ({} in all); round 1 grew it {}",
        mib(second_growth),
        mib(rss_second as i64 - rss_before as i64),
        mib(first_growth)
    );
    assert_all_cut(&ends, REQUEST_TIMEOUT, "round 2");
    assert_eq!(in_flight, 0.0, "round 2 still holds permits");

    // Reused memory grows the process by allocator noise; pinned memory by another round's worth.
    let allowed = (first_growth / 2).max(16 * MIB as i64);
    assert!(
        second_growth <= allowed,
        "a second round of {} stuck streams grew RSS by {} (the first by {}; allowed {}): the first \
         round's memory is pinned by its still-open connections",
        CONNECTIONS * STREAMS,
        mib(second_growth),
        mib(first_growth),
        mib(allowed)
    );
    for mut connection in first_round.into_iter().chain(second_round) {
        connection.assert_open("after both rounds").await;
    }
}

fn assert_all_cut(ends: &[StreamEnd], request_timeout: Duration, round: &str) {
    let bad: Vec<String> = ends
        .iter()
        .enumerate()
        .filter(|(_, end)| !end.is_cut_at_deadline(request_timeout))
        .map(|(i, end)| format!("stream {i}: {end:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{round}: {} of {} streams were not cut at the deadline, e.g. {:?}",
        bad.len(),
        ends.len(),
        &bad[..bad.len().min(5)]
    );
}

// ------------------------------------------------------------------------------------------------
// HTTP/1.1: a client that never reads the response
// ------------------------------------------------------------------------------------------------

/// A client that never reads: it POSTs `length` bytes to the echo over 4 KiB socket buffers and
/// writes until the server stops taking them, reading nothing of the echoed response.
struct SlowReader {
    /// Not read until the writes end.
    unread: tokio::net::tcp::OwnedReadHalf,
    written: Arc<AtomicUsize>,
    length: usize,
    started: Instant,
    /// Ends when a write fails (the server closed the connection), or when all was written.
    writing: tokio::task::JoinHandle<(std::io::Result<()>, Instant)>,
}

impl SlowReader {
    async fn start(addr: std::net::SocketAddr, length: usize) -> SlowReader {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4 * KIB as u32).unwrap();
        socket.set_send_buffer_size(4 * KIB as u32).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let started = Instant::now();
        let (reader, mut writer) = stream.into_split();
        let written = Arc::new(AtomicUsize::new(0));
        let progress = written.clone();
        let writing = tokio::spawn(async move {
            let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
            let chunk = vec![b's'; 64 * KIB];
            let result = async {
                writer.write_all(head.as_bytes()).await?;
                let mut sent = 0;
                while sent < length {
                    let n = chunk.len().min(length - sent);
                    writer.write_all(&chunk[..n]).await?;
                    sent += n;
                    progress.store(sent, Ordering::Relaxed);
                }
                Ok(())
            }
            .await;
            (result, Instant::now())
        });
        SlowReader { unread: reader, written, length, started, writing }
    }

    /// Waits up to `within` (from the start) for the server to close the connection, and returns
    /// how long after the start the writes ended. Mostly a write fails (the server closed with
    /// the body unread: a reset); a server that drains the body after cutting the response lets
    /// them all succeed, and then the response side must show the cut.
    async fn wait_cut(mut self, within: Duration) -> Duration {
        let deadline = self.started + within;
        let ended = tokio::time::timeout_at(deadline.into(), self.writing).await;
        let written = self.written.load(Ordering::Relaxed);
        let (written_kib, length_kib) = (written / KIB, self.length / KIB);
        let Ok(ended) = ended else {
            panic!(
                "a client that never reads was still connected {within:?} after it started \
                 ({written_kib} KiB of {length_kib} KiB written, then the server stopped taking them)"
            );
        };
        let (result, at) = ended.expect("the writing task panicked");
        let after = at - self.started;
        eprintln!(
            "wrote {written_kib} KiB of {length_kib} KiB; the writes ended {after:?} after the start: {result:?}"
        );
        if result.is_ok() {
            // All of it was taken although nothing was read: the echo no longer echoes.
            let mut received = Vec::new();
            let left = deadline.saturating_duration_since(Instant::now());
            let closed = raw::read_until_closed_keeping(&mut self.unread, left, &mut received).await;
            let text = String::from_utf8_lossy(&received[..received.len().min(300)]).into_owned();
            assert!(matches!(closed, Closed::Closed { .. }), "all written, then {closed:?}: {text:?}");
            assert!(!raw::is_complete_response(&received), "the response was not cut: {text:?}");
        }
        after
    }
}

/// The slow reader is cut where its request's deadline falls; the slot it held serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_that_never_reads_is_cut_at_the_request_deadline() {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    let server =
        TestServer::start(&["--component", echo(), "--concurrency", "1", "--request-timeout", "3s"]).await;
    let slow = SlowReader::start(server.addr, 24 * MIB).await;
    let in_flight = wait_in_flight(&server, |v| v >= 1.0).await;
    assert_eq!(in_flight, 1.0, "the upload never reached the component");

    let cut_after = slow.wait_cut(REQUEST_TIMEOUT + PATIENCE).await;
    assert!(cut_after >= REQUEST_TIMEOUT, "cut {cut_after:?} after the start: before the deadline");
    let (status, body, _) = get_until_ok(server.addr, "/?after=slow-reader", PATIENCE).await;
    assert_eq!(status, StatusCode::OK, "the slow reader's slot (--concurrency 1): {body}");
    assert_eq!(wait_nothing_in_flight(server.addr, PATIENCE).await, 0.0);
}

/// With a long request deadline, `--write-timeout` is what cuts a client that takes no bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_that_never_reads_is_cut_at_the_write_timeout() {
    let server = TestServer::start(&[
        "--component",
        echo(),
        "--concurrency",
        "1",
        "--request-timeout",
        "120s",
        "--write-timeout",
        "2s",
    ])
    .await;
    let write_timeouts_before = sample(server.addr, "echo_host_write_timeouts_total").await;
    let slow = SlowReader::start(server.addr, 24 * MIB).await;

    // Far under the 120 s deadline: only the write timeout can explain the cut.
    slow.wait_cut(Duration::from_secs(60)).await;
    let expected = write_timeouts_before + 1.0;
    let counted =
        wait_sample(server.addr, "echo_host_write_timeouts_total", PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the cut should count once as a write timeout");
    let (status, body, _) = get_until_ok(server.addr, "/?after=write-timeout", PATIENCE).await;
    assert_eq!(status, StatusCode::OK, "the slow reader's slot (--concurrency 1): {body}");
    assert_eq!(wait_nothing_in_flight(server.addr, PATIENCE).await, 0.0);
}

// ------------------------------------------------------------------------------------------------
// --body-read-timeout: a body trickled a byte at a time
// ------------------------------------------------------------------------------------------------

/// Sends a POST head declaring 100 body bytes, then one byte every 5 s (never all of them):
/// returns the connection's read half and the trickling task (abort it when done).
async fn trickle_post(
    addr: std::net::SocketAddr,
    path: &str,
) -> (BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"t").await.is_err() {
                return; // closed by the server
            }
            // The client's pace, not a wait for an event: this is the behaviour under test.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    (BufReader::new(reader), trickle)
}

/// A guest that reads the body before it answers: the host answers 408 itself and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_gets_408_and_the_connection_closed() {
    let server =
        TestServer::start(&["--component", misbehave(), "--concurrency", "1", "--body-read-timeout", "2s"])
            .await;
    let before = sample(server.addr, "echo_host_body_read_timeouts_total").await;
    let started = Instant::now();
    let (mut reader, trickle) = trickle_post(server.addr, "/read-body").await;

    let response = tokio::time::timeout(PATIENCE, read_response(&mut reader))
        .await
        .expect("no answer within 30 s to a body trickled a byte per 5 s with --body-read-timeout 2s")
        .expect("a response head");
    eprintln!("{:?} after the start: {}", started.elapsed(), response.head.trim_end());
    assert_eq!(response.status, 408, "{} {:?}", response.head, String::from_utf8_lossy(&response.body));
    // The first byte went out right after the head: the 408 cannot come before 2 s without more.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "408 after {:?}: before the body read timeout",
        started.elapsed()
    );
    assert!(response.head.contains("connection: close"), "{}", response.head);
    let closed = read_until_closed(&mut reader, PATIENCE).await;
    assert!(matches!(closed, Closed::Closed { .. }), "after the 408: {closed:?}");
    trickle.abort();

    let expected = before + 1.0;
    let counted =
        wait_sample(server.addr, "echo_host_body_read_timeouts_total", PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the 408 should count once as a body read timeout");
    let (status, body, _) = get_until_ok(server.addr, "/ok", PATIENCE).await;
    assert_eq!(status, StatusCode::OK, "the trickler's slot (--concurrency 1): {body}");
    assert_eq!(wait_nothing_in_flight(server.addr, PATIENCE).await, 0.0);
}

/// The echo sends its head before it reads the body: the response is cut and the connection
/// closed at the body read timeout, long before the request deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_cuts_a_response_already_started() {
    let server = TestServer::start(&[
        "--component",
        echo(),
        "--concurrency",
        "1",
        "--request-timeout",
        "120s",
        "--body-read-timeout",
        "2s",
    ])
    .await;
    let before = sample(server.addr, "echo_host_body_read_timeouts_total").await;
    let started = Instant::now();
    let (mut reader, trickle) = trickle_post(server.addr, "/upload").await;

    let mut head = Vec::new();
    let closed = raw::read_until_closed_keeping(&mut reader, Duration::from_secs(60), &mut head).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&head);
    eprintln!("{closed:?} after {:?}: {text:?}", started.elapsed());
    assert!(
        matches!(closed, Closed::Closed { .. }),
        "a trickled body with --body-read-timeout 2s: {closed:?} {text:?}"
    );
    assert_eq!(util::raw_status(&head), 200, "the echo's head goes out before it reads: {text:?}");
    assert!(!raw::is_complete_response(&head), "the cut response ended as if complete: {text:?}");

    let expected = before + 1.0;
    let counted =
        wait_sample(server.addr, "echo_host_body_read_timeouts_total", PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the cut should count once as a body read timeout");
    let (status, body, _) = get_until_ok(server.addr, "/?after=trickle", PATIENCE).await;
    assert_eq!(status, StatusCode::OK, "the trickler's slot (--concurrency 1): {body}");
    assert_eq!(wait_nothing_in_flight(server.addr, PATIENCE).await, 0.0);
}

// ------------------------------------------------------------------------------------------------
// Connections that never send a request, and idle ones
// ------------------------------------------------------------------------------------------------

/// Five connections fill `--max-connections 5` without ever completing a first request (nothing,
/// parts of the h2c preface, half an HTTP/1.1 head): each is closed at the header timeout, and
/// a sixth, waiting behind them, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_first_request_are_closed_at_the_header_timeout() {
    let server =
        TestServer::start(&["--component", echo(), "--header-read-timeout", "1s", "--max-connections", "5"])
            .await;
    let closed_sample = "echo_host_connections_closed_total{reason=\"header_timeout\"}";
    let before = sample(server.addr, closed_sample).await;
    let preface = raw::H2_PREFACE;
    let settings = raw::frame(raw::SETTINGS, 0, 0, &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        ("the first line of the h2 preface", b"PRI * HTTP/2.0\r\n".to_vec()),
        ("the h2 preface without SETTINGS", preface.to_vec()),
        ("the h2 preface and SETTINGS, no HEADERS", [preface, &settings[..]].concat()),
        ("half an HTTP/1.1 head", b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec()),
    ];
    let started = Instant::now();
    let mut held = Vec::new();
    for (name, bytes) in &cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        held.push((*name, stream));
    }
    // Waits in the kernel's backlog until one of the five is closed.
    let mut sixth = TcpStream::connect(server.addr).await.unwrap();
    sixth.write_all(b"GET /?sixth=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();

    let closings = held.into_iter().map(|(name, stream)| async move {
        let mut reader = BufReader::new(stream);
        let mut received = Vec::new();
        let closed = raw::read_until_closed_keeping(&mut reader, CLOSE_BOUND, &mut received).await;
        (name, closed, received)
    });
    let closings = futures::future::join_all(closings).await;
    for (name, closed, received) in &closings {
        let when = match closed {
            Closed::Closed { at, .. } => format!(" {:?} after connecting", *at - started),
            Closed::StillOpen => String::new(),
        };
        eprintln!("{name}: {closed:?}{when}, {} bytes back", received.len());
    }
    for (name, closed, received) in &closings {
        assert!(
            matches!(closed, Closed::Closed { .. }),
            "{name}: still open {CLOSE_BOUND:?} after connecting, with --header-read-timeout 1s"
        );
        if name.contains("HTTP/1.1") && !received.is_empty() {
            assert_eq!(util::raw_status(received), 408, "{name}: {:?}", String::from_utf8_lossy(received));
        }
    }

    let mut reader = BufReader::new(sixth);
    let response = tokio::time::timeout(PATIENCE, read_response(&mut reader))
        .await
        .expect("the sixth connection was not served within 30 s")
        .expect("a response to the sixth connection");
    eprintln!("the sixth connection was answered {:?} after the five connected", started.elapsed());
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(String::from_utf8_lossy(&response.body).contains("sixth"));

    let expected = before + cases.len() as f64;
    let counted = wait_sample(server.addr, closed_sample, PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "each of the five should count once as closed at the header timeout");
}

/// An HTTP/1.1 keep-alive connection with nothing in flight is closed at `--idle-timeout` (the
/// header timeout, 30 s here, cannot be what closes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_keep_alive_connection_is_closed() {
    let server =
        TestServer::start(&["--component", echo(), "--idle-timeout", "2s", "--header-read-timeout", "30s"])
            .await;
    let closed_sample = "echo_host_connections_closed_total{reason=\"idle\"}";
    let before = sample(server.addr, closed_sample).await;
    let mut reader = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    let response = keep_alive_get(&mut reader, "/?idle=h1").await;
    assert_eq!(response.status, 200, "{}", response.head);
    let answered = Instant::now();

    let closed = read_until_closed(&mut reader, CLOSE_BOUND).await;
    let Closed::Closed { at, .. } = closed else {
        panic!(
            "an idle keep-alive connection was open {CLOSE_BOUND:?} after its response (--idle-timeout 2s)"
        );
    };
    eprintln!("idle HTTP/1.1 connection: {closed:?} {:?} after the response", at - answered);
    assert!(
        at - answered >= Duration::from_secs(1),
        "closed {:?} after the response: not idle for 2 s",
        at - answered
    );

    let expected = before + 1.0;
    let counted = wait_sample(server.addr, closed_sample, PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the idle connection should count once");
}

/// Sends `GET path` on a keep-alive connection and reads the answer, which must keep it open.
async fn keep_alive_get(reader: &mut BufReader<TcpStream>, path: &str) -> raw::RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes()).await.unwrap();
    let response = tokio::time::timeout(PATIENCE, read_response(reader))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(!response.head.contains("connection: close"), "GET {path}: not kept alive: {}", response.head);
    response
}

/// The header timeout times a head from its first byte: between requests a keep-alive
/// connection may wait (up to `--idle-timeout`) longer than `--header-read-timeout`, and a
/// later head that starts but never ends is still cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_times_later_heads_from_their_first_byte() {
    let server =
        TestServer::start(&["--component", echo(), "--header-read-timeout", "1s", "--idle-timeout", "60s"])
            .await;
    let closed_sample = "echo_host_connections_closed_total{reason=\"header_timeout\"}";
    let before = sample(server.addr, closed_sample).await;
    let mut reader = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(keep_alive_get(&mut reader, "/?n=1").await.status, 200);

    // Four header timeouts of silence: the connection must still be there, unanswered.
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(4), reader.read(&mut buf)).await {
        Err(_elapsed) => {}
        Ok(read) => panic!("idle for under 4 s with --idle-timeout 60s, the connection ended: {read:?}"),
    }
    assert_eq!(keep_alive_get(&mut reader, "/?n=2").await.status, 200, "the second request, after the wait");

    let started = Instant::now();
    reader.get_mut().write_all(b"GET /?n=3 HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut received = Vec::new();
    let closed = raw::read_until_closed_keeping(&mut reader, CLOSE_BOUND, &mut received).await;
    eprintln!("an unfinished third head: {closed:?} after {:?}", started.elapsed());
    assert!(
        matches!(closed, Closed::Closed { .. }),
        "an unfinished later head with --header-read-timeout 1s"
    );
    if !received.is_empty() {
        assert_eq!(util::raw_status(&received), 408, "{:?}", String::from_utf8_lossy(&received));
    }
    let expected = before + 1.0;
    let counted = wait_sample(server.addr, closed_sample, PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the unfinished later head should count once as a header timeout");
}

/// An h2c connection with no stream in flight is told so (GOAWAY) and closed at `--idle-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connection_gets_goaway_then_is_closed() {
    let server =
        TestServer::start(&["--component", echo(), "--idle-timeout", "2s", "--header-read-timeout", "30s"])
            .await;
    let closed_sample = "echo_host_connections_closed_total{reason=\"idle\"}";
    let before = sample(server.addr, closed_sample).await;
    let mut h2 = H2Frames::connect(server.addr).await;
    h2.get(1, "/?idle=h2c").await;
    let exchange = h2.run(CLOSE_BOUND + Duration::from_secs(5), |_| false).await;
    eprintln!("idle h2c connection: {exchange:?}");
    assert_eq!(exchange.status_200, Some(true), "stream 1 should be answered 200: {exchange:?}");
    let answered = exchange.response_end.expect("stream 1 never ended");
    let goaway = exchange.goaway.as_ref().expect("no GOAWAY before the connection ended");
    let closed = exchange.closed.expect("the idle h2c connection was not closed");
    assert!(
        goaway.at >= answered && closed >= goaway.at,
        "GOAWAY, then EOF, after the response: {exchange:?}"
    );
    assert!(closed - answered <= CLOSE_BOUND, "closed {:?} after the response", closed - answered);
    assert!(
        goaway.at - answered >= Duration::from_secs(1),
        "GOAWAY {:?} after the response: not idle for 2 s",
        goaway.at - answered
    );
    assert_eq!(goaway.error_code, 0, "an idle close is graceful: NO_ERROR");

    let expected = before + 1.0;
    let counted = wait_sample(server.addr, closed_sample, PATIENCE, |v| v >= expected).await;
    assert_eq!(counted, expected, "the idle connection should count once");
}

// ------------------------------------------------------------------------------------------------
// --h2-max-streams
// ------------------------------------------------------------------------------------------------

/// The per-connection stream limit is advertised in the server's SETTINGS, and a stream past it
/// is refused (a stream error: `RST_STREAM` with `REFUSED_STREAM` or `PROTOCOL_ERROR`) while the
/// others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_max_streams_is_advertised_and_enforced() {
    const LIMIT: u32 = 10;
    let server =
        TestServer::start(&["--component", misbehave(), "--concurrency", "100", "--h2-max-streams", "10"])
            .await;
    let mut h2 = H2Frames::connect(server.addr).await;
    let settings = h2.run(PATIENCE, |x| x.max_concurrent_streams.is_some()).await;
    assert_eq!(settings.max_concurrent_streams, Some(LIMIT), "the server's SETTINGS: {settings:?}");
    // Ten streams held open by sleeping guests, then one more (client stream ids are odd).
    for n in 0..LIMIT {
        h2.get(2 * n + 1, &format!("/sleep?ms=20000&n={n}")).await;
    }
    let in_flight = wait_in_flight(&server, |v| v >= f64::from(LIMIT)).await;
    assert_eq!(in_flight, f64::from(LIMIT), "the ten streams should be in the guest");
    let extra = 2 * LIMIT + 1;
    h2.get(extra, "/ok?n=extra").await;
    let exchange = h2.run(PATIENCE, |x| x.resets.iter().any(|&(id, _)| id == extra)).await;
    let refusal = exchange.resets.iter().find(|&&(id, _)| id == extra);
    // REFUSED_STREAM (7) or PROTOCOL_ERROR (1): RFC 9113 §5.1.2.
    assert!(
        matches!(refusal, Some((_, 7 | 1))),
        "stream {extra}, past --h2-max-streams {LIMIT}, was not refused: {exchange:?}"
    );
    assert!(
        exchange.goaway.is_none() && exchange.closed.is_none(),
        "a stream error, not a connection one: {exchange:?}"
    );
    assert!(
        exchange.resets.iter().all(|&(id, _)| id == extra),
        "only the stream past the limit is refused: {exchange:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// --after-response-grace: guests that run on after their response ended
// ------------------------------------------------------------------------------------------------

/// 18 responses whose guests go on (a busy loop, a 60 s sleep) after finishing the body, GET and
/// HEAD: each guest is stopped a grace after its response, holding its permit until then, so
/// nothing is in flight soon after and a new request gets an instance (the pool has room for
/// `--concurrency` + 16, all 18 of which the guests would otherwise keep for 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_running_after_their_response_are_stopped_after_the_grace() {
    const REQUESTS: usize = 18;
    let server = TestServer::start(&[
        "--component",
        misbehave(),
        "--concurrency",
        "2",
        "--request-timeout",
        "60s",
        "--after-response-grace",
        "1s",
    ])
    .await;
    let client = client();
    let mut last_answer = Instant::now();
    for i in 0..REQUESTS {
        // A permit must be free: the guests of the previous responses may still hold theirs.
        let in_flight = wait_in_flight(&server, |v| v < 2.0).await;
        assert!(in_flight < 2.0, "request {i}: both permits still held {PATIENCE:?} later ({in_flight})");
        let path = if i % 2 == 0 { "/finish-then-loop" } else { "/finish-then-sleep?ms=60000" };
        let method = if i % 3 == 0 { reqwest::Method::HEAD } else { reqwest::Method::GET };
        let response = client
            .request(
                method.clone(),
                server.url(&format!("{path}{}i={i}", if path.contains('?') { '&' } else { '?' })),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} ({method} {path}): {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_else(|e| panic!("request {i} ({method} {path}): {e}"));
        assert_eq!(status, StatusCode::OK, "request {i} ({method} {path}): {body}");
        let expected = if method == reqwest::Method::HEAD { "" } else { "finished\n" };
        assert_eq!(body, expected, "request {i} ({method} {path})");
        last_answer = Instant::now();
    }

    let bound = Duration::from_secs(20);
    let in_flight = wait_sample(server.addr, "echo_host_requests_in_flight", bound, |v| v == 0.0).await;
    assert_eq!(in_flight, 0.0, "guests still hold permits {bound:?} after the last response (grace 1 s)");
    let reply = util::get(&client, server.url("/ok?after=grace")).await;
    eprintln!("/ok answered {} {:?} after the last response", reply.status, last_answer.elapsed());
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "/ok after {REQUESTS} guests outlived their responses: {:?}",
        reply.body
    );
    assert!(
        last_answer.elapsed() < bound,
        "/ok took until {:?} after the last response",
        last_answer.elapsed()
    );
}

/// The grace is a grace: a guest that waits after its response keeps running, and keeps its
/// permit, until `--after-response-grace` has passed; then it is stopped and the permit is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_keeps_its_permit_through_the_grace_and_no_longer() {
    const GRACE: Duration = Duration::from_secs(5);
    let server = TestServer::start(&[
        "--component",
        misbehave(),
        "--concurrency",
        "1",
        "--request-timeout",
        "60s",
        "--after-response-grace",
        "5s",
    ])
    .await;
    let client = client();
    let reply = util::get(&client, server.url("/finish-then-sleep?ms=60000")).await;
    let answered = Instant::now();
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "finished\n"));

    // Well inside the 5 s grace: the one permit is still the sleeping guest's.
    let during = util::get(&client, server.url("/ok?during=grace")).await;
    let in_flight = server.app.metrics.serve.in_flight.get();
    let checked = answered.elapsed();
    eprintln!("{checked:?} after the response: /ok answered {}, {in_flight} in flight", during.status);
    if checked < GRACE - Duration::from_secs(1) {
        assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE, "during the grace: {:?}", during.body);
        assert_eq!(in_flight, 1, "the guest in its grace holds its permit");
    }

    let in_flight =
        wait_sample(server.addr, "echo_host_requests_in_flight", GRACE + PATIENCE, |v| v == 0.0).await;
    let freed = answered.elapsed();
    eprintln!("the permit was back {freed:?} after the response");
    assert_eq!(in_flight, 0.0, "the guest was not stopped {:?} after its grace", PATIENCE);
    assert!(
        freed >= GRACE - Duration::from_secs(1),
        "stopped {freed:?} after the response: before its grace"
    );
    let reply = util::get(&client, server.url("/ok?after=grace")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

// ------------------------------------------------------------------------------------------------
// The admin upload's version header
// ------------------------------------------------------------------------------------------------

/// The answer to an upload comes from the version the upload made active: its
/// `echo-host-component` names the uploaded component, not the one it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_upload_response_names_the_uploaded_version() {
    const TOKEN: &str = "hostile-admin-token-0123456789";
    let dir = util::scratch_dir();
    let token = util::write_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes());
    let server = TestServer::start(&["--admin-token-file", token.to_str().unwrap()]).await;
    let misbehave = std::fs::read(misbehave_wasm()).unwrap();
    let uploaded = format!("sha256:{}", &hex::encode(Sha256::digest(&misbehave))[..12]);
    let response = client()
        .put(server.url("/.well-known/echo-host/admin/component"))
        .bearer_auth(TOKEN)
        .body(misbehave)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let header = response.headers().get("echo-host-component").map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header.as_deref(), Some(uploaded.as_str()), "the upload's answer: {body}");
    // And what serves now agrees.
    let reply = util::get(&client(), server.url("/ok")).await;
    assert_eq!(reply.header("echo-host-component"), uploaded);
}
