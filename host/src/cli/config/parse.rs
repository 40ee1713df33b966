//! Parsers for flag values: durations, sizes, outbound rules, `KEY=VALUE`, the swap probe.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use super::SwapProbe;
use crate::engine::outbound::OutboundRule;

/// `HOST`, `HOST:PORT`, `[IPV6]`, `[IPV6]:PORT` or a bare IPv6 address (any port).
pub fn parse_outbound(text: &str) -> Result<OutboundRule, String> {
    let text = text.trim();
    if let Some((_, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        return Err(format!(
            "`{text}` is a URL: give its host, `{host}` (or `HOST:PORT`), without scheme or path"
        ));
    }
    if text.is_empty() || text.contains('/') || text.contains('@') {
        return Err(format!("`{text}` is not `HOST` or `HOST:PORT`"));
    }
    let port = |port: &str| {
        port.parse::<u16>().map(Some).map_err(|_| format!("bad port in `{text}` (expected `HOST:PORT`)"))
    };
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (address, rest) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("`{text}` has no closing `]` (expected `[IPV6]:PORT`)"))?;
        let port = match rest {
            "" => None,
            _ => {
                port(rest.strip_prefix(':').ok_or_else(|| format!("`{text}`: expected `:PORT` after `]`"))?)?
            }
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{address}` in `{text}` is not an IPv6 address"));
        }
        (address, port)
    } else if text.matches(':').count() > 1 {
        // Only an IPv6 address has several colons; its port needs brackets.
        (text, None)
    } else {
        match text.split_once(':') {
            Some((host, rest)) => (host, port(rest)?),
            None => (text, None),
        }
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) if host.contains(':') => {
            return Err(format!("`{host}` in `{text}` is not an IPv6 address (write `[IPV6]:PORT`)"));
        }
        Err(_) if host.is_empty() => return Err(format!("`{text}` has no host")),
        Err(_) if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) => {
            return Err(format!("`{host}` in `{text}` is not a host name or an IP address"));
        }
        Err(_) => host.to_ascii_lowercase(),
    };
    Ok(OutboundRule { host, port })
}

pub(super) fn parse_probe(text: &str, timeout: Duration) -> anyhow::Result<SwapProbe> {
    let (method, path) = text.trim().split_once(' ').unwrap_or(("GET", text.trim()));
    let method: http::Method =
        method.parse().with_context(|| format!("`--swap-probe` `{text}`: bad method (try `GET /`)"))?;
    let path = path.trim();
    if !path.starts_with('/') {
        bail!("`--swap-probe` `{text}`: the path must start with `/` (try `GET /`)");
    }
    Ok(SwapProbe { method, path: path.to_string(), timeout })
}

pub(super) fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not `KEY=VALUE`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_rules_match_host_and_port() {
        let any_port = parse_outbound("example.com").unwrap();
        assert!(any_port.allows("EXAMPLE.com", 443));
        let one_port = parse_outbound("127.0.0.1:9000").unwrap();
        assert!(one_port.allows("127.0.0.1", 9000));
        assert!(!one_port.allows("127.0.0.1", 9001));
        assert_eq!(
            parse_outbound("https://api.example.com:8443/v1").unwrap_err(),
            "`https://api.example.com:8443/v1` is a URL: give its host, `api.example.com:8443` (or `HOST:PORT`), without scheme or path"
        );
        assert!(parse_outbound("x:notaport").is_err());
        // IPv6: bracketed with a port, bracketed or bare without one, in any spelling.
        let v6 = parse_outbound("[::1]:9000").unwrap();
        assert_eq!(v6, OutboundRule { host: "::1".into(), port: Some(9000) });
        assert!(v6.allows("::1", 9000) && v6.allows("0:0:0:0:0:0:0:1", 9000));
        assert!(!v6.allows("::1", 9001));
        assert_eq!(parse_outbound("[::1]").unwrap().port, None);
        assert_eq!(parse_outbound("::1").unwrap().port, None);
        assert!(parse_outbound("[::1").is_err());
        assert!(parse_outbound("[::1]9000").is_err());
        assert!(parse_outbound("[nothost]:1").is_err());
        assert!(parse_outbound(":80").is_err());
        assert!(parse_outbound("a b").is_err() && parse_outbound("[ a ]").is_err());
    }
}
