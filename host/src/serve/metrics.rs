//! What the serve layer counts ([`ServeMetrics`]): responses by class and duration, requests in
//! flight, the limits requests hit, connections closed, unsent response bytes, instantiations.

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::serve::connection::CloseReason;
use crate::serve::exchange::lifecycle::Outcome;

fn close_reason_label(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::HeaderTimeout => "header_timeout",
        CloseReason::Idle => "idle",
    }
}

/// The `limit` labels of `echo_host_unsent_limit_total`.
const UNSENT_LIMITS: [&str; 2] = ["connection", "total"];

/// What the serve layer counts. Cheap to update from the request path (atomics only).
#[derive(Clone)]
pub struct ServeMetrics {
    /// Responses by status class, indexed 1xx..5xx as 0..4.
    responses: [Counter; 5],
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub traps: Counter,
    pub timeouts: Counter,
    pub body_too_large: Counter,
    pub body_read_timeouts: Counter,
    pub write_timeouts: Counter,
    pub overloaded: Counter,
    /// Connections the host closed, by [`CloseReason`] (header timeout, idle).
    connections_closed: [Counter; 2],
    /// Response bytes handed to hyper and not yet written to a socket, in the whole process.
    unsent: Gauge,
    /// Responses whose head went to hyper and whose last byte no socket has taken yet.
    undelivered: Gauge,
    /// Connections shed for holding too much unsent response data: over
    /// `--max-unsent-per-connection`, or while the process was over `--max-unsent`.
    unsent_limits: [Counter; 2],
    pub instantiation: Histogram,
    /// `release_stale_refused`, registered by the release store's metrics: requests answered 503
    /// because the view of the release was not confirmed in time.
    stale_refused: Counter,
}

impl ServeMetrics {
    /// Registers the serve layer's metrics in `registry`; `stale_refused` is the release store's
    /// counter of requests refused on an unconfirmed view, which an exchange's outcome counts.
    pub fn new(registry: &mut Registry, stale_refused: Counter) -> Self {
        let metrics = Self {
            responses: Default::default(),
            // 100 µs .. ~100 s.
            request_duration: Histogram::new(exponential_buckets(0.0001, 2.5, 16)),
            in_flight: Gauge::default(),
            traps: Counter::default(),
            timeouts: Counter::default(),
            body_too_large: Counter::default(),
            body_read_timeouts: Counter::default(),
            write_timeouts: Counter::default(),
            overloaded: Counter::default(),
            connections_closed: Default::default(),
            unsent: Gauge::default(),
            undelivered: Gauge::default(),
            unsent_limits: Default::default(),
            instantiation: Histogram::new(exponential_buckets(0.00001, 2.5, 14)),
            stale_refused,
        };
        // In this order: `/metrics` lists them so.
        metrics.register_requests(registry);
        metrics.register_connections(registry);
        registry.register(
            "overloaded",
            "Requests refused at `--concurrency` (503)",
            metrics.overloaded.clone(),
        );
        registry.register(
            "instantiation_seconds",
            "Time to instantiate the component for a request",
            metrics.instantiation.clone(),
        );
        metrics
    }

