//! The JSON echo document, JSON string escaping and base64: just enough JSON to need no serde in
//! the component.

use alloc::string::String;

use crate::query::Pair;

/// What the JSON echo reports about one request.
pub struct EchoRequest<'a> {
    /// The method name as sent (`GET`, `PATCH`, `PURGE`...).
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// Decoded query pairs in the order they appear (not grouped like the text echo).
    pub query: &'a [Pair],
    /// Header names and raw values as the host handed them over.
    pub headers: &'a [(String, alloc::vec::Vec<u8>)],
    /// The whole request body.
    pub body: &'a [u8],
}

/// `{"method":…,"path":…,"query":[[k,v]…],"headers":[[n,v]…],"body":…,"body_base64":…,"body_length":…}`
/// with keys in that order. Header values that are not UTF-8 are converted lossily; a body that is
/// not UTF-8 is sent as base64 so that it survives byte for byte.
pub fn echo_document(request: &EchoRequest<'_>) -> String {
    let mut out = String::with_capacity(256 + request.body.len() * 4 / 3);
    out.push_str("{\"method\":");
    push_string(&mut out, request.method);
    out.push_str(",\"path\":");
    push_string(&mut out, request.path);
    out.push_str(",\"query\":[");
    for (i, (key, value)) in request.query.iter().enumerate() {
        push_pair(&mut out, i, key, value);
    }
    out.push_str("],\"headers\":[");
    for (i, (name, value)) in request.headers.iter().enumerate() {
        push_pair(&mut out, i, name, &String::from_utf8_lossy(value));
    }
    out.push_str("],\"body\":");
    let base64 = match core::str::from_utf8(request.body) {
        Ok(text) => {
            push_string(&mut out, text);
            false
        }
        Err(_) => {
            out.push('"');
            push_base64(&mut out, request.body);
            out.push('"');
            true
        }
    };
    out.push_str(",\"body_base64\":");
    out.push_str(if base64 { "true" } else { "false" });
    out.push_str(",\"body_length\":");
    push_decimal(&mut out, request.body.len() as u64);
    out.push('}');
    out
}

/// `{"error":"…"}`, the body of every JSON-mode rejection.
pub fn error_document(reason: &str) -> String {
    let mut out = String::from("{\"error\":");
    push_string(&mut out, reason);
    out.push('}');
    out
}

fn push_pair(out: &mut String, index: usize, first: &str, second: &str) {
    if index > 0 {
        out.push(',');
    }
    out.push('[');
    push_string(out, first);
    out.push(',');
    push_string(out, second);
    out.push(']');
}

/// Appends `text` as a JSON string: quotes, backslashes and all control characters escaped
/// (RFC 8259 §7), everything else as UTF-8.
pub fn push_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let code = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[code >> 4]));
                out.push(char::from(HEX[code & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `bytes` in standard base64 (RFC 4648 §4: `+`, `/`, `=` padding).
pub fn push_base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |n: u32, shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
    let mut chunks = bytes.chunks_exact(3);
    for chunk in &mut chunks {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(sextet(n, shift));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(sextet(n, 18));
            out.push(sextet(n, 12));
            out.push_str("==");
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.push(sextet(n, 18));
            out.push(sextet(n, 12));
            out.push(sextet(n, 6));
            out.push('=');
        }
        _ => {}
    }
}

fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in digits[..len].iter().rev() {
        out.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn string(text: &str) -> String {
        let mut out = String::new();
        push_string(&mut out, text);
        out
    }

    fn base64(bytes: &[u8]) -> String {
        let mut out = String::new();
        push_base64(&mut out, bytes);
        out
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(string(""), r#""""#);
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(string("\0\x01\x1f\x7f"), "\"\\u0000\\u0001\\u001f\x7f\"");
        assert_eq!(string("é😀\u{2028}"), "\"é😀\u{2028}\"");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
        assert_eq!(base64(&[0xfb, 0xef]), "++8=");
    }

    #[test]
    fn decimal() {
        for n in [0, 7, 10, 1_048_576, u64::MAX] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, alloc::format!("{n}"));
        }
    }

    #[test]
    fn echo_document_keeps_key_order_and_raw_query_order() {
        let query = crate::query::parse_qsl("b=2&a=1&b=3");
        let headers: Vec<(String, Vec<u8>)> =
            alloc::vec![("host".into(), b"x".to_vec()), ("x-bin".into(), alloc::vec![b'a', 0xff])];
        let doc = echo_document(&EchoRequest {
            method: "POST",
            path: "/p",
            query: &query,
            headers: &headers,
            body: b"hi \"you\"",
        });
        assert_eq!(
            doc,
            r#"{"method":"POST","path":"/p","query":[["b","2"],["a","1"],["b","3"]],"headers":[["host","x"],["x-bin","a�"]],"body":"hi \"you\"","body_base64":false,"body_length":8}"#
        );
    }

    #[test]
    fn binary_body_is_base64() {
        let doc = echo_document(&EchoRequest {
            method: "PUT",
            path: "/",
            query: &[],
            headers: &[],
            body: &[0x00, 0xff, 0x10],
        });
        assert_eq!(
            doc,
            r#"{"method":"PUT","path":"/","query":[],"headers":[],"body":"AP8Q","body_base64":true,"body_length":3}"#
        );
    }

    #[test]
    fn error_document_is_json() {
        assert_eq!(error_document("too \"big\""), r#"{"error":"too \"big\""}"#);
    }
}
