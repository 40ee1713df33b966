//! The raw clients of `hostile.rs`: an h2c client that never opens a window
//! ([`ZeroWindowConnection`]), HTTP/2 frames written and read by hand ([`H2Frames`]), and
//! HTTP/1.1 responses read off a socket byte by byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::PATIENCE;

// ------------------------------------------------------------------------------------------------
// h2 with a zero window
// ------------------------------------------------------------------------------------------------

/// An h2c connection (prior knowledge) whose client grants the server no flow-control window:
/// `SETTINGS_INITIAL_WINDOW_SIZE = 0` and never a `WINDOW_UPDATE` (the h2 crate sends one only
/// when received data is released, and none can arrive). Response heads get through, body bytes
/// cannot. Stays open until dropped.
pub struct ZeroWindowConnection {
    send: h2::client::SendRequest<Bytes>,
    ping: h2::PingPong,
    driver: JoinHandle<Result<(), h2::Error>>,
    authority: String,
}

/// How one zero-window stream ended, `after` its request was sent.
pub enum StreamEnd {
    /// Reset by the server (`RST_STREAM`) or otherwise broken, before its head (`status` none)
    /// or after.
    Broken { after: Duration, status: Option<u16>, error: String },
    /// The host's own 504: the deadline passed before the guest's head was sent.
    GatewayTimeout { after: Duration },
    /// Ended cleanly, or with another status: not what a zero window allows.
    Unexpected { after: Duration, what: String },
    /// Neither reset nor ended when the test stopped waiting.
    StillOpen,
}

impl StreamEnd {
    /// Cut by the server no earlier than `timeout` after the request was sent (its deadline can
    /// only fall later: the server starts counting when the request reaches it).
    pub fn is_cut_at_deadline(&self, timeout: Duration) -> bool {
        match self {
            StreamEnd::Broken { after, .. } | StreamEnd::GatewayTimeout { after } => *after >= timeout,
            StreamEnd::Unexpected { .. } | StreamEnd::StillOpen => false,
        }
    }
}

impl StreamEnd {
    /// How long after its request was sent the stream ended, if it did.
    pub fn after(&self) -> Option<Duration> {
        match self {
            StreamEnd::Broken { after, .. }
            | StreamEnd::GatewayTimeout { after }
            | StreamEnd::Unexpected { after, .. } => Some(*after),
            StreamEnd::StillOpen => None,
        }
    }
}

impl std::fmt::Debug for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Broken { after, status: None, error } => {
                write!(f, "broken before a head after {after:.2?}: {error}")
            }
            StreamEnd::Broken { after, status: Some(status), error } => {
                write!(f, "{status}, then broken after {after:.2?}: {error}")
            }
            StreamEnd::GatewayTimeout { after } => write!(f, "504 after {after:.2?}"),
            StreamEnd::Unexpected { after, what } => write!(f, "unexpected after {after:.2?}: {what}"),
            StreamEnd::StillOpen => write!(f, "still open"),
        }
    }
}

impl ZeroWindowConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("h2c handshake");
        let ping = connection.ping_pong().expect("taken once");
        let driver = tokio::spawn(connection);
        Self { send, ping, driver, authority: addr.to_string() }
    }

    /// Opens a stream and sends `POST path` with `body` (as much as the server's window takes;
    /// h2 buffers the rest). The task ends when the stream does.
    pub fn post(&self, path: &str, body: Bytes) -> JoinHandle<StreamEnd> {
        let request = http::Request::post(format!("http://{}{path}", self.authority)).body(()).unwrap();
        self.send(request, Some(body))
    }

    /// Opens a stream and sends `GET path` with `headers` and no body. The task ends when the
    /// stream does.
    pub fn get(&self, path: &str, headers: &[(String, String)]) -> JoinHandle<StreamEnd> {
        let mut request = http::Request::get(format!("http://{}{path}", self.authority));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        self.send(request.body(()).unwrap(), None)
    }

    fn send(&self, request: http::Request<()>, body: Option<Bytes>) -> JoinHandle<StreamEnd> {
        let send = self.send.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut send = match send.ready().await {
                Ok(send) => send,
                Err(error) => {
                    return StreamEnd::Unexpected {
                        after: started.elapsed(),
                        what: format!("connection not ready: {error}"),
                    };
                }
            };
            let (response, mut stream) = match send.send_request(request, body.is_none()) {
                Ok(sent) => sent,
                Err(error) => {
                    return StreamEnd::Unexpected {
                        after: started.elapsed(),
                        what: format!("send_request: {error}"),
                    };
                }
            };
            if let Some(body) = body
                && let Err(error) = stream.send_data(body, true)
            {
                return StreamEnd::Broken {
                    after: started.elapsed(),
                    status: None,
                    error: format!("send_data: {error}"),
                };
            }
            stream_end(response, started).await
        })
    }

    /// The connection is still open: not ended, and it answers a PING.
    pub async fn assert_open(&mut self, what: &str) {
        assert!(!self.driver.is_finished(), "the zero-window connection ended {what}");
        match tokio::time::timeout(PATIENCE, self.ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => panic!("the zero-window connection broke {what}: {error}"),
            Err(_) => panic!("the zero-window connection answered no PING within {PATIENCE:?} {what}"),
        }
    }
}

