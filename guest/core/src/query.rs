//! Query-string parsing exactly as Werkzeug 3 builds `request.args`, and `MultiDict`'s item order.
//!
//! Werkzeug computes `MultiDict(parse_qsl(qs, keep_blank_values=True, errors="werkzeug.url_quote"))`.
//! Each rule below mirrors a line of CPython's `urllib.parse` (3.11 to 3.14 agree) so the echo prints
//! what Flask prints, byte for byte, for any query a client sends.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// One decoded `key=value` field.
pub type Pair = (String, String);

/// `urllib.parse.parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote")`.
///
/// Fields are split on `&` only (Python dropped `;` in 3.10), empty fields are skipped, a field
/// without `=` has the value `''`, and both sides are decoded by [`unquote_plus`].
pub fn parse_qsl(query: &str) -> Vec<Pair> {
    query
        .split('&')
        .filter(|field| !field.is_empty())
        .map(|field| {
            let (name, value) = field.split_once('=').unwrap_or((field, ""));
            (unquote_plus(name), unquote_plus(value))
        })
        .collect()
}

/// `urllib.parse.unquote_plus`: `+` is a space, then [`unquote`].
pub fn unquote_plus(text: &str) -> String {
    if text.contains('+') { unquote(&text.replace('+', " ")) } else { unquote(text) }
}

/// `urllib.parse.unquote` with Werkzeug's `url_quote` error handler.
///
/// Python percent-decodes each maximal run of ASCII characters on its own and passes non-ASCII text
/// through untouched, so `%C3` followed by a literal `é` does not join into one character: we keep
/// that quirk rather than decoding the whole field at once.
pub fn unquote(text: &str) -> String {
    if !text.contains('%') {
        return String::from(text);
    }
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let ascii = bytes[start].is_ascii();
        let end =
            bytes[start..].iter().position(|b| b.is_ascii() != ascii).map_or(bytes.len(), |n| start + n);
        // Runs end where ASCII-ness flips, which is always a char boundary.
        let run = &text[start..end];
        if ascii {
            decode_utf8_url_quote(&percent_decode(run.as_bytes()), &mut out);
        } else {
            out.push_str(run);
        }
        start = end;
    }
    out
}

/// `urllib.parse.unquote_to_bytes`: `%` and two hex digits (either case) give one byte; a `%` that is
/// not followed by two hex digits (`%zz`, a trailing `%`) stays as it is.
fn percent_decode(run: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(run.len());
    let mut i = 0;
    while i < run.len() {
        if run[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (run.get(i + 1).copied().and_then(hex_value), run.get(i + 2).copied().and_then(hex_value))
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(run[i]);
            i += 1;
        }
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// `bytes.decode("utf-8", errors="werkzeug.url_quote")`: valid UTF-8 is decoded, each byte of an
/// invalid sequence becomes `%XX` (uppercase hex).
///
/// The handler runs `quote(bad_bytes, safe="")`, which would keep unreserved ASCII; but an invalid
/// UTF-8 sequence never contains an ASCII byte (in Python or in Rust, which both follow Unicode's
/// "maximal subpart" rule), so every byte it sees is quoted.
fn decode_utf8_url_quote(mut bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    loop {
        match core::str::from_utf8(bytes) {
            Ok(text) => {
                out.push_str(text);
                return;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                // `valid` was just checked; `from_utf8` cannot fail on it.
                out.push_str(core::str::from_utf8(valid).unwrap_or_default());
                let bad_len = error.error_len().unwrap_or(rest.len());
                for &byte in &rest[..bad_len] {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(byte >> 4)]));
                    out.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                bytes = &rest[bad_len..];
            }
        }
    }
}

