//! Stdout for the logger: a bounded queue that one thread drains, so a stalled stdout drops log
//! lines (counted) instead of blocking the threads that serve requests. The thread writes in
//! batches ([`Batched`]): stdout alone is line-buffered, a system call per access-log line.

use std::io::{self, BufWriter, Write};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// What the writer thread gathers before a `write` (it also writes when the queue runs empty).
const WRITE_BUFFER: usize = 64 * 1024;

/// How long the writer thread rests after a write, so that the lines logged meanwhile go out
/// together: on a busy host it wakes at most every 5 ms instead of once per request (and does
/// not spin on the empty queue, on the core that serves). A line reaches stdout within about this.
const LINGER: Duration = Duration::from_millis(5);

/// Longest [`flush`] waits for the queue to reach stdout: past it, exit goes on without the rest
/// (Cloud Run kills 10 s after SIGTERM, and `--shutdown-grace` defaults to 9 s).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The process's one writer; the first [`stdout`] call creates it.
static WRITER: OnceLock<Writer> = OnceLock::new();

struct Writer {
    /// Cloned into the logger; each clone enqueues without waiting and counts what did not fit.
    lines: NonBlocking,
    /// Keeps the writer thread alive; [`flush`] takes and drops it.
    guard: Mutex<Option<WorkerGuard>>,
}

/// The writer the logger formats into. The first call sets the queue size (`buffer_lines`
/// lines); later calls return the same writer.
pub fn stdout(buffer_lines: usize) -> NonBlocking {
    let writer = WRITER.get_or_init(|| {
        let (lines, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(buffer_lines)
            .thread_name("echo-host-log")
            .finish(Batched(BufWriter::with_capacity(WRITE_BUFFER, io::stdout())));
        Writer { lines, guard: Mutex::new(Some(guard)) }
    });
    writer.lines.clone()
}

/// Stdout as the writer thread sees it: lines gather in the buffer; each flush (the thread
/// flushes when the queue runs empty) writes them and then rests for [`LINGER`].
struct Batched<W: Write>(BufWriter<W>);

impl<W: Write> Write for Batched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let wrote = !self.0.buffer().is_empty();
        self.0.flush()?;
        if wrote {
            std::thread::sleep(LINGER);
        }
        Ok(())
    }
}

/// Lines dropped so far because the queue was full (0 before the writer exists).
pub fn dropped_lines() -> u64 {
    WRITER.get().map_or(0, |writer| writer.lines.error_counter().dropped_lines() as u64)
}

/// Writes out what is queued and stops the writer thread, waiting at most [`FLUSH_TIMEOUT`]:
/// stdout may be the thing that stalled. Lines logged afterwards are dropped.
pub fn flush() {
    let Some(writer) = WRITER.get() else { return };
    let Some(guard) = writer.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
        return;
    };
    // The guard's drop waits for the thread, and prints to stdout when the queue is full.
    let (done, flushed) = mpsc::channel();
    std::thread::spawn(move || {
        drop(guard);
        let _ = done.send(());
    });
    let _ = flushed.recv_timeout(FLUSH_TIMEOUT);
}

#[cfg(test)]
mod tests {
    use std::io::{self, BufWriter, Write};

    use super::Batched;
    use crate::app::metrics::Metrics;

    /// Records each `write` it gets, as the system calls stdout would make.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_lines_go_out_in_one_write_at_the_flush() {
        let mut out = Batched(BufWriter::with_capacity(super::WRITE_BUFFER, Calls::default()));
        for line in ["{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}\n"] {
            out.write_all(line.as_bytes()).unwrap();
        }
        assert!(out.0.get_ref().0.is_empty(), "nothing written before the flush");
        out.flush().unwrap();
        assert_eq!(out.0.get_ref().0, vec![b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n".to_vec()]);
        out.flush().unwrap();
        assert_eq!(out.0.get_ref().0.len(), 1, "an empty flush writes nothing");
    }

    #[test]
    fn dropped_lines_are_a_counter_in_the_metrics() {
        let text = Metrics::new().render();
        assert!(text.contains("# TYPE echo_host_log_lines_dropped counter"), "{text}");
        assert!(
            text.contains(&format!("echo_host_log_lines_dropped_total {}", super::dropped_lines())),
            "{text}"
        );
    }
}