/// Reads a response whose body the client never releases (no WINDOW_UPDATE goes out) until the
/// stream ends.
async fn stream_end(response: h2::client::ResponseFuture, started: Instant) -> StreamEnd {
    let response = match response.await {
        Ok(response) => response,
        Err(error) => {
            return StreamEnd::Broken { after: started.elapsed(), status: None, error: describe(&error) };
        }
    };
    let status = response.status().as_u16();
    if status == 504 {
        return StreamEnd::GatewayTimeout { after: started.elapsed() };
    }
    let mut body = response.into_body();
    let mut received = 0;
    loop {
        match body.data().await {
            Some(Ok(bytes)) => received += bytes.len(),
            Some(Err(error)) => {
                return StreamEnd::Broken {
                    after: started.elapsed(),
                    status: Some(status),
                    error: describe(&error),
                };
            }
            None => {
                return StreamEnd::Unexpected {
                    after: started.elapsed(),
                    what: format!("{status}, ended cleanly after {received} body bytes"),
                };
            }
        }
    }
}

fn describe(error: &h2::Error) -> String {
    match error.reason() {
        Some(reason) if error.is_reset() => format!("RST_STREAM {reason:?}"),
        _ => error.to_string(),
    }
}

/// Awaits every stream until `until`; those still going then are reported open and left
/// running (detached, not aborted: dropping a stream would make the client reset it, freeing
/// on the server what the test is checking the server frees by itself).
pub async fn join_stream_ends(tasks: Vec<JoinHandle<StreamEnd>>, until: Instant) -> Vec<StreamEnd> {
    let mut ends = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match tokio::time::timeout_at(until.into(), &mut task).await {
            Ok(end) => ends.push(end.expect("the stream task panicked")),
            Err(_) => ends.push(StreamEnd::StillOpen),
        }
    }
    ends
}

