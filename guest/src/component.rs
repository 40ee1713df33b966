//! The `wasi:http/incoming-handler` export: reads the request, asks [`crate::echo`] what to
//! answer, and moves the bytes. Body echoes are spliced host-side so large bodies never enter
//! guest memory.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::echo::{self, Rejection};
use crate::json;
use crate::query;

wit_bindgen::generate!({
    world: "echo",
    path: "../wit",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

/// `blocking-write-and-flush` accepts at most 4096 bytes per call.
const WRITE_CHUNK: usize = 4096;
/// Bytes asked of each host-side splice; the host caps it further at what the response body can
/// take (wasmtime: 1 MiB), and none of it passes through guest memory.
const SPLICE_CHUNK: u64 = 1024 * 1024;
/// Bytes asked of each read while the JSON echo buffers a body.
const READ_CHUNK: u64 = 64 * 1024;

struct Component;

export!(Component);

impl Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let sent = method_name(request.method());
        let method = echo::answered_as(&sent);
        let path_with_query = request.path_with_query();
        let (path, query) = echo::split_path_query(path_with_query.as_deref());
        let headers = request.headers();
        let json_mode = echo::wants_json(&headers.get("accept"));
        let declared = match echo::content_length(&headers.get("content-length")) {
            Ok(length) => length,
            Err(rejection) => return reject(out, json_mode, &rejection),
        };
        if json_mode {
            // Asked for JSON: the structured echo, whatever the method.
            let entries = headers.entries();
            // The headers resource is a child of the request; it must go before the request does.
            drop(headers);
            json_echo(request, out, method, path, query, entries, declared);
        } else if echo::echoes_body(method) {
            // A method that carries a body: the seed's POST answer, streamed.
            drop(headers);
            body_echo(request, out, method, declared);
        } else {
            // Every other method, HEAD answered as GET: hyper drops the body of a HEAD response
            // and keeps its `content-length`.
            let text = echo::query_echo(method, query);
            respond(out, 200, echo::TEXT_PLAIN, text.as_bytes());
        }
    }
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(name) => name,
    }
}

/// `Received POST data: ` and then the request body, spliced host-side into the response.
fn body_echo(request: IncomingRequest, out: ResponseOutparam, method: &str, declared: Option<u64>) {
    let prefix = echo::body_echo_prefix(method);
    let length = match echo::body_echo_length(&prefix, declared) {
        Ok(length) => length,
        Err(rejection) => return reject(out, false, &rejection),
    };
    let Some((body, input)) = request_body(&request) else {
        return fail(out, "request body was already taken");
    };
    let Some((response, out_body)) = new_response(200, echo::TEXT_PLAIN, length) else {
        return fail(out, "could not build the response");
    };
    // Send the headers now: the body may be far larger than anything worth buffering.
    ResponseOutparam::set(out, Ok(response));
    let Ok(output) = out_body.write() else { return };
    let streamed = write_all(&output, prefix.as_bytes()).is_ok() && splice_all(&output, &input);
    drop(input);
    drop(body);
    drop(output);
    if streamed {
        // An `Err` means the client sent fewer bytes than it declared; the host aborts the response.
        let _ = OutgoingBody::finish(out_body, None);
    }
    // Otherwise `out_body` is dropped unfinished, which tells the host the response broke off.
}

/// Pipes `input` into `output` until the input ends; `false` if either side failed first.
fn splice_all(output: &OutputStream, input: &InputStream) -> bool {
    loop {
        match output.blocking_splice(input, SPLICE_CHUNK) {
            Ok(_) => {}
            // `Closed` comes from either side: the request body ended (success) or the client went
            // away (the response stream is closed too, which `check-write` tells us).
            Err(StreamError::Closed) => return output.check_write().is_ok(),
            Err(StreamError::LastOperationFailed(_)) => return false,
        }
    }
}

/// The structured echo: buffers the body (capped) and answers with one JSON document.
fn json_echo(
    request: IncomingRequest,
    out: ResponseOutparam,
    method: &str,
    path: &str,
    query: &str,
    headers: Vec<(String, Vec<u8>)>,
    declared: Option<u64>,
) {
    let limit = echo::DEFAULT_JSON_BODY_LIMIT;
    if declared.is_some_and(|length| length > limit) {
        // Refuse before reading a byte.
        return reject(out, true, &echo::body_too_large(limit, declared));
    }
    let body = match read_capped(&request, limit) {
        Ok(body) => body,
        Err(rejection) => return reject(out, true, &rejection),
    };
    drop(request);
    let query = query::parse_qsl(query);
    let document = json::echo_document(&json::EchoRequest {
        method,
        path,
        query: &query,
        headers: &headers,
        body: &body,
    });
    respond(out, 200, echo::APPLICATION_JSON, document.as_bytes());
}

/// The whole request body, or the rejection when it is over `limit` or fails.
fn read_capped(request: &IncomingRequest, limit: u64) -> Result<Vec<u8>, Rejection> {
    let Some((body, input)) = request_body(request) else {
        return Err(echo::body_unreadable("the body was already taken"));
    };
    let mut buffer = Vec::new();
    let result = loop {
        // Ask for at most one byte past the limit, so crossing it is seen without holding more.
        let room = (limit + 1).saturating_sub(buffer.len() as u64);
        match input.blocking_read(room.min(READ_CHUNK)) {
            Ok(chunk) => {
                buffer.extend_from_slice(&chunk);
                if buffer.len() as u64 > limit {
                    break Err(echo::body_too_large(limit, None));
                }
            }
            Err(StreamError::Closed) => break Ok(buffer),
            Err(StreamError::LastOperationFailed(error)) => {
                break Err(echo::body_unreadable(&error.to_debug_string()));
            }
        }
    };
    // The stream is a child of the body: drop it first.
    drop(input);
    drop(body);
    result
}

fn request_body(request: &IncomingRequest) -> Option<(IncomingBody, InputStream)> {
    let body = request.consume().ok()?;
    let input = body.stream().ok()?;
    Some((body, input))
}

/// A whole response from a buffer: status, content type, exact `content-length`.
fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let Some((response, out_body)) = new_response(status, content_type, Some(body.len() as u64)) else {
        return fail(out, "could not build the response");
    };
    ResponseOutparam::set(out, Ok(response));
    let Ok(output) = out_body.write() else { return };
    let written = write_all(&output, body).is_ok();
    drop(output);
    if written {
        let _ = OutgoingBody::finish(out_body, None);
    }
}

fn reject(out: ResponseOutparam, json_mode: bool, rejection: &Rejection) {
    let (content_type, body) = rejection.body(json_mode);
    respond(out, rejection.status, content_type, body.as_bytes());
}

/// Something that cannot happen with a conforming host: let the host answer with its own error.
fn fail(out: ResponseOutparam, why: &str) {
    ResponseOutparam::set(out, Err(ErrorCode::InternalError(Some(why.into()))));
}

fn new_response(
    status: u16,
    content_type: &str,
    length: Option<u64>,
) -> Option<(OutgoingResponse, OutgoingBody)> {
    let mut entries = Vec::with_capacity(2);
    entries.push(("content-type".to_string(), content_type.as_bytes().to_vec()));
    if let Some(length) = length {
        entries.push(("content-length".to_string(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries).ok()?;
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).ok()?;
    let body = response.body().ok()?;
    Some((response, body))
}

fn write_all(output: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    bytes.chunks(WRITE_CHUNK).try_for_each(|chunk| output.blocking_write_and_flush(chunk))
}
