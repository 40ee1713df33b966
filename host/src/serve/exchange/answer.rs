//! The host's own answers to a fault (`503`, `413`, `431`, `504` …): plain text naming the limit
//! that was hit and the request id.

use http::{HeaderValue, Response};

use super::{Exchange, Outcome, ResponseBody, full};

impl Exchange {
    /// The host's plain-text answer to `outcome`, naming the request id.
    pub(super) fn error_response(&self, outcome: Outcome) -> Response<ResponseBody> {
        let message = self.message(outcome);
        let mut response =
            error_response(outcome.status(), &format!("{message} (request id {})", self.ctx.id));
        if matches!(outcome, Outcome::Overloaded | Outcome::ReleaseUnconfirmed) {
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    /// What the host says when it answers `outcome` itself.
    fn message(&self, outcome: Outcome) -> String {
        let limits = self.limits();
        match outcome {
            Outcome::Overloaded if self.over_unsent_limit() => format!(
                "the server holds more than its limit of {} bytes of responses its clients have not read; retry shortly",
                limits.max_unsent
            ),
            Outcome::Overloaded => format!(
                "the server is at its limit of {} concurrent requests; retry shortly",
                limits.concurrency
            ),
            Outcome::ReleaseUnconfirmed => "this instance could not confirm the current release with its store within `--staleness-wait` (`--staleness-strict`); retry shortly".into(),
            Outcome::HeadTooLarge => format!(
                "the request head exceeds the limits of {} header fields and {} bytes",
                limits.max_headers, limits.max_header_bytes
            ),
            Outcome::BodyTooLarge => match self.ctx.request_size {
                Some(length) if length > limits.max_body_bytes => {
                    format!("request body of {length} bytes exceeds the {}-byte limit", limits.max_body_bytes)
                }
                _ => format!("request body exceeds the {}-byte limit", limits.max_body_bytes),
            },
            Outcome::BodyStalled => format!(
                "the request body made no progress for {}s (`--body-read-timeout`)",
                limits.body_read_timeout.as_secs_f64()
            ),
            Outcome::TimedOut => format!(
                "the component did not respond within the {}s request timeout",
                (self.deadline - self.ctx.started).as_secs_f64()
            ),
            Outcome::BadHost(problem) => problem.describe().into(),
            Outcome::Trapped => "the component failed while handling the request".into(),
            Outcome::NeverResponded => "the component did not produce a response".into(),
            Outcome::ErrorCode => "the component reported an error".into(),
            Outcome::Shutdown => "the server shut down before the response was complete".into(),
            Outcome::Responded | Outcome::WriteStalled | Outcome::ClientGone => outcome.name().into(),
        }
    }
}

/// A plain-text response from the host itself.
pub fn error_response(status: http::StatusCode, message: &str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(format!("{message}\n")))
        .expect("static response parts are valid")
}
