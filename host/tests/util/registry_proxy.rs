//! A reverse proxy in front of a test registry that records the host's registry requests and can
//! be switched to misbehave ([`Fault`]): answer a status (with `Retry-After`), hang, refuse
//! connections, corrupt a blob or a manifest, send an oversized manifest, or redirect blob
//! downloads to a "storage" server of its own that records what it was sent (as Artifact
//! Registry redirects to Cloud Storage).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::gcs::{Background, Body, full, is_hop_by_hop};

/// How the [`RegistryProxy`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards untouched.
    Pass,
    /// Answers every request with this status and `Retry-After: seconds` when given.
    Status(u16, Option<u64>),
    /// Reads the request and never answers.
    Hang,
    /// Closes every connection at once.
    Refuse,
    /// Forwards, flipping one byte of every blob body.
    CorruptBlobs,
    /// Forwards, flipping one byte of every manifest body fetched with `GET` (headers kept).
    CorruptManifests,
    /// Answers manifest `GET`s with a 5 MiB body (a registry sending more than any manifest is).
    HugeManifests,
    /// Answers blob `GET`s with `307` to the proxy's storage server, which serves the bytes.
    RedirectBlobs,
}

/// One request the proxy (or its storage server) saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub fault: Fault,
    pub at: Instant,
}

struct State {
    fault: Fault,
    seen: Vec<Seen>,
    /// Requests the storage server saw.
    storage: Vec<Seen>,
}

pub struct RegistryProxy {
    state: Arc<Mutex<State>>,
    server: Background,
    _storage: Background,
}

impl RegistryProxy {
    /// A proxy for the registry at `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> RegistryProxy {
        let state = Arc::new(Mutex::new(State { fault: Fault::Pass, seen: Vec::new(), storage: Vec::new() }));
        let upstream = upstream.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        // The storage server fetches the blob from the registry with the credentials the host
        // sent the registry (kept by the proxy), never with any it was sent itself.
        let credentials: Arc<Mutex<Option<String>>> = Arc::default();
        let (shared, up, http, kept) = (state.clone(), upstream.clone(), client.clone(), credentials.clone());
        let storage = Background::start(
            "registry-storage",
            || false,
            move |request| {
                let (state, upstream, client, kept) =
                    (shared.clone(), up.clone(), http.clone(), kept.clone());
                Box::pin(async move {
                    let seen = seen(&request, Fault::RedirectBlobs);
                    state.lock().unwrap().storage.push(seen.clone());
                    let path = seen.path.replacen("/storage", "", 1);
                    let mut fetch = client.get(format!("{upstream}{path}"));
                    if let Some(authorization) = kept.lock().unwrap().clone() {
                        fetch = fetch.header("authorization", authorization);
                    }
                    let answer = fetch.send().await.map_err(|e| e.to_string())?;
                    let status = answer.status().as_u16();
                    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
                    Ok(full(status, "application/octet-stream", bytes))
                })
            },
        );
        let storage_url = format!("http://{}/storage", storage.addr);
        let (for_refuse, shared) = (state.clone(), state.clone());
        let server = Background::start(
            "registry-proxy",
            move || for_refuse.lock().unwrap().fault == Fault::Refuse,
            move |request| {
                let (state, client, upstream, storage_url, kept) = (
                    shared.clone(),
                    client.clone(),
                    upstream.clone(),
                    storage_url.clone(),
                    credentials.clone(),
                );
                Box::pin(
                    async move { answer(&state, &client, &upstream, &storage_url, &kept, request).await },
                )
            },
        );
        RegistryProxy { state, server, _storage: storage }
    }

    /// `127.0.0.1:PORT`: the registry host to name in `oci://` references.
    pub fn host(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Every request the storage server (the redirect target) saw.
    pub fn storage_seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().storage.clone()
    }
}

fn seen(request: &Request<Incoming>, fault: Fault) -> Seen {
    Seen {
        method: request.method().to_string(),
        path: request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default(),
        authorization: request
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        fault,
        at: Instant::now(),
    }
}

async fn answer(
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
    storage_url: &str,
    kept: &Mutex<Option<String>>,
    request: Request<Incoming>,
) -> Result<http::Response<Body>, String> {
    let fault = state.lock().unwrap().fault;
    let seen = seen(&request, fault);
    state.lock().unwrap().seen.push(seen.clone());
    if seen.authorization.is_some() {
        *kept.lock().unwrap() = seen.authorization.clone();
    }
    let is_blob = seen.path.contains("/blobs/");
    let is_manifest_get = seen.method == "GET" && seen.path.contains("/manifests/");
    match fault {
        Fault::Refuse => return Err("refused".to_string()),
        Fault::Hang => std::future::pending::<()>().await,
        Fault::Status(status, retry_after) => {
            let mut response = full(
                status,
                "application/json",
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"test proxy"}]}"#,
            );
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
            }
            return Ok(response);
        }
        Fault::HugeManifests if is_manifest_get => {
            return Ok(full(200, "application/vnd.oci.image.manifest.v1+json", vec![b' '; 5 << 20]));
        }
        Fault::RedirectBlobs if is_blob => {
            let mut response = full(307, "text/plain", "");
            response.headers_mut().insert("location", format!("{storage_url}{}", seen.path).parse().unwrap());
            return Ok(response);
        }
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| format!("reading the request body: {e}"))?.to_bytes();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut forwarded = client.request(method, format!("{upstream}{}", seen.path)).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) && name.as_str() != "host" {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = forwarded.send().await.map_err(|e| format!("upstream: {e}"))?;
    let mut response = http::Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !is_hop_by_hop(name.as_str()) && name.as_str() != "content-length" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let mut bytes = answer.bytes().await.map_err(|e| format!("upstream body: {e}"))?.to_vec();
    let corrupt =
        (fault == Fault::CorruptBlobs && is_blob) || (fault == Fault::CorruptManifests && is_manifest_get);
    if corrupt && let Some(byte) = bytes.last_mut() {
        *byte ^= 0x01;
    }
    Ok(response.body(http_body_util::Full::new(bytes::Bytes::from(bytes)).boxed()).unwrap())
}
