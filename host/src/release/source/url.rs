//! A component URL (a Cloud Storage object, any static file server): fetched at start, then
//! polled with `If-None-Match` / `If-Modified-Since`.
//!
//! Every fetch has the `--fetch-timeout` time limit (headers and body), redirects are not
//! followed, anything but a 2xx (or a 304 to a conditional request) is an error, and a body over
//! `--max-component-size` or shorter than its `Content-Length` is refused. The detached
//! signature is the URL with `.sig` added to its path, the query kept (`/c.wasm?q=1` →
//! `/c.wasm.sig?q=1`, as a signed URL needs), at most 64 KiB: 404 means unsigned, any other
//! failure fails the fetch. A failed poll is logged and retried (backing off after a few
//! failures); the active version keeps serving. A candidate rejected for good is not submitted
//! again until the server says it changed (a new `ETag` / `Last-Modified`, a re-upload even of
//! the same bytes); one rejected for a transient reason is retried ([`super::retry`]).
//!
//! The URL is printed only redacted ([`crate::util::redact::url`]): no userinfo, no query values.
//!
//! A Cloud Storage object readable by `allUsers` is cached by Google's edge for `max-age=3600`
//! unless its `Cache-Control` metadata says otherwise: set it to `no-cache` (or `no-store`) on
//! the component and its `.sig`, or a new version may take up to an hour to be seen.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use super::retry::Retries;
use super::{MAX_SIGNATURE_SIZE, SIGNATURE_LIMIT, WatchConfig};
use crate::release::gate::{Artifacts, Candidate, Gate, Rejection};
use crate::util::redact;

/// Fetches `url` (and its signature, if it exists) as a candidate.
pub async fn fetch_candidate(url: &str, config: &WatchConfig) -> anyhow::Result<Candidate> {
    let shown = redact::url(url);
    let fetch = async {
        let client = client(config)?;
        let limit = Limit::Component(config.max_component_size);
        match get(&client, url, None, limit, config.fetch_timeout).await? {
            Got::Body { bytes, .. } => {
                let signature = fetch_signature(&client, url, config.fetch_timeout).await?;
                Ok(Candidate::new(bytes, shown.clone(), signature))
            }
            // `get` turns a 304 to an unconditional request into an error; never here.
            Got::NotModified => bail!("the server answered 304 Not Modified to an unconditional request"),
            Got::NotFound => bail!("the server answered 404 Not Found"),
        }
    };
    fetch.await.with_context(|| format!("cannot fetch the component `{shown}`"))
}

/// Polls `url` until the task is dropped, submitting every new version.
pub async fn watch(gate: Arc<Gate>, url: String, config: WatchConfig) {
    let shown = redact::url(&url);
    let client = match client(&config) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(url = %shown, "cannot watch `{shown}` for new versions: {error:#}");
            return;
        }
    };
    tracing::info!(url = %shown, "polling the component URL `{shown}` every {:?}", config.poll_interval);
    let mut state = PollState::default();
    let mut delay = config.poll_interval;
    loop {
        tokio::time::sleep(delay).await;
        match poll(&gate, &client, &url, &config, &mut state).await {
            Ok(()) => {
                if state.failures > 0 {
                    tracing::info!(url = %shown, failures = state.failures, "fetching `{shown}` works again after {} failed attempts", state.failures);
                }
                state.failures = 0;
                config.health.ok();
            }
            Err(error) => {
                gate.metrics().source_errors.inc();
                state.failures = state.failures.saturating_add(1);
                config.health.failed(state.failures, format!("{error:#}"));
                let next = super::backoff(config.poll_interval, state.failures);
                tracing::warn!(
                    url = %shown,
                    failures = state.failures,
                    retry_in_ms = next.as_millis() as u64,
                    "cannot fetch a new version from `{shown}` (the active version keeps serving; retrying in {next:?}): {error:#}"
                );
            }
        }
        // Logged and counted by `submit`; a transient rejection stays pending.
        if let Some(result) = state.retries.run_due(&gate, config.poll_interval).await {
            state.awaiting_signature = awaits_signature(&result, state.awaiting_signature.take());
        }
        delay = super::backoff(config.poll_interval, state.failures);
    }
}

#[derive(Default)]
struct PollState {
    /// `ETag` / `Last-Modified` of the last complete download.
    validators: Validators,
    /// sha256 of the last bytes + signature submitted: the same pair is not resubmitted unless
    /// the server says it was uploaded again (new validators).
    last_submitted: Option<[u8; 32]>,
    /// The candidate to submit again after a transient rejection.
    retries: Retries,
    /// The last candidate, kept while it stands rejected for its signature: the `.sig` may be
    /// uploaded after the component, so it is re-checked on every poll until it changes.
    awaiting_signature: Option<Candidate>,
    failures: u32,
}

