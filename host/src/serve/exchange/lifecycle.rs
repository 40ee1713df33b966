//! How one exchange ends, as a pure state machine: the [`Outcome`] decided once, the response
//! head, and what the host must do about a fault (answer, cut, or nothing). No sockets, no
//! clocks: [`super::Exchange`] feeds it events and carries out its [`Action`]s.

use http::StatusCode;

use crate::versions::metrics::Ending;

/// How an exchange ended. Exactly one per request, decided by the first fault (or `Responded`
/// when none came); metrics and the access log read it from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response went out, from the guest or from the host.
    Responded,
    /// Refused at `--concurrency` (503).
    Overloaded,
    /// Refused because the store did not confirm this instance's stale view of the release
    /// within `--staleness-wait` (503, only with `--staleness-strict`).
    ReleaseUnconfirmed,
    /// The request head crossed `--max-headers` or `--max-header-bytes` (431).
    HeadTooLarge,
    /// The request names no host the component could be given (400).
    BadHost(HostProblem),
    /// The request body crossed `--max-body` (413, or a cut once the response had started).
    BodyTooLarge,
    /// The request body made no progress for `--body-read-timeout` (408, or a cut).
    BodyStalled,
    /// `--request-timeout` passed (504, or a cut).
    TimedOut,
    /// The guest trapped, panicked, ran out of memory or stack, or the host failed running it
    /// (500, or a cut).
    Trapped,
    /// `handle` returned without setting a response (500).
    NeverResponded,
    /// The guest answered with a `wasi:http` error code instead of a response (500).
    ErrorCode,
    /// The client took no response bytes for `--write-timeout` (cut).
    WriteStalled,
    /// The client went away (connection closed, stream reset) before the response ended.
    ClientGone,
    /// The server cut it: still in flight when the shutdown grace (`--shutdown-grace`) ran out.
    Shutdown,
}

impl Outcome {
    /// How a version's request that ended so counts for the version (`version_*` metrics, the
    /// canary analysis).
    pub fn ending(self, status: http::StatusCode) -> Ending {
        match self {
            Outcome::Responded if status.is_server_error() => Ending::Guest5xx,
            Outcome::Responded => Ending::Ok,
            Outcome::Trapped | Outcome::NeverResponded | Outcome::ErrorCode => Ending::Trapped,
            Outcome::TimedOut => Ending::TimedOut,
            _ => Ending::Other,
        }
    }

    /// The status the host answers with when this happens before a response head went out.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Responded => StatusCode::OK,
            // Nobody reads a shutdown's answer either; 503 says the server, not the client, ended it.
            Self::Overloaded | Self::ReleaseUnconfirmed | Self::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadHost(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            Self::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Self::Trapped | Self::NeverResponded | Self::ErrorCode => StatusCode::INTERNAL_SERVER_ERROR,
            // Nobody is left to read an answer; the access log still needs a status.
            Self::WriteStalled | Self::ClientGone => {
                StatusCode::from_u16(499).expect("499 is a valid status")
            }
        }
    }

    /// The short name in logs (`outcome` field).
    pub fn name(self) -> &'static str {
        match self {
            Self::Responded => "responded",
            Self::Overloaded => "overloaded",
            Self::ReleaseUnconfirmed => "release_unconfirmed",
            Self::HeadTooLarge => "head_too_large",
            Self::BadHost(_) => "bad_host",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyStalled => "body_stalled",
            Self::TimedOut => "timed_out",
            Self::Trapped => "trapped",
            Self::NeverResponded => "never_responded",
            Self::ErrorCode => "error_code",
            Self::WriteStalled => "write_stalled",
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
        }
    }

    /// Whether the connection must not carry another request after this (the request body was
    /// not read to its end).
    pub fn closes_connection(self) -> bool {
        matches!(self, Self::BodyTooLarge | Self::BodyStalled | Self::BadHost(_))
    }
}

/// What is wrong with a request's host, when its URI has no authority (an HTTP/1 request in
/// origin form) and its `Host` header cannot stand in (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    Missing,
    Repeated,
    /// Not `host[:port]` of visible ASCII (an obs-text byte, userinfo, a bad port).
    Invalid,
}

impl HostProblem {
    /// The reason the 400 gives.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "the request has no `Host` header (HTTP/1.1 requires one)",
            Self::Repeated => "the request has more than one `Host` header",
            Self::Invalid => "the `Host` header is not `host[:port]` in visible ASCII",
        }
    }
}

/// What the host must do about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No head went out yet: answer with this status instead of whatever the guest would send.
    Answer(StatusCode),
    /// The head went out: reset the stream (h2) or close the connection (HTTP/1.1), and finish.
    Cut,
    /// Already decided or finished: the first fault wins.
    Nothing,
}

/// Where the exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No response head yet.
    Waiting,
    /// The head went out with this status; the body is on its way.
    Streaming(StatusCode),
    /// The response ended (or was cut): logged, counted, permit released once the guest stopped.
    Finished,
}

