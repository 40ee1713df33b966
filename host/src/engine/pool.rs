//! Reused instances for p3 (`wasi:http/service`) components: the pool of one version's instances
//! ([`Pool`], wasmtime's `ProxyHandler` with our policy: `--instance-*`, the request deadline,
//! the instance's own limits).
//!
//! An instance serves up to `--instance-max-concurrent` requests at once and
//! `--instance-max-requests` in its life, and waits `--instance-idle-timeout` for more. A request
//! that reaches its stop (deadline or fault) ends as its caller decides while its siblings on
//! the instance finish; that instance takes no new requests and is retired once they are done.
//! A trap retires the instance with every request on it. An instance that overstays (a guest
//! computing past the request timeout, which the epoch makes yield but never interrupts) is
//! dropped by the pool.
//!
//! With traces on, an instance's start is an `instantiate` span under the request it was started
//! for. wasmtime does not say which request that is: the pool takes the oldest traced request
//! still waiting for an instance ([`Waiting`]), which is the one when requests do not arrive
//! together (the first request that finds no instance free starts one).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, SpanKind};
use tokio::sync::Notify;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::engine::memory::MemoryWatch;
use crate::engine::runtime::{RequestState, Reuse, Stores};
use crate::engine::stop::StopSignal;
use crate::util::traces;

/// What the pool needs of one request passed to an instance: its id for the logs, the stop
/// (deadline or fault) that ends its part of the instance's work, and its trace.
pub trait PoolRequest: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn stop(&self) -> &Arc<StopSignal>;
    /// The span the guest's outbound calls for this request are children of (traces on only).
    fn trace_parent(&self) -> Option<SpanContext>;
    /// Whether the request is traced (it has a `trace_parent`); cheaper to ask.
    fn traced(&self) -> bool;
    /// An instance was started for this traced request, in `took`.
    fn instantiated(&self, took: Duration);

    /// The instance that takes the request: what its memories reach, and why it failed.
    fn on_instance(&self, instance: &Arc<InstanceRecord>);
}

/// What the requests of one reused instance may learn of it: its memories, and the error it
/// ended with when it failed. A trap ends every request on the instance with wasmtime's
/// `TrapOrPanicError` (no cause), and the instance's own error arrives just after.
pub struct InstanceRecord {
    pub memory: Arc<MemoryWatch>,
    failure: OnceLock<String>,
    /// Set (after `failure`, when it failed) once the instance is gone.
    ended: AtomicBool,
    ending: Notify,
}

impl InstanceRecord {
    fn new(memory: Arc<MemoryWatch>) -> Self {
        Self { memory, failure: OnceLock::new(), ended: AtomicBool::new(false), ending: Notify::new() }
    }

    /// The error the instance failed with, waiting up to `patience` for it to end.
    pub async fn failure(&self, patience: Duration) -> Option<String> {
        let ending = self.ending.notified();
        tokio::pin!(ending);
        ending.as_mut().enable();
        if !self.ended.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(patience, ending).await;
        }
        self.failure.get().cloned()
    }

    fn ended(&self, error: Option<&wasmtime::Error>) {
        if let Some(error) = error {
            let _ = self.failure.set(format!("{error:#}"));
        }
        self.ended.store(true, Ordering::Release);
        self.ending.notify_waiters();
    }
}

/// Where a pool reports what its instances cost: the version's histograms.
pub trait InstanceCost: Send + Sync + 'static {
    /// An instance started in `seconds`.
    fn instantiated(&self, seconds: f64);
    /// An instance was retired having reached `peak_bytes` of linear memory.
    fn retired(&self, peak_bytes: usize);
}

/// A request as the pool holds it.
pub type Caller = Arc<dyn PoolRequest>;

/// The traced requests waiting for an instance to take them, oldest first (traces on only): an
/// instance being started claims the oldest.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<Caller>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Caller>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `caller` waits until the guard goes (its answer came, or it was dropped).
    fn enter(&self, caller: Caller) -> WaitingGuard<'_> {
        self.lock().push_back(caller.clone());
        WaitingGuard { waiting: self, caller }
    }

    /// `caller` was taken by an instance (or claimed by one starting).
    fn leave(&self, caller: &Caller) {
        let mut waiting = self.lock();
        if let Some(at) = waiting.iter().position(|c| Arc::ptr_eq(c, caller)) {
            waiting.remove(at);
        }
    }

    fn claim(&self) -> Option<Caller> {
        self.lock().pop_front()
    }
}

/// Takes a traced request off the [`Waiting`] list when its call to the pool ends.
struct WaitingGuard<'a> {
    waiting: &'a Waiting,
    caller: Caller,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.waiting.leave(&self.caller);
    }
}

/// wasmtime's `ProxyHandler` passes this to [`WorkerState::drop`] when an instance's task was
/// dropped before it ended.
const WORKER_DROPPED: &str = "worker panicked";

/// One version's reused instances. Cloning shares them.
#[derive(Clone)]
pub struct Pool {
    handler: ProxyHandler<PoolState>,
}

