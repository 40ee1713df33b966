//! One request through the component: for a p2 component a fresh `Store` and instance (or, with
//! `--instance-max-requests`, one idle in its [`SerialPool`]), `handle` in its own task (which also
//! supervises the response, see [`Exchange::supervise`]); for a p3 one an instance of its pool
//! ([`crate::serve::reuse`]). The response is passed on as soon as the guest
//! sets it, and every way a guest can fail is turned into an [`Outcome`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::engine::runtime::RequestState;
use crate::engine::serial::{IdleInstance, SerialPool};
use crate::serve::exchange::{Exchange, GuestCost, GuestEnd, Outcome, RequestBody, ResponseBody};
use crate::serve::head::{GuestResponse, decided, peek_first_frame, wait_for_fault};
use crate::serve::serving::Serving;
use crate::util::timed::Timed;
use crate::util::traces;
use crate::versions::cost::{CostHandles, VersionCost};
use crate::versions::registry::{ActiveComponent, Handler};

/// `--swap-probe`: a request the candidate must answer with 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapProbe {
    pub method: http::Method,
    pub path: String,
    pub timeout: Duration,
}

/// Serves `req` with `component`, which the caller read from the registry once: a swap during
/// this request does not affect it. The exchange holds a permit.
pub async fn handle_request<B>(
    exchange: &Arc<Exchange>,
    component: &ActiveComponent,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let limit = exchange.limits().max_body_bytes;
    let req = req.map(|body| RequestBody::new(body, limit, exchange.clone()));
    // A client's request counts for the version's cost (a probe's does not).
    component.cost.bind(&exchange.serving().cost, component.version());
    match run_guest(exchange, component, req).await {
        Ok((response, first)) => exchange.respond(response, first, &component.version_header),
        Err(outcome) => exchange.answer(outcome, &component.version_header),
    }
}

/// Starts the guest and waits for its response head (and first body frame): the request path's
/// part of the exchange. Faults before the head come back as the outcome to answer.
async fn run_guest<B>(
    exchange: &Arc<Exchange>,
    component: &ActiveComponent,
    req: Request<B>,
) -> Result<GuestResponse, Outcome>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    match &component.handler {
        Handler::PerRequest(pre) => {
            run_p2(exchange, fresh(exchange, pre.clone(), None), &component.cost, req).await
        }
        Handler::Serial(pool) => {
            let instance = match pool.take() {
                Some(idle) => rearmed(exchange, pool.clone(), idle),
                None => fresh(exchange, pool.pre().clone(), Some(pool.clone())),
            };
            run_p2(exchange, instance, &component.cost, req).await
        }
        Handler::Reused(pool) => crate::serve::reuse::run_guest(exchange, pool, req).await,
    }
}

/// A p2 request's instance.
enum P2Instance {
    /// To start from the pre-instance; given back to the pool after the request, when there is
    /// one (`--instance-max-requests`).
    ToStart(ProxyPre<RequestState>, Option<SerialPool>),
    /// Taken idle from its pool: its exports, and the requests it served before.
    Idle(SerialPool, Proxy, usize),
}

/// A fresh store for this request, its instance to start from `pre`.
fn fresh(
    exchange: &Exchange,
    pre: ProxyPre<RequestState>,
    pool: Option<SerialPool>,
) -> (Store<RequestState>, P2Instance) {
    let store = exchange.serving().stores().request_store(&exchange.ctx.id, exchange.stop.clone());
    (store, P2Instance::ToStart(pre, pool))
}

/// An idle instance of `pool`, re-armed for this request.
fn rearmed(exchange: &Exchange, pool: SerialPool, idle: IdleInstance) -> (Store<RequestState>, P2Instance) {
    let IdleInstance { mut store, proxy, served } = idle;
    exchange.serving().stores().rearm(&mut store, &exchange.ctx.id, exchange.stop.clone());
    (store, P2Instance::Idle(pool, proxy, served))
}