/// `MultiDict.items(multi=True)` order: keys in order of first appearance, each followed by all its
/// values in order, so `a=1&b=2&a=3` lists `a=1, a=3, b=2`.
pub fn multi_items(pairs: &[Pair]) -> Vec<(&str, &str)> {
    // Key -> position of its group; groups keep first-appearance order.
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<&Pair>> = Vec::new();
    for pair in pairs {
        let next = groups.len();
        let group = *group_of.entry(pair.0.as_str()).or_insert(next);
        if group == next {
            groups.push(Vec::new());
        }
        groups[group].push(pair);
    }
    groups.into_iter().flatten().map(|(key, value)| (key.as_str(), value.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        parse_qsl(query)
    }

    fn p(key: &str, value: &str) -> (String, String) {
        (key.into(), value.into())
    }

    #[test]
    fn splits_on_ampersand_only_and_skips_empty_fields() {
        assert_eq!(pairs(""), []);
        assert_eq!(pairs("&&"), []);
        assert_eq!(pairs("a=1&&b=2&"), [p("a", "1"), p("b", "2")]);
        assert_eq!(pairs("a=1;b=2"), [p("a", "1;b=2")]);
    }

    #[test]
    fn field_without_equals_has_empty_value() {
        assert_eq!(pairs("flag"), [p("flag", "")]);
        assert_eq!(pairs("a=&=b&="), [p("a", ""), p("", "b"), p("", "")]);
        assert_eq!(pairs("a=b=c"), [p("a", "b=c")]);
    }

    #[test]
    fn plus_is_space_but_encoded_plus_is_plus() {
        assert_eq!(pairs("q=a+b%2Bc"), [p("q", "a b+c")]);
        assert_eq!(pairs("a+b=1"), [p("a b", "1")]);
    }

    #[test]
    fn percent_decoding_accepts_both_cases() {
        assert_eq!(pairs("k=%41%62%2f%2F"), [p("k", "Ab//")]);
        assert_eq!(pairs("%3D=%26"), [p("=", "&")]);
        assert_eq!(pairs("e=%C3%A9%e2%82%ac"), [p("e", "é€")]);
        assert_eq!(pairs("emoji=%F0%9F%98%80"), [p("emoji", "😀")]);
    }

    #[test]
    fn invalid_escapes_are_kept_verbatim() {
        assert_eq!(
            pairs("a=%zz&b=%&c=%4&d=100%"),
            [p("a", "%zz"), p("b", "%"), p("c", "%4"), p("d", "100%")]
        );
        assert_eq!(pairs("a=%%41"), [p("a", "%A")]);
        assert_eq!(pairs("a=%4%41"), [p("a", "%4A")]);
        assert_eq!(pairs("a=%g1%1g"), [p("a", "%g1%1g")]);
    }

    #[test]
    fn invalid_utf8_is_requoted_uppercase() {
        assert_eq!(pairs("a=%ff"), [p("a", "%FF")]);
        assert_eq!(pairs("a=%c3"), [p("a", "%C3")]);
        assert_eq!(pairs("a=%c3x"), [p("a", "%C3x")]);
        // A truncated 4-byte sequence, then a valid character.
        assert_eq!(pairs("a=%f0%9f%98%c3%a9"), [p("a", "%F0%9F%98é")]);
        // Encoded surrogates are not UTF-8.
        assert_eq!(pairs("a=%ed%a0%80"), [p("a", "%ED%A0%80")]);
        assert_eq!(pairs("a=%00%7f"), [p("a", "\0\x7f")]);
    }

    #[test]
    fn ascii_runs_are_decoded_separately_from_literal_non_ascii() {
        // Python decodes `%C3` alone (invalid), then passes `é` through.
        assert_eq!(unquote("%C3é%A9"), "%C3é%A9");
        assert_eq!(unquote("é%C3%A9é"), "ééé");
        assert_eq!(unquote("naïve"), "naïve");
    }

    #[test]
    fn multi_items_groups_by_first_appearance() {
        let parsed = pairs("a=1&b=2&a=3&c=4&b=5");
        assert_eq!(multi_items(&parsed), [("a", "1"), ("a", "3"), ("b", "2"), ("b", "5"), ("c", "4")]);
        assert_eq!(multi_items(&[]), []);
        let parsed = pairs("z=1&a=2&z=3");
        assert_eq!(multi_items(&parsed), [("z", "1"), ("z", "3"), ("a", "2")]);
    }
}
