//! What the echo answers, decided from plain values: which echo a method gets, whether the client
//! asked for JSON, the declared body length, the response texts and the rejections. No I/O here, so
//! all of it is unit-tested natively; the components (`echo-guest`, `echo-guest-p3`) only move bytes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{json, pyrepr, query};

/// The most body the JSON echo buffers: it holds the whole body in guest memory to encode it.
pub const DEFAULT_JSON_BODY_LIMIT: u64 = 1024 * 1024;
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
pub const APPLICATION_JSON: &str = "application/json";

/// Whether `method` gets the body echo (`Received POST data: …`) rather than the query echo.
///
/// The seed only routes GET and POST; PUT and PATCH carry bodies just like POST, so they are echoed
/// the same way instead of getting Flask's 405.
pub fn echoes_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// The method a request is answered as: HEAD gets exactly GET's answer, so its headers (above all
/// `content-length`) are GET's (RFC 9110 §9.3.2, and what Flask does); the host drops the body.
pub fn answered_as(method: &str) -> &str {
    if method == "HEAD" { "GET" } else { method }
}

/// Splits `path-with-query` at the first `?`; a request without one has path `/`.
pub fn split_path_query(path_with_query: Option<&str>) -> (&str, &str) {
    let whole = path_with_query.unwrap_or("/");
    whole.split_once('?').unwrap_or((whole, ""))
}

/// The seed's GET answer: `Received GET request. Query params: ImmutableMultiDict([...])`.
pub fn query_echo(method: &str, query: &str) -> String {
    let args = pyrepr::immutable_multi_dict(&query::parse_qsl(query));
    format!("Received {method} request. Query params: {args}")
}

/// What precedes the raw body in the seed's POST answer.
pub fn body_echo_prefix(method: &str) -> String {
    format!("Received {method} data: ")
}

/// Whether any `Accept` value lists `application/json` (case-insensitive, parameters allowed),
/// unless it is marked `q=0`, which RFC 9110 §12.4.2 defines as "not acceptable".
pub fn wants_json(accept_values: &[Vec<u8>]) -> bool {
    accept_values.iter().flat_map(|value| value.split(|&b| b == b',')).any(|range| {
        let mut parts = range.split(|&b| b == b';');
        let media_type = parts.next().unwrap_or_default().trim_ascii();
        media_type.eq_ignore_ascii_case(APPLICATION_JSON.as_bytes())
            && !parts.any(|param| {
                let param = param.trim_ascii();
                param.len() > 2
                    && param[..2].eq_ignore_ascii_case(b"q=")
                    && param[2..].iter().all(|&b| b == b'0' || b == b'.')
            })
    })
}

/// A request the echo refuses before it starts the response.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// One line, lowercase, no trailing period.
    pub reason: String,
}

impl Rejection {
    fn bad_request(reason: String) -> Self {
        Self { status: 400, reason }
    }

    /// The body in the echo's mode: `{"error":"…"}` for JSON, the reason and a newline otherwise.
    pub fn body(&self, json_mode: bool) -> (&'static str, String) {
        if json_mode {
            (APPLICATION_JSON, json::error_document(&self.reason))
        } else {
            (TEXT_PLAIN, format!("{}\n", self.reason))
        }
    }
}

/// The declared `Content-Length`, if any. Repeated headers or a comma-separated list are accepted
/// when every entry is the same number (RFC 9110 §8.6); anything else is a 400. The host's HTTP
/// server normally rejects these first; this keeps the component safe behind any host.
pub fn content_length(values: &[Vec<u8>]) -> Result<Option<u64>, Rejection> {
    let mut length = None;
    for entry in values.iter().flat_map(|value| value.split(|&b| b == b',')) {
        let entry = entry.trim_ascii();
        let parsed = parse_decimal(entry).ok_or_else(|| {
            Rejection::bad_request(format!(
                "invalid `content-length` header: `{}`",
                String::from_utf8_lossy(entry)
            ))
        })?;
        if length.is_some_and(|seen| seen != parsed) {
            return Err(Rejection::bad_request("conflicting `content-length` headers".into()));
        }
        length = Some(parsed);
    }
    Ok(length)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| {
        if digit.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(digit - b'0')) } else { None }
    })
}

/// The `content-length` of the body echo: the prefix plus the request body, when the request
/// declared its length (otherwise the response is chunked).
pub fn body_echo_length(prefix: &str, request_length: Option<u64>) -> Result<Option<u64>, Rejection> {
    request_length
        .map(|n| {
            n.checked_add(prefix.len() as u64)
                .ok_or_else(|| Rejection::bad_request("`content-length` is too large".into()))
        })
        .transpose()
}

/// The JSON echo refuses a body over `limit`: at once when the request declares a larger
/// `Content-Length`, or as soon as a chunked body crosses it.
pub fn body_too_large(limit: u64, declared: Option<u64>) -> Rejection {
    let reason = match declared {
        Some(length) => {
            format!("request body of {length} bytes exceeds the JSON echo's limit of {limit} bytes")
        }
        None => format!("request body exceeds the JSON echo's limit of {limit} bytes"),
    };
    Rejection { status: 413, reason }
}

