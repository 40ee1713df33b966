//! Clients that never read what they asked for, in waves, each wave's connections left open: h2
//! streams behind a zero window (SETTINGS_INITIAL_WINDOW_SIZE 0, never a WINDOW_UPDATE), and
//! HTTP/1.1 requests pipelined on a socket nobody reads. The host hands a small response to its
//! HTTP stack at once, and the stack holds it until the client takes it; what it holds must be
//! freed by the deadline (an h2 stream reset, an HTTP/1.1 connection closed), so every wave
//! reuses the memory of the one before instead of growing the process, and others are served.
//!
//! `ECHO_HOST_TEST_BIN=/path/to/echo-host` runs the waves against another build (a release
//! build, or the one before a change) to measure it; `UNREAD_CONNECTIONS` and `UNREAD_STREAMS`
//! scale the h2 waves (the attack: 20 and 250), `UNREAD_CONCURRENCY` the permits.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::hostile::raw::{self, StreamEnd, ZeroWindowConnection};
use crate::hostile::{
    KIB, MIB, PATIENCE, echo, get_until_ok, mib, rss_bytes, sample, wait_nothing_in_flight, wait_sample,
};
use crate::util::HostProcess;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after its deadline a stuck stream may still be open (the deadline counts from when
/// the server read the request; the machine is shared and noisy).
const RESET_MARGIN: Duration = Duration::from_secs(10);
const WAVES: usize = 4;

/// `name` from the environment, or `default`.
fn scale(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Warms the engine and the first instances up, so the first wave pays no one-time costs.
async fn warm_up(addr: std::net::SocketAddr) {
    for i in 0..20 {
        let (status, body, _) = get_until_ok(addr, &format!("/?warm={i}"), PATIENCE).await;
        assert_eq!(status, StatusCode::OK, "warm-up: {body}");
    }
}

/// What the process holds after each wave, once nothing is in flight and nothing unsent.
struct Waves {
    pid: u32,
    base: u64,
    after: Vec<u64>,
}

impl Waves {
    fn new(pid: u32) -> Self {
        Self { pid, base: rss_bytes(pid), after: Vec::new() }
    }

    fn record(&mut self, wave: usize) {
        let rss = rss_bytes(self.pid);
        let previous = self.after.last().copied().unwrap_or(self.base);
        eprintln!(
            "wave {}: RSS {} over the one before, {} over the start",
            wave + 1,
            mib(rss as i64 - previous as i64),
            mib(rss as i64 - self.base as i64)
        );
        self.after.push(rss);
    }

    /// After the first wave the process reuses its memory: the later waves together grow it by
    /// allocator noise (half the first wave's growth, at least 16 MiB), not a wave's worth each.
    fn assert_plateau(&self, what: &str) {
        let first = self.after[0] as i64 - self.base as i64;
        let later = *self.after.last().unwrap() as i64 - self.after[0] as i64;
        let allowed = (first / 2).max(16 * MIB as i64);
        assert!(
            later <= allowed,
            "{what}: {} waves after the first grew RSS by {} (the first by {}; allowed {}): \
             the memory of earlier waves is still held",
            self.after.len() - 1,
            mib(later),
            mib(first),
            mib(allowed)
        );
    }
}

/// Request headers of about `bytes` in all, as a proxy or a browser with cookies sends.
fn padding_headers(bytes: usize) -> Vec<(String, String)> {
    (0..bytes / KIB).map(|i| (format!("x-pad-{i}"), "p".repeat(KIB - 16))).collect()
}

/// The attack, scaled to a shared test machine: per wave 10 new h2c connections that
/// grant no window, 100 GETs each with ~4 KiB of headers and a 2 KiB query the echo sends back.
/// Every stream gets its head, none its body; each is reset (RST_STREAM) by its deadline plus a
/// margin and counted as a request timeout; the waves do not grow the process; another client
/// is served during every wave; the connections stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_of_clients_that_never_read_are_reset_and_their_memory_reused() {
    let connections_per_wave = scale("UNREAD_CONNECTIONS", 10);
    let streams = scale("UNREAD_STREAMS", 100);
    // Room for a whole wave and the client served beside it (`UNREAD_CONCURRENCY` to measure
    // with fewer: the streams past it get 503s, held until the deadline likewise).
    let concurrency = scale("UNREAD_CONCURRENCY", 2 * connections_per_wave * streams).to_string();
    let host = HostProcess::start(
        &["--component", echo(), "--request-timeout", "3s", "--concurrency", &concurrency],
        &[],
    );
    warm_up(host.addr).await;
    let timeouts_before = sample(host.addr, "echo_host_request_timeouts_total").await;
    let headers = padding_headers(4 * KIB);
    let query = "q".repeat(2 * KIB);
    let mut waves = Waves::new(host.child.id());
    let mut kept = Vec::new();
    let mut problems = Vec::new();
    for wave in 0..WAVES {
        let mut connections = Vec::with_capacity(connections_per_wave);
        for _ in 0..connections_per_wave {
            connections.push(ZeroWindowConnection::open(host.addr).await);
        }
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(connections_per_wave * streams);
        for (c, connection) in connections.iter().enumerate() {
            for s in 0..streams {
                tasks.push(connection.get(&format!("/?w={wave}&c={c}&s={s}&q={query}"), &headers));
            }
        }
        let (status, body, _) = get_until_ok(host.addr, &format!("/?during-wave={wave}"), PATIENCE).await;
        assert_eq!(status, StatusCode::OK, "another client during wave {}: {body}", wave + 1);
        let ends = raw::join_stream_ends(tasks, started + REQUEST_TIMEOUT + PATIENCE).await;
        // Recorded, not asserted at once: a build that fails it still gets its waves measured.
        problems.extend(late_resets(&ends, wave));
        assert_eq!(wait_nothing_in_flight(host.addr, PATIENCE).await, 0.0, "wave {}: permits held", wave + 1);
        let unsent = wait_sample(host.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
        assert_eq!(unsent, 0.0, "wave {}: response bytes still held for its reset streams", wave + 1);
        waves.record(wave);
        kept.extend(connections);
    }
    let expected = timeouts_before + (WAVES * connections_per_wave * streams) as f64;
    let timeouts =
        wait_sample(host.addr, "echo_host_request_timeouts_total", PATIENCE, |v| v >= expected).await;
    waves.assert_plateau("h2 streams behind a zero window");
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(timeouts, expected, "each reset stream should count once as a request timeout");
    for connection in kept.iter_mut().step_by(connections_per_wave) {
        connection.assert_open("after every wave's streams were reset").await;
    }
}

/// Every stream got its `200` head (or a `503` past `--concurrency`), then a reset no earlier
/// than the deadline and no later than the deadline plus [`RESET_MARGIN`]; what is wrong
/// otherwise.
fn late_resets(ends: &[StreamEnd], wave: usize) -> Option<String> {
    let latest = ends.iter().filter_map(StreamEnd::after).max().unwrap_or_default();
    eprintln!("wave {}: {} streams, the last ended {latest:.2?} after it was sent", wave + 1, ends.len());
    let bad: Vec<String> = ends
        .iter()
        .enumerate()
        .filter(|(_, end)| {
            !matches!(end, StreamEnd::Broken { status: Some(200 | 503), after, .. }
                if *after >= REQUEST_TIMEOUT && *after <= REQUEST_TIMEOUT + RESET_MARGIN)
        })
        .map(|(i, end)| format!("stream {i}: {end:?}"))
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "wave {}: {} of {} streams were not reset between the deadline and {RESET_MARGIN:?} after it, e.g. {:?}",
            wave + 1,
            bad.len(),
            ends.len(),
            &bad[..bad.len().min(5)]
        )
    })
}

