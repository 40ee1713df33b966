//! Time as the host writes it: RFC 3339 timestamps (UTC) and durations as seconds in JSON.

use std::time::{Duration, SystemTime};

/// `at` as RFC 3339 (UTC).
pub fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A duration as seconds (a JSON number), for `serde(serialize_with)`.
pub fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An optional duration as seconds, `0` for none.
pub fn serialize_optional_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
}
