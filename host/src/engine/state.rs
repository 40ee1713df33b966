//! What one request's (or one reused instance's) `Store` holds ([`RequestState`]): the WASI and
//! wasi-http contexts, the resource table, the guest's header and log budgets, its memory limits
//! and its outbound policy.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::SpanContext;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::guest_log::LogBudget;
use crate::engine::header_budget::HeaderBudget;
use crate::engine::memory::{MemoryLimiter, MemoryWatch};
use crate::engine::outbound::OutboundPolicy;

/// Everything one request's `Store` holds.
pub struct RequestState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    /// Header bytes the guest may still build (`--max-guest-header-bytes`).
    pub(crate) header_budget: HeaderBudget,
    /// What the guest may still log; shared with its stdout and stderr.
    pub(crate) log_budget: Arc<Mutex<LogBudget>>,
    /// `--max-memory`, and what the guest's memories reached and were refused.
    pub(crate) memory: MemoryLimiter,
    pub(crate) outbound: OutboundPolicy,
}

impl RequestState {
    /// A reused (p3) instance takes a new request: its guest gets full header and log budgets
    /// again (the per-request limits of a p2 store hold for the store's life), and its outbound
    /// calls are traced under that request's span.
    pub fn start_request(&mut self, trace: Option<SpanContext>) {
        self.header_budget.refill();
        self.log_budget.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).refill();
        self.outbound.trace_under(trace);
    }

    /// The guest's outbound calls are traced as children of `parent` (traces on only).
    pub fn trace_under(&mut self, parent: Option<SpanContext>) {
        self.outbound.trace_under(parent);
    }

    /// What the instance's memories reached, and the growth refused (an out-of-memory trap).
    pub fn memory(&self) -> &MemoryWatch {
        self.memory.watch()
    }

    /// The same, shared with the requests of a reused instance.
    pub fn shared_memory(&self) -> Option<&Arc<MemoryWatch>> {
        self.memory.shared_watch()
    }

    pub(crate) fn header_budget(&mut self) -> &mut HeaderBudget {
        &mut self.header_budget
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}