/// The exchange's state machine.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
    outcome: Option<Outcome>,
    /// The status the access log reports: the head's, or the one a fault answered with.
    status: Option<StatusCode>,
    /// A fault came after the head: the response is cut, not ended.
    cut: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self { phase: Phase::Waiting, outcome: None, status: None, cut: false }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// A fault happened. The first one decides the outcome; later ones change nothing.
    pub fn fault(&mut self, fault: Outcome) -> Action {
        if self.outcome.is_some() || self.phase == Phase::Finished {
            return Action::Nothing;
        }
        self.outcome = Some(fault);
        match self.phase {
            Phase::Waiting => Action::Answer(fault.status()),
            Phase::Streaming(_) => {
                self.cut = true;
                Action::Cut
            }
            Phase::Finished => Action::Nothing,
        }
    }

    /// Ends a response that is on its way, whatever was decided before (a host answer to an
    /// earlier fault can stall too). Returns whether there was anything to cut.
    pub fn cut_off(&mut self, outcome: Outcome) -> bool {
        if !matches!(self.phase, Phase::Streaming(_)) {
            return false;
        }
        self.outcome.get_or_insert(outcome);
        self.cut = true;
        true
    }

    /// The response head goes out. A head that answers a fault keeps the fault as the outcome.
    pub fn head(&mut self, status: StatusCode) {
        if self.phase == Phase::Waiting {
            self.phase = Phase::Streaming(status);
            self.status = Some(status);
        }
    }

    /// The response ended, completely or not. Returns the outcome and the status to log the
    /// first time, `None` after that (finishing is idempotent).
    pub fn finish(&mut self) -> Option<(Outcome, StatusCode)> {
        if self.phase == Phase::Finished {
            return None;
        }
        let outcome = *self.outcome.get_or_insert(Outcome::Responded);
        // A request cut before any head (the client left while the guest ran) has no status
        // of its own.
        let status = self.status.unwrap_or_else(|| outcome.status());
        self.phase = Phase::Finished;
        Some((outcome, status))
    }

    /// Whether the response was cut rather than ended: the body must fail if polled again.
    pub fn is_cut(&self) -> bool {
        self.cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_before_the_head_is_answered_with_its_status() {
        let mut life = Lifecycle::new();
        assert_eq!(life.fault(Outcome::TimedOut), Action::Answer(StatusCode::GATEWAY_TIMEOUT));
        assert!(!life.is_cut());
        // The 504 itself goes out and ends: still a timeout.
        life.head(StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(life.finish(), Some((Outcome::TimedOut, StatusCode::GATEWAY_TIMEOUT)));
    }

    #[test]
    fn a_fault_after_the_head_cuts_and_keeps_the_head_status() {
        let mut life = Lifecycle::new();
        life.head(StatusCode::OK);
        assert_eq!(life.fault(Outcome::WriteStalled), Action::Cut);
        assert!(life.is_cut());
        assert_eq!(life.finish(), Some((Outcome::WriteStalled, StatusCode::OK)));
        assert!(life.is_cut(), "a cut stays a cut after finishing");
    }

    #[test]
    fn the_first_fault_wins() {
        let mut life = Lifecycle::new();
        life.head(StatusCode::OK);
        assert_eq!(life.fault(Outcome::TimedOut), Action::Cut);
        assert_eq!(life.fault(Outcome::ClientGone), Action::Nothing);
        assert_eq!(life.fault(Outcome::Trapped), Action::Nothing);
        assert_eq!(life.finish(), Some((Outcome::TimedOut, StatusCode::OK)));
    }

    #[test]
    fn finishing_is_once_and_faults_after_it_do_nothing() {
        let mut life = Lifecycle::new();
        life.head(StatusCode::CREATED);
        assert_eq!(life.finish(), Some((Outcome::Responded, StatusCode::CREATED)));
        assert!(!life.is_cut());
        assert_eq!(life.finish(), None);
        assert_eq!(life.fault(Outcome::ClientGone), Action::Nothing);
        assert_eq!(life.outcome(), Some(Outcome::Responded));
    }

    #[test]
    fn a_client_gone_before_any_head_is_logged_with_499() {
        let mut life = Lifecycle::new();
        assert_eq!(life.fault(Outcome::ClientGone), Action::Answer(Outcome::ClientGone.status()));
        assert_eq!(life.finish(), Some((Outcome::ClientGone, StatusCode::from_u16(499).unwrap())));
    }

    #[test]
    fn a_request_cut_at_shutdown_is_logged_with_503_shutdown() {
        let mut life = Lifecycle::new();
        assert_eq!(life.fault(Outcome::Shutdown), Action::Answer(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(life.finish(), Some((Outcome::Shutdown, StatusCode::SERVICE_UNAVAILABLE)));
        assert_eq!(Outcome::Shutdown.name(), "shutdown");
    }

    #[test]
    fn a_stalled_answer_to_a_fault_can_still_be_cut_off() {
        let mut life = Lifecycle::new();
        assert_eq!(life.fault(Outcome::TimedOut), Action::Answer(StatusCode::GATEWAY_TIMEOUT));
        life.head(StatusCode::GATEWAY_TIMEOUT);
        assert!(!life.is_cut(), "the 504 is an answer, not a cut");
        assert_eq!(life.fault(Outcome::WriteStalled), Action::Nothing);
        assert!(life.cut_off(Outcome::WriteStalled));
        assert!(life.is_cut());
        assert_eq!(life.finish(), Some((Outcome::TimedOut, StatusCode::GATEWAY_TIMEOUT)));
        assert!(!life.cut_off(Outcome::WriteStalled), "nothing left to cut once finished");
    }

    #[test]
    fn a_second_head_does_not_replace_the_first() {
        let mut life = Lifecycle::new();
        life.head(StatusCode::OK);
        life.head(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(life.phase(), Phase::Streaming(StatusCode::OK));
    }

    #[test]
    fn body_faults_close_the_connection() {
        assert!(Outcome::BodyTooLarge.closes_connection());
        assert!(Outcome::BodyStalled.closes_connection());
        assert!(!Outcome::TimedOut.closes_connection());
        assert_eq!(Outcome::BodyStalled.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
