//! The host's own endpoints under `/.well-known/echo-host/`: health, info, metrics, and the
//! token-protected admin API (upload, rollback, history, fleet). With a release store, upload
//! and rollback write the store and the fleet follows; without one they act on this instance. They are answered without calling the
//! component; every other path goes to the component.

use http::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::app::answers::{
    AdminBody, BodyDeadline, json, json_error, method_not_allowed, query_value, read_candidate, text,
};
use crate::app::metrics::Exposition;
use crate::release::gate::RollbackError;
use crate::release::store::release;
use crate::serve::exchange::{RequestContext, ResponseBody, error_response};
use crate::util::time::rfc3339;
use crate::versions::registry::AdminEvent;

const ADMIN: &str = "/admin";

pub const PREFIX: &str = "/.well-known/echo-host";

/// The release status page: static, so served without the token; it shows nothing until the
/// user gives one, then reads `admin/release` with it.
const STATUS_PAGE: &str = include_str!("status_page.html");

pub fn owns(path: &str) -> bool {
    path.strip_prefix(PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub async fn handle(app: &App, req: Request<impl AdminBody>, ctx: &RequestContext) -> Response<ResponseBody> {
    let endpoint = req.uri().path()[PREFIX.len()..].trim_end_matches('/').to_string();
    if endpoint == ADMIN || endpoint.starts_with("/admin/") {
        return admin(app, req, ctx, &endpoint[ADMIN.len()..]).await;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    match endpoint.as_str() {
        // `PREFIX` and `PREFIX/` (the trailing `/` is trimmed above): the status page.
        "" => status_page(),
        // Bound only after the component loaded, so answering at all means ready.
        "/health" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/info" => json(StatusCode::OK, &info(app)),
        "/metrics" => {
            let format = Exposition::negotiate(req.headers().get(http::header::ACCEPT));
            text(StatusCode::OK, format.content_type(), app.metrics.render_as(format))
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint; try {PREFIX}/health, {PREFIX}/info or {PREFIX}/metrics"),
        ),
    }
}

/// The admin API. Without a configured token it does not exist (404), so probing it reveals
/// nothing; with one, every call needs `Authorization: Bearer <token>`.
async fn admin(
    app: &App,
    req: Request<impl AdminBody>,
    ctx: &RequestContext,
    route: &str,
) -> Response<ResponseBody> {
    let Some(token) = &app.admin_token else {
        return error_response(StatusCode::NOT_FOUND, "not found");
    };
    if !authorized(&req, token) {
        tracing::warn!(remote_ip = %ctx.remote_ip, path = %req.uri().path(), "admin call refused: missing or wrong bearer token");
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong `Authorization: Bearer` token",
        );
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        return response;
    }
    let who = actor(ctx);
    let mut req = req;
    let timeout = app.limits().request_timeout;
    req.extensions_mut().insert(BodyDeadline { at: ctx.started + timeout, timeout });
    let call = format!("{} {}", req.method(), route.trim_start_matches('/'));
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let response = route_admin(app, req, route, &who).await;
    if changes {
        tracing::info!(by = %who, status = response.status().as_u16(), "admin call `{call}`");
        app.registry.record_admin_event(AdminEvent {
            at: rfc3339(std::time::SystemTime::now()),
            call,
            status: response.status().as_u16(),
            by: who,
        });
    }
    response
}

/// Longest user agent kept in an admin event: enough to tell one tool from another.
const MAX_USER_AGENT_CHARS: usize = 100;

/// `admin:<ip> (<user agent>)`, the user agent truncated and stripped of control characters: who
/// made an admin call, for the admin history, the release store and the logs (never `info`).
fn actor(ctx: &RequestContext) -> String {
    match &ctx.user_agent {
        Some(agent) => {
            let agent =
                crate::util::redact::printable(&agent.chars().take(MAX_USER_AGENT_CHARS).collect::<String>());
            format!("admin:{} ({agent})", ctx.remote_ip)
        }
        None => format!("admin:{}", ctx.remote_ip),
    }
}

async fn route_admin(
    app: &App,
    req: Request<impl AdminBody>,
    route: &str,
    who: &str,
) -> Response<ResponseBody> {
    match (req.method().clone(), route) {
        // The body is the component; a signature may ride along in a header.
        (Method::PUT, "/component") => upload(app, req, who).await,
        (_, "/component") => method_not_allowed("PUT"),
        (Method::POST, "/rollback") => rollback(app, req.uri(), who).await,
        (_, "/rollback") => method_not_allowed("POST"),
        (Method::GET | Method::HEAD, "/history") => json(StatusCode::OK, &history(app)),
        (_, "/history") => method_not_allowed("GET, HEAD"),
        (Method::GET | Method::HEAD, "/fleet") => fleet(app).await,
        (_, "/fleet") => method_not_allowed("GET, HEAD"),
        (_, route) if route == "/release" || route.starts_with("/release/") => {
            crate::app::release_api::handle(app, req, route, who).await
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin endpoints: PUT component, POST rollback, GET history, GET fleet, GET|POST release, POST release/promote, POST release/abort",
        ),
    }
}

/// `POST rollback[?to=V][&if_generation=G]`: with a store, the fleet's; else this instance's.
async fn rollback(app: &App, uri: &http::Uri, who: &str) -> Response<ResponseBody> {
    let to = query_value(uri, "to");
    if let Some(store) = &app.store {
        let if_generation = match if_generation(uri) {
            Ok(generation) => generation,
            Err(answer) => return *answer,
        };
        return match release::rollback(store, to.as_deref(), if_generation, who).await {
            Ok(released) => json(StatusCode::OK, &serde_json::json!(released)),
            Err(error) => json(error.status(), &error.to_json()),
        };
    }
    match app.gate.rollback(to.as_deref(), who).await {
        Ok(outcome) => json(StatusCode::OK, &serde_json::to_value(outcome).unwrap_or_default()),
        Err(error) => {
            let status = match error {
                RollbackError::NotKept(_) => StatusCode::NOT_FOUND,
                RollbackError::NoPrevious | RollbackError::AlreadyActive(_) => StatusCode::CONFLICT,
            };
            json_error(status, "rollback_refused", &error.to_string())
        }
    }
}

/// `?if_generation=G`: the manifest generation a change is for (0: no manifest yet); `Err` is
/// the 400 to answer.
fn if_generation(uri: &http::Uri) -> Result<Option<i64>, Box<Response<ResponseBody>>> {
    match query_value(uri, "if_generation").map(|g| g.parse::<i64>()) {
        None => Ok(None),
        Some(Ok(generation)) if generation >= 0 => Ok(Some(generation)),
        Some(_) => Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`if_generation` must be a manifest generation (0: no manifest yet)",
        ))),
    }
}

