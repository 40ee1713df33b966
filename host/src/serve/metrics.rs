//! What the serve layer counts ([`ServeMetrics`]): responses by class and duration, requests in
//! flight, the limits requests hit, connections closed, unsent response bytes, instantiations.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::serve::connection::CloseReason;
use crate::serve::exchange::lifecycle::Outcome;
use crate::util::metrics::register_counter_family;

/// A response's status class, the `class` label of `echo_host_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    fn of(status: http::StatusCode) -> Self {
        match status.as_u16() {
            ..200 => Self::Informational,
            200..300 => Self::Success,
            300..400 => Self::Redirection,
            400..500 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

impl EncodeLabelValue for CloseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle",
        })
    }
}

/// Which unsent-bytes limit shed a connection, the `limit` label of `echo_host_unsent_limit_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnsentLimit {
    /// `--max-unsent-per-connection`.
    Connection,
    /// `--max-unsent`, the whole process's.
    Total,
}

impl UnsentLimit {
    /// The name in the log line that reports the shed.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Total => "total",
        }
    }
}

impl EncodeLabelValue for UnsentLimit {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: StatusClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: CloseReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: UnsentLimit,
}

/// The series of each labelled family, in the order `/metrics` lists them.
const CLASSES: [ClassLabel; 5] = [
    ClassLabel { class: StatusClass::Informational },
    ClassLabel { class: StatusClass::Success },
    ClassLabel { class: StatusClass::Redirection },
    ClassLabel { class: StatusClass::ClientError },
    ClassLabel { class: StatusClass::ServerError },
];
const REASONS: [ReasonLabel; 2] =
    [ReasonLabel { reason: CloseReason::HeaderTimeout }, ReasonLabel { reason: CloseReason::Idle }];
const LIMITS: [LimitLabel; 2] =
    [LimitLabel { limit: UnsentLimit::Connection }, LimitLabel { limit: UnsentLimit::Total }];

/// What the serve layer counts. Cheap to update from the request path (atomics only).
#[derive(Clone)]
pub struct ServeMetrics {
    /// Responses by status class.
    responses: Family<ClassLabel, Counter>,
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub traps: Counter,
    pub timeouts: Counter,
    pub body_too_large: Counter,
    pub body_read_timeouts: Counter,
    pub write_timeouts: Counter,
    pub overloaded: Counter,
    /// Connections the host closed, by [`CloseReason`] (header timeout, idle).
    connections_closed: Family<ReasonLabel, Counter>,
    /// Response bytes handed to hyper and not yet written to a socket, in the whole process.
    unsent: Gauge,
    /// Responses whose head went to hyper and whose last byte no socket has taken yet.
    undelivered: Gauge,
    /// Connections shed for holding too much unsent response data: over
    /// `--max-unsent-per-connection`, or while the process was over `--max-unsent`.
    unsent_limits: Family<LimitLabel, Counter>,
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
        // In this order: `/metrics` lists them so (the labelled families come later, in
        // [`ServeMetrics::register_families`]).
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
    }

    /// The labelled families, one `# HELP` and `# TYPE` each: responses by status class,
    /// connections closed by reason, connections shed by unsent limit. Registered last, after
    /// every other layer's metrics, where `/metrics` has always listed them.
    pub fn register_families(&self, registry: &mut Registry) {
        register_counter_family(
            registry,
            "requests",
            "Responses sent, by status class",
            self.responses.clone(),
            &CLASSES,
        );
        register_counter_family(
            registry,
            "connections_closed",
            "Connections the host closed: no request head within `--header-read-timeout`, or idle for `--idle-timeout`",
            self.connections_closed.clone(),
            &REASONS,
        );
        register_counter_family(
            registry,
            "unsent_limit",
            "Connections closed gracefully (GOAWAY) for the response bytes their clients did not read: over `--max-unsent-per-connection`, or while the process was over `--max-unsent`",
            self.unsent_limits.clone(),
            &LIMITS,
        );
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

    /// A connection shed at an unsent limit.
    pub fn unsent_limit_reached(&self, limit: UnsentLimit) {
        self.unsent_limits.get_or_create(&LimitLabel { limit }).inc();
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
            | Outcome::ClientGone
            | Outcome::Shutdown => return,
        };
        counter.inc();
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        self.connections_closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn record_response(&self, status: http::StatusCode, duration: Duration) {
        self.responses.get_or_create(&ClassLabel { class: StatusClass::of(status) }).inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// Responses sent, of every status.
    pub fn responses_total(&self) -> u64 {
        CLASSES.iter().filter_map(|labels| self.responses.get(labels)).map(|counter| counter.get()).sum()
    }

    /// 5xx responses sent.
    pub fn server_errors_total(&self) -> u64 {
        self.responses.get(&ClassLabel { class: StatusClass::ServerError }).map_or(0, |counter| counter.get())
    }
}
