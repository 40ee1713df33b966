//! One request from its accepted head to the last byte of its response taken by the socket (an
//! exchange): the concurrency permit, the deadline, when the guest must stop, the headers the
//! host adds, the outcome and the access-log record. Every response leaves through
//! [`Exchange::respond`] and every exchange ends in [`Exchange::finish`], once.
//!
//! - [`lifecycle`]: the pure state machine that decides the outcome and what a fault means.
//! - [`answer`]: the host's own answers: what they say, per outcome.
//! - [`body`]: the request body (limit, progress timer) and the response body (progress, end).
//! - [`delivery`]: the response's frames until hyper let go of them (written or discarded), and
//!   the unsent bytes they count against `--max-unsent*`.
//! - [`StopSignal`] ([`crate::engine::stop`]): the guest's stop time, shared with its store's
//!   epoch callback.
//! - [`record`]: the request's context and its access-log line.
//! - [`failure`]: why its guest failed, and the one ERROR line that says so.
//! - [`span`]: its server span, when traces are on.
//! - [`supervise`]: the supervisor's watch over the response (deadline, write timeout).
//!
//! Three parties act on an exchange: the request path (hyper's service future: checks, the
//! guest's response head), the response body (polled by hyper), and the supervisor (the guest
//! task, which also watches the deadline and the write timeout, because hyper stops polling a
//! body its client does not read). A fourth, hyper dropping the response's last frame, ends it
//! ([`delivery`]). The first fault wins; `finish` happens once.

mod answer;
mod body;
mod delivery;
mod failure;
pub mod lifecycle;
mod record;
mod span;
mod supervise;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use opentelemetry::trace::{Span as _, SpanContext};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use crate::engine::stop::StopSignal;
pub use answer::error_response;
use body::Progress;
pub use body::{ExchangeBody, RequestBody, ResponseBody, full};
use delivery::Delivery;
pub use lifecycle::{Action, HostProblem, Lifecycle, Outcome, Phase};
pub use record::{Observer, RequestContext, declared_length};
pub use span::GuestCost;

use crate::engine::limits::Limits;
use crate::engine::pool::InstanceRecord;
use crate::serve::connection::Scope;
use crate::serve::serving::{Permit, Serving};
use crate::versions::Role;
use crate::versions::registry::ActiveComponent;

/// How the guest's run ended, as far as the exchange cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    /// `handle` returned.
    Returned,
    /// It trapped, or the host failed running it.
    Trapped,
    /// Stopped at the request deadline.
    TimedOut,
    /// Stopped by the host because its response was over (ended, cut or answered by the host).
    Stopped,
}

impl GuestEnd {
    /// What a guest that ended this way before its response head means for the exchange.
    pub fn outcome_before_head(self) -> Outcome {
        match self {
            Self::Returned => Outcome::NeverResponded,
            Self::Trapped => Outcome::Trapped,
            Self::TimedOut => Outcome::TimedOut,
            // Only a fault stops a guest before its head, and that fault was decided first.
            Self::Stopped => Outcome::ClientGone,
        }
    }
}

/// Whose exchange this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client's request: counted, logged.
    Request,
    /// A swap's smoke probe: logged at debug, not counted.
    Probe,
}

/// One exchange. Shared (`Arc`) by the request path, the response body and the guest task.
pub struct Exchange {
    serving: Arc<Serving>,
    /// The layers above, told how a client's request ended (`None` for a probe).
    observer: Option<Arc<dyn Observer>>,
    pub ctx: RequestContext,
    pub deadline: Instant,
    kind: Kind,
    /// Where it runs (`None` for a probe): its connection and the token that cuts its response.
    scope: Option<Scope>,
    /// When the guest must stop.
    pub stop: Arc<StopSignal>,
    state: Mutex<State>,
    /// Response-body progress, updated by the body without the lock.
    progress: Progress,
    /// The response's frames hyper still holds: the exchange ends when none are left.
    delivery: Delivery,
    /// Wakes the request path while it waits for the guest's head: a fault to answer, the guest
    /// ended.
    waiter: Notify,
    /// Wakes the supervisor: the head went out, the exchange finished.
    supervisor: Notify,
    /// The version routed to serve it, and as what.
    served: OnceLock<(Arc<ActiveComponent>, Role)>,
    /// The reused (p3) instance it was passed to: its memory, and why it failed.
    instance: OnceLock<Arc<InstanceRecord>>,
    /// Its server span's context, the parent of the spans its guest makes (traces on only).
    trace: Option<SpanContext>,
}