/// Opens a connection with 4 KiB socket buffers and writes `requests` pipelined GETs with a
/// `query_bytes` query each, reading nothing. Returns the socket (its read half never read).
async fn pipeline_unread(
    addr: std::net::SocketAddr,
    requests: usize,
    query_bytes: usize,
    tag: &str,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * KIB as u32).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let query = "q".repeat(query_bytes);
    let mut pipelined = String::new();
    for i in 0..requests {
        pipelined.push_str(&format!("GET /?{tag}&i={i}&q={query} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    // The server reads requests only as it answers them: the writes block once it is stuck.
    let bytes = pipelined.into_bytes();
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&bytes)).await;
    stream
}

/// HTTP/1.1 pipelining against a socket nobody reads: per wave 10 connections, each with 100
/// GETs whose 32 KiB queries the echo sends back (3 MiB per connection, far past what the
/// sockets take). Each connection is closed at the deadline of the request whose response got
/// stuck; nothing unsent stays behind; the waves do not grow the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_never_read_are_cut_and_their_memory_reused() {
    const CONNECTIONS: usize = 10;
    const REQUESTS: usize = 100;
    let host =
        HostProcess::start(&["--component", echo(), "--request-timeout", "3s", "--concurrency", "1000"], &[]);
    warm_up(host.addr).await;
    let mut waves = Waves::new(host.child.id());
    let mut kept = Vec::new();
    for wave in 0..WAVES {
        let timeouts_before = sample(host.addr, "echo_host_request_timeouts_total").await;
        let mut sockets = Vec::with_capacity(CONNECTIONS);
        for c in 0..CONNECTIONS {
            sockets.push(pipeline_unread(host.addr, REQUESTS, 32 * KIB, &format!("w={wave}&c={c}")).await);
        }
        let (status, body, _) = get_until_ok(host.addr, &format!("/?during-wave={wave}"), PATIENCE).await;
        assert_eq!(status, StatusCode::OK, "another client during wave {}: {body}", wave + 1);
        // Each connection's stuck request times out, once.
        let expected = timeouts_before + CONNECTIONS as f64;
        let timeouts =
            wait_sample(host.addr, "echo_host_request_timeouts_total", PATIENCE, |v| v >= expected).await;
        assert_eq!(timeouts, expected, "wave {}: every unread connection cut once at a deadline", wave + 1);
        assert_eq!(wait_nothing_in_flight(host.addr, PATIENCE).await, 0.0, "wave {}: permits held", wave + 1);
        let unsent = wait_sample(host.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
        assert_eq!(unsent, 0.0, "wave {}: response bytes still held for cut connections", wave + 1);
        waves.record(wave);
        kept.extend(sockets);
    }
    waves.assert_plateau("pipelined HTTP/1.1 never read");
    for (i, socket) in kept.iter_mut().enumerate() {
        let closed = raw::read_until_closed(socket, PATIENCE).await;
        assert!(matches!(closed, raw::Closed::Closed { .. }), "connection {i}: {closed:?}");
    }
}

