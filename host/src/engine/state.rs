//! What one request's (or one reused instance's) `Store` holds ([`RequestState`]): the WASI and
//! wasi-http contexts, the resource table, the guest's header and log budgets, its memory limits
//! and its outbound policy.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::SpanContext;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::guest_log::{GuestLog, LogBudget};
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
    /// The guest's stdout and stderr (also in `wasi`), to end a line before a relabel.
    pub(crate) guest_logs: [GuestLog; 2],
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

    /// A reused p2 instance takes the request `request_id`: what [`Self::start_request`] does,
    /// and its log lines and outbound calls are that request's; a growth refused during an
    /// earlier request (which it survived) is no longer the reason for a trap.
    pub fn rearm(&mut self, request_id: &str, trace: Option<SpanContext>) {
        for log in &self.guest_logs {
            log.flush_line();
        }
        self.start_request(trace);
        self.log_budget.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).relabel(request_id);
        self.outbound.relabel(request_id);
        self.memory.watch().forget_refusal();
    }

    /// Whether the guest still holds a resource of an HTTP exchange (a request, a response, a
    /// body, trailers, an outbound call): after a clean return, one kept would hold a client's
    /// body or response open for as long as the instance lives. Other resources (the stdout
    /// stream a libc keeps open, `fields`, pollables) may stay, bounded by
    /// `--max-guest-resources`.
    pub fn holds_http_resources(&mut self) -> bool {
        use wasmtime_wasi_http::p2::body::{HostFutureTrailers, HostIncomingBody, HostOutgoingBody};
        use wasmtime_wasi_http::p2::types::{
            HostFutureIncomingResponse, HostIncomingRequest, HostIncomingResponse, HostOutgoingRequest,
            HostOutgoingResponse, HostResponseOutparam,
        };
        self.table.iter_mut().any(|entry| {
            entry.is::<HostIncomingRequest>()
                || entry.is::<HostIncomingBody>()
                || entry.is::<HostFutureTrailers>()
                || entry.is::<HostResponseOutparam>()
                || entry.is::<HostOutgoingResponse>()
                || entry.is::<HostOutgoingBody>()
                || entry.is::<HostOutgoingRequest>()
                || entry.is::<HostFutureIncomingResponse>()
                || entry.is::<HostIncomingResponse>()
        })
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
