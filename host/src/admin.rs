//! The host's own endpoints under `/.well-known/echo-host/`: health, info and metrics. They are
//! answered without calling the component, and every other path goes to the component.

use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::body::{ResponseBody, full};
use crate::proxy::error_response;

pub const PREFIX: &str = "/.well-known/echo-host";

pub fn owns(path: &str) -> bool {
    path.strip_prefix(PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub fn handle<B>(app: &App, req: &Request<B>) -> Response<ResponseBody> {
    let endpoint = req.uri().path()[PREFIX.len()..].trim_end_matches('/');
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response =
            error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are allowed here");
        response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match endpoint {
        // Bound only after the component loaded, so answering at all means ready.
        "/health" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/info" => text(StatusCode::OK, "application/json", info(app).to_string() + "\n"),
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.render(),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint; try {PREFIX}/health, {PREFIX}/info or {PREFIX}/metrics"),
        ),
    }
}

fn info(app: &App) -> serde_json::Value {
    let component = app.registry.active();
    serde_json::json!({
        "component": {
            "sha256": component.sha256,
            "version": component.version_header.to_str().unwrap_or_default(),
            "size": component.size,
            "loaded_at": rfc3339(component.loaded_at),
            "source": component.source,
            "load_ms": component.load_time.as_secs_f64() * 1000.0,
        },
        "host": {
            "version": env!("CARGO_PKG_VERSION"),
            "wasmtime": crate::WASMTIME_VERSION,
            "started_at": rfc3339(app.started_at),
        },
        "service": {
            "K_SERVICE": std::env::var("K_SERVICE").ok(),
            "K_REVISION": std::env::var("K_REVISION").ok(),
            "K_CONFIGURATION": std::env::var("K_CONFIGURATION").ok(),
        },
        "limits": app.limits(),
        "requests_in_flight": app.metrics.in_flight.get(),
    })
}

pub fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_only_its_prefix() {
        assert!(owns("/.well-known/echo-host/health"));
        assert!(owns("/.well-known/echo-host"));
        assert!(!owns("/.well-known/echo-hostile"));
        assert!(!owns("/health"));
    }
}