impl Pool {
    pub fn new(
        pre: ServicePre<RequestState>,
        stores: Arc<Stores>,
        reuse: Reuse,
        timeout: Duration,
        cost: Arc<dyn InstanceCost>,
    ) -> Self {
        let waiting = Arc::new(Waiting::default());
        let state =
            PoolState { pre, stores, reuse, timeout, cost, waiting, next_instance: AtomicU64::new(0) };
        Self { handler: ProxyHandler::new(state) }
    }

    /// Hands `req` to an instance (starting one if none accepts it) and returns its response.
    pub async fn handle(
        &self,
        caller: Caller,
        req: http::Request<WasiBody>,
    ) -> wasmtime::Result<http::Response<WasiBody>> {
        let waiting = &self.handler.state().waiting;
        let _waiting = caller.traced().then(|| waiting.enter(caller.clone()));
        self.handler.handle(caller, req).await
    }

    /// Instances started so far.
    pub fn instances_started(&self) -> u64 {
        self.handler.state().next_instance.load(Ordering::Relaxed)
    }
}

/// The pool's side of wasmtime's `ProxyHandler`: makes instances with their policy.
struct PoolState {
    pre: ServicePre<RequestState>,
    stores: Arc<Stores>,
    reuse: Reuse,
    /// `--request-timeout`: how long an instance may work on its newest request, or on what it
    /// does after its last response, before it is dropped.
    timeout: Duration,
    cost: Arc<dyn InstanceCost>,
    waiting: Arc<Waiting>,
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
        let started = Instant::now();
        let traced = self.waiting.claim();
        let span = traced.as_ref().and_then(|caller| {
            let parent = caller.trace_parent()?;
            Some(self.stores.traces()?.start_span(
                "instantiate",
                SpanKind::Internal,
                Some(&parent),
                Vec::new(),
            ))
        });
        // The epoch only makes the guest yield: bound a start-up that never ends here.
        let service = match tokio::time::timeout(self.timeout, self.pre.instantiate_async(&mut store)).await {
            Ok(service) => service,
            Err(_) => Err(wasmtime::format_err!("the instance did not start within {:?}", self.timeout)),
        };
        if let Some(span) = span {
            traces::end_span(span, service.as_ref().err());
        }
        let service = service?;
        let took = started.elapsed();
        self.cost.instantiated(took.as_secs_f64());
        if let Some(caller) = traced {
            caller.instantiated(took);
        }
        let memory = store.data().shared_memory().cloned().unwrap_or_default();
        let record = Arc::new(InstanceRecord::new(memory));
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: WasiHttpView::http,
            expiration: Expiry {
                idle_timeout: self.reuse.idle_timeout,
                busy_timeout: self.timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: InstancePolicy {
                label,
                reuse: self.reuse,
                record,
                cost: self.cost.clone(),
                waiting: self.waiting.clone(),
            },
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
    record: Arc<InstanceRecord>,
    cost: Arc<dyn InstanceCost>,
    /// The pool's traced requests waiting for an instance: one this instance takes leaves it.
    waiting: Arc<Waiting>,
}

impl WorkerState for InstancePolicy {
    type StoreData = RequestState;
    type RequestData = Caller;

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
        caller: Caller,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // With several requests on one instance at once, the guest's calls are traced under the
        // request it took last: the store cannot tell which request a call is for.
        store.data_mut().start_request(caller.trace_parent());
        if caller.traced() {
            self.waiting.leave(&caller);
        }
        caller.on_instance(&self.record);
        tracing::debug!(request_id = %caller.id(), instance = %self.label, "request passed to a reused instance");
        let stop = caller.stop().clone();
        Box::pin(async move { stop.reached().await })
    }

    fn drop(&self, store: Store<RequestState>, result: wasmtime::Result<()>) {
        self.cost.retired(store.data().memory().peak_bytes());
        self.record.ended(result.as_ref().err());
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Request(Arc<StopSignal>);

    impl PoolRequest for Request {
        fn id(&self) -> &str {
            "test"
        }
        fn stop(&self) -> &Arc<StopSignal> {
            &self.0
        }
        fn trace_parent(&self) -> Option<SpanContext> {
            None
        }
        fn traced(&self) -> bool {
            true
        }
        fn instantiated(&self, _took: Duration) {}
        fn on_instance(&self, _instance: &Arc<InstanceRecord>) {}
    }

    fn request() -> Caller {
        Arc::new(Request(Arc::new(StopSignal::new(tokio::time::Instant::now()))))
    }

    #[test]
    fn an_instance_starting_claims_the_oldest_request_still_waiting() {
        let waiting = Waiting::default();
        let (first, second, third) = (request(), request(), request());
        let first_guard = waiting.enter(first.clone());
        let second_guard = waiting.enter(second.clone());
        let _third_guard = waiting.enter(third.clone());
        // The first was taken by an instance already running; the second's call ended.
        waiting.leave(&first);
        drop(second_guard);
        assert!(waiting.claim().is_some_and(|claimed| Arc::ptr_eq(&claimed, &third)));
        assert!(waiting.claim().is_none(), "claimed once");
        drop(first_guard);
        assert!(waiting.lock().is_empty());
    }
}
