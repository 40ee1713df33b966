//! Bodies on their way through the host: the request body cut at `--max-body`
//! ([`LimitedBody`]) and the response body watched to its end ([`ObservedBody`]) so the
//! deadline, the access log, the metrics and the concurrency permit all see the whole response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// The body type of every response the host sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, anyhow::Error>;

/// A complete in-memory response body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A request body that fails once more than `limit` bytes have arrived, counts it, and says so
/// in a flag the request path reads to answer 413 when the guest has not responded yet.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
    counter: Counter,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>, counter: Counter) -> Self {
        Self { inner, remaining: limit, limit, exceeded, counter }
    }
}

/// How a request's guest task ended, readable without awaiting the task. The task sets it before
/// its store, and with it the response body's sender, is dropped: when a response body ends,
/// this says whether the guest finished it or died (a trap or the deadline ends a body as
/// quietly as `finish` does).
#[derive(Clone, Default)]
pub struct GuestStatus(Arc<AtomicU8>);

impl GuestStatus {
    // 0 is "still running" (the default).
    const DONE: u8 = 1;
    const FAILED: u8 = 2;
    const TIMED_OUT: u8 = 3;

    pub fn done(&self) {
        self.0.store(Self::DONE, Ordering::Release);
    }
    pub fn failed(&self) {
        self.0.store(Self::FAILED, Ordering::Release);
    }
    pub fn timed_out(&self) {
        self.0.store(Self::TIMED_OUT, Ordering::Release);
    }
    pub fn is_failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::FAILED
    }
    pub fn is_timed_out(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::TIMED_OUT
    }
}

impl<B> Body for LimitedBody<B>
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
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        if !this.exceeded.swap(true, Ordering::Relaxed) {
                            this.counter.inc();
                        }
                        return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(
                            this.limit,
                        )))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Told when a response body ends, fully sent or not.
pub trait Completion: Send + Unpin + 'static {
    /// `bytes` is how much of the body went out; `complete` is false when it was cut (deadline,
    /// error, or the client went away).
    fn finish(&mut self, bytes: u64, complete: bool, cut_by_deadline: bool);
}

/// A response body that stops at the request deadline and reports how it ended.
pub struct ObservedBody<C: Completion> {
    first: Option<Frame<Bytes>>,
    inner: ResponseBody,
    deadline: Option<Pin<Box<Sleep>>>,
    bytes: u64,
    /// The body's declared length (`Content-Length`, or an exact size hint): hyper stops
    /// polling once that many bytes went out, so reaching it is the end.
    expected: Option<u64>,
    ended: bool,
    cut_by_deadline: bool,
    /// The guest writing this body, when there is one.
    guest: Option<GuestStatus>,
    completion: Option<C>,
}

impl<C: Completion> ObservedBody<C> {
    /// `first` is a frame already taken from `inner` (the request path peeks at it).
    pub fn new(
        first: Option<Frame<Bytes>>,
        inner: ResponseBody,
        deadline: Option<Instant>,
        completion: C,
    ) -> Self {
        let first_len = first.as_ref().and_then(Frame::data_ref).map_or(0, |d| d.len() as u64);
        Self {
            expected: inner.size_hint().exact().map(|n| n + first_len),
            first,
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            bytes: 0,
            ended: false,
            cut_by_deadline: false,
            guest: None,
            completion: Some(completion),
        }
    }

    /// Makes the end of the body depend on how the guest ended: a guest that trapped or hit the
    /// deadline mid-stream makes the body fail, so the client sees a cut, not a clean end.
    pub fn watching(mut self, guest: GuestStatus) -> Self {
        self.guest = Some(guest);
        self
    }

    /// Declares the length the response head announced (`Content-Length`).
    pub fn with_declared_length(mut self, length: Option<u64>) -> Self {
        if length.is_some() {
            self.expected = length;
        }
        self
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
        }
    }

    fn reached_declared_length(&self) -> bool {
        self.expected.is_some_and(|n| self.bytes >= n)
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(mut completion) = self.completion.take() {
            completion.finish(self.bytes, true, false);
        }
    }
}

impl<C: Completion> Body for ObservedBody<C> {
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
        if let Some(frame) = this.first.take() {
            this.count(&frame);
            if this.inner.is_end_stream() || this.reached_declared_length() {
                this.end();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.cut_by_deadline = true;
            this.ended = true;
            return Poll::Ready(Some(Err(anyhow::anyhow!(
                "the request deadline passed while the response was streaming"
            ))));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                this.count(&frame);
                // hyper stops polling once `is_end_stream` says so (a body of known length), so
                // the end is noticed here rather than at a `None` that never comes.
                if this.inner.is_end_stream() || this.reached_declared_length() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.ended = true;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some(guest) = &this.guest {
                    if guest.is_timed_out() {
                        this.cut_by_deadline = true;
                        this.ended = true;
                        return Poll::Ready(Some(Err(anyhow::anyhow!(
                            "the request deadline passed while the response was streaming"
                        ))));
                    }
                    if guest.is_failed() {
                        this.ended = true;
                        return Poll::Ready(Some(Err(anyhow::anyhow!(
                            "the component failed while streaming; the response is incomplete"
                        ))));
                    }
                }
                this.end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.first.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let extra = data.len() as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}

impl<C: Completion> Drop for ObservedBody<C> {
    fn drop(&mut self) {
        if let Some(mut completion) = self.completion.take() {
            let complete =
                !self.cut_by_deadline && (self.reached_declared_length() || self.expected == Some(0));
            completion.finish(self.bytes, complete, self.cut_by_deadline);
        }
    }
}