pub fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let Some((scheme, presented)) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    // Digests of equal length compared in constant time: the timing of the answer reveals
    // neither how much of a guess was right nor how long the token is.
    let (presented, expected) = (Sha256::digest(presented.trim()), Sha256::digest(token));
    presented.as_slice().ct_eq(expected.as_slice()).into()
}

async fn upload(app: &App, req: Request<impl AdminBody>, who: &str) -> Response<ResponseBody> {
    let (candidate, uri) = match read_candidate(req, app.swap_policy.max_component_size, &app.oci).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let if_generation = match if_generation(&uri) {
        Ok(generation) => generation,
        Err(answer) => return *answer,
    };
    if let Some(store) = &app.store {
        return match release::push(&app.gate, store, candidate, if_generation, who).await {
            Ok(released) => json(StatusCode::OK, &serde_json::json!(released)),
            Err(error) => json(error.status(), &error.to_json()),
        };
    }
    match app.gate.submit(candidate).await {
        Ok(outcome) => json(StatusCode::OK, &serde_json::to_value(outcome).unwrap_or_default()),
        Err(rejection) => json_error(rejection.status(), rejection.kind(), &rejection.to_string()),
    }
}

fn history(app: &App) -> serde_json::Value {
    let active = app.registry.active();
    let versions: Vec<_> = app
        .registry
        .history()
        .iter()
        .map(|v| {
            serde_json::json!({
                "sha256": v.sha256,
                "version": v.version_header.to_str().unwrap_or_default(),
                "size": v.size,
                "source": v.source,
                "loaded_at": rfc3339(v.loaded_at),
                "active": v.sha256 == active.sha256,
            })
        })
        .collect();
    serde_json::json!({
        "active": active.sha256,
        "versions": versions,
        "swaps": app.registry.swap_count(),
        "rejections": app.registry.rejection_count(),
        "last_rejection": app.registry.last_rejection(),
        "admin_events": app.registry.admin_events(),
    })
}

