//! Python's `repr` of a `str`, and of Werkzeug's `ImmutableMultiDict`, as Flask prints `request.args`.

use alloc::string::String;

use crate::query::{Pair, multi_items};

/// `repr(ImmutableMultiDict(pairs))`: `ImmutableMultiDict([('a', '1'), ('a', '3'), ('b', '2')])`,
/// in [`multi_items`] order.
pub fn immutable_multi_dict(pairs: &[Pair]) -> String {
    let mut out = String::from("ImmutableMultiDict([");
    for (i, (key, value)) in multi_items(pairs).into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_str_repr(&mut out, key);
        out.push_str(", ");
        push_str_repr(&mut out, value);
        out.push(')');
    }
    out.push_str("])");
    out
}

/// Appends `repr(text)` as CPython's `unicode_repr` writes it.
pub fn push_str_repr(out: &mut String, text: &str) {
    // Single quotes unless that would need escaping and double quotes would not.
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in text.chars() {
        let code = u32::from(c);
        match c {
            _ if c == quote || c == '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ if code < 0x20 || code == 0x7f => push_escape(out, 'x', code, 2),
            _ if c.is_ascii() || is_printable(c) => out.push(c),
            _ if code <= 0xff => push_escape(out, 'x', code, 2),
            _ if code <= 0xffff => push_escape(out, 'u', code, 4),
            _ => push_escape(out, 'U', code, 8),
        }
    }
    out.push(quote);
}

/// `\xNN`, `\uNNNN` or `\UNNNNNNNN` with lowercase hex, as Python writes them.
fn push_escape(out: &mut String, kind: char, code: u32, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('\\');
    out.push(kind);
    for shift in (0..digits).rev() {
        // The mask keeps the index below 16.
        out.push(char::from(HEX[((code >> (shift * 4)) & 0xf) as usize]));
    }
}

/// Non-ASCII code points that Python's `str.isprintable()` rejects, as inclusive ranges, sorted.
///
/// Python calls a character printable unless its category is Cc, Cf, Cs, Co, Cn, Zl, Zp or Zs (space
/// itself excepted). This table is exact for every *assigned* character of those categories (checked
/// against CPython 3.11 / Unicode 14, and stable since: the Egyptian hieroglyph format controls added
/// in Unicode 15 are covered by the 13430..1343F range), and covers the unassigned (Cn) code points
/// only where they are stable across Unicode versions: noncharacters (see [`is_printable`]) and the
/// planes or blocks that no version assigns. Other unassigned code points count as printable here,
/// while Python escapes them: a deliberate approximation, since the exact set moves with each
/// Unicode release (so with the Python version running Flask) and no real text contains them.
const NON_PRINTABLE: &[(u32, u32)] = &[
    (0x0080, 0x00a0),    // C1 controls, NO-BREAK SPACE
    (0x00ad, 0x00ad),    // SOFT HYPHEN
    (0x0600, 0x0605),    // Arabic number signs (Cf)
    (0x061c, 0x061c),    // ARABIC LETTER MARK
    (0x06dd, 0x06dd),    // ARABIC END OF AYAH
    (0x070f, 0x070f),    // SYRIAC ABBREVIATION MARK
    (0x0890, 0x0891),    // Arabic pound/piastre mark above
    (0x08e2, 0x08e2),    // ARABIC DISPUTED END OF AYAH
    (0x1680, 0x1680),    // OGHAM SPACE MARK
    (0x180e, 0x180e),    // MONGOLIAN VOWEL SEPARATOR
    (0x2000, 0x200f),    // en quad .. hair space, ZWSP, ZWNJ, ZWJ, LRM, RLM
    (0x2028, 0x202f),    // line/paragraph separators, bidi embeddings, NARROW NO-BREAK SPACE
    (0x205f, 0x206f),    // MEDIUM MATHEMATICAL SPACE, word joiner, invisible operators, bidi isolates
    (0x3000, 0x3000),    // IDEOGRAPHIC SPACE
    (0xd800, 0xf8ff),    // surrogates (cannot occur in a str from Rust), private use area
    (0xfeff, 0xfeff),    // ZERO WIDTH NO-BREAK SPACE (BOM)
    (0xfff0, 0xfffb),    // unassigned specials, interlinear annotation characters
    (0x110bd, 0x110bd),  // KAITHI NUMBER SIGN
    (0x110cd, 0x110cd),  // KAITHI NUMBER SIGN ABOVE
    (0x13430, 0x1343f),  // Egyptian hieroglyph format controls
    (0x1bca0, 0x1bca3),  // shorthand format controls
    (0x1d173, 0x1d17a),  // musical symbol format controls
    (0x40000, 0xdffff),  // planes 4 to 13: never assigned
    (0xe0000, 0xe00ff),  // tags (Cf) and the unassigned rest of their block
    (0xe01f0, 0x10ffff), // after the variation selectors: unassigned, then private use planes 15-16
];