// ------------------------------------------------------------------------------------------------
// HTTP/2 frames by hand (RFC 9113 §4, §6)
// ------------------------------------------------------------------------------------------------

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame: the 9-byte header (length, type, flags, stream id) and the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The HPACK block of `GET path` without Huffman or the dynamic table: `:method GET` and
/// `:scheme http` from the static table, `:path` and `:authority` literal with indexed names.
fn get_block(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (name_index, value) in [(0x04, path), (0x01, authority)] {
        assert!(value.len() < 127, "a one-byte HPACK length");
        block.push(name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// What the server said on a hand-driven h2c connection, each event with when it came (since
/// [`H2Frames::run`] began).
#[derive(Debug, Default)]
pub struct H2Exchange {
    /// Whether stream 1's response head was `:status 200` (HPACK static index 8).
    pub status_200: Option<bool>,
    pub response_end: Option<Duration>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` from the server's first SETTINGS.
    pub max_concurrent_streams: Option<u32>,
    /// Every `RST_STREAM` the server sent: stream id and error code.
    pub resets: Vec<(u32, u32)>,
    pub goaway: Option<GoAway>,
    /// EOF or a reset of the TCP connection.
    pub closed: Option<Duration>,
}

/// The first GOAWAY (a graceful one may be followed by another naming the last stream).
#[derive(Debug)]
pub struct GoAway {
    pub at: Duration,
    pub error_code: u32,
}

/// A TCP connection speaking HTTP/2 frames directly: preface and an empty SETTINGS on connect,
/// then requests and a read loop that acknowledges SETTINGS and PING and records the rest.
pub struct H2Frames {
    stream: TcpStream,
    authority: String,
}

impl H2Frames {
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&[H2_PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        Self { stream, authority: addr.to_string() }
    }

    /// Sends `GET path` on `stream_id`, with no body.
    pub async fn get(&mut self, stream_id: u32, path: &str) {
        let block = get_block(path, &self.authority);
        self.stream.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block)).await.unwrap();
    }

    /// Reads frames until the connection closes, `done` says so, or `patience` passes.
    pub async fn run(&mut self, patience: Duration, done: impl Fn(&H2Exchange) -> bool) -> H2Exchange {
        let started = Instant::now();
        let deadline = started + patience;
        let mut exchange = H2Exchange::default();
        for _ in 0..10_000 {
            if done(&exchange) {
                break;
            }
            let read = tokio::time::timeout_at(deadline.into(), read_frame(&mut self.stream)).await;
            let Ok(read) = read else { break };
            let Ok(Some((kind, flags, stream_id, payload))) = read else {
                exchange.closed = Some(started.elapsed()); // EOF, or reset
                break;
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    for setting in payload.chunks_exact(6) {
                        // SETTINGS_MAX_CONCURRENT_STREAMS
                        if setting[..2] == [0, 3] && exchange.max_concurrent_streams.is_none() {
                            exchange.max_concurrent_streams =
                                Some(u32::from_be_bytes(setting[2..].try_into().unwrap()));
                        }
                    }
                    let _ = self.stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                RST_STREAM if payload.len() == 4 => {
                    exchange.resets.push((stream_id, u32::from_be_bytes(payload[..].try_into().unwrap())));
                }
                PING if flags & ACK == 0 => {
                    let _ = self.stream.write_all(&frame(PING, ACK, 0, &payload)).await;
                }
                HEADERS if stream_id == 1 => {
                    exchange.status_200.get_or_insert(payload.first() == Some(&0x88));
                    if flags & END_STREAM != 0 {
                        exchange.response_end = Some(started.elapsed());
                    }
                }
                DATA if stream_id == 1 && flags & END_STREAM != 0 => {
                    exchange.response_end = Some(started.elapsed())
                }
                GOAWAY if payload.len() >= 8 => {
                    let error_code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    exchange.goaway.get_or_insert(GoAway { at: started.elapsed(), error_code });
                }
                _ => {}
            }
        }
        exchange
    }
}

/// One frame, or `None` at EOF.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut header = [0u8; 9];
    if stream.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[1..]).await?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream_id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload).await?;
    Ok(Some((header[3], header[4], stream_id, payload)))
}

// ------------------------------------------------------------------------------------------------
// HTTP/1.1 off a socket
// ------------------------------------------------------------------------------------------------

/// One HTTP/1.1 response: status, head (lower-cased), body.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Reads one response whose body has a `Content-Length`, is chunked, or is absent.
pub async fn read_response<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<RawResponse> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed inside the response head: {head:?}"),
            ));
        }
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            break;
        }
    }
    let status = crate::util::raw_status(head.as_bytes());
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let mut body = Vec::new();
    if let Some(length) = header("content-length:") {
        body.resize(length.parse().expect("numeric content-length"), 0);
        reader.read_exact(&mut body).await?;
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer).await? > 2 {
                    trailer.clear();
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).await?;
        }
    }
    Ok(RawResponse { status, head, body })
}

/// How a connection the test stopped sending on ended.
pub enum Closed {
    /// The server closed it (EOF) or reset it, at `at`.
    Closed { at: Instant, how: String },
    /// Still open when the test stopped waiting.
    StillOpen,
}

impl std::fmt::Debug for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Closed { how, .. } => write!(f, "closed ({how})"),
            Closed::StillOpen => write!(f, "still open"),
        }
    }
}

/// Reads (and drops) whatever comes until the server closes the connection or `patience` passes.
pub async fn read_until_closed<R: AsyncRead + Unpin>(reader: &mut R, patience: Duration) -> Closed {
    read_until_closed_keeping(reader, patience, &mut Vec::new()).await
}

/// Like [`read_until_closed`], keeping the bytes in `into`.
pub async fn read_until_closed_keeping<R: AsyncRead + Unpin>(
    reader: &mut R,
    patience: Duration,
    into: &mut Vec<u8>,
) -> Closed {
    let deadline = Instant::now() + patience;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)).await {
            Err(_) => return Closed::StillOpen,
            Ok(Ok(0)) => return Closed::Closed { at: Instant::now(), how: "EOF".into() },
            Ok(Ok(n)) => into.extend_from_slice(&buf[..n]),
            Ok(Err(error)) => {
                return Closed::Closed { at: Instant::now(), how: format!("{:?}", error.kind()) };
            }
        }
    }
}

/// Whether raw response bytes hold a whole response: the final chunk of a chunked body, or all
/// of a `Content-Length`. A body delimited by the close alone cannot show a cut: counted whole.
pub fn is_complete_response(bytes: &[u8]) -> bool {
    let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
    let body = &bytes[split + 4..];
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        body.ends_with(b"0\r\n\r\n")
    } else if let Some(length) = header("content-length:") {
        body.len() >= length.parse().unwrap_or(usize::MAX)
    } else {
        true
    }
}
