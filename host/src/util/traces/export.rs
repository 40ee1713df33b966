//! Getting ended spans to the collector without ever making a request wait: a bounded queue
//! ([`QueueProcessor`], the SDK's span processor) that a request only pushes to, under a lock held
//! for a `Vec::push`, and a thread of its own that sends the queue in batches over OTLP.
//!
//! A collector that is down, refusing, slow or that never answers costs spans, never time: a
//! full queue drops the new span, an export that fails or passes `OTEL_EXPORTER_OTLP_TIMEOUT`
//! drops its batch, and both are counted (`echo_host_trace_spans_dropped_total`); after a failure
//! the batches of the next second (doubling up to 30 s while it keeps failing) are dropped
//! without being encoded. Shutting down sends what is queued within a bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use super::config::TraceConfig;
use super::otlp::Encoder;
use super::send::Sender;

/// The trace counters on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct TraceCounters {
    /// Spans sent and accepted by the collector.
    pub exported: Counter,
    /// Spans given up: the queue was full, or their export failed or timed out.
    pub dropped: Counter,
}

impl TraceCounters {
    /// The counters, registered as `trace_spans_exported` and `trace_spans_dropped` (both exist,
    /// at 0, when tracing is off).
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let counters = Self::default();
        registry.register(
            "trace_spans_exported",
            "Spans sent to the OTLP collector and accepted by it",
            counters.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans given up: the export queue (`OTEL_BSP_MAX_QUEUE_SIZE`) was full, or their export failed or passed `OTEL_EXPORTER_OTLP_TIMEOUT`",
            counters.dropped.clone(),
        );
        counters
    }
}

/// What the request path and the exporter thread share.
#[derive(Debug)]
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    max_queue: usize,
    max_batch: usize,
    /// Wakes the exporter early: a batch is full, or shutdown began.
    wake: Notify,
    /// Set at shutdown, with the time by which the last export must be over.
    closing: Mutex<Option<Instant>>,
    closed: AtomicBool,
    counters: TraceCounters,
    /// Whether the drops since the last good export were logged already.
    warned: AtomicBool,
}

impl Queue {
    fn spans(&self) -> MutexGuard<'_, Vec<SpanData>> {
        self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `span`, or drops and counts it when the queue is full or closed.
    fn push(&self, span: SpanData) {
        let mut spans = self.spans();
        if spans.len() >= self.max_queue || self.closed.load(Ordering::Relaxed) {
            drop(spans);
            self.dropped(1, "the export queue is full");
            return;
        }
        spans.push(span);
        let full = spans.len() == self.max_batch;
        drop(spans);
        if full {
            self.wake.notify_one();
        }
    }

    fn dropped(&self, count: usize, why: &str) {
        self.counters.dropped.inc_by(count as u64);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                spans = count,
                "trace spans dropped ({why}); more are counted in `echo_host_trace_spans_dropped_total` until an export succeeds"
            );
        }
    }

    fn closing_by(&self) -> Option<Instant> {
        *self.closing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The SDK's span processor: queues each ended span for the exporter thread.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: Arc<Queue>,
    /// Says when the exporter thread has sent what was queued at shutdown.
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

impl QueueProcessor {
    /// Starts the exporter thread for `config` (the exporter is built there, on the thread's own
    /// runtime); fails when the exporter cannot be built.
    pub fn start(config: &TraceConfig, resource: Resource, counters: TraceCounters) -> anyhow::Result<Self> {
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::new()),
            max_queue: config.batching.max_queue,
            max_batch: config.batching.max_batch,
            wake: Notify::new(),
            closing: Mutex::new(None),
            closed: AtomicBool::new(false),
            counters,
            warned: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (done_tx, done_rx) = mpsc::channel();
        let (config, shared) = (config.clone(), queue.clone());
        std::thread::Builder::new().name("otlp-export".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => return drop(ready_tx.send(Err(error.into()))),
            };
            runtime.block_on(async {
                // tonic's channel starts its worker on the current runtime: build it here.
                let sender = match Sender::new(&config) {
                    Ok(sender) => sender,
                    Err(error) => return drop(ready_tx.send(Err(error))),
                };
                let _ = ready_tx.send(Ok(()));
                run(&shared, Exporter { encoder: Encoder::new(&resource), sender }, &config).await;
            });
            let _ = done_tx.send(());
        })?;
        ready_rx.recv().map_err(|_| anyhow::anyhow!("the trace exporter thread ended at start"))??;
        Ok(Self { queue, done: Mutex::new(Some(done_rx)) })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.queue.push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.wake.notify_one();
        Ok(())
    }

    /// Stops taking spans, sends what is queued and waits for that up to `timeout`.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(done) = self.done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        *self.queue.closing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Instant::now() + timeout);
        self.queue.closed.store(true, Ordering::Relaxed);
        self.queue.wake.notify_one();
        // A little past the export's own bound, for the thread to report back.
        done.recv_timeout(timeout + Duration::from_millis(200)).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

