//! The two bodies of an exchange: the request body on its way to the guest ([`RequestBody`]:
//! `--max-body` and `--body-read-timeout`) and the response on its way to the client
//! ([`ExchangeBody`]: bytes counted, progress reported for `--write-timeout`, its end or its
//! abandonment reported to the exchange).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::{Instant, Sleep};

use super::lifecycle::Outcome;
use super::{Exchange, GuestEnd};

/// The body type of every response the host sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, anyhow::Error>;

/// A complete in-memory response body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A request body that fails once more than `limit` bytes arrived, or when no bytes arrive for
/// `--body-read-timeout` while someone waits for them; either is a fault of the exchange.
pub struct RequestBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    exchange: Arc<Exchange>,
    /// Runs only while the reader waits (a guest that does not read is not stalled).
    stall: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<B> RequestBody<B> {
    pub fn new(inner: B, limit: u64, exchange: Arc<Exchange>) -> Self {
        Self { inner, remaining: limit, limit, exchange, stall: None, waiting: false }
    }

    fn stall_timeout(&self) -> Duration {
        self.exchange.limits().body_read_timeout
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.exchange.fault(Outcome::BodyTooLarge);
                        return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(
                            this.limit,
                        )))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let at = Instant::now() + this.stall_timeout();
                if !this.waiting {
                    this.waiting = true;
                    match &mut this.stall {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => this.stall = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let stall = this.stall.as_mut().expect("armed above");
                ready!(stall.as_mut().poll(cx));
                this.exchange.fault(Outcome::BodyStalled);
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on its way out: counts bytes, tells the exchange when hyper took a frame or
/// waits for one, wraps each frame so the exchange learns when hyper let go of it
/// ([`super::delivery`]), reports its end to hyper only once every frame was, and fails (so
/// hyper resets or closes) once the exchange was cut.
pub struct ExchangeBody {
    exchange: Arc<Exchange>,
    /// A frame already taken from `inner` (the request path peeks at the first).
    first: Option<Frame<Bytes>>,
    inner: ResponseBody,
    bytes: u64,
    /// The body's declared length (`Content-Length`, or an exact size hint): hyper stops
    /// polling once that many bytes went out, so reaching it is the end.
    expected: Option<u64>,
    /// `inner` has nothing more and the exchange was told ([`Exchange::body_ended`]).
    released: bool,
    /// hyper gets nothing more: the end was reported to it, or the exchange was cut.
    ended: bool,
}

impl ExchangeBody {
    pub(super) fn new(
        exchange: Arc<Exchange>,
        first: Option<Frame<Bytes>>,
        inner: ResponseBody,
        declared: Option<u64>,
    ) -> Self {
        let first_len = first.as_ref().and_then(Frame::data_ref).map_or(0, |d| d.len() as u64);
        let expected = declared.or_else(|| inner.size_hint().exact().map(|n| n + first_len));
        Self { exchange, first, inner, bytes: 0, expected, released: false, ended: false }
    }

    fn reached_declared_length(&self) -> bool {
        self.expected.is_some_and(|n| self.bytes >= n)
    }

    fn handed(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        let frame = frame.map_data(|data| {
            self.bytes += data.len() as u64;
            self.exchange.track(data)
        });
        self.exchange.progress.handed(self.bytes);
        // hyper stops polling once `Content-Length` bytes went out (HTTP/1.1), so the end is
        // noticed here rather than at a `None` that may never be asked for.
        if self.inner.is_end_stream() || self.reached_declared_length() {
            self.release();
        }
        frame
    }

    /// `inner` has ended: the exchange ends once hyper let go of every frame.
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            // Not waiting for the guest any more: the write timeout runs from here.
            self.exchange.progress.handed(self.bytes);
            self.exchange.body_ended();
        }
    }

    /// After `inner` ended. h2: the end goes to hyper once every frame was written (or dropped);
    /// until then the stream has no `END_STREAM` queued and can still be reset. HTTP/1.1: at once,
    /// so the last chunk goes out in the same write as the data (a cut still closes the
    /// connection through its scope, as after a declared length).
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, anyhow::Error>>> {
        if self.is_http2() {
            ready!(self.exchange.delivery.poll_delivered(cx));
        }
        self.ended = true;
        Poll::Ready(None)
    }

    fn is_http2(&self) -> bool {
        self.exchange.ctx.version == http::Version::HTTP_2
    }

    fn cut(&mut self, outcome: Outcome) -> anyhow::Error {
        self.ended = true;
        self.exchange.fault(outcome);
        self.exchange.finish();
        anyhow::anyhow!("the response was cut: {}", outcome.name())
    }
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = anyhow::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.exchange.is_cut() {
            this.ended = true;
            return Poll::Ready(Some(Err(anyhow::anyhow!("the response was cut"))));
        }
        if this.released {
            return this.poll_end(cx);
        }
        let polled = match this.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(this.handed(frame)))),
            // The guest's body broke (it trapped or dropped it unfinished).
            Poll::Ready(Some(Err(error))) => {
                let outcome = match this.exchange.guest_end() {
                    Some(GuestEnd::TimedOut) => Outcome::TimedOut,
                    _ => Outcome::Trapped,
                };
                if outcome == Outcome::Trapped {
                    let what = "the component's response body failed";
                    this.exchange.guest_failed(this.exchange.cause_of(what, &error, None));
                }
                let cut = this.cut(outcome);
                Poll::Ready(Some(Err(error.context(cut))))
            }
            // A trap or the deadline ends a body as quietly as `finish` does: the guest task
            // recorded how it ended before its store (the body's sender) went away.
            Poll::Ready(None) => match this.exchange.guest_end() {
                Some(GuestEnd::Trapped) => Poll::Ready(Some(Err(this.cut(Outcome::Trapped)))),
                Some(GuestEnd::TimedOut) => Poll::Ready(Some(Err(this.cut(Outcome::TimedOut)))),
                // A reused (p3) instance has no guest end to read: a body that stops at the
                // deadline was stopped by it (the instance ends its part of the work), not
                // finished; ending it cleanly would hand the client a truncated 200.
                _ if Instant::now() >= this.exchange.deadline => {
                    Poll::Ready(Some(Err(this.cut(Outcome::TimedOut))))
                }
                _ => {
                    this.release();
                    this.poll_end(cx)
                }
            },
            Poll::Pending => {
                this.exchange.progress.waiting_on_guest();
                Poll::Pending
            }
        }
    }

    /// For a body that never had a byte for hyper, and on HTTP/1.1 once `inner` ended (hyper then
    /// ends the message with the last data it took). Once an h2 body handed a byte, hyper must
    /// poll for the end, which waits for its delivery.
    fn is_end_stream(&self) -> bool {
        self.ended
            || (self.released && !self.is_http2())
            || (self.bytes == 0 && self.first.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(data) = self.first.as_ref().and_then(Frame::data_ref) else { return inner };
        // The held first frame comes on top of what the inner body still has. Upper before lower
        // would do too, but `set_lower` checks against the old upper: build it afresh.
        let extra = data.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(inner.lower().saturating_add(extra));
        hint
    }
}