    /// Responses by class and duration, requests in flight, and the limits requests hit.
    fn register_requests(&self, registry: &mut Registry) {
        for (i, counter) in self.responses.iter().enumerate() {
            let class = format!("{}xx", i + 1);
            registry.sub_registry_with_label((Cow::Borrowed("class"), Cow::Owned(class))).register(
                "requests",
                "Responses sent, by status class",
                counter.clone(),
            );
        }
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            self.request_duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests holding a `--concurrency` permit: guest running or response on its way",
            self.in_flight.clone(),
        );
        for (name, help, counter) in [
            (
                "guest_traps",
                "Requests whose guest trapped (including memory and stack exhaustion)",
                &self.traps,
            ),
            ("request_timeouts", "Requests stopped at `--request-timeout`", &self.timeouts),
            (
                "body_too_large",
                "Requests refused or cut for exceeding `--max-body` (413)",
                &self.body_too_large,
            ),
            (
                "body_read_timeouts",
                "Requests whose body made no progress for `--body-read-timeout` (408 or cut)",
                &self.body_read_timeouts,
            ),
            (
                "write_timeouts",
                "Responses cut because the client took no bytes for `--write-timeout`",
                &self.write_timeouts,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }

    /// Connections the host closed, and the response bytes clients have not taken.
    fn register_connections(&self, registry: &mut Registry) {
        for (reason, counter) in
            [CloseReason::HeaderTimeout, CloseReason::Idle].iter().zip(&self.connections_closed)
        {
            let label = (Cow::Borrowed("reason"), Cow::Borrowed(close_reason_label(*reason)));
            registry.sub_registry_with_label(label).register(
                "connections_closed",
                "Connections the host closed: no request head within `--header-read-timeout`, or idle for `--idle-timeout`",
                counter.clone(),
            );
        }
        registry.register(
            "unsent_response_bytes",
            "Response bytes handed to the HTTP stack and not yet written to a socket (a client that does not read holds them)",
            self.unsent.clone(),
        );
        registry.register(
            "responses_undelivered",
            "Responses whose head went to the HTTP stack and whose last byte the client has not taken yet",
            self.undelivered.clone(),
        );
        for (limit, counter) in UNSENT_LIMITS.iter().zip(&self.unsent_limits) {
            registry.sub_registry_with_label((Cow::Borrowed("limit"), Cow::Borrowed(*limit))).register(
                "unsent_limit",
                "Connections closed gracefully (GOAWAY) for the response bytes their clients did not read: over `--max-unsent-per-connection`, or while the process was over `--max-unsent`",
                counter.clone(),
            );
        }
    }

    /// Response bytes handed to hyper.
    pub fn unsent_added(&self, bytes: u64) {
        self.unsent.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Response bytes handed to hyper and not yet written, in the whole process.
    pub fn unsent(&self) -> u64 {
        u64::try_from(self.unsent.get()).unwrap_or(0)
    }

    /// Responses whose head went to hyper and whose last byte no socket has taken yet.
    pub fn undelivered(&self) -> u64 {
        u64::try_from(self.undelivered.get()).unwrap_or(0)
    }

    /// A response head went to hyper (`+1`), or its exchange finished (`-1`).
    pub fn undelivered_changed(&self, by: i64) {
        self.undelivered.inc_by(by);
    }

    /// Response bytes hyper let go of.
    pub fn unsent_sent(&self, bytes: u64) {
        self.unsent.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A connection shed at an unsent limit: `"connection"` or `"total"`.
    pub fn unsent_limit_reached(&self, limit: &str) {
        if let Some(i) = UNSENT_LIMITS.iter().position(|l| *l == limit) {
            self.unsent_limits[i].inc();
        }
    }

    /// Counts an exchange that ended: its status class, its duration, and the limit it hit.
    pub fn record_outcome(&self, outcome: Outcome, status: http::StatusCode, duration: Duration) {
        self.record_response(status, duration);
        let counter = match outcome {
            Outcome::TimedOut => &self.timeouts,
            Outcome::BodyTooLarge => &self.body_too_large,
            Outcome::BodyStalled => &self.body_read_timeouts,
            Outcome::WriteStalled => &self.write_timeouts,
            Outcome::Overloaded => &self.overloaded,
            // Traps are counted where the guest ends (a trap after a complete response too).
            Outcome::ReleaseUnconfirmed => &self.stale_refused,
            Outcome::Responded
            | Outcome::HeadTooLarge
            | Outcome::BadHost(_)
            | Outcome::Trapped
            | Outcome::NeverResponded
            | Outcome::ErrorCode
            | Outcome::ClientGone => return,
        };
        counter.inc();
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        let index = match reason {
            CloseReason::HeaderTimeout => 0,
            CloseReason::Idle => 1,
        };
        self.connections_closed[index].inc();
    }

    pub fn record_response(&self, status: http::StatusCode, duration: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// Responses sent, of every status.
    pub fn responses_total(&self) -> u64 {
        self.responses.iter().map(Counter::get).sum()
    }

    /// 5xx responses sent.
    pub fn server_errors_total(&self) -> u64 {
        self.responses[4].get()
    }
}