/// How a batch leaves: encoded once for the resource, sent over the configured transport.
struct Exporter {
    encoder: Encoder,
    sender: Sender,
}

/// After a failed export, how long the next batches are dropped without being encoded or sent
/// (doubling while the collector keeps failing, up to [`MAX_BACKOFF`]): a collector that is down
/// costs the spans, not the CPU of encoding every batch for it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The exporter thread: every `OTEL_BSP_SCHEDULE_DELAY`, or as soon as a batch is full, sends
/// the queue in batches; at shutdown sends what is left before the shutdown's bound.
async fn run(queue: &Queue, mut exporter: Exporter, config: &TraceConfig) {
    let mut taken = Vec::new();
    // While the collector fails: when to try again, and the wait after the next failure.
    let (mut retry_at, mut backoff) = (None::<Instant>, FIRST_BACKOFF);
    loop {
        if !queue.closed.load(Ordering::Relaxed) {
            tokio::select! {
                () = queue.wake.notified() => {}
                () = tokio::time::sleep(config.batching.delay) => {}
            }
        }
        let closing = queue.closed.load(Ordering::Relaxed);
        std::mem::swap(&mut *queue.spans(), &mut taken);
        while !taken.is_empty() {
            let count = taken.len().min(queue.max_batch);
            if !closing && retry_at.is_some_and(|at| Instant::now() < at) {
                taken.drain(..count);
                queue.dropped(count, "the collector failed just before");
                continue;
            }
            let timeout = match queue.closing_by() {
                Some(by) => config.timeout.min(by.saturating_duration_since(Instant::now())),
                None => config.timeout,
            };
            let exported = export(queue, &mut exporter, &taken[..count], timeout, &config.endpoint).await;
            taken.drain(..count);
            if exported {
                (retry_at, backoff) = (None, FIRST_BACKOFF);
            } else {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if closing {
            break;
        }
    }
}

/// Sends one batch; counts it as exported or dropped. Returns whether it was exported.
async fn export(
    queue: &Queue,
    exporter: &mut Exporter,
    batch: &[SpanData],
    timeout: Duration,
    endpoint: &str,
) -> bool {
    let count = batch.len();
    let body = exporter.encoder.encode(batch);
    let error = match tokio::time::timeout(timeout, exporter.sender.send(body, timeout)).await {
        Ok(Ok(())) => {
            queue.counters.exported.inc_by(count as u64);
            if queue.warned.swap(false, Ordering::Relaxed) {
                tracing::info!(endpoint, "trace export to `{endpoint}` works again");
            }
            return true;
        }
        Ok(Err(error)) => error,
        Err(_) => format!("no answer within {timeout:?} (`OTEL_EXPORTER_OTLP_TIMEOUT`)"),
    };
    queue.dropped(count, &format!("export to `{endpoint}` failed: {error}"));
    false
}
