//! A component URL (a Cloud Storage object, any static file server): fetched at start, then
//! polled with `If-None-Match` / `If-Modified-Since`.
//!
//! Every fetch has the `--fetch-timeout` time limit (headers and body), redirects are not
//! followed, anything but a 2xx (or a 304 to a conditional request) is an error, and a body over
//! `--max-component-size` or shorter than its `Content-Length` is refused. `URL.sig` is the
//! detached signature: 404 means unsigned, any other failure fails the fetch. A failed poll is
//! logged and retried (backing off after a few failures); the active version keeps serving.
//!
//! A Cloud Storage object readable by `allUsers` is cached by Google's edge for `max-age=3600`
//! unless its `Cache-Control` metadata says otherwise: set it to `no-cache` (or `no-store`) on
//! the component and its `.sig`, or a new version may take up to an hour to be seen.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use super::WatchConfig;
use crate::app::App;
use crate::swap::{Candidate, Rejection};

/// A detached signature is base64 text of 64 bytes; anything much longer is not one.
const MAX_SIGNATURE_SIZE: u64 = 64 * 1024;

/// Fetches `url` (and `URL.sig`, if it exists) as a candidate.
pub async fn fetch_candidate(url: &str, config: &WatchConfig) -> anyhow::Result<Candidate> {
    let fetch = async {
        let client = client(config)?;
        match get(&client, url, None, config.max_component_size, config.fetch_timeout).await? {
            Got::Body { bytes, .. } => {
                let signature = fetch_signature(&client, url, config.fetch_timeout).await?;
                Ok(Candidate { bytes, source: url.to_string(), signature })
            }
            // `get` turns a 304 to an unconditional request into an error; never here.
            Got::NotModified => bail!("the server answered 304 Not Modified to an unconditional request"),
            Got::NotFound => bail!("the server answered 404 Not Found"),
        }
    };
    fetch.await.with_context(|| format!("cannot fetch the component `{url}`"))
}

/// Polls `url` until the task is dropped, submitting every new version.
pub async fn watch(app: Arc<App>, url: String, config: WatchConfig) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(url = %url, "cannot watch `{url}` for new versions: {error:#}");
            return;
        }
    };
    tracing::info!(url = %url, "polling the component URL `{url}` every {:?}", config.poll_interval);
    let mut state = PollState::default();
    let mut delay = config.poll_interval;
    loop {
        tokio::time::sleep(delay).await;
        match poll(&app, &client, &url, &config, &mut state).await {
            Ok(()) => {
                if state.failures > 0 {
                    tracing::info!(url = %url, failures = state.failures, "fetching `{url}` works again after {} failed attempts", state.failures);
                }
                state.failures = 0;
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let next = super::backoff(config.poll_interval, state.failures);
                tracing::warn!(
                    url = %url,
                    failures = state.failures,
                    retry_in_ms = next.as_millis() as u64,
                    "cannot fetch a new version from `{url}` (the active version keeps serving; retrying in {next:?}): {error:#}"
                );
            }
        }
        delay = super::backoff(config.poll_interval, state.failures);
    }
}

#[derive(Default)]
struct PollState {
    /// `ETag` / `Last-Modified` of the last complete download.
    validators: Validators,
    /// sha256 of the last bytes + signature submitted: the same pair is not resubmitted.
    last_submitted: Option<[u8; 32]>,
    /// The last candidate, kept while it stands rejected for its signature: the `.sig` may be
    /// uploaded after the component, so it is re-checked on every poll until it changes.
    awaiting_signature: Option<Candidate>,
    failures: u32,
}

#[derive(Default, Clone)]
struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    fn from_response(response: &reqwest::Response) -> Self {
        Self {
            etag: response.headers().get(header::ETAG).cloned(),
            last_modified: response.headers().get(header::LAST_MODIFIED).cloned(),
        }
    }

    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

async fn poll(
    app: &Arc<App>,
    client: &reqwest::Client,
    url: &str,
    config: &WatchConfig,
    state: &mut PollState,
) -> anyhow::Result<()> {
    let got =
        get(client, url, Some(&state.validators), config.max_component_size, config.fetch_timeout).await?;
    let (bytes, validators) = match got {
        Got::NotModified => return recheck_signature(app, client, url, config, state).await,
        Got::NotFound => bail!("the server answered 404 Not Found"),
        Got::Body { bytes, validators } => (bytes, validators),
    };
    let signature = fetch_signature(client, url, config.fetch_timeout).await?;
    // Only a complete download (component and signature) moves the validators on.
    state.validators = validators;
    let candidate = Candidate { bytes, source: url.to_string(), signature };
    let key = key(&candidate);
    if state.last_submitted == Some(key) {
        tracing::debug!(url = %url, "the component at `{url}` is unchanged (same bytes and signature)");
        return Ok(());
    }
    state.last_submitted = Some(key);
    if hex::encode(Sha256::digest(&candidate.bytes)) == app.registry.active().sha256 {
        // The first poll after start, or a server that ignores conditional requests.
        tracing::debug!(url = %url, "the component at `{url}` is the active version");
        state.awaiting_signature = None;
        return Ok(());
    }
    tracing::info!(
        url = %url,
        size = candidate.bytes.len(),
        signed = candidate.signature.is_some(),
        etag = state.validators.etag.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
        "the component at `{url}` changed; checking the new version"
    );
    submit(app, candidate, state).await;
    Ok(())
}

