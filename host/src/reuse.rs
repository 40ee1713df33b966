//! Reused instances for p3 (`wasi:http/service`) components: the pool of one version's instances
//! ([`Pool`], wasmtime's `ProxyHandler` with our policy: `--instance-*`, the request deadline,
//! the instance's own limits) and one request served through it ([`run_guest`]).
//!
//! An instance serves up to `--instance-max-concurrent` requests at once and
//! `--instance-max-requests` in its life, and waits `--instance-idle-timeout` for more. A request
//! that reaches its stop (deadline or fault) ends as the exchange decides while its siblings on
//! the instance finish; that instance takes no new requests and is retired once they are done.
//! A trap retires the instance with every request on it. An instance that overstays (a guest
//! computing past the request timeout, which the epoch makes yield but never interrupts) is
//! dropped by the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, Proxy, ProxyHandler, ShouldAccept,
    WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::exchange::{Exchange, Outcome};
use crate::proxy::{GuestResponse, decided, peek_first_frame, wait_for_fault};
use crate::runtime::{RequestState, Reuse, Stores};

/// wasmtime's `ProxyHandler` passes this to [`WorkerState::drop`] when an instance's task was
/// dropped before it ended.
const WORKER_DROPPED: &str = "worker panicked";

/// One version's reused instances. Cloning shares them.
#[derive(Clone)]
pub struct Pool {
    handler: ProxyHandler<PoolState>,
}

impl Pool {
    pub fn new(pre: ServicePre<RequestState>, stores: Arc<Stores>, reuse: Reuse, timeout: Duration) -> Self {
        let state = PoolState { pre, stores, reuse, timeout, next_instance: AtomicU64::new(0) };
        Self { handler: ProxyHandler::new(state) }
    }

    /// Instances started so far.
    pub fn instances_started(&self) -> u64 {
        self.handler.state().next_instance.load(Ordering::Relaxed)
    }
}

/// Passes `req` to an instance of `pool` and waits for its response head (and first body
/// frame); faults before the head come back as the outcome to answer. The exchange owns no guest
/// task here: the pool's instance runs the guest, and stops this request's part of it when the
/// exchange's stop is reached.
pub async fn run_guest<B>(
    exchange: &Arc<Exchange>,
    pool: &Pool,
    req: Request<B>,
) -> Result<GuestResponse, Outcome>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let req = req.map(|body| -> WasiBody { body.map_err(Into::into).boxed_unsync() });
    let handled = tokio::select! {
        biased;
        handled = pool.handler.handle(exchange.clone(), req) => handled,
        () = wait_for_fault(exchange) => return Err(decided(exchange, Outcome::ClientGone)),
        _ = tokio::time::sleep_until(exchange.deadline) => return Err(decided(exchange, Outcome::TimedOut)),
    };
    match handled {
        Ok(response) => peek_first_frame(exchange, response).await,
        Err(error) => Err(decided(exchange, failure(exchange, &error))),
    }
}

/// What a request the pool could not answer ended as.
fn failure(exchange: &Exchange, error: &wasmtime::Error) -> Outcome {
    let id = &exchange.ctx.id;
    if error.downcast_ref::<ExpirationError>().is_some() {
        return if exchange.stop.is_deadline() { Outcome::TimedOut } else { Outcome::ClientGone };
    }
    if let Some(code) = error.downcast_ref::<ErrorCode>() {
        tracing::error!(request_id = %id, error_code = ?code, "the component answered with an error code");
        return Outcome::ErrorCode;
    }
    exchange.app().metrics.traps.inc();
    match error.downcast_ref::<InstantiationError<Arc<Exchange>>>() {
        Some(failed) => {
            tracing::error!(request_id = %id, error = format!("{:#}", failed.error), "the component failed to start")
        }
        None => tracing::error!(request_id = %id, error = format!("{error:#}"), "the component failed"),
    }
    Outcome::Trapped
}

/// The pool's side of wasmtime's `ProxyHandler`: makes instances with their policy.
struct PoolState {
    pre: ServicePre<RequestState>,
    stores: Arc<Stores>,
    reuse: Reuse,
    /// `--request-timeout`: how long an instance may work on its newest request, or on what it
    /// does after its last response, before it is dropped.
    timeout: Duration,
    next_instance: AtomicU64,
}

impl HandlerState for PoolState {
    type StoreData = RequestState;
    type WorkerExpiration = Expiry;
    type WorkerState = InstancePolicy;

    async fn instantiate(&self) -> wasmtime::Result<Instance<RequestState, Expiry, InstancePolicy>> {
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let label = format!("instance-{id}");
        let mut store = self.stores.reused_store(&label);
        // The epoch only makes the guest yield: bound a start-up that never ends here.
        let service = tokio::time::timeout(self.timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| wasmtime::format_err!("the instance did not start within {:?}", self.timeout))??;
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: WasiHttpView::http,
            expiration: Expiry {
                idle_timeout: self.reuse.idle_timeout,
                busy_timeout: self.timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: InstancePolicy { label, reuse: self.reuse },
        })
    }
}

/// When a pool's instance is retired for being idle or overstaying.
struct Expiry {
    idle_timeout: Duration,
    busy_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, since: Instant) -> Poll<()> {
        let me = self.get_mut();
        let timeout = match status {
            WorkerStatus::Idle => me.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => me.busy_timeout,
        };
        let Some(at) = since.checked_add(timeout) else { return Poll::Pending };
        let at = tokio::time::Instant::from_std(at);
        if me.sleep.deadline() != at {
            me.sleep.as_mut().reset(at);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// What one instance accepts, and when one of its requests must stop.
struct InstancePolicy {
    label: String,
    reuse: Reuse,
}

impl WorkerState for InstancePolicy {
    type StoreData = RequestState;
    type RequestData = Arc<Exchange>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.reuse.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, RequestState>,
        exchange: Arc<Exchange>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store.data_mut().start_request();
        tracing::debug!(request_id = %exchange.ctx.id, instance = %self.label, "request passed to a reused instance");
        let stop = exchange.stop.clone();
        Box::pin(async move { stop.reached().await })
    }

    fn drop(&self, store: Store<RequestState>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => tracing::debug!(instance = %self.label, "reused instance retired"),
            // What wasmtime reports when the instance's task is dropped rather than ended: the
            // runtime shutting down (a real panic prints its own message).
            Err(error) if error.to_string() == WORKER_DROPPED => {
                tracing::debug!(instance = %self.label, "reused instance dropped with its runtime")
            }
            Err(error) => {
                tracing::warn!(instance = %self.label, error = format!("{error:#}"), "reused instance retired after a failure")
            }
        }
        drop(store);
    }
}
