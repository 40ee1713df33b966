//! Outbound HTTP from the guest: denied unless `--allow-outbound` lists the destination.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// One `--allow-outbound` entry: a host name, and a port or any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub host: String,
    pub port: Option<u16>,
}

impl OutboundRule {
    /// Whether a request to `host` (a name, or an IP address without brackets) on `port` may go.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let same_host = match host.parse::<IpAddr>() {
            // Addresses compare by value (`::1` is `0:0:0:0:0:0:0:1`); the rule holds the canonical form.
            Ok(ip) => ip.to_string() == self.host,
            Err(_) => self.host.eq_ignore_ascii_case(host),
        };
        same_host && self.port.is_none_or(|p| p == port)
    }
}

/// The `wasi:http` hooks of one request: checks each outgoing request against the allowlist.
pub struct OutboundPolicy {
    rules: Arc<[OutboundRule]>,
    request_id: Arc<str>,
}

impl OutboundPolicy {
    pub fn new(rules: Arc<[OutboundRule]>, request_id: &str) -> Self {
        Self { rules, request_id: request_id.into() }
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        self.rules.iter().any(|rule| rule.allows(host, port))
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allows(request.uri()) {
            tracing::warn!(
                request_id = %self.request_id,
                uri = %request.uri(),
                "outbound request denied: add its host to `--allow-outbound` to permit it"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let default = wasmtime_wasi_http::default_hooks();
        default.send_request(request, options, fut)
    }
}