#[derive(Default, Clone, PartialEq)]
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
    gate: &Arc<Gate>,
    client: &reqwest::Client,
    url: &str,
    config: &WatchConfig,
    state: &mut PollState,
) -> anyhow::Result<()> {
    let limit = Limit::Component(config.max_component_size);
    let got = get(client, url, Some(&state.validators), limit, config.fetch_timeout).await?;
    let (bytes, validators) = match got {
        Got::NotModified => return recheck_signature(gate, client, url, config, state).await,
        Got::NotFound => bail!("the server answered 404 Not Found"),
        Got::Body { bytes, validators } => (bytes, validators),
    };
    let signature = fetch_signature(client, url, config.fetch_timeout).await?;
    // A new `ETag` / `Last-Modified` is a new upload: submitted even with the same bytes.
    let uploaded_again = !validators.is_empty() && validators != state.validators;
    // Only a complete download (component and signature) moves the validators on.
    state.validators = validators;
    let shown = redact::url(url);
    let candidate = Candidate::new(bytes, shown.clone(), signature);
    let key = key(&candidate);
    if state.last_submitted == Some(key) && !uploaded_again {
        tracing::debug!(url = %shown, "the component at `{shown}` is unchanged (same bytes and signature)");
        return Ok(());
    }
    state.last_submitted = Some(key);
    state.retries.clear();
    if candidate.sha256() == gate.versions().active().sha256 {
        // The first poll after start, or a server that ignores conditional requests.
        tracing::debug!(url = %shown, "the component at `{shown}` is the active version");
        state.awaiting_signature = None;
        return Ok(());
    }
    tracing::info!(
        url = %shown,
        size = candidate.bytes().len(),
        signed = candidate.signature.is_some(),
        etag = state.validators.etag.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
        "the component at `{shown}` changed; checking the new version"
    );
    submit(gate, candidate, state, config).await;
    Ok(())
}

/// The component is unchanged, but if it was turned away for its signature, a new `URL.sig`
/// may have appeared since.
async fn recheck_signature(
    gate: &Arc<Gate>,
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
    let candidate = Candidate::new(rejected.bytes().to_vec(), rejected.source.clone(), signature);
    state.last_submitted = Some(key(&candidate));
    let shown = redact::url(&signature_url(url)?);
    tracing::info!(url = %shown, "the signature `{shown}` changed; checking the component again");
    submit(gate, candidate, state, config).await;
    Ok(())
}

async fn submit(gate: &Arc<Gate>, candidate: Candidate, state: &mut PollState, config: &WatchConfig) {
    let kept = candidate.clone();
    // Logged and counted by `submit`; the old version keeps serving if it is rejected.
    let result = state.retries.submit(gate, candidate, Artifacts::WasmOnly, config.poll_interval).await;
    state.awaiting_signature = awaits_signature(&result, Some(kept));
}

/// The candidate to keep while it stands rejected for its signature (`kept`), or `None`.
fn awaits_signature<T>(result: &Result<T, Rejection>, kept: Option<Candidate>) -> Option<Candidate> {
    match result {
        Err(Rejection::MissingSignature | Rejection::BadSignature(_)) => kept,
        _ => None,
    }
}

fn key(candidate: &Candidate) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(candidate.bytes()));
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

/// The size limit of one download, and how an error names it.
#[derive(Clone, Copy)]
enum Limit {
    /// `--max-component-size`.
    Component(u64),
    /// [`MAX_SIGNATURE_SIZE`].
    Signature,
}

impl Limit {
    fn bytes(self) -> u64 {
        match self {
            Self::Component(limit) => limit,
            Self::Signature => MAX_SIGNATURE_SIZE,
        }
    }

    /// `over the N-byte limit (...)`, naming where the limit comes from.
    fn over(self) -> String {
        match self {
            Self::Component(limit) => format!("over the {limit}-byte limit (`--max-component-size`)"),
            Self::Signature => format!("over {MAX_SIGNATURE_SIZE} bytes ({SIGNATURE_LIMIT})"),
        }
    }
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
    limit: Limit,
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
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map_or_else(|| "none".to_string(), redact::url);
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
        && length > limit.bytes()
    {
        bail!("the body is {length} bytes (Content-Length), {}", limit.over());
    }
    let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(limit.bytes()) as usize);
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            let got = bytes.len();
            let of = expected.map(|n| format!(" of {n}")).unwrap_or_default();
            describe(e, timeout).context(format!("the download broke off after {got}{of} bytes"))
        })?;
        let Some(chunk) = chunk else { break };
        if (bytes.len() + chunk.len()) as u64 > limit.bytes() {
            bail!("the body is {}; stopped reading", limit.over());
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

/// The signature's URL: `.sig` added to the path, the query kept (`/c.wasm?q=1` →
/// `/c.wasm.sig?q=1`).
fn signature_url(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url.parse().with_context(|| format!("`{}` is not a valid URL", redact::url(url)))?;
    let mut parts = uri.into_parts();
    let path_and_query = match &parts.path_and_query {
        Some(pq) => match pq.query() {
            Some(query) => format!("{}.sig?{query}", pq.path()),
            None => format!("{}.sig", pq.path()),
        },
        None => "/.sig".to_string(),
    };
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query).context("cannot add `.sig` to the URL's path")?,
    );
    Ok(http::Uri::from_parts(parts).context("cannot build the signature's URL")?.to_string())
}

/// The signature: `None` when it does not exist (404); any other failure is an error.
async fn fetch_signature(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<u8>>> {
    let sig_url = signature_url(url)?;
    let shown = redact::url(&sig_url);
    match get(client, &sig_url, None, Limit::Signature, timeout)
        .await
        .with_context(|| format!("cannot fetch the signature `{shown}`"))?
    {
        Got::Body { bytes, .. } => Ok(Some(bytes)),
        Got::NotFound => Ok(None),
        Got::NotModified => {
            bail!("cannot fetch the signature `{shown}`: the server answered 304 Not Modified")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_next_to_the_path_with_the_query_kept() {
        assert_eq!(signature_url("http://h/c.wasm").unwrap(), "http://h/c.wasm.sig");
        assert_eq!(
            signature_url("http://u:p@h:81/d/c.wasm?X-Goog-Signature=ab%2F&x=1").unwrap(),
            "http://u:p@h:81/d/c.wasm.sig?X-Goog-Signature=ab%2F&x=1"
        );
    }
}