impl Drop for ExchangeBody {
    /// hyper drops a body it will not poll again: after its declared length (HTTP/1.1), for
    /// `HEAD`, `204` and `304` (never polled), when the client went away, or when the h2 stream
    /// was reset before the end was delivered.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if self.released {
            // HTTP/1.1 after its end (declared or reported): the frames still queued end the
            // exchange when written. h2 polls to the end; dropped before it, the client reset
            // the stream.
            if self.is_http2() {
                self.exchange.fault(Outcome::ClientGone);
                self.exchange.finish();
            }
            return;
        }
        let complete = self.reached_declared_length()
            || self.expected == Some(0)
            || self.exchange.ctx.method == http::Method::HEAD
            || (self.first.is_none() && self.inner.is_end_stream());
        if complete {
            self.release();
        } else {
            self.exchange.fault(Outcome::ClientGone);
            self.exchange.finish();
        }
    }
}

/// The response body's progress: bytes out, and when hyper last took a frame without coming
/// back for the next (the client is behind), or that it waits for the guest.
pub(super) struct Progress {
    base: Instant,
    bytes: AtomicU64,
    /// Nanoseconds after `base` when the last frame (or the head) went to hyper.
    handed: AtomicU64,
    waiting_on_guest: AtomicBool,
}

impl Progress {
    pub(super) fn new(base: Instant) -> Self {
        Self {
            base,
            bytes: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            waiting_on_guest: AtomicBool::new(false),
        }
    }

    pub(super) fn handed(&self, bytes: u64) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.handed.store(nanos, Ordering::Relaxed);
        self.waiting_on_guest.store(false, Ordering::Release);
    }

    pub(super) fn waiting_on_guest(&self) {
        self.waiting_on_guest.store(true, Ordering::Release);
    }

    pub(super) fn handed_at(&self) -> Option<Instant> {
        if self.waiting_on_guest.load(Ordering::Acquire) {
            return None;
        }
        Some(self.base + Duration::from_nanos(self.handed.load(Ordering::Relaxed)))
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
