//! One accepted connection: its timers (the first request within `--header-read-timeout`, the
//! next head, `--idle-timeout` between requests), its unsent response bytes, how it closes, and
//! the [`Scope`] through which an exchange resets its HTTP/2 stream, closes its HTTP/1.1
//! connection, or has the connection shed gracefully.
//!
//! hyper cannot be told from outside to drop one h2 stream, and it stops polling a response body
//! that the client's flow-control window does not let out. So every h2 stream runs in a task of
//! its own made by [`StreamExecutor`], raced against a cancellation token, and the exchange finds
//! that token (or, for HTTP/1.1, the connection's) in the task-local [`Scope`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// After a timer asked a connection to close gracefully (h2: GOAWAY), how long it may take to
/// flush before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

tokio::task_local! {
    static SCOPE: Scope;
}

/// What an exchange knows of where it runs: its connection, and the token that cuts its
/// response (the h2 stream's own, or the HTTP/1.1 connection's).
#[derive(Clone)]
pub struct Scope {
    pub connection: Arc<ConnectionState>,
    cut: CancellationToken,
}

impl Scope {
    /// The scope of the task polling the caller, if it runs inside a served connection.
    pub fn current() -> Option<Scope> {
        SCOPE.try_with(Scope::clone).ok()
    }

    /// Resets the h2 stream or closes the HTTP/1.1 connection at once.
    pub fn cut(&self) {
        self.cut.cancel();
    }

    /// Whether the h2 stream was reset or the HTTP/1.1 connection closed by the host.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }
}

/// Why a connection was closed by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// No complete request head (or h2 preface) within `--header-read-timeout`.
    HeaderTimeout,
    /// No request in flight for `--idle-timeout`.
    Idle,
}

/// The connection timers' settings.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// A connection's activity, shared by its task, its socket wrapper and its exchanges.
pub struct ConnectionState {
    accepted: Instant,
    /// Exchanges started and not yet finished on this connection.
    active: AtomicUsize,
    /// Whether any request has started (before that, the header timer runs from `accepted`).
    started: AtomicBool,
    /// Set by the first request: HTTP/2 connections read pings and settings between requests,
    /// so bytes there do not start a head.
    http2: AtomicBool,
    /// Nanoseconds after `accepted` at which the connection last became idle.
    idle_since: AtomicU64,
    /// Nanoseconds after `accepted` of the first byte read since it became idle; 0 for none.
    read_since_idle: AtomicU64,
    /// Response bytes handed to hyper on this connection and not yet written to the socket.
    unsent: AtomicU64,
    /// Set once an exchange found it over an unsent limit: the connection closes gracefully.
    shed: AtomicBool,
    /// Wakes the connection task when its timers must be recomputed, or it is shed.
    changed: Notify,
}

impl ConnectionState {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            active: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            read_since_idle: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            shed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.accepted).as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.accepted + Duration::from_nanos(nanos)
    }

    /// A request started on this connection. The connection task is not woken: a timer that
    /// fires while requests are in flight is checked again and ignored.
    pub fn request_started(&self, http2: bool) {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.started.store(true, Ordering::Release);
            self.http2.store(http2, Ordering::Release);
        }
    }

    /// A request on this connection finished. Requests, reads and HTTP/1.1 responses run in
    /// the connection's own task, which checks its timers after every poll; only an h2 stream's
    /// task has to wake it, when the last request in flight ends.
    pub fn request_finished(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.read_since_idle.store(0, Ordering::Release);
            self.idle_since.store(self.nanos(Instant::now()), Ordering::Release);
            if self.http2.load(Ordering::Acquire) {
                self.changed.notify_one();
            }
        }
    }

    /// Response bytes handed to hyper; returns the connection's unsent total with them.
    pub fn unsent_added(&self, bytes: u64) -> u64 {
        self.unsent.fetch_add(bytes, Ordering::AcqRel) + bytes
    }

    /// Response bytes hyper let go of (written, or discarded with their stream).
    pub fn unsent_sent(&self, bytes: u64) {
        self.unsent.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Asks the connection task to close the connection gracefully (h2: GOAWAY, streams in
    /// flight go on, new ones are refused; HTTP/1.1: no request after the current one). `true`
    /// the first time only.
    pub fn shed(&self) -> bool {
        let first = !self.shed.swap(true, Ordering::AcqRel);
        if first {
            self.changed.notify_one();
        }
        first
    }

    fn bytes_read(&self) {
        if self.read_since_idle.load(Ordering::Relaxed) == 0 && self.active.load(Ordering::Relaxed) == 0 {
            self.read_since_idle.store(self.nanos(Instant::now()), Ordering::Release);
        }
    }

    /// When the connection must close if nothing changes, and why; `None` while a request is in
    /// flight (the exchanges have deadlines of their own).
    pub fn next_close(&self, timeouts: Timeouts) -> Option<(Instant, CloseReason)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.started.load(Ordering::Acquire) {
            return Some((self.accepted + timeouts.header_read, CloseReason::HeaderTimeout));
        }
        let head_started = self.read_since_idle.load(Ordering::Acquire);
        if head_started != 0 && !self.http2.load(Ordering::Acquire) {
            return Some((self.instant(head_started) + timeouts.header_read, CloseReason::HeaderTimeout));
        }
        let idle_since = self.instant(self.idle_since.load(Ordering::Acquire));
        Some((idle_since + timeouts.idle, CloseReason::Idle))
    }
}

