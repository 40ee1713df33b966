//! What the serve layer asks of the layers above it ([`Host`]), as wasmtime-wasi-http's
//! `WasiHttpView` asks its embedder: which version serves a request, whether the view of the
//! release may be routed on, what the rollout hears of each ending, and the host's own endpoints.
//! The composition root implements it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use crate::serve::exchange::{Observer, RequestBody, RequestContext, ResponseBody};
use crate::serve::serving::Serving;
use crate::versions::Routed;
use crate::versions::registry::Registry;

/// A boxed future the serve layer awaits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Host: Observer {
    /// The serve layer's own state.
    fn serving(&self) -> &Arc<Serving>;

    /// The versions this host holds (the active one names refusals).
    fn versions(&self) -> &Registry;

    /// The version that serves a request with `headers`.
    fn route(&self, headers: &HeaderMap) -> Routed;

    /// `None` when the view of the release may be routed on now; otherwise the wait for it to be
    /// confirmed (`--max-staleness`), which says whether to route (`false`: answer 503).
    fn release_check(&self) -> Option<BoxFuture<'static, bool>>;

    /// Whether `path` is one of the host's own endpoints rather than the component's.
    fn owns(&self, path: &str) -> bool;

    /// Answers a request to one of the host's own endpoints.
    fn endpoint<'a>(
        &'a self,
        req: Request<RequestBody<Incoming>>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Response<ResponseBody>>;
}