/// The fleet view (admin): the release and every live instance, from the store.
async fn fleet(app: &App) -> Response<ResponseBody> {
    let Some(store) = &app.store else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no_store",
            "this host has no `--store`: there is no fleet view, each instance swaps on its own (start every instance with `--store gs://BUCKET/PREFIX/` for one)",
        );
    };
    match crate::release::store::heartbeat::fleet(store).await {
        Ok(view) => json(StatusCode::OK, &view),
        Err(error) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &format!("cannot read the fleet from the release store: {error}"),
        ),
    }
}

/// The page with headers that keep it to itself: its inline script and style, fetches to this
/// host only, never framed, no referrer, no caching.
fn status_page() -> Response<ResponseBody> {
    let mut response = text(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE.into());
    let csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
               img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    for (name, value) in [
        (http::header::CONTENT_SECURITY_POLICY, csp),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::REFERRER_POLICY, "no-referrer"),
    ] {
        response.headers_mut().insert(name, http::HeaderValue::from_static(value));
    }
    response
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
            // The watcher's failing polls in a row and the last error, while they last.
            "source_error": app.source_health.get(),
            "load_ms": component.load_time.as_secs_f64() * 1000.0,
            "world": component.handler.world(),
            "instances_started": component.handler.instances_started(),
        },
        "swaps": {
            "count": app.registry.swap_count(),
            "rejections": app.registry.rejection_count(),
            "last_rejection": app.registry.last_rejection(),
            "kept_versions": app.registry.history().len(),
            "admin_api": app.admin_token.is_some(),
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
        "release": crate::app::status::summary(app),
        "store": app.store.as_ref().map(|store| {
            let status = store.status();
            serde_json::json!({
                "url": store.location.to_string(),
                "instance": store.instance,
                "manifest_generation": status.manifest_generation.map(|g| g.to_string()),
                "stable": status.stable,
                "last_ok_at": status.last_ok_at,
                "last_error": status.last_error,
                "consecutive_failures": status.consecutive_failures,
                "release_problem": status.release_problem,
                "heartbeat_interval_s": store.heartbeat_interval.as_secs_f64(),
                "max_staleness_s": store.freshness.policy().max_age.as_secs_f64(),
                "confirmed_age_s": store.freshness.age().map(|age| (age.as_secs_f64() * 1000.0).round() / 1000.0),
                "staleness_strict": store.freshness.policy().strict,
            })
        }),
        "limits": app.limits(),
        "instance_reuse": app.runtime.reuse(),
        "requests_in_flight": app.metrics.serve.in_flight.get(),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn owns_only_its_prefix() {
        assert!(owns("/.well-known/echo-host/health"));
        assert!(owns("/.well-known/echo-host"));
        assert!(!owns("/.well-known/echo-hostile"));
        assert!(!owns("/health"));
    }

    /// The page at `PREFIX` and `PREFIX/`, with its headers, and no asset from elsewhere.
    #[tokio::test]
    async fn serves_the_status_page_at_the_prefix() {
        let cli = <crate::cli::config::Cli as clap::Parser>::try_parse_from(["echo-host"]).unwrap();
        let app = crate::app::start::load_app(&cli.serve.validate().unwrap()).await.unwrap();
        for path in [PREFIX.to_string(), format!("{PREFIX}/")] {
            let req = Request::get(&path).body(http_body_util::Empty::<Bytes>::new()).unwrap();
            let ctx = RequestContext::new(&app.serving, &req, "127.0.0.1:1".parse().unwrap());
            let response = handle(&app, req, &ctx).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let header = |name| response.headers()[name].to_str().unwrap().to_string();
            assert_eq!(header("content-type"), "text/html; charset=utf-8", "{path}");
            assert_eq!(header("cache-control"), "no-store", "{path}");
            assert!(header("content-security-policy").starts_with("default-src 'none';"), "{path}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, STATUS_PAGE.as_bytes(), "{path}");
        }
        // The only absolute URL is the SVG namespace, which is a name, not something fetched.
        let page = STATUS_PAGE.replace("http://www.w3.org/2000/svg", "");
        assert!(!page.contains("http://") && !page.contains("https://"), "the page names an external URL");
        for load in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(load), "the page loads something (`{load}`)");
        }
    }
}