/// The host's own answers (here `431`, as for `503` and `413`) to a client that never reads are
/// held no longer than `--write-timeout`: each stream gets its head, then a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_answers_to_a_client_that_never_reads_are_reset_at_the_write_timeout() {
    const STREAMS: usize = 20;
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let server = crate::util::TestServer::start(&[
        "--component",
        echo(),
        "--max-headers",
        "10",
        "--write-timeout",
        "2s",
        "--request-timeout",
        "120s",
    ])
    .await;
    let connection = ZeroWindowConnection::open(server.addr).await;
    let started = Instant::now();
    let headers = padding_headers(20 * KIB);
    let tasks: Vec<_> = (0..STREAMS).map(|i| connection.get(&format!("/?i={i}"), &headers)).collect();
    let ends = raw::join_stream_ends(tasks, started + WRITE_TIMEOUT + PATIENCE).await;
    for (i, end) in ends.iter().enumerate() {
        let in_time = matches!(end, StreamEnd::Broken { status: Some(431), after, .. }
            if *after >= WRITE_TIMEOUT && *after <= WRITE_TIMEOUT + RESET_MARGIN);
        assert!(in_time, "stream {i}: {end:?}");
    }
    let unsent = wait_sample(server.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
    assert_eq!(unsent, 0.0, "the answers' bytes are still held");
}

/// `--max-unsent-per-connection`: a zero-window connection whose responses pile up past it is
/// closed gracefully (GOAWAY: counted once, later streams refused); the streams it holds are
/// still reset at their deadline and free what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_unsent_limit_gets_goaway() {
    const STREAMS: usize = 60; // ~2.1 KiB each: twice the limit
    const LIMIT: &str = "echo_host_unsent_limit_total{limit=\"connection\"}";
    let server = crate::util::TestServer::start(&[
        "--component",
        echo(),
        "--request-timeout",
        "3s",
        "--max-unsent-per-connection",
        "64KiB",
    ])
    .await;
    let connection = ZeroWindowConnection::open(server.addr).await;
    let started = Instant::now();
    let query = "q".repeat(2 * KIB);
    let tasks: Vec<_> = (0..STREAMS).map(|i| connection.get(&format!("/?i={i}&q={query}"), &[])).collect();
    let shed = wait_sample(server.addr, LIMIT, PATIENCE, |v| v >= 1.0).await;
    assert_eq!(shed, 1.0, "the connection over its limit should be shed once");
    let refused =
        raw::join_stream_ends(vec![connection.get("/?after=goaway", &[])], Instant::now() + PATIENCE).await;
    assert!(is_refused(&refused[0]), "a stream opened after the GOAWAY: {:?}", refused[0]);
    let ends = raw::join_stream_ends(tasks, started + REQUEST_TIMEOUT + PATIENCE).await;
    // A stream the client opened only after the GOAWAY came is refused, on a busy machine.
    let answered: Vec<StreamEnd> = ends.into_iter().filter(|end| !is_refused(end)).collect();
    assert!(answered.len() >= STREAMS / 2, "only {} streams got an answer", answered.len());
    if let Some(problem) = late_resets(&answered, 0) {
        panic!("{problem}");
    }
    let unsent = wait_sample(server.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
    assert_eq!(unsent, 0.0, "the shed connection's bytes are still held");
    assert_eq!(sample(server.addr, LIMIT).await, 1.0, "logged and counted once per connection");
}

