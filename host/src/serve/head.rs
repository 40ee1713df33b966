//! Waiting on a guest's response head, for a fresh instance ([`crate::serve::proxy`]) and a
//! reused one ([`crate::serve::reuse`]) alike: the head is held until its first body frame, and
//! a fault decided meanwhile is the answer instead.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;

use crate::serve::exchange::{Exchange, GuestEnd, Outcome, ResponseBody};

/// The guest's response head with its first body frame.
pub type GuestResponse = (Response<ResponseBody>, Option<Frame<Bytes>>);

/// Holds the response until its first body frame, the end of the guest, or the deadline,
/// whichever comes first: a guest that sets a response and then crashes (or sets a second one)
/// before writing a byte gets a 500, not a 200 with a cut body. Streaming is not delayed: the
/// head goes out with the first bytes.
pub async fn peek_first_frame<B>(
    exchange: &Arc<Exchange>,
    response: Response<B>,
) -> Result<GuestResponse, Outcome>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, mut body) = response.into_parts();
    let first = loop {
        tokio::select! {
            biased;
            frame = body.frame() => break frame,
            _ = exchange.changed() => {
                if let Some(outcome) = exchange.pending_answer() {
                    return Err(outcome);
                }
                match exchange.guest_end() {
                    None | Some(GuestEnd::Returned) => {}
                    Some(end) => return Err(decided(exchange, end.outcome_before_head())),
                }
            }
            _ = tokio::time::sleep_until(exchange.deadline) => return Err(decided(exchange, Outcome::TimedOut)),
        }
    };
    let first = match first {
        Some(Ok(frame)) => Some(frame),
        // An empty body ends the same way whether the guest finished it or died: ask the guest.
        None => match exchange.guest_end() {
            Some(end @ (GuestEnd::Trapped | GuestEnd::TimedOut)) => {
                return Err(decided(exchange, end.outcome_before_head()));
            }
            _ => None,
        },
        Some(Err(error)) => {
            let outcome = match exchange.guest_end() {
                Some(GuestEnd::TimedOut) => Outcome::TimedOut,
                _ => Outcome::Trapped,
            };
            if outcome == Outcome::Trapped {
                let what = "the component's response body failed before its first byte";
                exchange.guest_failed(exchange.cause_of(what, &error, None));
            }
            return Err(decided(exchange, outcome));
        }
    };
    let body = body.map_err(|error| anyhow::Error::from(error).context("the guest's response body failed"));
    Ok((Response::from_parts(parts, body.boxed_unsync()), first))
}

/// Resolves once a fault was decided that the request path must answer.
pub async fn wait_for_fault(exchange: &Exchange) {
    while exchange.pending_answer().is_none() {
        exchange.changed().await;
    }
}

/// Records `outcome` as a fault and returns the outcome the exchange settled on (an earlier
/// fault wins).
pub fn decided(exchange: &Exchange, outcome: Outcome) -> Outcome {
    exchange.fault(outcome);
    exchange.pending_answer().unwrap_or(outcome)
}
