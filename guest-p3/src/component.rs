//! The `wasi:http/handler@0.3.0` export: reads the request, asks [`echo_core::echo`] what to
//! answer, and moves the bytes. `handle` returns the response at once; a task spawned on the same
//! component-model task keeps writing its body stream afterwards.
//!
//! The body echo copies the request stream into the response stream through one bounded buffer
//! ([`COPY_CHUNK`]): a p3 guest cannot splice, and the request's `stream<u8>` cannot be handed to
//! the response as is because the answer starts with `Received POST data: `.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use echo_core::echo::{self, Rejection};
use echo_core::{json, query};
use wit_bindgen::{FutureReader, FutureWriter, StreamReader, StreamResult, StreamWriter, spawn_local};

wit_bindgen::generate!({
    world: "echo-p3",
    path: "../wit/p3",
    generate_all,
});

use exports::wasi::http::handler::Guest;
use wasi::http::types::{ErrorCode, Fields, Method, Request, Response, Trailers};

/// The bytes asked of each read of the request body while it is echoed; also the most of it in
/// guest memory at any time.
const COPY_CHUNK: usize = 64 * 1024;
/// Bytes asked of each read while the JSON echo buffers a body.
const READ_CHUNK: u64 = 64 * 1024;

/// What the other end of a body eventually learns: it ended well (no trailers) or broke off.
type BodyResult = Result<Option<Trailers>, ErrorCode>;

struct Component;

export!(Component);

