//! One request through the component: a fresh `Store` and instance, `handle` in its own task,
//! the response passed on as soon as the guest sets it, and every way a guest can fail turned
//! into a response (500, 504, 413) instead of a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::app::{App, RequestGuard};
use crate::body::{GuestStatus, LimitedBody, ObservedBody, ResponseBody, full};
use crate::registry::ActiveComponent;

/// Why a request got no response from the guest.
#[derive(Debug)]
enum GuestFailure {
    /// Trap, panic, memory or stack exhaustion, or a host error while running the guest.
    Crashed(anyhow::Error),
    /// `handle` returned without calling `response-outparam::set`.
    NoResponse,
    /// The guest answered with an `error-code` instead of a response.
    ErrorCode(ErrorCode),
    /// `--request-timeout` passed before the response started.
    Timeout,
    /// The request body crossed `--max-body` before the response started.
    BodyTooLarge,
}

/// How the guest's task ended.
enum TaskEnd {
    Done,
    Failed(anyhow::Error),
    TimedOut,
}

/// Serves `req` with `component`, which the caller read from the registry once: a swap during
/// this request does not affect it.
pub async fn handle_request(
    app: &Arc<App>,
    component: Arc<ActiveComponent>,
    req: Request<Incoming>,
    mut guard: RequestGuard,
) -> Response<ResponseBody> {
    let deadline = guard.ctx().started + app.limits().request_timeout;
    let body_too_large = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        let counter = app.metrics.body_too_large.clone();
        LimitedBody::new(body, app.limits().max_body_bytes, body_too_large.clone(), counter)
    });
    let request_id = guard.ctx().id.clone();
    let guest = GuestStatus::default();
    let outcome =
        run_guest(app, &component, req, deadline, &request_id, &guest, |task| guard.set_guest_task(task))
            .await;
    let outcome = match outcome {
        Err(_) if body_too_large.load(Ordering::Relaxed) => Err(GuestFailure::BodyTooLarge),
        other => other,
    };
    match outcome {
        Ok((response, first)) => {
            guard.set_status(response.status());
            let (mut parts, body) = response.into_parts();
            parts.headers.insert("echo-host-component", component.version_header.clone());
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body = ObservedBody::new(first, body, Some(deadline.into()), guard)
                .with_declared_length(declared)
                .watching(guest);
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(failure) => failure_response(app, &component, failure, guard),
    }
}

type GuestResponse = (Response<ResponseBody>, Option<Frame<Bytes>>);

async fn run_guest<B>(
    app: &Arc<App>,
    component: &ActiveComponent,
    req: Request<B>,
    deadline: Instant,
    request_id: &str,
    guest: &GuestStatus,
    on_spawn: impl FnOnce(tokio::task::AbortHandle),
) -> Result<GuestResponse, GuestFailure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let request_id = request_id.to_string();
    let mut store = app.runtime.new_store(&request_id, deadline);
    let timed_out = store.data().timed_out.clone();
    // Cloud Run terminates TLS; the guest should still see the scheme the client used.
    let scheme = match req.headers().get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let (sender, receiver) = oneshot::channel();
    let (incoming, outparam) = {
        let mut http = store.data_mut().http();
        let incoming = http.new_incoming_request(scheme, req).map_err(|e| GuestFailure::Crashed(e.into()))?;
        let outparam = http.new_response_outparam(sender).map_err(|e| GuestFailure::Crashed(e.into()))?;
        (incoming, outparam)
    };

    let pre = component.pre.clone();
    let app_for_task = app.clone();
    let status = guest.clone();
    let mut task: JoinHandle<TaskEnd> = tokio::spawn(async move {
        let guest = async {
            let instantiating = Instant::now();
            let proxy = pre.instantiate_async(&mut store).await?;
            app_for_task.metrics.instantiation.observe(instantiating.elapsed().as_secs_f64());
            proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await
        };
        // The epoch callback stops a guest that computes past its deadline; this stops one that
        // waits past it (on a body, a timer, an outbound request).
        let end = match tokio::time::timeout_at(deadline.into(), guest).await {
            Ok(Ok(())) => TaskEnd::Done,
            Ok(Err(_)) | Err(_) if timed_out.load(Ordering::Relaxed) => TaskEnd::TimedOut,
            Ok(Err(error)) => TaskEnd::Failed(error.into()),
            Err(_) => TaskEnd::TimedOut,
        };
        // Before the store (and the response body's sender) is dropped at the end of this block.
        match &end {
            TaskEnd::Done => status.done(),
            TaskEnd::Failed(_) => status.failed(),
            TaskEnd::TimedOut => status.timed_out(),
        }
        report_task_end(&app_for_task, &request_id, &end);
        end
    });
    on_spawn(task.abort_handle());

    let response = tokio::select! {
        response = receiver => response,
        _ = tokio::time::sleep_until(deadline.into()) => return Err(GuestFailure::Timeout),
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(GuestFailure::ErrorCode(code)),
        // The outparam was dropped with the store: the task ended without a response.
        Err(_) => return Err(task_failure(task.await)),
    };
    peek_first_frame(response, &mut task, guest, deadline).await
}