/// Whether a stream never got a head: refused (REFUSED_STREAM), or not opened after a GOAWAY.
fn is_refused(end: &StreamEnd) -> bool {
    match end {
        StreamEnd::Broken { status, .. } => status.is_none(),
        StreamEnd::Unexpected { what, .. } => {
            what.starts_with("connection not ready") || what.starts_with("send_request")
        }
        StreamEnd::GatewayTimeout { .. } | StreamEnd::StillOpen => false,
    }
}

/// `--max-unsent`: zero-window connections together past it get new requests refused (a `503`
/// head at most, then a reset) and are closed gracefully; once their streams are reset, others
/// are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_bytes_past_the_total_limit_refuse_new_requests() {
    const CONNECTIONS: usize = 10;
    const STREAMS: usize = 100; // 1000 × (~2.1 KiB + 16 KiB charged): far past the limit
    const LIMIT: &str = "echo_host_unsent_limit_total{limit=\"total\"}";
    let server = crate::util::TestServer::start(&[
        "--component",
        echo(),
        "--request-timeout",
        "3s",
        "--write-timeout",
        "3s",
        // Refused past `--max-unsent` long before: a small pool in this process.
        "--concurrency",
        "200",
        "--max-unsent",
        "1MiB",
    ])
    .await;
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(ZeroWindowConnection::open(server.addr).await);
    }
    let started = Instant::now();
    let query = "q".repeat(2 * KIB);
    let mut tasks = Vec::new();
    for (c, connection) in connections.iter().enumerate() {
        for s in 0..STREAMS {
            tasks.push(connection.get(&format!("/?c={c}&s={s}&q={query}"), &[]));
        }
    }
    let ends = raw::join_stream_ends(tasks, started + REQUEST_TIMEOUT + PATIENCE).await;
    let status = |code: u16| {
        ends.iter()
            .filter(|end| matches!(end, StreamEnd::Broken { status: Some(s), .. } if *s == code))
            .count()
    };
    let (ok, overloaded) = (status(200), status(503));
    let refused = ends.iter().filter(|end| is_refused(end)).count();
    eprintln!("{ok} streams got 200, {overloaded} a 503 head, {refused} no head");
    assert!(ok > 0, "no request was served before the limit");
    assert!(overloaded + refused > 0, "no request was refused past `--max-unsent`");
    assert_eq!(ok + overloaded + refused, ends.len(), "{ends:?}");
    assert!(sample(server.addr, LIMIT).await >= 1.0, "no connection was shed past `--max-unsent`");
    assert!(ends.iter().all(|end| !matches!(end, StreamEnd::StillOpen)), "streams left open");
    let unsent = wait_sample(server.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
    assert_eq!(unsent, 0.0, "bytes still held after every stream ended");
    let (status, body, _) = get_until_ok(server.addr, "/?after=unsent-limit", PATIENCE).await;
    assert_eq!(status, StatusCode::OK, "another client once the unread bytes were freed: {body}");
}

/// The host's answers before the deadline are bound by it too: with `--concurrency 1`, a
/// zero-window client's first stream holds the permit and the others get `503`; every one is
/// reset at the 3 s deadline, not at the 60 s write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_answers_to_a_client_that_never_reads_are_reset_at_the_deadline() {
    const STREAMS: usize = 20;
    let server = crate::util::TestServer::start(&[
        "--component",
        echo(),
        "--concurrency",
        "1",
        "--request-timeout",
        "3s",
    ])
    .await;
    let connection = ZeroWindowConnection::open(server.addr).await;
    let started = Instant::now();
    let query = "q".repeat(2 * KIB);
    let tasks: Vec<_> = (0..STREAMS).map(|i| connection.get(&format!("/?i={i}&q={query}"), &[])).collect();
    let ends = raw::join_stream_ends(tasks, started + REQUEST_TIMEOUT + PATIENCE).await;
    let overloaded =
        ends.iter().filter(|end| matches!(end, StreamEnd::Broken { status: Some(503), .. })).count();
    assert!(overloaded > 0, "no stream got a 503: {ends:?}");
    for (i, end) in ends.iter().enumerate() {
        let in_time = matches!(end, StreamEnd::Broken { status: Some(200 | 503), after, .. }
            if *after >= REQUEST_TIMEOUT && *after <= REQUEST_TIMEOUT + RESET_MARGIN);
        assert!(in_time, "stream {i}: {end:?}");
    }
    let unsent = wait_sample(server.addr, "echo_host_unsent_response_bytes", PATIENCE, |v| v == 0.0).await;
    assert_eq!(unsent, 0.0, "the answers' bytes are still held");
    let undelivered =
        wait_sample(server.addr, "echo_host_responses_undelivered", PATIENCE, |v| v == 0.0).await;
    assert_eq!(undelivered, 0.0, "responses still counted as undelivered");
}