impl Guest for Component {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let sent = method_name(request.get_method());
        let method = echo::answered_as(&sent);
        let path_with_query = request.get_path_with_query();
        let (path, query) = echo::split_path_query(path_with_query.as_deref());
        let headers = request.get_headers();
        let json_mode = echo::wants_json(&headers.get("accept"));
        let declared = match echo::content_length(&headers.get("content-length")) {
            Ok(length) => length,
            Err(rejection) => return reject(json_mode, &rejection),
        };
        if json_mode {
            // Asked for JSON: the structured echo, whatever the method.
            let entries = headers.copy_all();
            drop(headers);
            json_echo(request, method, path, query, entries, declared).await
        } else if echo::echoes_body(method) {
            // A method that carries a body: the seed's POST answer, streamed.
            drop(headers);
            body_echo(request, method, declared)
        } else {
            // Every other method, HEAD answered as GET: hyper drops the body of a HEAD response
            // and keeps its `content-length`.
            let text = echo::query_echo(method, query);
            respond(200, echo::TEXT_PLAIN, text.into_bytes())
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

/// `Received POST data: ` and then the request body, copied chunk by chunk as it arrives.
fn body_echo(request: Request, method: &str, declared: Option<u64>) -> Result<Response, ErrorCode> {
    let prefix = echo::body_echo_prefix(method);
    let length = match echo::body_echo_length(&prefix, declared) {
        Ok(length) => length,
        Err(rejection) => return reject(false, &rejection),
    };
    let (input, request_result) = consume_body(request);
    let (mut output, response_result, response) = new_response(200, echo::TEXT_PLAIN, length)?;
    // The response goes out now, its body after `handle` has returned: it may be far larger than
    // anything worth buffering.
    spawn_local(async move {
        let copied =
            output.write_all(prefix.into_bytes()).await.is_empty() && copy_all(input, &mut output).await;
        if !copied {
            // The client went away: dropping the writers unfinished is all there is to say.
            return;
        }
        // The request stream ended: whether it ended well (all the declared bytes, a clean
        // chunked end) only its result says. A broken request body breaks the response off too;
        // with a `content-length` the host also sees the response come up short.
        let outcome = request_result.await.map(|_trailers| None);
        drop(output);
        finish(response_result, outcome).await;
    });
    Ok(response)
}

/// Pipes `input` into `output` until the input ends; `false` if the response's reader went away.
async fn copy_all(mut input: StreamReader<u8>, output: &mut StreamWriter<u8>) -> bool {
    let mut chunk = Vec::with_capacity(COPY_CHUNK);
    loop {
        let (status, read) = input.read(chunk).await;
        chunk = read;
        if !chunk.is_empty() {
            chunk = output.write_all(chunk).await;
            if !chunk.is_empty() {
                return false;
            }
        }
        if status == StreamResult::Dropped {
            // The request body is over (or broke: its result future says which).
            return true;
        }
    }
}

/// The structured echo: buffers the body (capped) and answers with one JSON document.
async fn json_echo(
    request: Request,
    method: &str,
    path: &str,
    query: &str,
    headers: Vec<(String, Vec<u8>)>,
    declared: Option<u64>,
) -> Result<Response, ErrorCode> {
    let limit = echo::DEFAULT_JSON_BODY_LIMIT;
    if declared.is_some_and(|length| length > limit) {
        // Refuse before reading a byte.
        return reject(true, &echo::body_too_large(limit, declared));
    }
    let body = match read_capped(request, limit).await {
        Ok(body) => body,
        Err(rejection) => return reject(true, &rejection),
    };
    let query = query::parse_qsl(query);
    let document = json::echo_document(&json::EchoRequest {
        method,
        path,
        query: &query,
        headers: &headers,
        body: &body,
    });
    respond(200, echo::APPLICATION_JSON, document.into_bytes())
}

/// The whole request body, or the rejection when it is over `limit` or fails.
async fn read_capped(request: Request, limit: u64) -> Result<Vec<u8>, Rejection> {
    let (mut input, result) = consume_body(request);
    let mut buffer = Vec::new();
    loop {
        // Ask for at most one byte past the limit, so crossing it is seen without holding more.
        let room = (limit + 1).saturating_sub(buffer.len() as u64).min(READ_CHUNK);
        let (status, chunk) = input.read(Vec::with_capacity(room as usize)).await;
        buffer.extend_from_slice(&chunk);
        if buffer.len() as u64 > limit {
            return Err(echo::body_too_large(limit, None));
        }
        if status == StreamResult::Dropped {
            break;
        }
    }
    drop(input);
    match result.await {
        Ok(_trailers) => Ok(buffer),
        Err(error) => Err(echo::body_unreadable(&alloc::format!("{error:?}"))),
    }
}

/// The request's body stream and the future of how it ended.
fn consume_body(request: Request) -> (StreamReader<u8>, FutureReader<BodyResult>) {
    // Our side of the exchange: nothing the host could act on goes wrong here, so the writer is
    // dropped at once and the future resolves to its default, `Ok`.
    let (_, handled) = wit_future::new(|| Ok(()));
    Request::consume_body(request, handled)
}

/// A whole response from a buffer: status, content type, exact `content-length`.
fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Result<Response, ErrorCode> {
    let (mut output, result, response) = new_response(status, content_type, Some(body.len() as u64))?;
    spawn_local(async move {
        // Left over only if the reader went away (a HEAD response, a client gone): nothing to do.
        let _unsent = output.write_all(body).await;
        drop(output);
        drop(result); // its default: the body ended well
    });
    Ok(response)
}

fn reject(json_mode: bool, rejection: &Rejection) -> Result<Response, ErrorCode> {
    let (content_type, body) = rejection.body(json_mode);
    respond(rejection.status, content_type, body.into_bytes())
}

/// A response whose body is the returned writer's stream, and the writer of its result (which
/// resolves to "ended well" if dropped unwritten). An `Err` only where a conforming host cannot
/// fail us; the host then answers with its own error.
fn new_response(
    status: u16,
    content_type: &str,
    length: Option<u64>,
) -> Result<(StreamWriter<u8>, FutureWriter<BodyResult>, Response), ErrorCode> {
    let mut entries = Vec::with_capacity(2);
    entries.push(("content-type".to_string(), content_type.as_bytes().to_vec()));
    if let Some(length) = length {
        entries.push(("content-length".to_string(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries).map_err(|_| internal("invalid response headers"))?;
    let (output, contents) = wit_stream::new();
    let (result, trailers) = wit_future::new(|| Ok(None));
    // How the transmission went concerns the host alone: its future is dropped unread.
    let (response, _transmitted) = Response::new(headers, Some(contents), trailers);
    response.set_status_code(status).map_err(|()| internal("invalid status code"))?;
    Ok((output, result, response))
}

/// Tells the host how the body ended, once its stream is closed.
async fn finish(result: FutureWriter<BodyResult>, outcome: BodyResult) {
    // An `Err` here means the host no longer listens: nobody is left to tell.
    let _ = result.write(outcome).await;
}

fn internal(why: &str) -> ErrorCode {
    ErrorCode::InternalError(Some(why.into()))
}