/// Holds the response until its first body frame, the end of the guest, or the deadline,
/// whichever comes first: a guest that sets a response and then crashes (or sets a second one)
/// before writing a byte gets a 500, not a 200 with a cut body. Streaming is not delayed: the
/// head goes out with the first bytes.
async fn peek_first_frame(
    response: Response<HyperOutgoingBody>,
    task: &mut JoinHandle<TaskEnd>,
    guest: &GuestStatus,
    deadline: Instant,
) -> Result<GuestResponse, GuestFailure> {
    let (parts, mut body) = response.into_parts();
    let mut task_done = false;
    let first = loop {
        tokio::select! {
            biased;
            end = &mut *task, if !task_done => match end {
                Ok(TaskEnd::Done) => task_done = true,
                other => return Err(task_failure(other)),
            },
            frame = body.frame() => break frame,
            _ = tokio::time::sleep_until(deadline.into()) => return Err(GuestFailure::Timeout),
        }
    };
    let first = match first {
        Some(Ok(frame)) => Some(frame),
        // An empty body ends the same way whether the guest finished it or died: ask the guest.
        None if !task_done && (guest.is_failed() || guest.is_timed_out()) => {
            return Err(task_failure(
                tokio::time::timeout_at(deadline.into(), &mut *task).await.unwrap_or(Ok(TaskEnd::TimedOut)),
            ));
        }
        None => None,
        Some(Err(error)) => {
            // The body broke before its first byte; the guest's own failure says more.
            if !task_done {
                let end = tokio::time::timeout_at(deadline.into(), &mut *task).await;
                if let Ok(end @ (Ok(TaskEnd::Failed(_) | TaskEnd::TimedOut) | Err(_))) = end {
                    return Err(task_failure(end));
                }
            }
            return Err(GuestFailure::Crashed(
                anyhow::Error::from(error).context("the response body failed"),
            ));
        }
    };
    let body = body.map_err(|error| anyhow::Error::from(error).context("the guest's response body failed"));
    Ok((Response::from_parts(parts, body.boxed_unsync()), first))
}

fn task_failure(end: Result<TaskEnd, tokio::task::JoinError>) -> GuestFailure {
    match end {
        Ok(TaskEnd::Done) => GuestFailure::NoResponse,
        Ok(TaskEnd::Failed(error)) => GuestFailure::Crashed(error),
        Ok(TaskEnd::TimedOut) => GuestFailure::Timeout,
        Err(join) if join.is_cancelled() => GuestFailure::Timeout,
        Err(join) => GuestFailure::Crashed(anyhow::anyhow!("the guest task panicked: {join}")),
    }
}

/// Logs and counts a guest failure once, whether or not the response had started.
fn report_task_end(app: &App, request_id: &str, end: &TaskEnd) {
    match end {
        TaskEnd::Done => {}
        TaskEnd::Failed(error) => {
            app.metrics.traps.inc();
            tracing::error!(request_id, error = format!("{error:#}"), "the component failed");
        }
        TaskEnd::TimedOut => {
            tracing::warn!(request_id, "the component was stopped at the request deadline");
        }
    }
}

fn failure_response(
    app: &App,
    component: &ActiveComponent,
    failure: GuestFailure,
    mut guard: RequestGuard,
) -> Response<ResponseBody> {
    let id = guard.ctx().id.clone();
    let (status, message) = match &failure {
        GuestFailure::Crashed(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "the component failed while handling the request".to_string())
        }
        GuestFailure::NoResponse => {
            tracing::error!(request_id = %id, "the component returned without setting a response (`response-outparam::set` never called)");
            (StatusCode::INTERNAL_SERVER_ERROR, "the component did not produce a response".to_string())
        }
        GuestFailure::ErrorCode(code) => {
            tracing::error!(request_id = %id, error_code = ?code, "the component answered with an error code");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the component reported an error: {code:?}"))
        }
        GuestFailure::Timeout => {
            app.metrics.timeouts.inc();
            let limit = app.limits().request_timeout;
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("the component did not respond within the {}s request timeout", limit.as_secs_f64()),
            )
        }
        // Already counted by `LimitedBody` when the limit was crossed.
        GuestFailure::BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the {}-byte limit", app.limits().max_body_bytes),
        ),
    };
    if let GuestFailure::Crashed(error) = &failure {
        // Already logged by the task when it came from there; this covers host-side failures.
        tracing::debug!(request_id = %id, error = format!("{error:#}"), "request failed");
    }
    guard.set_status(status);
    let mut response = error_response(status, &format!("{message} (request id {id})"));
    response.headers_mut().insert("echo-host-component", component.version_header.clone());
    let body =
        ObservedBody::new(None, std::mem::replace(response.body_mut(), full(Bytes::new())), None, guard);
    *response.body_mut() = body.boxed_unsync();
    response
}

/// Sends `probe` to `component` (not yet active) and returns the status it answered with. The
/// body is not read: a 2xx head is the signal.
pub async fn probe(
    app: &Arc<App>,
    component: &ActiveComponent,
    probe: &crate::config::SwapProbe,
) -> anyhow::Result<StatusCode> {
    let request = Request::builder()
        .method(probe.method.clone())
        .uri(format!("http://localhost{}", probe.path))
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "echo-host-swap-probe")
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
        )?;
    let deadline = Instant::now() + probe.timeout;
    let request_id = format!("probe-{}", app.next_request_id());
    match run_guest(app, component, request, deadline, &request_id, &GuestStatus::default(), |_| {}).await {
        Ok((response, _)) => Ok(response.status()),
        Err(GuestFailure::Timeout) => anyhow::bail!("no response within {:?}", probe.timeout),
        Err(GuestFailure::Crashed(error)) => Err(error.context("the component failed")),
        Err(GuestFailure::NoResponse) => anyhow::bail!("the component returned without a response"),
        Err(GuestFailure::ErrorCode(code)) => {
            anyhow::bail!("the component answered with error code {code:?}")
        }
        Err(GuestFailure::BodyTooLarge) => anyhow::bail!("unexpected body limit on an empty probe"),
    }
}

/// A plain-text response from the host itself.
pub fn error_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(format!("{message}\n")))
        .expect("static response parts are valid")
}
