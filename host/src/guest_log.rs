//! The guest's stdout and stderr: each line becomes a log event tied to the request that wrote it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A guest writing one endless line must not grow the host's memory: longer lines are split.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One guest output stream (`stdout` or `stderr`) of one request.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    request_id: Arc<str>,
    stream: &'static str,
    pending: Vec<u8>,
}

impl GuestLog {
    pub fn new(request_id: &str, stream: &'static str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineBuffer {
                request_id: request_id.into(),
                stream,
                pending: Vec::new(),
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut buffer = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        buffer.push(bytes);
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
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        match self.stream {
            "stderr" => {
                tracing::warn!(target: "guest", request_id = %self.request_id, stream = self.stream, "{line}")
            }
            _ => {
                tracing::info!(target: "guest", request_id = %self.request_id, stream = self.stream, "{line}")
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