/// The socket, with reads reported to the connection's state (a head starting on an idle
/// HTTP/1.1 connection starts its header timer).
pub struct WatchedStream {
    stream: TcpStream,
    state: Arc<ConnectionState>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.bytes_read();
        }
        result
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Wraps an accepted socket for [`serve`].
pub fn watch(stream: TcpStream) -> (WatchedStream, Arc<ConnectionState>) {
    let state = Arc::new(ConnectionState::new());
    (WatchedStream { stream, state: state.clone() }, state)
}

/// Drives `connection` until it ends, the host closes it (timers), an exchange cuts it, or the
/// server drains (`drain`: graceful, requests in flight finish); `graceful_shutdown` is hyper's.
/// `stop` cuts it with every h2 stream it runs (the shutdown grace ran out). Returns why the
/// host closed it.
pub async fn serve<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    state: Arc<ConnectionState>,
    timeouts: Timeouts,
    drain: CancellationToken,
    stop: &CancellationToken,
) -> Option<CloseReason>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let cut = stop.child_token();
    let scope = Scope { connection: state.clone(), cut: cut.clone() };
    SCOPE
        .scope(scope, async move {
            tokio::pin!(connection);
            let cut = cut.cancelled();
            let drain = drain.cancelled();
            let timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(cut, drain, timer);
            let mut changed = Box::pin(state.changed.notified());
            // The instant `timer` is set for; it is moved only earlier, and re-checked when it
            // fires (a later deadline, a request started since), so a busy connection does not
            // touch the timer wheel per request.
            let mut armed: Option<Instant> = None;
            let mut closing: Option<(Instant, CloseReason)> = None;
            let mut draining = false;
            let mut shedding = false;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "connection ended with an error");
                    }
                    return Poll::Ready(closing.map(|(_, reason)| reason));
                }
                if cut.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(closing.map(|(_, reason)| reason));
                }
                if !draining && drain.as_mut().poll(cx).is_ready() {
                    draining = true;
                    graceful_shutdown(connection.as_mut());
                    cx.waker().wake_by_ref();
                }
                while changed.as_mut().poll(cx).is_ready() {
                    changed = Box::pin(state.changed.notified());
                }
                if !shedding && state.shed.load(Ordering::Acquire) {
                    shedding = true;
                    graceful_shutdown(connection.as_mut());
                    cx.waker().wake_by_ref();
                }
                let due = closing.or_else(|| state.next_close(timeouts));
                if let Some((at, reason)) = due {
                    if at <= Instant::now() {
                        if closing.is_some() {
                            return Poll::Ready(Some(reason));
                        }
                        graceful_shutdown(connection.as_mut());
                        closing = Some((Instant::now() + CLOSE_GRACE, reason));
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if armed.is_none_or(|armed| armed > at) {
                        timer.as_mut().reset(at);
                        armed = Some(at);
                    }
                }
                if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                    armed = None;
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            })
            .await
        })
        .await
}

/// Spawns hyper's h2 stream tasks, each inside a [`Scope`] of its own whose cut drops the task:
/// hyper then resets the stream (RST_STREAM) and frees what it buffered.
#[derive(Clone, Copy, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        // Called from the connection's task, inside its scope.
        let Some(connection) = Scope::current() else {
            tokio::spawn(stream);
            return;
        };
        // A child of the connection's token, cancelled only when the whole connection is cut
        // (an HTTP/1.1 exchange's cut never meets h2 streams): the shutdown grace ran out.
        let cut = connection.cut.child_token();
        let scope = Scope { connection: connection.connection, cut: cut.clone() };
        tokio::spawn(SCOPE.scope(scope, async move {
            tokio::select! {
                _ = stream => {}
                _ = cut.cancelled() => {}
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts =
        Timeouts { header_read: Duration::from_secs(10), idle: Duration::from_secs(60) };

    #[tokio::test(start_paused = true)]
    async fn the_first_request_must_start_within_the_header_timeout() {
        let state = ConnectionState::new();
        let (at, reason) = state.next_close(TIMEOUTS).unwrap();
        assert_eq!(reason, CloseReason::HeaderTimeout);
        assert_eq!(at, state.accepted + TIMEOUTS.header_read);
        state.request_started(false);
        assert_eq!(state.next_close(TIMEOUTS), None, "no connection timer while a request is in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_after_the_idle_timeout_or_a_started_head() {
        let state = ConnectionState::new();
        state.request_started(false);
        tokio::time::advance(Duration::from_secs(3)).await;
        state.request_finished();
        let idle_at = Instant::now();
        assert_eq!(state.next_close(TIMEOUTS), Some((idle_at + TIMEOUTS.idle, CloseReason::Idle)));
        // HTTP/1.1: the first byte of the next head starts its header timer.
        tokio::time::advance(Duration::from_secs(5)).await;
        state.bytes_read();
        let head_at = Instant::now();
        let (at, reason) = state.next_close(TIMEOUTS).unwrap();
        assert_eq!(reason, CloseReason::HeaderTimeout);
        assert!(at.duration_since(head_at) <= TIMEOUTS.header_read, "{:?}", at.duration_since(head_at));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_between_http2_requests_do_not_start_a_head() {
        let state = ConnectionState::new();
        state.request_started(true);
        tokio::time::advance(Duration::from_secs(1)).await;
        state.request_finished();
        let idle_at = Instant::now();
        state.bytes_read(); // a PING
        assert_eq!(state.next_close(TIMEOUTS), Some((idle_at + TIMEOUTS.idle, CloseReason::Idle)));
    }
}
