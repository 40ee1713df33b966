//! The accept loop: HTTP/1.1 and h2c on one port, the connection limit, the protocol settings,
//! routing each request to the host's own endpoints or the component, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::limits::Limits;
use crate::serve::connection::{self, StreamExecutor, Timeouts};
use crate::serve::exchange::{
    Exchange, HostProblem, Outcome, Pending, RequestBody, ResponseBody, declared_length,
};
use crate::serve::host::Host;
use crate::serve::proxy;
use crate::serve::serving::Serving;

/// Send buffer per h2 stream (hyper's default is 400 KiB): with `--h2-max-streams` it bounds
/// what one connection's unread responses can pin.
pub const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// Largest HTTP/1.1 read buffer (hyper's default, which `wasmtime serve` keeps). hyper grows the
/// buffer only while reads fill it, so it reaches this size for a streamed body, where it sets
/// the bytes per `recv` and per response write: capped at the 64 KiB header limit, a 1 GiB echo
/// took 16k `recv` calls instead of 2.6k. A request head is still held to `--max-header-bytes`
/// (431): by [`header_problem`] once parsed, by hyper past this size. What a client can make a
/// connection buffer before its head is complete is bounded by this and `--header-read-timeout`.
pub const H1_MAX_READ_BUF: usize = 400 * 1024;

/// Fewest header fields hyper parses in an HTTP/1.1 head (see [`h1_parsed_headers`]).
pub const H1_MIN_PARSED_HEADERS: usize = 1024;

/// How many header fields hyper parses in an HTTP/1.1 head before it refuses it alone (a bare
/// 431: no request id, no access-log line, no count). Above `--max-headers`, so that a head over
/// that limit is parsed and answered by the host, with its headers, logged and counted, as over
/// h2c (where hyper does not count fields at all). Twice the limit and at least
/// [`H1_MIN_PARSED_HEADERS`]: hyper allocates that many slots per parse, and a head past it is
/// refused by hyper the way a head past [`H1_MAX_READ_BUF`] is.
pub fn h1_parsed_headers(max_headers: usize) -> usize {
    max_headers.saturating_mul(2).max(H1_MIN_PARSED_HEADERS)
}

/// Serves `host` on `listener` until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish for up to `grace`, and returns.
pub async fn run(
    listener: TcpListener,
    host: Arc<dyn Host>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let serving = host.serving().clone();
    let limits = serving.limits();
    let builder = Arc::new(connection_builder(limits));
    let max_connections = limits.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    let timeouts = Timeouts { header_read: limits.header_read_timeout, idle: limits.idle_timeout };
    let drain = CancellationToken::new();
    // Cancelled when the shutdown grace runs out: cuts every connection and h2 stream.
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning, keep serving.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes from streaming guests must not wait for Nagle's 40 ms.
        let _ = stream.set_nodelay(true);
        let serving = serving.clone();
        let (stream, state) = connection::watch(stream);
        let service = service_fn({
            let host = host.clone();
            move |req| {
                let host = host.clone();
                async move { Ok::<_, Infallible>(route(host, req, remote).await) }
            }
        });
        let served = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let drain = drain.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let closed =
                connection::serve(served, |c| c.graceful_shutdown(), state, timeouts, drain, &stop).await;
            if let Some(reason) = closed {
                serving.metrics.connection_closed(reason);
                tracing::debug!(remote = %remote, reason = ?reason, "connection closed by the host");
            }
            drop(permit);
        });
    }

    drop(listener);
    drain.cancel();
    tracing::info!(
        in_flight = serving.metrics.in_flight.get(),
        grace_seconds = grace.as_secs_f64(),
        "shutting down: no longer accepting connections"
    );
    drain_or_cut(&serving, &connections, max_connections, grace, &stop).await;
    Ok(())
}

/// Waits up to `grace` for every connection to close (each gives its permit of `connections`
/// back); then cuts those left with `stop`, their requests ending as `shutdown`.
async fn drain_or_cut(
    serving: &Serving,
    connections: &Semaphore,
    max_connections: usize,
    grace: Duration,
    stop: &CancellationToken,
) {
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        // Every connection gave its permit back: all closed.
        _ = connections.acquire_many(all) => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            let cut = serving.metrics.in_flight.get();
            tracing::warn!(requests_cut = cut, "shutdown grace period over: cutting the requests still running");
            // Their exchanges end as `shutdown` (503 in the access log), not `client_gone`.
            serving.cut_for_shutdown();
            stop.cancel();
            // Cut connections return at once, each logging its requests: wait for that, briefly.
            let _ = tokio::time::timeout(connection::CLOSE_GRACE, connections.acquire_many(all)).await;
        }
    }
}

