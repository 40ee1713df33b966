//! URLs as the host prints them: no userinfo, no query values (signed URLs carry their
//! credentials there). Every URL that goes into a log line, `info`, the history, a rejection
//! record or an error message goes through [`url`] first. Text from elsewhere (a heartbeat, a user
//! agent) that reaches a terminal or a log goes through [`printable`].

/// What replaces each query value.
pub const REDACTED: &str = "REDACTED";

/// `text` without its userinfo and with every query value replaced by `REDACTED` (the keys stay,
/// so a reader still sees which parameters there were); no fragment.
/// `http://user:pw@h/x.wasm?X-Goog-Signature=abc&a=1` → `http://h/x.wasm?X-Goog-Signature=REDACTED&a=REDACTED`.
/// Text that does not parse as a URL is not printed at all.
pub fn url(text: &str) -> String {
    let Ok(uri) = text.parse::<http::Uri>() else {
        return "(a URL that does not parse, not shown)".to_string();
    };
    let mut out = String::with_capacity(text.len());
    if let Some(scheme) = uri.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        // `host()` and `port()` leave the userinfo out.
        out.push_str(authority.host());
        if let Some(port) = authority.port() {
            out.push(':');
            out.push_str(port.as_str());
        }
    }
    out.push_str(uri.path());
    if let Some(query) = uri.query() {
        out.push('?');
        out.push_str(&query_keys(query));
    }
    out
}

/// `a=1&b&c=2` → `a=REDACTED&b&c=REDACTED`.
fn query_keys(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}={REDACTED}"),
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `text` with every control character (C0, DEL, C1: escape sequences, bells, newlines) replaced
/// by `?`, so that text read from the store or a client cannot drive the terminal it is shown on.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_query_values_are_dropped_keys_kept() {
        assert_eq!(
            url("http://user:pw@h/x.wasm?X-Goog-Signature=abc&a=1"),
            "http://h/x.wasm?X-Goog-Signature=REDACTED&a=REDACTED"
        );
        assert_eq!(url("https://user@h:8443/c.wasm"), "https://h:8443/c.wasm");
        assert_eq!(url("http://[::1]:9/c.wasm?flag&k="), "http://[::1]:9/c.wasm?flag&k=REDACTED");
        assert_eq!(url("http://h/c.wasm"), "http://h/c.wasm");
        assert_eq!(url("http://h/c.wasm.sig?q=1"), "http://h/c.wasm.sig?q=REDACTED");
    }

    #[test]
    fn nothing_of_an_unparsable_url_is_printed() {
        let shown = url("http://us er:secret@h/ x");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn printable_text_has_no_control_characters() {
        assert_eq!(printable("ok \u{1b}]0;t\u{7}\u{1b}[2J\u{9b}1m\n\té"), "ok ?]0;t??[2J?1m??é");
    }
}
