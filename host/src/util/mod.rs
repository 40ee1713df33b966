//! Layer 0, `util`: what every layer may use and that knows nothing of the host: time formatting,
//! backoff, redaction, signatures, the Cloud Storage client, the OCI registry client ([`oci`]),
//! stdout logging, the stop signal of the process, a poll timer ([`timed`]), how old a remote view
//! may grow ([`freshness`]), and the OTLP trace exporter ([`traces`]).

pub mod backoff;
pub mod freshness;
pub mod gcs;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod oci;
pub mod redact;
pub mod shutdown;
pub mod signing;
pub mod time;
pub mod timed;
pub mod traces;
pub mod units;