/// The request body failed before the response started (JSON mode buffers it first).
pub fn body_unreadable(detail: &str) -> Rejection {
    // Host error texts may span lines; the reason must stay one line.
    let detail: String = detail.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    Rejection::bad_request(format!("request body could not be read: {}", detail.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn values(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    #[test]
    fn body_methods() {
        for method in ["POST", "PUT", "PATCH"] {
            assert!(echoes_body(method), "{method}");
        }
        for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PURGE", "post"] {
            assert!(!echoes_body(method), "{method}");
        }
    }

    #[test]
    fn head_is_answered_as_get() {
        assert_eq!(answered_as("HEAD"), "GET");
        for method in ["GET", "POST", "DELETE", "head", "PURGE"] {
            assert_eq!(answered_as(method), method);
        }
    }

    #[test]
    fn path_and_query() {
        assert_eq!(split_path_query(Some("/?name=world")), ("/", "name=world"));
        assert_eq!(split_path_query(Some("/a/b?x=1?y=2")), ("/a/b", "x=1?y=2"));
        assert_eq!(split_path_query(Some("/a")), ("/a", ""));
        assert_eq!(split_path_query(Some("/a?")), ("/a", ""));
        assert_eq!(split_path_query(None), ("/", ""));
    }

    #[test]
    fn seed_texts() {
        assert_eq!(
            query_echo("GET", "name=world"),
            "Received GET request. Query params: ImmutableMultiDict([('name', 'world')])"
        );
        assert_eq!(
            query_echo("DELETE", "a=1&a=2&b=it's"),
            r#"Received DELETE request. Query params: ImmutableMultiDict([('a', '1'), ('a', '2'), ('b', "it's")])"#
        );
        assert_eq!(
            query_echo("OPTIONS", ""),
            "Received OPTIONS request. Query params: ImmutableMultiDict([])"
        );
        assert_eq!(body_echo_prefix("PATCH"), "Received PATCH data: ");
    }

    #[test]
    fn accept_json() {
        assert!(wants_json(&values(&["application/json"])));
        assert!(wants_json(&values(&["text/html, Application/JSON;charset=utf-8"])));
        assert!(wants_json(&values(&["text/html", " application/json ; q=0.5"])));
        assert!(wants_json(&values(&["application/json;q=0.001"])));
        assert!(!wants_json(&values(&[])));
        assert!(!wants_json(&values(&["*/*"])));
        assert!(!wants_json(&values(&["text/plain, application/jsonx"])));
        assert!(!wants_json(&values(&["application/json;q=0"])));
        assert!(!wants_json(&values(&["application/json; Q=0.000"])));
        assert!(!wants_json(&[vec![0xff, b',', b' ']]));
    }

    #[test]
    fn declared_length() {
        assert_eq!(content_length(&values(&[])), Ok(None));
        assert_eq!(content_length(&values(&["0"])), Ok(Some(0)));
        assert_eq!(content_length(&values(&["42"])), Ok(Some(42)));
        assert_eq!(content_length(&values(&["42", "42"])), Ok(Some(42)));
        assert_eq!(content_length(&values(&["42, 42"])), Ok(Some(42)));
        assert_eq!(content_length(&values(&["18446744073709551615"])), Ok(Some(u64::MAX)));
        for bad in [&["x"][..], &["-1"], &["+1"], &[""], &["1 2"], &["18446744073709551616"], &["1", "2"]] {
            let rejection = content_length(&values(bad)).expect_err(bad[0]);
            assert_eq!(rejection.status, 400);
            assert!(rejection.reason.contains("content-length"), "{}", rejection.reason);
        }
    }

    #[test]
    fn body_echo_length_adds_the_prefix() {
        let prefix = body_echo_prefix("POST");
        assert_eq!(body_echo_length(&prefix, None), Ok(None));
        assert_eq!(body_echo_length(&prefix, Some(10)), Ok(Some(20 + 10)));
        assert_eq!(body_echo_length(&prefix, Some(u64::MAX)).map_err(|r| r.status), Err(400));
    }

    #[test]
    fn rejections_are_one_line_and_state_the_limit() {
        let declared = body_too_large(DEFAULT_JSON_BODY_LIMIT, Some(2_000_000));
        assert_eq!(declared.status, 413);
        assert_eq!(
            declared.body(true),
            (
                APPLICATION_JSON,
                r#"{"error":"request body of 2000000 bytes exceeds the JSON echo's limit of 1048576 bytes"}"#
                    .into()
            )
        );
        assert!(body_too_large(DEFAULT_JSON_BODY_LIMIT, None).reason.contains("1048576 bytes"));
        let unreadable = body_unreadable("connection reset\nby peer\r\n");
        assert_eq!(unreadable.status, 400);
        assert_eq!(unreadable.reason, "request body could not be read: connection reset by peer");
        assert_eq!(unreadable.body(false).1, "request body could not be read: connection reset by peer\n");
    }
}
