//! `native-echo PORT`: the benchmark's ceiling, a plain hyper 1 server (HTTP/1.1) that answers
//! like the echo component, with the component's own formatting code (`echo-guest` is plain Rust
//! natively): `GET /?name=world` gets the seed's `Received GET request. Query params: ...` text
//! and a POST/PUT/PATCH body is streamed back after `Received POST data: `, with the exact
//! `Content-Length` when the request had one.
//!
//! One tokio worker per core it may run on (`taskset`): a current-thread runtime on one core, a
//! multi-thread runtime with one worker per core otherwise. No logging, no limits: this is what
//! the hardware does with hyper alone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use echo_guest::echo;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse().map_err(|_| anyhow::anyhow!("usage: native-echo PORT"))?,
        None => std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()?
    };
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let method = echo::answered_as(req.method().as_str()).to_string();
    let builder = Response::builder().header(header::CONTENT_TYPE, echo::TEXT_PLAIN);
    let response = if echo::echoes_body(&method) {
        let prefix = Bytes::from(echo::body_echo_prefix(&method));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let length = declared.map(|n| n + prefix.len() as u64);
        builder.body(EchoBody::Echo { prefix: Some(prefix), body: req.into_body(), length })
    } else {
        let (_, query) = echo::split_path_query(req.uri().path_and_query().map(|pq| pq.as_str()));
        builder.body(EchoBody::Full(Some(Bytes::from(echo::query_echo(&method, query)))))
    };
    Ok(response.expect("static response parts are valid"))
}

/// A finished text, or the request body streamed back after a prefix.
enum EchoBody {
    Full(Option<Bytes>),
    Echo { prefix: Option<Bytes>, body: Incoming, length: Option<u64> },
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            EchoBody::Full(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            EchoBody::Echo { prefix, body, .. } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                loop {
                    match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                        // Trailers are not echoed.
                        Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                        Some(Ok(_)) => continue,
                        other => return Poll::Ready(other),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EchoBody::Full(text) => text.is_none(),
            EchoBody::Echo { prefix, body, .. } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EchoBody::Full(Some(text)) => SizeHint::with_exact(text.len() as u64),
            EchoBody::Full(None) => SizeHint::with_exact(0),
            EchoBody::Echo { length: Some(length), .. } => SizeHint::with_exact(*length),
            EchoBody::Echo { .. } => SizeHint::default(),
        }
    }
}