/// The component is unchanged, but if it was turned away for its signature, a new `URL.sig`
/// may have appeared since.
async fn recheck_signature(
    app: &Arc<App>,
    client: &reqwest::Client,
    url: &str,
    config: &WatchConfig,
    state: &mut PollState,
) -> anyhow::Result<()> {
    let Some(rejected) = &state.awaiting_signature else { return Ok(()) };
    let signature = fetch_signature(client, url, config.fetch_timeout).await?;
    if signature == rejected.signature {
        return Ok(());
    }
    let candidate = Candidate { bytes: rejected.bytes.clone(), source: rejected.source.clone(), signature };
    state.last_submitted = Some(key(&candidate));
    tracing::info!(url = %url, "the signature `{url}.sig` changed; checking the component again");
    submit(app, candidate, state).await;
    Ok(())
}

async fn submit(app: &Arc<App>, candidate: Candidate, state: &mut PollState) {
    let kept = Candidate {
        bytes: candidate.bytes.clone(),
        source: candidate.source.clone(),
        signature: candidate.signature.clone(),
    };
    // Logged and counted by `submit`; the old version keeps serving if it is rejected.
    state.awaiting_signature = match crate::swap::submit(app, candidate).await {
        Err(Rejection::MissingSignature | Rejection::BadSignature(_)) => Some(kept),
        _ => None,
    };
}

fn key(candidate: &Candidate) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(&candidate.bytes));
    match &candidate.signature {
        Some(signature) => {
            hasher.update([1]);
            hasher.update(signature);
        }
        None => hasher.update([0]),
    }
    hasher.finalize().into()
}

fn client(config: &WatchConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.fetch_timeout)
        .connect_timeout(config.fetch_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("echo-host/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")
}

enum Got {
    Body { bytes: Vec<u8>, validators: Validators },
    NotModified,
    NotFound,
}

/// One GET, conditional when `validators` has any; the body is read up to `limit` bytes.
async fn get(
    client: &reqwest::Client,
    url: &str,
    validators: Option<&Validators>,
    limit: u64,
    timeout: Duration,
) -> anyhow::Result<Got> {
    // Ask caches on the way (Cloud Storage's edge cache included) to revalidate.
    let mut request = client.get(url).header(header::CACHE_CONTROL, "no-cache");
    let conditional = validators.is_some_and(|v| !v.is_empty());
    if let Some(validators) = validators {
        if let Some(etag) = &validators.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(last_modified) = &validators.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, last_modified);
        }
    }
    let mut response = request.send().await.map_err(|e| describe(e, timeout))?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        if conditional {
            return Ok(Got::NotModified);
        }
        bail!("the server answered 304 Not Modified to an unconditional request");
    }
    if status == StatusCode::NOT_FOUND {
        return Ok(Got::NotFound);
    }
    if status.is_redirection() {
        let location =
            response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("none");
        bail!(
            "the server answered {status} (Location: {location}); redirects are not followed; point --component at the final URL"
        );
    }
    if !status.is_success() {
        bail!("the server answered {status}");
    }
    let validators = Validators::from_response(&response);
    let expected = response.content_length();
    if let Some(length) = expected
        && length > limit
    {
        bail!(
            "the body is {length} bytes (Content-Length), over the {limit}-byte limit (`--max-component-size`)"
        );
    }
    let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(limit) as usize);
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            let got = bytes.len();
            let of = expected.map(|n| format!(" of {n}")).unwrap_or_default();
            describe(e, timeout).context(format!("the download broke off after {got}{of} bytes"))
        })?;
        let Some(chunk) = chunk else { break };
        if (bytes.len() + chunk.len()) as u64 > limit {
            bail!("the body is over the {limit}-byte limit (`--max-component-size`); stopped reading");
        }
        bytes.extend_from_slice(&chunk);
    }
    if let Some(length) = expected
        && bytes.len() as u64 != length
    {
        bail!("truncated download: {} of {length} bytes (Content-Length)", bytes.len());
    }
    Ok(Got::Body { bytes, validators })
}

/// `URL.sig`: `None` when it does not exist (404); any other failure is an error.
async fn fetch_signature(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<u8>>> {
    let sig_url = format!("{url}.sig");
    match get(client, &sig_url, None, MAX_SIGNATURE_SIZE, timeout)
        .await
        .with_context(|| format!("cannot fetch the signature `{sig_url}`"))?
    {
        Got::Body { bytes, .. } => Ok(Some(bytes)),
        Got::NotFound => Ok(None),
        Got::NotModified => {
            bail!("cannot fetch the signature `{sig_url}`: the server answered 304 Not Modified")
        }
    }
}

/// A reqwest error with its causes, and timeouts named as `--fetch-timeout`.
fn describe(error: reqwest::Error, timeout: Duration) -> anyhow::Error {
    if error.is_timeout() {
        return anyhow!("timed out after {timeout:?} (`--fetch-timeout`)");
    }
    anyhow::Error::new(error.without_url())
}
