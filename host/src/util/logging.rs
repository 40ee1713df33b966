//! The host's own log lines: Cloud Logging's structured JSON (or text) on stdout, through the
//! bounded queue of [`log_writer`].

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::ops::Range;

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::util::log_writer;

/// A few MiB of access-log lines (~0.5 KiB each); a guest line can be up to 16 KiB.
pub const DEFAULT_LOG_BUFFER_LINES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line in Cloud Logging's structured format.
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

/// Installs the global logger with the default `--log-buffer-lines`.
pub fn init_logging(format: LogFormat) {
    init_logging_buffered(format, DEFAULT_LOG_BUFFER_LINES);
}

/// Installs the global logger, writing to stdout through a queue of `buffer_lines` lines
/// ([`log_writer`]). `RUST_LOG` narrows or widens it (default `info`).
pub fn init_logging_buffered(format: LogFormat, buffer_lines: usize) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(log_writer::stdout(buffer_lines));
    // A second init (tests start several servers in one process) keeps the first logger.
    let _ = match format {
        LogFormat::Json => builder.event_format(CloudLoggingFormat).try_init(),
        // Colours only for a terminal: a file or a pipe gets plain text.
        LogFormat::Text => builder.with_target(false).with_ansi(std::io::stdout().is_terminal()).try_init(),
    };
}

/// Writes out the queued log lines before the process exits (bounded: stdout may be stalled).
pub fn flush_logs() {
    log_writer::flush();
}

/// One JSON object per line as Cloud Logging reads it: `severity`, `message`, `time`,
/// `httpRequest` (from an `http_request` field holding JSON), the trace under
/// `logging.googleapis.com/trace`, and every other field as is. Keys are in byte order with
/// `httpRequest` last: the order `serde_json`'s map gave the line before it was written by hand.
pub struct CloudLoggingFormat;

impl<S, N> FormatEvent<S, N> for CloudLoggingFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        thread_local! {
            /// Reused by every line this thread formats: no allocation once it has grown.
            static LINE: RefCell<JsonLine> = RefCell::new(JsonLine::default());
        }
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => line.format(event, &mut writer),
            // A line logged while formatting one (never, today) gets a buffer of its own.
            Err(_) => JsonLine::default().format(event, &mut writer),
        })
    }
}

/// One line being formatted: each value already JSON in `values`, named by its field.
#[derive(Default)]
struct JsonLine {
    values: Vec<u8>,
    /// `(key, range of values)`, in the order recorded (a later key replaces an earlier one).
    fields: Vec<(&'static str, Range<usize>)>,
    /// The `http_request` field's raw JSON object, in `values`.
    http_request: Option<Range<usize>>,
    scratch: String,
    out: Vec<u8>,
}

impl JsonLine {
    fn format(&mut self, event: &tracing::Event<'_>, writer: &mut Writer<'_>) -> fmt::Result {
        self.values.clear();
        self.fields.clear();
        self.http_request = None;
        let metadata = event.metadata();
        let severity = match *metadata.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
        };
        self.push_str("severity", severity);
        let message_at = self.fields.len();
        self.push_str("message", "");
        self.push_time();
        let target = metadata.target();
        if target != "echo_host" && !target.starts_with("echo_host::") {
            self.push_str("target", target);
        }
        let fixed = self.fields.len();
        event.record(self);
        // The event's `message` replaces the empty one in place (it is not a field of its own).
        if let Some(at) = self.fields[fixed..].iter().rposition(|(key, _)| *key == "message") {
            let (_, value) = self.fields.remove(fixed + at);
            self.fields[message_at].1 = value;
        }
        // Byte order of keys, the last of equal keys kept (a field named `time` replaces ours).
        self.fields.reverse();
        self.fields.sort_by(|a, b| a.0.cmp(b.0));
        self.fields.dedup_by(|later, kept| later.0 == kept.0);
        self.out.clear();
        self.out.push(b'{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
            self.out.extend_from_slice(&self.values[value.clone()]);
        }
        if let Some(raw) = self.http_request.clone() {
            self.out.extend_from_slice(b",\"httpRequest\":");
            self.out.extend_from_slice(&self.values[raw]);
        }
        self.out.extend_from_slice(b"}\n");
        writer.write_str(std::str::from_utf8(&self.out).map_err(|_| fmt::Error)?)
    }

    /// Records `key` with `value` written by `write` (JSON) into `values`.
    fn push(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) {
        let start = self.values.len();
        match write(&mut self.values) {
            Ok(()) => self.fields.push((key, start..self.values.len())),
            Err(_) => self.values.truncate(start),
        }
    }

    fn push_str(&mut self, key: &'static str, value: &str) {
        self.push(key, |out| serde_json::to_writer(out, value));
    }

    fn push_time(&mut self) {
        let start = self.values.len();
        self.values.push(b'"');
        let now = time::OffsetDateTime::now_utc();
        match now.format_into(&mut self.values, &time::format_description::well_known::Rfc3339) {
            Ok(_) => {
                self.values.push(b'"');
                self.fields.push(("time", start..self.values.len()));
            }
            Err(_) => self.values.truncate(start),
        }
    }

    /// A field's key as the line names it.
    fn key(field: &Field) -> &'static str {
        match field.name() {
            "trace" => "logging.googleapis.com/trace",
            name => name,
        }
    }
}

impl Visit for JsonLine {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value:?}");
        self.record_str(field, &scratch);
        self.scratch = scratch;
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "http_request" {
            // JSON the access log serialized: spliced in as is rather than parsed back (measured
            // +10% requests per CPU-second on the echo); anything else is dropped.
            if value.starts_with('{') && value.ends_with('}') {
                let start = self.values.len();
                self.values.extend_from_slice(value.as_bytes());
                self.http_request = Some(start..self.values.len());
            }
            return;
        }
        self.push_str(Self::key(field), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(Self::key(field), |out| serde_json::to_writer(out, &value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(Self::key(field), |out| serde_json::to_writer(out, &value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(Self::key(field), |out| serde_json::to_writer(out, &value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(Self::key(field), |out| serde_json::to_writer(out, &value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The line `serde_json`'s map used to give, byte for byte: keys in byte order (a field
    /// replacing the host's own key of the same name), `trace` renamed, `httpRequest` spliced
    /// last, strings escaped, numbers and booleans bare.
    #[test]
    fn lines_keep_serde_json_map_order_and_escaping() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(CloudLoggingFormat)
            .with_writer(move || SharedVec(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let http_request = r#"{"status":200}"#.to_string();
            let trace = Some("projects/p/traces/abc");
            tracing::warn!(
                zeta = 1u64, alpha = -2i64, ratio = 0.5f64, ok = true, time = "fixed", http_request, trace,
                debug = ?("a", 1), "say \"hi\"\n{}", "\u{1}é"
            );
        });
        let line = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            line,
            concat!(
                r#"{"alpha":-2,"debug":"(\"a\", 1)","logging.googleapis.com/trace":"projects/p/traces/abc","#,
                r#""message":"say \"hi\"\n\u0001é","ok":true,"ratio":0.5,"severity":"WARNING","time":"fixed","#,
                r#""zeta":1,"httpRequest":{"status":200}}"#,
                "\n"
            )
        );
    }

    struct SharedVec(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedVec {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
