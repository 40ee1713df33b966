//! HTTP/1.1 by hand on a `TcpStream`, for requests that must be on the wire at a known moment:
//! written to a host frozen with `SIGSTOP` (the kernel takes the connection and the bytes), read
//! once it runs again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response: status, the version that served it (`echo-host-component`), its headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 connection.
pub struct Wire {
    reader: BufReader<TcpStream>,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Wire { reader: BufReader::new(stream) }
    }

    /// Writes `GET path` with `headers` (whole lines, without CRLF); returns once the bytes are
    /// in the kernel's hands, whatever the host is doing.
    pub fn send(&mut self, path: &str, headers: &[String]) {
        self.send_head("GET", path, headers);
    }

    /// Writes the head of `method path` with `headers` and nothing after it: a body the headers
    /// declare is left for the caller to write (or never written).
    pub fn send_head(&mut self, method: &str, path: &str, headers: &[String]) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: wire\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).expect("write the request");
    }

    /// Reads one response whole (`content-length` or chunked body).
    pub fn receive(&mut self) -> Answer {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read the status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line `{line}`"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read a header");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(length) = header("content-length") {
            body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut body).expect("read the body");
        } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            body = self.read_chunked();
        }
        Answer { status, version: header("echo-host-component").unwrap_or_default(), headers, body }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut line = String::new();
        let mut body = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read a chunk size");
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).expect("read a chunk");
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    /// One request and its response.
    pub fn get(&mut self, path: &str, headers: &[String]) -> Answer {
        self.send(path, headers);
        self.receive()
    }
}
