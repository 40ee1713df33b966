//! The guest's stdout and stderr: each line becomes a log event tied to the request that wrote it,
//! up to a budget of lines and bytes per request ([`LogBudget`]); past it, lines are dropped and
//! counted.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A guest writing one endless line must not grow the host's memory: longer lines are split.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Guest lines dropped past a budget, by every store of the process.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// One guest output stream (`stdout` or `stderr`) of one request.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    stream: &'static str,
    pending: Vec<u8>,
    budget: Arc<Mutex<LogBudget>>,
}

/// What one store's guest may still log, shared by its stdout and stderr: `--max-guest-log-lines`
/// and `--max-guest-log-bytes`, for the request (p2) or since the reused instance last took a
/// request (p3, see [`LogBudget::refill`]). Says how many lines it dropped when it is refilled
/// or dropped (with the store).
pub struct LogBudget {
    label: Arc<str>,
    max_lines: u64,
    max_bytes: u64,
    lines_left: u64,
    bytes_left: u64,
    /// Dropped since the last summary line.
    dropped: u64,
}

impl LogBudget {
    /// A full budget for the store named `label` in log lines.
    pub fn new(label: &str, max_lines: u64, max_bytes: u64) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            label: label.into(),
            max_lines,
            max_bytes,
            lines_left: max_lines,
            bytes_left: max_bytes,
            dropped: 0,
        }))
    }

    /// A new request on a reused instance: reports what was dropped so far, then starts over
    /// with the full per-request budget.
    pub fn refill(&mut self) {
        self.report();
        self.lines_left = self.max_lines;
        self.bytes_left = self.max_bytes;
    }

    /// The store's lines are now the request `label`'s (a reused p2 instance's next request).
    pub fn relabel(&mut self, label: &str) {
        self.label = label.into();
    }

    /// Takes one line of `bytes` from the budget, or counts it as dropped.
    fn take(&mut self, bytes: usize) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if self.lines_left == 0 || bytes > self.bytes_left {
            self.dropped += 1;
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.lines_left -= 1;
        self.bytes_left -= bytes;
        true
    }

    fn report(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                target: "guest",
                request_id = %self.label,
                dropped = self.dropped,
                "{} guest log lines dropped: over `--max-guest-log-lines` ({}) or `--max-guest-log-bytes` ({})",
                self.dropped,
                self.max_lines,
                self.max_bytes,
            );
            self.dropped = 0;
        }
    }
}

impl Drop for LogBudget {
    /// The summary line of the request (or instance), once its guest's output is closed.
    fn drop(&mut self) {
        self.report();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GuestLog {
    /// The guest's `stream` (`stdout` or `stderr`), its lines named by `budget`'s label.
    pub fn new(stream: &'static str, budget: Arc<Mutex<LogBudget>>) -> Self {
        Self { inner: Arc::new(Mutex::new(LineBuffer { stream, pending: Vec::new(), budget })) }
    }

    fn write(&self, bytes: &[u8]) {
        lock(&self.inner).push(bytes);
    }

    /// Logs a last line without a newline now, under the current label (before a relabel).
    pub fn flush_line(&self) {
        let mut buffer = lock(&self.inner);
        if !buffer.pending.is_empty() {
            buffer.emit();
        }
    }
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.pending.extend_from_slice(&bytes[..end]);
                    self.emit();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    let room = MAX_LINE_BYTES - self.pending.len();
                    let take = bytes.len().min(room);
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.pending.len() >= MAX_LINE_BYTES {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let label = {
            let mut budget = lock(&self.budget);
            if !budget.take(self.pending.len()) {
                self.pending.clear();
                return;
            }
            budget.label.clone()
        };
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        match self.stream {
            "stderr" => {
                tracing::warn!(target: "guest", request_id = %label, stream = self.stream, "{line}")
            }
            _ => {
                tracing::info!(target: "guest", request_id = %label, stream = self.stream, "{line}")
            }
        }
        self.pending.clear();
    }
}

impl Drop for LineBuffer {
    /// A last line without a newline is still logged when the request's store goes away.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Guest lines dropped so far, by every request of this process (`guest_log_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_dropped_and_counted() {
        let budget = LogBudget::new("test-request", 3, 1 << 20);
        let log = GuestLog::new("stdout", budget.clone());
        let before = DROPPED_LINES.load(Ordering::Relaxed);
        log.write(b"one\ntwo\nthree\nfour\nfive\n");
        let mut left = lock(&budget);
        assert_eq!((left.lines_left, left.dropped), (0, 2));
        assert!(DROPPED_LINES.load(Ordering::Relaxed) >= before + 2);
        left.refill();
        assert_eq!((left.lines_left, left.dropped), (3, 0));
    }

    #[test]
    fn a_line_over_the_byte_budget_is_dropped_and_smaller_ones_still_fit() {
        let budget = LogBudget::new("test-request", 100, 10);
        let log = GuestLog::new("stderr", budget.clone());
        log.write(b"0123456789ab\nshort\n");
        let left = lock(&budget);
        assert_eq!((left.bytes_left, left.dropped), (5, 1));
    }

    #[test]
    fn the_count_is_a_counter_in_the_metrics() {
        let text = crate::app::metrics::Metrics::new().render();
        assert!(text.contains("# TYPE echo_host_guest_log_dropped counter"), "{text}");
    }
}
