//! Outbound HTTP from the guest: denied unless `--allow-outbound` lists the destination.

use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config::OutboundRule;

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

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