/// [`run_guest`] for a p2 component: `instance` runs the guest in a task of its own.
async fn run_p2<B>(
    exchange: &Arc<Exchange>,
    (mut store, instance): (Store<RequestState>, P2Instance),
    cost: &Arc<VersionCost>,
    req: Request<B>,
) -> Result<GuestResponse, Outcome>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    if let Some(parent) = exchange.span_context() {
        store.data_mut().trace_under(Some(parent.clone()));
    }
    // Cloud Run terminates TLS; the guest should still see the scheme the client used.
    let scheme = match req.headers().get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let (sender, receiver) = oneshot::channel();
    let resources = {
        let mut http = store.data_mut().http();
        http.new_incoming_request(scheme, req)
            .and_then(|incoming| Ok((incoming, http.new_response_outparam(sender)?)))
    };
    let (incoming, outparam) = resources.map_err(|error| {
        exchange.guest_failed(format!("the host could not pass the request to the component: {error:#}"));
        exchange.fault(Outcome::Trapped);
        Outcome::Trapped
    })?;
    exchange.guest_started();
    let task = GuestTask { exchange: exchange.clone(), instance, cost: cost.clone() };
    tokio::spawn(guest_task(task, store, incoming, outparam));

    let deadline = exchange.deadline;
    let response = tokio::select! {
        biased;
        response = receiver => response,
        () = wait_for_fault(exchange) => return Err(decided(exchange, Outcome::ClientGone)),
        _ = tokio::time::sleep_until(deadline) => return Err(decided(exchange, Outcome::TimedOut)),
    };
    match response {
        Ok(Ok(response)) => peek_first_frame(exchange, response).await,
        Ok(Err(code)) => {
            exchange.guest_failed(format!("the component answered with error code `{code:?}`"));
            Err(decided(exchange, Outcome::ErrorCode))
        }
        // The outparam was dropped with the store: the guest ended without a response.
        Err(_) => {
            let end = exchange.guest_end().unwrap_or(GuestEnd::Trapped);
            Err(decided(exchange, end.outcome_before_head()))
        }
    }
}

/// What a p2 guest's task needs besides its store: its exchange, its instance, and the
/// version's cost histograms (bound when it is a client's request).
struct GuestTask {
    exchange: Arc<Exchange>,
    instance: P2Instance,
    cost: Arc<VersionCost>,
}

/// Runs the guest until it returns or must stop, while supervising the response; then reports
/// how it ended and what it cost (to the version's histograms, and to the server span when traces
/// are on), gives its instance back to the pool (a clean return with reuse on) or drops its
/// store (its slot goes back to wasmtime's pool) and supervises on.
async fn guest_task(
    task: GuestTask,
    mut store: Store<RequestState>,
    incoming: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
) {
    let GuestTask { exchange, instance, cost } = task;
    let cost = cost.handles();
    let mut supervising = true;
    let mut instantiation = None;
    let (pool, served) = match &instance {
        P2Instance::ToStart(_, pool) => (pool.clone(), 0),
        P2Instance::Idle(pool, _, served) => (Some(pool.clone()), *served),
    };
    // `None`: stopped while it waited.
    let (result, busy) = {
        let guest = async {
            let proxy = match instance {
                P2Instance::Idle(_, proxy, _) => proxy,
                P2Instance::ToStart(pre, pool) => {
                    let (proxy, took) = instantiate(&exchange, &mut store, &pre, pool.as_ref(), cost).await?;
                    instantiation = Some(took);
                    proxy
                }
            };
            proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await?;
            Ok::<_, wasmtime::Error>(proxy)
        };
        tokio::pin!(guest);
        let mut guest = Timed::new(guest);
        let result = loop {
            tokio::select! {
                biased;
                result = &mut guest => break Some(result),
                // A guest waiting (on a body, a timer, an outbound request) past its stop; the
                // epoch callback stops one that computes.
                () = exchange.stop.reached() => break None,
                () = exchange.supervise(), if supervising => supervising = false,
            }
        };
        (result, guest.busy())
    };
    let memory_peak_bytes = store.data().memory().peak_bytes();
    if let Some(cost) = cost {
        cost.cpu.observe(busy.as_secs_f64());
        cost.memory.observe(memory_peak_bytes as f64);
    }
    let (end, proxy) = match result {
        Some(Ok(proxy)) => (GuestEnd::Returned, Some(proxy)),
        Some(Err(error)) if !exchange.stop.interrupted() => {
            exchange.serving().metrics.traps.inc();
            exchange.guest_failed(exchange.cause_of(
                "the component trapped",
                &error,
                Some(store.data().memory()),
            ));
            (GuestEnd::Trapped, None)
        }
        Some(Err(_)) | None => (stopped(&exchange), None),
    };
    log_stop(&exchange, end);
    // Before the store, and with it the response body's sender, goes: the body reads this.
    let traced = exchange.span_context().is_some();
    let cost = traced.then_some(GuestCost {
        cpu: Some(busy),
        memory_peak_bytes: Some(memory_peak_bytes),
        instantiation,
    });
    let store = give_back(&exchange, store, pool.zip(proxy), served);
    exchange.guest_ended(end, cost);
    drop(store);
    if supervising {
        exchange.supervise().await;
    }
}

