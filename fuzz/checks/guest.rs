//! The guest's fuzzed properties: the query parser, Python's `repr` and the JSON echo document.
//!
//! Each `pub fn` is one fuzz target's whole check: it must not panic on any input, and panics
//! (through `assert!`) when a property breaks. Compiled into `echo-fuzz` and into echo-core's
//! corpus replay test.

use std::collections::HashMap;

use base64::Engine as _;
use echo_core::json::{self, EchoRequest};
use echo_core::pyrepr;
use echo_core::query::{self, Pair};

/// `parse_qsl`: one pair per non-empty field, decoding never lengthens a field, fields without
/// `%` or `+` are taken as they are, percent-encoding every byte of the pairs gives them back,
/// and `multi_items` groups them as Werkzeug's `MultiDict` does.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let pairs = query::parse_qsl(text);
    let fields: Vec<&str> = text.split('&').filter(|field| !field.is_empty()).collect();
    assert_eq!(pairs.len(), fields.len(), "one pair per field of {text:?}");
    for (field, (key, value)) in fields.iter().zip(&pairs) {
        let (raw_key, raw_value) = field.split_once('=').unwrap_or((field, ""));
        assert!(key.len() <= raw_key.len() && value.len() <= raw_value.len(), "{field:?} grew");
        if !field.contains(['%', '+']) {
            assert_eq!((raw_key, raw_value), (key.as_str(), value.as_str()), "{field:?} changed");
        }
    }
    assert_eq!(query::parse_qsl(&encode_query(&pairs)), pairs, "round trip of {text:?}");
    assert_eq!(query::multi_items(&pairs), reference_multi_items(&pairs), "order of {text:?}");
}

/// Every byte of each key and value as `%XX`, pairs joined with `&`.
pub fn encode_query(pairs: &[Pair]) -> String {
    let encode = |text: &str| text.bytes().map(|b| format!("%{b:02x}")).collect::<String>();
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `MultiDict.items(multi=True)` written differently: distinct keys in first-appearance order,
/// each with all its values in order.
fn reference_multi_items(pairs: &[Pair]) -> Vec<(&str, &str)> {
    let mut keys: Vec<&str> = Vec::new();
    let mut values: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, value) in pairs {
        let entry = values.entry(key).or_default();
        if entry.is_empty() {
            keys.push(key);
        }
        entry.push(value);
    }
    keys.iter().flat_map(|key| values[key].iter().map(move |value| (*key, *value))).collect()
}

/// `repr` of the raw text, and of `request.args` for it as a query: both read back (by the
/// subset of Python's string literal rules `repr` writes) as the values they show, and contain
/// no raw control character (which `ast.literal_eval` would refuse).
pub fn pyrepr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut repr = String::new();
    pyrepr::push_str_repr(&mut repr, text);
    assert_eq!(read_py_str(&repr), Some((text.to_string(), "")), "repr {repr:?} of {text:?}");
    let pairs = query::parse_qsl(text);
    let args = pyrepr::immutable_multi_dict(&pairs);
    let shown: Vec<(String, String)> =
        query::multi_items(&pairs).into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(read_multi_dict(&args), Some(shown), "args repr {args:?} of {text:?}");
}

/// `ImmutableMultiDict([('k', 'v'), ...])` back to its pairs.
pub fn read_multi_dict(repr: &str) -> Option<Vec<(String, String)>> {
    let mut rest = repr.strip_prefix("ImmutableMultiDict([")?.strip_suffix("])")?;
    let mut pairs = Vec::new();
    while !rest.is_empty() {
        if !pairs.is_empty() {
            rest = rest.strip_prefix(", ")?;
        }
        let (key, after) = read_py_str(rest.strip_prefix('(')?)?;
        let (value, after) = read_py_str(after.strip_prefix(", ")?)?;
        rest = after.strip_prefix(')')?;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// One Python string literal at the start of `text` (only the escapes `repr` writes), and the
/// rest; `None` if it is not one.
pub fn read_py_str(text: &str) -> Option<(String, &str)> {
    let quote = text.chars().next().filter(|q| matches!(q, '\'' | '"'))?;
    let mut chars = text[1..].char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            _ if c == quote => return Some((out, &text[1 + i + 1..])),
            '\\' => {
                let escaped = match chars.next()?.1 {
                    e @ ('\\' | '\'' | '"') => e,
                    't' => '\t',
                    'n' => '\n',
                    'r' => '\r',
                    'x' => hex_char(&mut chars, 2)?,
                    'u' => hex_char(&mut chars, 4)?,
                    'U' => hex_char(&mut chars, 8)?,
                    _ => return None,
                };
                out.push(escaped);
            }
            _ if c < ' ' || c == '\x7f' => return None,
            _ => out.push(c),
        }
    }
    None
}

fn hex_char(chars: &mut std::str::CharIndices<'_>, digits: usize) -> Option<char> {
    let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
    // Python writes lowercase hex digits.
    if hex.len() != digits || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)
}

/// The echo document of a request cut from the input (NUL-separated method, path, query,
/// `name:value` header lines, body) parses as JSON and holds exactly those values; the error
/// document too.
pub fn json(data: &[u8]) {
    let mut parts = data.splitn(5, |&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let method = String::from_utf8_lossy(next()).into_owned();
    let path = String::from_utf8_lossy(next()).into_owned();
    let query = query::parse_qsl(&String::from_utf8_lossy(next()));
    let headers: Vec<(String, Vec<u8>)> = next()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            (String::from_utf8_lossy(&line[..colon]).into_owned(), line[colon..].to_vec())
        })
        .collect();
    let body = next();
    let request = EchoRequest { method: &method, path: &path, query: &query, headers: &headers, body };
    let document = json::echo_document(&request);
    let parsed: serde_json::Value = serde_json::from_str(&document).expect("the echo document is JSON");
    let (body_text, base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let expected = serde_json::json!({
        "method": method,
        "path": path,
        "query": query.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        "headers": headers.iter().map(|(n, v)| [n.clone(), String::from_utf8_lossy(v).into_owned()]).collect::<Vec<_>>(),
        "body": body_text,
        "body_base64": base64,
        "body_length": body.len(),
    });
    assert_eq!(parsed, expected, "document {document:?}");
    assert!(document.starts_with("{\"method\":"), "key order of {document:?}");
    let error = json::error_document(&method);
    let parsed: serde_json::Value = serde_json::from_str(&error).expect("the error document is JSON");
    assert_eq!(parsed, serde_json::json!({ "error": method }), "error document {error:?}");
}