/// Python's `str.isprintable()` for one non-ASCII character, per [`NON_PRINTABLE`].
fn is_printable(c: char) -> bool {
    let code = u32::from(c);
    // Noncharacters: U+FDD0..U+FDEF and the last two code points of every plane.
    if (0xfdd0..=0xfdef).contains(&code) || code & 0xfffe == 0xfffe {
        return false;
    }
    NON_PRINTABLE
        .binary_search_by(|&(start, end)| {
            if end < code {
                core::cmp::Ordering::Less
            } else if start > code {
                core::cmp::Ordering::Greater
            } else {
                core::cmp::Ordering::Equal
            }
        })
        .is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse_qsl;

    fn repr(text: &str) -> String {
        let mut out = String::new();
        push_str_repr(&mut out, text);
        out
    }

    fn args(query: &str) -> String {
        immutable_multi_dict(&parse_qsl(query))
    }

    #[test]
    fn design_examples() {
        assert_eq!(args("name=world"), "ImmutableMultiDict([('name', 'world')])");
        assert_eq!(args("a=1&a=2&b=it's"), r#"ImmutableMultiDict([('a', '1'), ('a', '2'), ('b', "it's")])"#);
        assert_eq!(args(""), "ImmutableMultiDict([])");
        assert_eq!(args("a=1&b=2&a=3"), "ImmutableMultiDict([('a', '1'), ('a', '3'), ('b', '2')])");
    }

    /// Expected texts printed by Werkzeug 3.1.8 (Flask 3.1.3, CPython 3.11) for the same query.
    #[test]
    fn matches_werkzeug_output() {
        for (query, expected) in [
            ("a=%27%22&b=%5C%27", r#"ImmutableMultiDict([('a', '\'"'), ('b', "\\'")])"#),
            ("x=%C3%A9%ZZ%c3&y=%", r#"ImmutableMultiDict([('x', 'é%ZZ%C3'), ('y', '%')])"#),
            ("k=a+b&k=%2B&%20=", r#"ImmutableMultiDict([('k', 'a b'), ('k', '+'), (' ', '')])"#),
            (
                "s=%E2%80%A8%C2%AD%EF%BB%BF%F3%A0%80%81",
                r#"ImmutableMultiDict([('s', '\u2028\xad\ufeff\U000e0001')])"#,
            ),
            ("m=1;n=2&m=3&&o", r#"ImmutableMultiDict([('m', '1;n=2'), ('m', '3'), ('o', '')])"#),
            (
                "d=%F0%9F%98%80%F0%9F%98&e=%e2%82",
                r#"ImmutableMultiDict([('d', '😀%F0%9F%98'), ('e', '%E2%82')])"#,
            ),
            ("q=%1b%7f%09%0d", r#"ImmutableMultiDict([('q', '\x1b\x7f\t\r')])"#),
            ("x=%C2%A0%E3%80%80%EE%80%80", r#"ImmutableMultiDict([('x', '\xa0\u3000\ue000')])"#),
            ("=&==&a==b", r#"ImmutableMultiDict([('', ''), ('', '='), ('a', '=b')])"#),
        ] {
            assert_eq!(args(query), expected, "{query}");
        }
    }

    #[test]
    fn quote_choice() {
        assert_eq!(repr(""), "''");
        assert_eq!(repr("plain"), "'plain'");
        assert_eq!(repr("it's"), r#""it's""#);
        assert_eq!(repr(r#"say "hi""#), r#"'say "hi"'"#);
        assert_eq!(repr(r#"it's "x""#), r#"'it\'s "x"'"#);
        assert_eq!(repr("back\\slash"), r"'back\\slash'");
        assert_eq!(repr("\"'\\"), r#"'"\'\\'"#);
    }

    #[test]
    fn control_characters() {
        assert_eq!(repr("\t\n\r"), r"'\t\n\r'");
        assert_eq!(repr("\0\x01\x1b\x1f\x7f"), r"'\x00\x01\x1b\x1f\x7f'");
        assert_eq!(repr(" ~"), "' ~'");
    }

    #[test]
    fn non_ascii() {
        // Printable: kept as is.
        assert_eq!(repr("é€中😀ÿ¡"), "'é€中😀ÿ¡'");
        // C1 controls, NBSP, soft hyphen: \xNN.
        assert_eq!(repr("\u{80}\u{9f}\u{a0}\u{ad}"), r"'\x80\x9f\xa0\xad'");
        // Format characters, separators and odd spaces: \uNNNN.
        assert_eq!(
            repr("\u{200b}\u{200f}\u{2028}\u{2029}\u{202e}\u{2060}\u{feff}\u{3000}"),
            r"'\u200b\u200f\u2028\u2029\u202e\u2060\ufeff\u3000'"
        );
        assert_eq!(repr("\u{e000}\u{f8ff}\u{fffe}\u{ffff}\u{fdd0}"), r"'\ue000\uf8ff\ufffe\uffff\ufdd0'");
        // Astral: \UNNNNNNNN.
        assert_eq!(
            repr("\u{e0001}\u{f0000}\u{10ffff}\u{1fffe}\u{50000}"),
            r"'\U000e0001\U000f0000\U0010ffff\U0001fffe\U00050000'"
        );
        // Variation selectors are printable (Mn).
        assert_eq!(repr("\u{fe0f}\u{e0100}"), "'\u{fe0f}\u{e0100}'");
    }

    #[test]
    fn printable_table_is_sorted_and_disjoint() {
        for window in NON_PRINTABLE.windows(2) {
            assert!(window[0].0 <= window[0].1 && window[0].1 < window[1].0, "{window:x?}");
        }
    }

    #[test]
    fn decoded_values_are_repred() {
        assert_eq!(args("q=%27%22"), r#"ImmutableMultiDict([('q', '\'"')])"#);
        assert_eq!(args("q=%0A%09"), r"ImmutableMultiDict([('q', '\n\t')])");
        assert_eq!(args("q=%C2%A0"), r"ImmutableMultiDict([('q', '\xa0')])");
        assert_eq!(args("q=%ff&flag"), "ImmutableMultiDict([('q', '%FF'), ('flag', '')])");
    }
}
