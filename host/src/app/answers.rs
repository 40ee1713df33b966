//! What the host's own endpoints share: JSON answers and errors, `405`, query values, and reading
//! an uploaded component within `--max-component-size` and the request's deadline (or pulling
//! the one a registry reference names).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::release::gate::Candidate;
use crate::serve::exchange::{ResponseBody, error_response, full};
use crate::util::oci::{OciError, Reference, Registry, RegistryConfig};
use crate::util::signing::SIGNATURE_HEADER;

/// The `source` of an uploaded version.
pub const UPLOAD_SOURCE: &str = "admin upload";

/// A request body the admin API can read (the exchange's, with its progress timer).
pub trait AdminBody:
    http_body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + 'static
{
}

impl<B> AdminBody for B where
    B: http_body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + 'static
{
}

/// When an admin request's body must have arrived: its `--request-timeout` after it started (an
/// upload trickled a byte at a time would otherwise hold the call open for as long as it lasts).
#[derive(Clone, Copy)]
pub struct BodyDeadline {
    pub at: tokio::time::Instant,
    pub timeout: std::time::Duration,
}

/// The uploaded component (the body, within `--max-component-size`, and the signature header)
/// and the request's URI; `Err` is the answer to send instead.
pub async fn read_component(
    req: Request<impl AdminBody>,
    limit: u64,
) -> Result<(Candidate, http::Uri), Response<ResponseBody>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the upload exceeds the {limit}-byte `--max-component-size`"),
        )
    };
    let declared =
        req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let signature = req.headers().get(SIGNATURE_HEADER).map(|v| v.as_bytes().to_vec());
    let uri = req.uri().clone();
    let deadline = req.extensions().get::<BodyDeadline>().copied();
    let limited = http_body_util::Limited::new(req.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
    let collected = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.at, limited.collect()).await {
            Ok(collected) => collected,
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    &format!(
                        "the upload did not arrive within the {}s `--request-timeout`",
                        deadline.timeout.as_secs_f64()
                    ),
                ));
            }
        },
        None => limited.collect().await,
    };
    let bytes: Bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "upload_failed",
                &format!("the upload could not be read: {error}"),
            ));
        }
    };
    if let Some(len) = declared
        && len != bytes.len() as u64
    {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "upload_truncated",
            "the upload ended before its Content-Length",
        ));
    }
    // Who uploaded it is the admin history's (`admin_events`), not the public `source`'s.
    Ok((Candidate::new(bytes.to_vec(), UPLOAD_SOURCE.to_string(), signature), uri))
}

/// One query parameter's value, percent-escapes decoded (`%3A` → `:`).
pub fn query_value(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query().and_then(|q| {
        q.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(percent_decode)
    })
}

/// `a%2Fb` → `a/b`; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The candidate an admin call names: with `?from=oci://…` (and no body), the component this
/// instance pulls from that registry reference (the `echo-host-signature` header, if any, as its
/// detached signature); else the upload ([`read_component`]).
pub async fn read_candidate(
    req: Request<impl AdminBody>,
    limit: u64,
    registry: &RegistryConfig,
) -> Result<(Candidate, http::Uri), Response<ResponseBody>> {
    let Some(from) = query_value(req.uri(), "from") else { return read_component(req, limit).await };
    let headers = req.headers();
    let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        let message = "name the component with `from` or upload it, not both";
        return Err(json_error(StatusCode::BAD_REQUEST, "bad_request", message));
    }
    let reference = Reference::parse("from", &from)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, "bad_reference", &format!("{e:#}")))?;
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes().to_vec());
    let client = Registry::new(registry)
        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, "registry_client", &format!("{e:#}")))?;
    let pulled = async {
        let digest = client.resolve(&reference).await?;
        client.pull(&reference, &digest, limit).await
    };
    match pulled.await {
        Ok(pulled) => {
            let source = reference.at(&pulled.digest);
            Ok((Candidate::new(pulled.bytes, source, signature), req.uri().clone()))
        }
        Err(error) => {
            tracing::warn!(reference = %reference, "cannot pull `{reference}` for an admin call: {error}");
            let status = match error {
                OciError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                OciError::Layout { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                OciError::NotFound { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            Err(json_error(status, error.kind(), &error.to_string()))
        }
    }
}

pub fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, &format!("allowed here: {allow}"));
    response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    text(status, "application/json", value.to_string() + "\n")
}

pub fn json_error(status: StatusCode, kind: &str, message: &str) -> Response<ResponseBody> {
    json(status, &serde_json::json!({ "error": message, "kind": kind }))
}

pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts are valid")
}
