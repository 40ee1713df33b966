//! The host's own log lines: Cloud Logging's structured JSON (or text) on stdout, through the
//! bounded queue of [`log_writer`].

use std::fmt;
use std::io::IsTerminal as _;

use clap::ValueEnum;
use serde_json::{Map, Value};
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
/// `logging.googleapis.com/trace`, and every other field as is.
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
        let metadata = event.metadata();
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let mut entry = Map::new();
        let severity = match *metadata.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
        };
        entry.insert("severity".into(), severity.into());
        entry.insert("message".into(), fields.0.remove("message").unwrap_or(Value::String(String::new())));
        let now = time::OffsetDateTime::now_utc();
        if let Ok(stamp) = now.format(&time::format_description::well_known::Rfc3339) {
            entry.insert("time".into(), stamp.into());
        }
        // `http_request` is JSON the access log serialized: spliced in below as is rather than
        // parsed back into a `Value` (measured +10% requests per CPU-second on the echo).
        let http_request = match fields.0.remove("http_request") {
            Some(Value::String(raw)) if raw.starts_with('{') && raw.ends_with('}') => Some(raw),
            _ => None,
        };
        if let Some(trace) = fields.0.remove("trace") {
            entry.insert("logging.googleapis.com/trace".into(), trace);
        }
        if metadata.target() != "echo_host" && !metadata.target().starts_with("echo_host::") {
            entry.insert("target".into(), metadata.target().into());
        }
        entry.extend(fields.0);
        let mut line = serde_json::to_string(&entry).map_err(|_| fmt::Error)?;
        if let Some(raw) = http_request {
            line.pop();
            line.push_str(",\"httpRequest\":");
            line.push_str(&raw);
            line.push('}');
        }
        writeln!(writer, "{line}")
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}