struct State {
    lifecycle: Lifecycle,
    /// Held until the response is over and the guest has stopped.
    permit: Option<Permit>,
    guest: Guest,
    /// Why the guest failed, as whoever saw it first recorded it ([`failure`]).
    failure: Option<String>,
    /// The ERROR line for this request's guest was written.
    failure_logged: bool,
    /// The server span, ended by `finish` (traces on only).
    span: Option<opentelemetry_sdk::trace::Span>,
    /// The server span after `finish` while the guest runs on, ended when it reports.
    ended_span: Option<span::EndedSpan>,
    /// What the guest cost, for the server span (traces on only).
    cost: GuestCost,
}

impl State {
    /// The permit, once nothing needs it: the guest has stopped, and the response is over or is
    /// the host's own answer to a fault.
    fn release_permit(&mut self) -> Option<Permit> {
        let guest_done = !matches!(self.guest, Guest::Running);
        let response_done = self.lifecycle.phase() == Phase::Finished || self.lifecycle.outcome().is_some();
        if guest_done && response_done { self.permit.take() } else { None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    NotStarted,
    Running,
    Ended(GuestEnd),
}

impl Exchange {
    /// A request accepted on the current connection.
    pub fn start<B>(
        serving: &Arc<Serving>,
        observer: Arc<dyn Observer>,
        req: &Request<B>,
        remote: std::net::SocketAddr,
    ) -> Arc<Self> {
        let mut ctx = RequestContext::new(serving, req, remote);
        let scope = Scope::current();
        if let Some(scope) = &scope {
            scope.connection.request_started(req.version() == http::Version::HTTP_2);
        }
        let timeout = serving.limits().request_timeout;
        let span = serving.traces().map(|traces| span::start(traces, req, &ctx));
        if let Some(span) = &span {
            // The access log names the span's trace, also when this request started it.
            ctx.trace = Some(span::trace_name(span.span_context(), serving.project_id()));
        }
        Self::new(serving, Some(observer), ctx, scope, Kind::Request, timeout, span)
    }

    /// A smoke probe of a candidate component, with its own time limit.
    pub fn probe<B>(serving: &Arc<Serving>, req: &Request<B>, timeout: Duration) -> Arc<Self> {
        let mut ctx = RequestContext::new(serving, req, ([127, 0, 0, 1], 0).into());
        ctx.id = format!("probe-{}", ctx.id);
        Self::new(serving, None, ctx, None, Kind::Probe, timeout, None)
    }

    fn new(
        serving: &Arc<Serving>,
        observer: Option<Arc<dyn Observer>>,
        ctx: RequestContext,
        scope: Option<Scope>,
        kind: Kind,
        timeout: Duration,
        span: Option<opentelemetry_sdk::trace::Span>,
    ) -> Arc<Self> {
        let deadline = ctx.started + timeout;
        let trace = span.as_ref().map(|span| span.span_context().clone());
        Arc::new(Self {
            serving: serving.clone(),
            observer,
            deadline,
            kind,
            scope,
            stop: Arc::new(StopSignal::new(deadline)),
            state: Mutex::new(State {
                lifecycle: Lifecycle::new(),
                permit: None,
                guest: Guest::NotStarted,
                failure: None,
                failure_logged: false,
                span,
                ended_span: None,
                cost: GuestCost::default(),
            }),
            progress: Progress::new(ctx.started),
            delivery: Delivery::new(),
            waiter: Notify::new(),
            supervisor: Notify::new(),
            served: OnceLock::new(),
            instance: OnceLock::new(),
            trace,
            ctx,
        })
    }

    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    pub fn limits(&self) -> &Limits {
        self.serving.limits()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the version routed to serve this request: its telemetry counts the exchange.
    pub fn served_by(&self, component: Arc<ActiveComponent>, role: Role) {
        let _ = self.served.set((component, role));
    }

    /// Takes a `--concurrency` permit for the guest; `false` when none is free.
    pub fn admit(&self) -> bool {
        match self.serving.try_permit() {
            Some(permit) => {
                self.state().permit = Some(permit);
                true
            }
            None => false,
        }
    }

    /// The one way out for every response, the guest's or the host's: adds the host's headers,
    /// records the head, and wraps the body so its end (or abandonment) finishes the exchange.
    /// `version` names the component that answered (for the host's own answers: the active one).
    /// A fault decided before the head replaces the response with the host's answer to it.
    pub fn respond(
        self: &Arc<Self>,
        response: Response<ResponseBody>,
        first: Option<Frame<Bytes>>,
        version: &HeaderValue,
    ) -> Response<ResponseBody> {
        match self.pending_answer() {
            Some(decided) => self.send(self.error_response(decided), None, version),
            None => self.send(response, first, version),
        }
    }

    /// The host's own answer to `outcome` (or to the fault decided before it).
    pub fn answer(self: &Arc<Self>, outcome: Outcome, version: &HeaderValue) -> Response<ResponseBody> {
        self.fault(outcome);
        let decided = self.pending_answer().unwrap_or(outcome);
        self.send(self.error_response(decided), None, version)
    }

    fn send(
        self: &Arc<Self>,
        response: Response<ResponseBody>,
        first: Option<Frame<Bytes>>,
        version: &HeaderValue,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        let outcome = {
            let mut state = self.state();
            state.lifecycle.head(parts.status);
            state.lifecycle.outcome()
        };
        self.head_handed();
        parts.headers.insert("echo-host-request-id", self.ctx.id_header());
        parts.headers.insert("echo-host-component", version.clone());
        // The request body was not read to its end: the connection cannot carry another request
        // (HTTP/2 has no such header: the stream ends by itself).
        if outcome.is_some_and(Outcome::closes_connection) && self.ctx.version != http::Version::HTTP_2 {
            parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        self.progress.handed(0);
        let no_guest = self.state().guest == Guest::NotStarted;
        if no_guest && self.kind == Kind::Request {
            // The guest task supervises a guest's response; the host's own answers get a task
            // of their own, so a client that never reads them cannot hold them past the limits.
            let exchange = self.clone();
            tokio::spawn(async move { exchange.supervise().await });
        } else {
            self.supervisor.notify_one();
        }
        let body = ExchangeBody::new(self.clone(), first, body, declared);
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// A fault, from wherever it was seen. Before the head the request path answers it (and the
    /// guest stops now); after it the response is cut and the exchange finishes.
    pub fn fault(&self, outcome: Outcome) -> Action {
        // Past the shutdown grace the server drops its connections: not the client's doing.
        let outcome = match outcome {
            Outcome::ClientGone if self.serving.is_cut_for_shutdown() => Outcome::Shutdown,
            outcome => outcome,
        };
        let (action, permit) = {
            let mut state = self.state();
            let action = state.lifecycle.fault(outcome);
            (action, state.release_permit())
        };
        drop(permit);
        match action {
            Action::Answer(_) => {
                self.stop.stop_now();
                self.waiter.notify_one();
            }
            Action::Cut => {
                if let Some(scope) = &self.scope {
                    scope.cut();
                }
                self.finish();
            }
            Action::Nothing => {}
        }
        action
    }

    /// The outcome decided before the head, which the request path must answer.
    pub fn pending_answer(&self) -> Option<Outcome> {
        let state = self.state();
        match state.lifecycle.phase() {
            Phase::Waiting => state.lifecycle.outcome(),
            _ => None,
        }
    }

    /// The outcome decided so far (`None` while nothing went wrong and the response is not over).
    pub fn outcome(&self) -> Option<Outcome> {
        self.state().lifecycle.outcome()
    }

    pub fn is_cut(&self) -> bool {
        self.state().lifecycle.is_cut()
    }

    /// Ends the exchange (first call only): counts, logs, lets the guest stop (after
    /// `--after-response-grace` when the response ended, at once when it was cut) and releases
    /// the permit once the guest has stopped.
    pub fn finish(&self) {
        let (outcome, status, cut, permit, span) = {
            let mut state = self.state();
            let Some((outcome, status)) = state.lifecycle.finish() else { return };
            let cut = state.lifecycle.is_cut();
            let permit = state.release_permit();
            (outcome, status, cut, permit, state.span.take())
        };
        drop(permit);
        self.delivery_over();
        match outcome {
            Outcome::Responded => self.stop.stop_by(Instant::now() + self.limits().after_response_grace),
            _ => self.stop.stop_now(),
        }
        if let Some(scope) = &self.scope {
            scope.connection.request_finished();
        }
        self.supervisor.notify_one();
        let latency = self.ctx.started.elapsed();
        let bytes = self.progress.bytes();
        match self.kind {
            Kind::Request => {
                self.serving.metrics.record_outcome(outcome, status, latency);
                let served = self.served.get();
                if let (Some((component, role)), Some(observer)) = (served, &self.observer) {
                    observer.observe(component, *role, outcome.ending(status), latency.as_secs_f64());
                }
                self.ctx.log(outcome, cut, status, bytes, latency, served.map(|(c, _)| c.version()));
                if let Some(span) = span {
                    self.end_span(span, outcome, status, bytes, served.map(|(c, role)| (c.as_ref(), *role)));
                }
                self.report_failure(outcome, cut);
            }
            Kind::Probe => {
                tracing::debug!(request_id = %self.ctx.id, status = status.as_u16(), outcome = outcome.name(), "swap probe answered");
            }
        }
    }

    pub fn guest_started(&self) {
        self.state().guest = Guest::Running;
    }

    /// The guest task's report, made before its store (and the response body's sender) goes,
    /// with what the guest cost when traces are on: a server span waiting for it ends.
    pub fn guest_ended(&self, end: GuestEnd, cost: Option<GuestCost>) {
        let (permit, ended_span) = {
            let mut state = self.state();
            state.guest = Guest::Ended(end);
            if let Some(cost) = cost {
                state.cost = cost;
            }
            (state.release_permit(), state.ended_span.take())
        };
        drop(permit);
        if let Some(span) = ended_span {
            span.end(&cost.unwrap_or_default());
        }
        self.waiter.notify_one();
    }

    pub fn guest_end(&self) -> Option<GuestEnd> {
        match self.state().guest {
            Guest::Ended(end) => Some(end),
            _ => None,
        }
    }

    /// Resolves when something the request path waits on may have changed.
    pub async fn changed(&self) {
        self.waiter.notified().await
    }
}

/// Marks an exchange whose request path was dropped before it produced a response (the client
/// went away while the guest ran): finishes it as `ClientGone`.
pub struct Pending(Option<Arc<Exchange>>);

impl Pending {
    pub fn new(exchange: Arc<Exchange>) -> Self {
        Self(Some(exchange))
    }

    /// The request path produced its response; the body now owns the end.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(exchange) = self.0.take() {
            exchange.fault(Outcome::ClientGone);
            exchange.finish();
        }
    }
}