fn connection_builder(limits: &Limits) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(StreamExecutor);
    // The header timeouts are the connection's (`connection.rs`), which also cover the h2
    // preface and the wait before a request's first byte; hyper's own would close an idle
    // keep-alive connection after `--header-read-timeout`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(h1_parsed_headers(limits.max_headers))
        .max_buf_size(usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX).max(H1_MAX_READ_BUF));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(100)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    builder
}

/// Sends a request to the host's own endpoints or to the component, after the checks that do
/// not need the guest: header limits, body size from `Content-Length`, then the unsent bytes
/// (`--max-unsent`) and concurrency limits. Every answer leaves through the exchange.
async fn route(host: Arc<dyn Host>, req: Request<Incoming>, remote: SocketAddr) -> Response<ResponseBody> {
    let exchange = Exchange::start(host.serving(), host.clone(), &req, remote);
    let limits = host.serving().limits();
    let active = || host.versions().active();
    // The client may leave while the guest runs: hyper then drops this future.
    let pending = Pending::new(exchange.clone());
    let response = if header_problem(&req, limits) {
        // hyper refuses alone only a head past [`h1_parsed_headers`] fields or its read buffer
        // ([`H1_MAX_READ_BUF`]); both limits themselves are checked here, for h2c too.
        exchange.answer(Outcome::HeadTooLarge, &active().version_header)
    } else if let Some(problem) = host_problem(&req) {
        // The guest cannot be given a request without an authority; say why, where operators look.
        tracing::info!(request_id = %exchange.ctx.id, remote_ip = %remote.ip(), "bad request: {}", problem.describe());
        exchange.answer(Outcome::BadHost(problem), &active().version_header)
    } else if host.owns(req.uri().path()) {
        let req = req.map(|body| RequestBody::new(body, u64::MAX, exchange.clone()));
        let response = host.endpoint(req, &exchange.ctx).await;
        // After the call: an upload names the version it made active.
        exchange.respond(response, None, &active().version_header)
    } else if declared_length(&req).is_some_and(|length| length > limits.max_body_bytes) {
        exchange.answer(Outcome::BodyTooLarge, &active().version_header)
    } else if exchange.over_unsent_limit() {
        // Clients that do not read hold `--max-unsent`: no guest, and no answer to hold too.
        exchange.refuse_over_unsent(&active().version_header)
    } else if !release_confirmed(host.as_ref()).await {
        exchange.answer(Outcome::ReleaseUnconfirmed, &active().version_header)
    } else {
        let routed = host.route(req.headers());
        if exchange.admit() {
            exchange.served_by(routed.component.clone(), routed.role);
            proxy::handle_request(&exchange, &routed.component, req).await
        } else {
            exchange.answer(Outcome::Overloaded, &routed.component.version_header)
        }
    };
    pending.disarm();
    response
}

/// Whether this instance's view of the release is fresh enough to route on (`--max-staleness`),
/// waiting on a re-check when it is not. `false`: answer 503.
async fn release_confirmed(host: &dyn Host) -> bool {
    match host.release_check() {
        None => true,
        Some(check) => check.await,
    }
}

/// Whether the parsed request is over `--max-headers` or `--max-header-bytes`.
fn header_problem<B>(req: &Request<B>, limits: &Limits) -> bool {
    // As on the wire: `name: value\r\n` per field plus the request line.
    let bytes: usize =
        req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>()
            + req.method().as_str().len()
            + req.uri().to_string().len()
            + 12;
    req.headers().len() > limits.max_headers || bytes as u64 > limits.max_header_bytes
}

/// Why the request's host is unusable, when it is: without an authority in the URI, exactly one
/// `Host` of the form `host[:port]` in visible ASCII is needed (RFC 9112 §3.2, RFC 9110 §7.2).
fn host_problem<B>(req: &Request<B>) -> Option<HostProblem> {
    if req.uri().authority().is_some() {
        return None;
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return Some(HostProblem::Missing),
        (Some(_), Some(_)) => return Some(HostProblem::Repeated),
        (Some(host), None) => host,
    };
    let valid = host.to_str().is_ok_and(|text| {
        !text.is_empty()
            && !text.contains('@')
            && http::uri::Authority::try_from(text)
                .is_ok_and(|a| a.port().is_none() || a.port_u16().is_some())
    });
    (!valid).then_some(HostProblem::Invalid)
}
