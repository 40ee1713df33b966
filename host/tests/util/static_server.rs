//! A static file server on loopback for the URL source: serves the current bytes at `/c.wasm`
//! (ETag = sha256 of the bytes, `If-None-Match` answered with 304), the detached signature at
//! `/c.wasm.sig` (404 when there is none), and can be switched to misbehave.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};

/// How `/c.wasm` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the bytes, or 304 to a matching `If-None-Match`.
    Normal,
    /// 500 Internal Server Error.
    Error500,
    /// Headers and half the body, then nothing, forever.
    Hang,
    /// `Content-Length` of the whole, half the body, then the connection ends.
    Truncated,
    /// 302 to `/moved.wasm`, which serves the bytes (a client following it would take them).
    Redirect,
}

/// What the server serves and what it has seen.
pub struct State {
    pub bytes: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    pub mode: Mode,
    /// Requests for `/c.wasm`.
    pub requests: u64,
    /// 304s answered.
    pub not_modified: u64,
    /// Requests answered with the current non-`Normal` mode since it was set.
    pub misbehaved: u64,
    /// Requests that carried `If-None-Match` or `If-Modified-Since`.
    pub conditional: u64,
}

pub struct StaticServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl StaticServer {
    pub async fn start(bytes: Vec<u8>, signature: Option<Vec<u8>>) -> StaticServer {
        let state = Arc::new(Mutex::new(State {
            bytes,
            signature,
            mode: Mode::Normal,
            requests: 0,
            not_modified: 0,
            misbehaved: 0,
            conditional: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StaticServer { addr, state, task }
    }

    /// The component's URL.
    pub fn url(&self) -> String {
        format!("http://{}/c.wasm", self.addr)
    }

    /// Serves `bytes` (and `signature`) in `mode` from now on.
    pub fn set(&self, bytes: &[u8], signature: Option<&[u8]>, mode: Mode) {
        let mut state = self.state.lock().unwrap();
        state.bytes = bytes.to_vec();
        state.signature = signature.map(<[u8]>::to_vec);
        state.mode = mode;
        state.misbehaved = 0;
    }

    /// Reads the counters (or anything else) under the lock.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap())
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(bytes))[..32])
}

fn full(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    Response::builder().status(status).body(Full::new(bytes.into()).boxed()).unwrap()
}

/// `Content-Length` of the whole and half the bytes; then the connection ends (`hang == false`)
/// or nothing more is ever sent.
fn partial(bytes: &[u8], hang: bool) -> Response<Body> {
    let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
    let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(half))]);
    let body: Body = if hang {
        BodyExt::boxed(StreamBody::new(first.chain(futures::stream::pending())))
    } else {
        // Pause before the end so the headers and the half are flushed before hyper notices the
        // body is short and closes the connection.
        let pause = futures::stream::once(tokio::time::sleep(Duration::from_millis(100)))
            .filter_map(|()| std::future::ready(None::<Result<Frame<Bytes>, Infallible>>));
        BodyExt::boxed(StreamBody::new(first.chain(pause)))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header(header::ETAG, etag(bytes))
        .body(body)
        .unwrap()
}

fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let mut state = state.lock().unwrap();
    match request.uri().path() {
        "/c.wasm" => {}
        "/c.wasm.sig" => {
            return match &state.signature {
                Some(signature) => full(StatusCode::OK, signature.clone()),
                None => full(StatusCode::NOT_FOUND, "no signature\n"),
            };
        }
        "/moved.wasm" => return full(StatusCode::OK, state.bytes.clone()),
        _ => return full(StatusCode::NOT_FOUND, "not found\n"),
    }
    state.requests += 1;
    let headers = request.headers();
    if headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE) {
        state.conditional += 1;
    }
    if state.mode != Mode::Normal {
        state.misbehaved += 1;
    }
    let tag = etag(&state.bytes);
    match state.mode {
        Mode::Normal => {
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
            if matches {
                state.not_modified += 1;
                let mut response = full(StatusCode::NOT_MODIFIED, Bytes::new());
                response.headers_mut().insert(header::ETAG, tag.parse().unwrap());
                return response;
            }
            let mut response = full(StatusCode::OK, state.bytes.clone());
            response.headers_mut().insert(header::ETAG, tag.parse().unwrap());
            response
                .headers_mut()
                .insert(header::LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
            response
        }
        Mode::Error500 => full(StatusCode::INTERNAL_SERVER_ERROR, "deliberate failure\n"),
        Mode::Hang => partial(&state.bytes, true),
        Mode::Truncated => partial(&state.bytes, false),
        Mode::Redirect => {
            let mut response = full(StatusCode::FOUND, "moved\n");
            response.headers_mut().insert(header::LOCATION, "/moved.wasm".parse().unwrap());
            response
        }
    }
}
