//! The accept loop: HTTP/1.1 and h2c on one port, connection and header limits, routing to the
//! host's own endpoints or the component, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin;
use crate::app::{App, RequestContext, RequestGuard};
use crate::body::{ObservedBody, ResponseBody};
use crate::proxy::{self, error_response};
use http_body_util::BodyExt;

/// Streams one h2c connection may carry at once. Requests past `--concurrency` get 503 anyway;
/// this bounds the per-connection state a single client can make the host hold.
const H2_MAX_CONCURRENT_STREAMS: u32 = 250;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish for up to `grace`, and returns.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let builder = Arc::new(connection_builder(&app));
    let connections = Arc::new(Semaphore::new(app.limits().max_connections));
    let graceful = GracefulShutdown::new();
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
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(route(app, req, remote).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, remote = %remote, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let in_flight = app.metrics.in_flight.get();
    tracing::info!(
        in_flight,
        grace_seconds = grace.as_secs_f64(),
        "shutting down: no longer accepting connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            let cut = app.metrics.in_flight.get();
            tracing::warn!(requests_cut = cut, "shutdown grace period over: cutting the requests still running");
        }
    }
    Ok(())
}

fn connection_builder(app: &App) -> auto::Builder<TokioExecutor> {
    let limits = app.limits();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently ignores `header_read_timeout`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_headers(limits.max_headers)
        .max_buf_size(usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(100)
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Sends a request to the host's own endpoints or to the component, after the checks that do
/// not need the guest: body size from `Content-Length`, then the concurrency limit.
async fn route(app: Arc<App>, req: Request<Incoming>, remote: SocketAddr) -> Response<ResponseBody> {
    let ctx = RequestContext::new(&app, &req, remote);
    let request_id = ctx.id_header();
    let component = app.registry.active();
    let mut response = if let Some(problem) = header_problem(&req, app.limits()) {
        // hyper enforces these for HTTP/1 while parsing; this covers h2c and sizes below
        // hyper's smallest read buffer (8 KiB).
        let mut guard = RequestGuard::new(app.clone(), ctx, None);
        guard.set_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        observe(error_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &problem), guard)
    } else if admin::owns(req.uri().path()) {
        let response = admin::handle(&app, req, &ctx).await;
        let mut guard = RequestGuard::new(app.clone(), ctx, None);
        guard.set_status(response.status());
        observe(response, guard)
    } else if let Some(length) = declared_length(&req)
        && length > app.limits().max_body_bytes
    {
        app.metrics.body_too_large.inc();
        let mut guard = RequestGuard::new(app.clone(), ctx, None);
        guard.set_status(StatusCode::PAYLOAD_TOO_LARGE);
        let message =
            format!("request body of {length} bytes exceeds the {}-byte limit", app.limits().max_body_bytes);
        let mut response = error_response(StatusCode::PAYLOAD_TOO_LARGE, &message);
        // The body was not read: the connection cannot be reused.
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        observe(response, guard)
    } else {
        match app.concurrency.clone().try_acquire_owned() {
            Ok(permit) => {
                let guard = RequestGuard::new(app.clone(), ctx, Some(permit));
                proxy::handle_request(&app, component.clone(), req, guard).await
            }
            Err(_) => {
                app.metrics.overloaded.inc();
                let mut guard = RequestGuard::new(app.clone(), ctx, None);
                guard.set_status(StatusCode::SERVICE_UNAVAILABLE);
                let message = format!(
                    "the server is at its limit of {} concurrent requests; retry shortly",
                    app.limits().concurrency
                );
                let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, &message);
                response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                observe(response, guard)
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert("echo-host-request-id", request_id);
    headers.entry("echo-host-component").or_insert_with(|| component.version_header.clone());
    response
}

fn observe(response: Response<ResponseBody>, guard: RequestGuard) -> Response<ResponseBody> {
    response.map(|body| ObservedBody::new(None, body, None, guard).boxed_unsync())
}

/// Checks `--max-headers` and `--max-header-bytes` on the parsed request.
fn header_problem<B>(req: &Request<B>, limits: &crate::config::Limits) -> Option<String> {
    let count = req.headers().len();
    if count > limits.max_headers {
        return Some(format!("{count} header fields exceed the limit of {}", limits.max_headers));
    }
    // As on the wire: `name: value\r\n` per field plus the request line.
    let bytes: usize =
        req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>()
            + req.method().as_str().len()
            + req.uri().to_string().len()
            + 12;
    (bytes as u64 > limits.max_header_bytes).then(|| {
        format!("the request head ({bytes} bytes) exceeds the limit of {} bytes", limits.max_header_bytes)
    })
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}