/// Starts an instance of `pre` in `store` (counted by `pool`, when instances are reused), under an
/// `instantiate` span when traced; returns its exports and how long it took, also recorded in the
/// host's and the version's instantiation histograms.
async fn instantiate(
    exchange: &Exchange,
    store: &mut Store<RequestState>,
    pre: &ProxyPre<RequestState>,
    pool: Option<&SerialPool>,
    cost: Option<&CostHandles>,
) -> wasmtime::Result<(Proxy, Duration)> {
    if let Some(pool) = pool {
        pool.starting();
    }
    let instantiating = tokio::time::Instant::now();
    let span = exchange.child_span("instantiate");
    let proxy = pre.instantiate_async(&mut *store).await;
    if let Some(span) = span {
        traces::end_span(span, proxy.as_ref().err());
    }
    let proxy = proxy?;
    let took = instantiating.elapsed();
    let seconds = took.as_secs_f64();
    exchange.serving().metrics.instantiation.observe(seconds);
    if let Some(cost) = cost {
        cost.instantiation.observe(seconds);
    }
    Ok((proxy, took))
}

/// Gives the instance back to its pool after a clean return that left no HTTP resource in it
/// (`returned`: the pool and the exports; `None` when it did not return or is not reused), or
/// hands the store back, to be dropped after the exchange heard how the guest ended (the
/// response body reads that). Called before the permit goes, so that a request after this one
/// finds the instance idle.
fn give_back(
    exchange: &Exchange,
    mut store: Store<RequestState>,
    returned: Option<(SerialPool, Proxy)>,
    served: usize,
) -> Option<Store<RequestState>> {
    let Some((pool, proxy)) = returned else { return Some(store) };
    if store.data_mut().holds_http_resources() {
        tracing::debug!(request_id = %exchange.ctx.id, "the instance kept an HTTP resource past its return: retired");
        return Some(store);
    }
    pool.give_back(IdleInstance { store, proxy, served });
    None
}

/// Says why a guest that did not return was stopped (a trap has its ERROR line).
fn log_stop(exchange: &Exchange, end: GuestEnd) {
    match end {
        // The request's ERROR line says so when the deadline ended the request itself.
        GuestEnd::TimedOut if exchange.outcome() == Some(Outcome::TimedOut) => {
            tracing::debug!(request_id = %exchange.ctx.id, "the component was stopped at the request deadline")
        }
        GuestEnd::TimedOut => {
            tracing::warn!(request_id = %exchange.ctx.id, "the component was stopped at the request deadline")
        }
        GuestEnd::Stopped => {
            tracing::debug!(request_id = %exchange.ctx.id, "the component was stopped after its response ended")
        }
        GuestEnd::Returned | GuestEnd::Trapped => {}
    }
}

fn stopped(exchange: &Exchange) -> GuestEnd {
    if exchange.stop.is_deadline() { GuestEnd::TimedOut } else { GuestEnd::Stopped }
}

/// Sends `probe` to `component` (not yet active) and returns the status it answered with. The
/// body is not read: a 2xx head is the signal.
pub async fn probe(
    serving: &Arc<Serving>,
    component: &ActiveComponent,
    probe: &SwapProbe,
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
    let exchange = Exchange::probe(serving, &request, probe.timeout);
    let result = run_guest(&exchange, component, request).await;
    exchange.finish();
    match result {
        Ok((response, _)) => Ok(response.status()),
        Err(Outcome::TimedOut) => anyhow::bail!("no response within {:?}", probe.timeout),
        Err(Outcome::Trapped) => match exchange.failure_cause() {
            Some(cause) => anyhow::bail!("{cause}"),
            None => anyhow::bail!("the component failed"),
        },
        Err(Outcome::NeverResponded) => anyhow::bail!("the component returned without a response"),
        Err(Outcome::ErrorCode) => match exchange.failure_cause() {
            Some(cause) => anyhow::bail!("{cause}"),
            None => anyhow::bail!("the component answered with an error code"),
        },
        Err(other) => anyhow::bail!("the probe ended with `{}`", other.name()),
    }
}
