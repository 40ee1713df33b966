//! Just enough HTTP/1.1 for the measurements that wrk cannot make: parsing a response out of a
//! buffer (`Content-Length` or chunked), and a blocking keep-alive client for cold starts, swaps,
//! idle connections and the streamed upload.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// The header every echo-host response carries: `sha256:<12 hex>` of the component that served it.
pub const COMPONENT_HEADER: &str = "echo-host-component";

/// One complete response taken from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of the buffer the response used (head and body).
    pub consumed: usize,
    pub status: u16,
    /// The server will close the connection after this response (`Connection: close`).
    pub close: bool,
    /// The `echo-host-component` header, when present.
    pub component: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// The head of a response: what it says about the body that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub close: bool,
    pub component: Option<String>,
    pub framing: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

/// Reads from `reader` into `buf` until a whole response head is in it; the head, and how much of
/// `buf` was filled (the head, then the first bytes of the body).
pub fn read_head(reader: &mut impl Read, buf: &mut [u8]) -> anyhow::Result<(Head, usize)> {
    let mut filled = 0;
    loop {
        let n = reader.read(&mut buf[filled..]).context("reading the response head")?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        filled += n;
        if let Some(head) = parse_head(&buf[..filled])? {
            return Ok((head, filled));
        }
    }
}

/// Parses a response head; `None` until the whole head is in `buf`.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("malformed response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut close = response.version == Some(0);
    let mut component = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.parse().context("bad content-length")?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if header.name.eq_ignore_ascii_case(COMPONENT_HEADER) {
            component = Some(value.to_string());
        }
    }
    // 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some(Head { len, status, close, component, framing }))
}

/// Parses one complete response from the front of `buf`; `None` while it is incomplete.
/// A body that runs to the end of the connection is never complete here.
pub fn parse_response(buf: &[u8]) -> anyhow::Result<Option<Parsed>> {
    let Some(head) = parse_head(buf)? else { return Ok(None) };
    let rest = &buf[head.len..];
    let (body, body_len) = match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).context("body too large")?;
            if rest.len() < n {
                return Ok(None);
            }
            (rest[..n].to_vec(), n)
        }
        Framing::Chunked => match dechunk(rest)? {
            Some(done) => done,
            None => return Ok(None),
        },
        Framing::UntilClose => return Ok(None),
    };
    Ok(Some(Parsed {
        consumed: head.len + body_len,
        status: head.status,
        close: head.close,
        component: head.component,
        body,
    }))
}

/// Decodes a chunked body at the front of `buf`: the body and the bytes used, or `None` if the
/// last chunk (and the trailer section) has not arrived.
fn dechunk(buf: &[u8]) -> anyhow::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else { return Ok(None) };
        let line = std::str::from_utf8(&buf[at..at + line_end]).context("bad chunk size line")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        at += line_end + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else { return Ok(None) };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A GET request for `path` (keep-alive).
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: echo-bench\r\n\r\n").into_bytes()
}

/// A POST request with a `text/plain` body (Flask echoes only non-form bodies).
pub fn post_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: echo-bench\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A blocking keep-alive connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client { stream, buf: Vec::with_capacity(4096) })
    }

    /// Writes raw bytes (part of a request sent in pieces).
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Sends `request` (raw bytes) and reads one response.
    pub fn send(&mut self, request: &[u8]) -> anyhow::Result<Parsed> {
        self.stream.write_all(request)?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> anyhow::Result<Parsed> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(parsed) = parse_response(&self.buf)? {
                self.buf.drain(..parsed.consumed);
                return Ok(parsed);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before a complete response");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One GET on a fresh connection.
pub fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Parsed> {
    Client::connect(addr, timeout)?.send(&get_request(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_content_length_and_leaves_the_rest() {
        let mut buf =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\necho-host-component: sha256:abc\r\n\r\nhelloHTTP/1.1"
                .to_vec();
        let parsed = parse_response(&buf).unwrap().unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.body, b"hello");
        assert_eq!(parsed.component.as_deref(), Some("sha256:abc"));
        assert!(!parsed.close);
        buf.drain(..parsed.consumed);
        assert_eq!(buf, b"HTTP/1.1");
    }

    #[test]
    fn waits_for_the_whole_body() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel").unwrap(), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
    }

    #[test]
    fn decodes_chunked_bodies() {
        let buf = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let parsed = parse_response(buf).unwrap().unwrap();
        assert_eq!(parsed.body, b"hello world");
        assert_eq!(parsed.consumed, buf.len());
        assert!(parsed.close);
        assert_eq!(parse_response(&buf[..buf.len() - 2]).unwrap(), None);
    }

    #[test]
    fn requests_are_well_formed() {
        let post = post_request("/", b"abc");
        assert!(post.ends_with(b"Content-Length: 3\r\n\r\nabc"));
        assert!(get_request("/?a=1").starts_with(b"GET /?a=1 HTTP/1.1\r\n"));
    }
}
