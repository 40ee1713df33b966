//! Trace context on the wire: the caller's span read from W3C `traceparent` (and `tracestate`)
//! or Cloud Run's `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` ([`remote_parent`]), and ours
//! written into the guest's outbound requests ([`inject`]).

use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
use opentelemetry::{SpanId, TraceId};

// Looked up on every traced request: names made once, not parsed from text each time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const CLOUD_TRACE: HeaderName = HeaderName::from_static("x-cloud-trace-context");

/// The caller's span, when the request names a valid one: `traceparent` first, else
/// `X-Cloud-Trace-Context`.
pub fn remote_parent(headers: &HeaderMap) -> Option<SpanContext> {
    if let Some(parent) = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(traceparent) {
        let state = headers
            .get(&TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TraceState::from_str(v).ok())
            .unwrap_or_default();
        return Some(SpanContext::new(parent.0, parent.1, parent.2, true, state));
    }
    let (trace, span, flags) =
        headers.get(&CLOUD_TRACE).and_then(|v| v.to_str().ok()).and_then(cloud_trace)?;
    Some(SpanContext::new(trace, span, flags, true, TraceState::default()))
}

/// `00-TRACE_ID-SPAN_ID-FLAGS` (a later version's extra fields ignored, as the spec asks).
fn traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, span, TraceFlags::new(flags & 1)))
}

/// `TRACE_ID/SPAN_ID;o=OPTIONS`: a hex trace id, a decimal span id, `o=1` when sampled.
fn cloud_trace(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let (trace, rest) = value.trim().split_once('/')?;
    let (span, options) = rest.split_once(';').unwrap_or((rest, ""));
    if trace.is_empty() || trace.len() > 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = span.parse::<u64>().ok().filter(|s| *s != 0).map(SpanId::from)?;
    let sampled = options.trim() == "o=1";
    Some((trace, span, if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() }))
}

/// Sets `traceparent` (and `tracestate`, when there is one) to name `span` as the parent of
/// whatever the request starts downstream; a `traceparent` the guest set is replaced.
pub fn inject(headers: &mut HeaderMap, span: &SpanContext) {
    let value = format!("00-{}-{}-{:02x}", span.trace_id(), span.span_id(), span.trace_flags().to_u8());
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert("traceparent", value);
    }
    let state = span.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(state) if !state.is_empty() => {
            headers.insert("tracestate", state);
        }
        _ => {
            headers.remove("tracestate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn traceparent_is_read_with_its_flags_and_state() {
        let parent = remote_parent(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "vendor=abc"),
        ]))
        .unwrap();
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("abc"));
        let unsampled = remote_parent(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]));
        assert!(!unsampled.unwrap().is_sampled());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(remote_parent(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn cloud_run_trace_context_is_read_when_there_is_no_traceparent() {
        let parent =
            remote_parent(&headers(&[("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1")]))
                .unwrap();
        assert_eq!(parent.trace_id().to_string(), "105445aa7843bc8bf206b12000100000");
        assert_eq!(parent.span_id(), SpanId::from(1u64));
        assert!(parent.is_sampled());
        let unsampled =
            remote_parent(&headers(&[("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/99")]));
        assert!(!unsampled.unwrap().is_sampled());
        assert_eq!(remote_parent(&headers(&[("x-cloud-trace-context", "nothex/1;o=1")])), None);
        assert_eq!(remote_parent(&headers(&[("x-cloud-trace-context", "105445aa/0;o=1")])), None);
    }

    #[test]
    fn injected_traceparent_names_our_span() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut map = headers(&[("traceparent", "00-11111111111111111111111111111111-2222222222222222-00")]);
        map.insert("tracestate", "stale=1".parse().unwrap());
        inject(&mut map, &span);
        assert_eq!(map["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(map.get("tracestate").is_none());
        assert_eq!(remote_parent(&map).unwrap().span_id(), span.span_id());
    }
}
