//! Response bytes between hyper and the peer. hyper takes a frame long before the client does:
//! h2 buffers it until the stream's flow-control window lets it out, HTTP/1.1 queues it until the
//! socket takes it. So every data frame the response body hands to hyper is wrapped
//! ([`Exchange::track`]) in a `Bytes` whose owner tells the exchange when hyper drops it:
//! written to the socket, or discarded with a reset stream or a closed connection.
//!
//! The exchange ends when its body has ended *and* nothing it handed out is still held
//! ([`Delivery`]). Until then the deadline and the write timeout still apply, and for h2 the
//! body does not report its end to hyper (which would send `END_STREAM` and leave the stream
//! past reset, its buffers waiting for a window that may never open): the stream can still be
//! reset, and its buffers freed, when the client does not take them. An HTTP/1.1 body reports
//! its end at once (the last chunk then shares the data's write); its connection is closed
//! through its scope when the bytes stay unsent.
//!
//! The same hand-off counts the bytes unsent, per connection and in the process, against
//! `--max-unsent-per-connection` and `--max-unsent`. Against the total, every undelivered
//! response also counts [`RESPONSE_CHARGE`]: a small answer held behind a zero window costs its
//! stream, its request head and its exchange, far more than its bytes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Exchange, Outcome};
use crate::serve::connection::Scope;
use crate::serve::metrics::UnsentLimit;

/// What one undelivered response counts against `--max-unsent` besides its bytes: about what its
/// h2 stream, request head and exchange hold (measured: ~30 KiB a stream with 6 KB of request
/// headers, ~10 KiB with a bare `GET`).
pub const RESPONSE_CHARGE: u64 = 16 << 10;

/// What of a response hyper still holds: frames handed to it and not yet dropped, plus one for
/// the body while it has not ended.
pub(super) struct Delivery {
    held: AtomicUsize,
    /// Counted in `echo_host_responses_undelivered` (from its head to the exchange's end).
    counted: AtomicBool,
    /// The body waiting for the last frame to be dropped before it reports its end.
    waker: Mutex<Option<Waker>>,
}

impl Delivery {
    pub(super) fn new() -> Self {
        Self { held: AtomicUsize::new(1), counted: AtomicBool::new(false), waker: Mutex::new(None) }
    }

    fn hold(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    /// One holder let go; `true` when it was the last (the response is delivered).
    fn release(&self) -> bool {
        if self.held.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let waker = self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Ready once everything handed to hyper was dropped (after the body's own release).
    pub(super) fn poll_delivered(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.held.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cx.waker().clone());
        // A release between the check and the store found no waker to wake.
        if self.held.load(Ordering::Acquire) == 0 { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// A data frame in hyper's or h2's hands; dropping it is its delivery.
struct HeldFrame {
    data: Bytes,
    exchange: Arc<Exchange>,
}

impl AsRef<[u8]> for HeldFrame {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for HeldFrame {
    fn drop(&mut self) {
        self.exchange.frame_dropped(self.data.len() as u64);
    }
}

impl Exchange {
    /// The response head goes to hyper: counted as undelivered until the exchange finishes.
    pub(super) fn head_handed(&self) {
        if self.scope.is_some() && !self.delivery.counted.swap(true, Ordering::AcqRel) {
            self.serving.metrics.undelivered_changed(1);
        }
    }

    /// The exchange finished: no longer undelivered.
    pub(super) fn delivery_over(&self) {
        if self.delivery.counted.swap(false, Ordering::AcqRel) {
            self.serving.metrics.undelivered_changed(-1);
        }
    }

    /// What the process holds for clients that have not read, as `--max-unsent` counts it:
    /// unsent bytes plus [`RESPONSE_CHARGE`] per undelivered response.
    fn unsent_held(&self) -> u64 {
        let metrics = &self.serving.metrics;
        metrics.unsent().saturating_add(metrics.undelivered().saturating_mul(RESPONSE_CHARGE))
    }

    /// Whether the process holds more than `--max-unsent` for clients that have not read.
    pub fn over_unsent_limit(&self) -> bool {
        self.unsent_held() > self.limits().max_unsent
    }

    /// Refuses a request past `--max-unsent` without an answer its client could hold too: the
    /// `503` goes to hyper, but the h2 stream is reset (or the HTTP/1.1 connection closed)
    /// before the client can hold it, and the connection is closed gracefully.
    pub fn refuse_over_unsent(
        self: &Arc<Self>,
        version: &http::HeaderValue,
    ) -> http::Response<super::ResponseBody> {
        self.shed_connection(UnsentLimit::Total, self.unsent_held(), self.limits().max_unsent);
        let response = self.answer(Outcome::Overloaded, version);
        if let Some(scope) = &self.scope {
            scope.cut();
        }
        response
    }

    /// Wraps a data frame on its way to hyper so that its delivery is noticed and its bytes
    /// count as unsent until then. A probe's body is read in-process: nothing to track.
    pub(super) fn track(self: &Arc<Self>, data: Bytes) -> Bytes {
        let Some(scope) = &self.scope else { return data };
        let len = data.len() as u64;
        if len == 0 {
            return data;
        }
        self.delivery.hold();
        let limits = self.limits();
        self.serving.metrics.unsent_added(len);
        let on_connection = scope.connection.unsent_added(len);
        if on_connection > limits.max_unsent_per_connection {
            self.shed_connection(UnsentLimit::Connection, on_connection, limits.max_unsent_per_connection);
        } else if self.over_unsent_limit() {
            self.shed_connection(UnsentLimit::Total, self.unsent_held(), limits.max_unsent);
        }
        Bytes::from_owner(HeldFrame { data, exchange: self.clone() })
    }

    /// Closes this exchange's connection gracefully (h2: GOAWAY, new streams refused; HTTP/1.1:
    /// no further request), counted and logged once per connection.
    fn shed_connection(&self, limit: UnsentLimit, held: u64, max: u64) {
        let Some(scope) = &self.scope else { return };
        if scope.connection.shed() {
            self.serving.metrics.unsent_limit_reached(limit);
            tracing::warn!(
                request_id = %self.ctx.id,
                remote_ip = %self.ctx.remote_ip,
                held_bytes = held,
                limit_bytes = max,
                "the connection holds too many response bytes its client has not read ({} limit): closing it gracefully",
                limit.name()
            );
        }
    }

    fn frame_dropped(&self, len: u64) {
        self.serving.metrics.unsent_sent(len);
        if let Some(scope) = &self.scope {
            scope.connection.unsent_sent(len);
        }
        if self.delivery.release() {
            // Discarded, not written: the HTTP/1.1 connection was closed under it (another
            // exchange's deadline), or its h2 stream reset.
            if self.scope.as_ref().is_some_and(Scope::is_cut) {
                self.fault(Outcome::ClientGone);
            }
            self.finish();
        }
    }

    /// The body handed hyper its last byte (or hyper dropped it complete): the guest is no
    /// longer needed past `--after-response-grace`; the exchange ends once hyper let go of
    /// every frame. Called once per exchange.
    pub(super) fn body_ended(&self) {
        self.stop.stop_by(Instant::now() + self.limits().after_response_grace);
        if self.delivery.release() {
            self.finish();
        }
    }
}
