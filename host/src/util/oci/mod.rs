//! A client for OCI registries (the distribution spec), as much of it as pulling one component
//! takes: resolve a tag to its manifest digest (one `HEAD`), fetch the manifest and the one wasm
//! layer, each bounded and checked against its digest. Logs in as [`auth`] says, caches the
//! registry's Bearer tokens per scope, follows blob redirects (to a storage URL) without sending
//! the registry's credentials there, keeps `Retry-After`, and never prints a credential.
//!
//! Written here rather than with `oci-client`: that crate reads manifests and error bodies whole
//! (`res.bytes()`, unbounded) and drops `Retry-After`; a registry that lies must cost a bounded
//! read and an error, and a 429 must slow the poll down.

pub mod auth;
pub mod layout;
pub mod reference;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{StatusCode, header};
use sha2::{Digest, Sha256};

pub use auth::{Login, Logins, Secret};
pub use layout::Layout;
pub use reference::Reference;

use auth::Challenge;

/// The most a manifest or an index may be (the distribution registry's own limit for a push).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// How much of an error body is read for its message.
const MAX_ERROR_BODY: u64 = 16 * 1024;
/// How many redirects a blob download follows.
const MAX_REDIRECTS: usize = 5;
/// A token without `expires_in` lives this long (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Idle connections kept per registry.
const MAX_IDLE_CONNECTIONS: usize = 4;

/// How the host reaches registries.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`) reached over plain HTTP (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// An extra CA certificate (PEM) trusted beside the built-in roots (`--registry-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Bounds every request, body included (`--fetch-timeout`).
    pub timeout: Duration,
    pub logins: Arc<Logins>,
    /// What registries asked for and the tokens they gave, shared by every client made from
    /// this config (the start-up pull, the watcher, the admin API's pulls).
    pub cache: Arc<AuthCache>,
}

/// Bearer tokens by `(registry, scope)`, and the challenge each registry answered last (so a poll
/// does not start with a 401).
#[derive(Default)]
pub struct AuthCache {
    tokens: tokio::sync::Mutex<HashMap<(String, String), CachedToken>>,
    challenges: std::sync::Mutex<HashMap<String, Challenge>>,
    token_fetches: AtomicU64,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(30),
            logins: Arc::default(),
            cache: Arc::default(),
        }
    }
}

/// Why a registry call failed. No variant holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot reach `{what}`: {source:#}")]
    Transport { what: String, source: anyhow::Error },
    #[error("`{what}`: the registry answered {status}{detail}")]
    Status { what: String, status: StatusCode, retry_after: Option<Duration>, detail: String },
    #[error(
        "`{what}` is not in the registry (a deleted tag, or a repository these credentials cannot see){detail}"
    )]
    NotFound { what: String, detail: String },
    #[error(
        "`{what}`: the registry refused {login} ({status}){detail}; give credentials that may pull it (`--registry-username` with `--registry-password-file`, a Docker `config.json`, or on Google Cloud the role `roles/artifactregistry.reader`)"
    )]
    Unauthorized { what: String, login: &'static str, status: StatusCode, detail: String },
    #[error("`{what}` is {size} bytes, over the {limit}-byte limit ({flag})")]
    TooLarge { what: String, size: u64, limit: u64, flag: &'static str },
    #[error("`{what}`: the registry sent bytes whose digest is `{actual}`, not `{expected}`: refused")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("`{what}` is {found}")]
    Layout { what: String, found: String },
    #[error(
        "cannot get a registry token for `{what}`: {source:#} (check the login: `--registry-username` with `--registry-password-file`, a Docker `config.json`, or on Google Cloud `roles/artifactregistry.reader`)"
    )]
    Token { what: String, source: anyhow::Error },
}

impl OciError {
    /// A word for what went wrong, for JSON answers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transport { .. } => "registry_unreachable",
            Self::Status { .. } => "registry_error",
            Self::NotFound { .. } => "registry_not_found",
            Self::Unauthorized { .. } | Self::Token { .. } => "registry_unauthorized",
            Self::TooLarge { .. } => "too_large",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::Layout { .. } => "not_a_component",
        }
    }

    /// How long the registry asked the host to wait (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A component pulled from a registry.
#[derive(Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// The digest the reference resolved to (an index's, when it was one).
    pub digest: String,
    pub layout: Layout,
}

struct CachedToken {
    value: Secret,
    expires_at: Instant,
}

/// One registry client: a connection pool, the logins, the shared [`AuthCache`].
pub struct Registry {
    http: reqwest::Client,
    insecure: Vec<String>,
    logins: Arc<Logins>,
    cache: Arc<AuthCache>,
}

impl Registry {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .redirect(redirect_policy());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read `--registry-ca-file` `{}`", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("`--registry-ca-file` `{}` is not PEM certificates", path.display())
            })?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "`--registry-ca-file` `{}` holds no certificate",
                path.display()
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().context("cannot build the registry HTTP client")?;
        Ok(Self {
            http,
            insecure: config.insecure.clone(),
            logins: config.logins.clone(),
            cache: config.cache.clone(),
        })
    }

    /// Tokens fetched from registries' token services so far.
    pub fn token_fetches(&self) -> u64 {
        self.cache.token_fetches.load(Ordering::Relaxed)
    }

    /// The digest `reference` names now: its own when pinned, else one `HEAD` of the tag's
    /// manifest (`Docker-Content-Digest`; a `GET`, hashed, for a registry that does not send it).
    pub async fn resolve(&self, reference: &Reference) -> Result<String, OciError> {
        if let Some(digest) = &reference.digest {
            return Ok(digest.clone());
        }
        let url = self.manifest_url(reference, reference.manifest_ref());
        let what = reference.to_string();
        let response = self.send(reference, &what, reqwest::Method::HEAD, &url).await?;
        let response = check(&what, response).await?;
        let sent = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok());
        if let Some(digest) = sent.and_then(|d| reference::check_digest("Docker-Content-Digest", d).ok()) {
            return Ok(digest);
        }
        let response = self.send(reference, &what, reqwest::Method::GET, &url).await?;
        let response = check(&what, response).await?;
        let bytes = read_bounded(&what, response, MAX_MANIFEST_SIZE, "manifests").await?;
        Ok(sha256_digest(&bytes))
    }

    /// The component at `digest` (a manifest or an index in `reference`'s repository), at most
    /// `limit` bytes, every document and the layer checked against its digest.
    pub async fn pull(&self, reference: &Reference, digest: &str, limit: u64) -> Result<Pulled, OciError> {
        let what = reference.at(digest);
        let (bytes, content_type) = self.manifest(reference, digest).await?;
        let mut next = layout::next(&bytes, content_type.as_deref())
            .map_err(|found| OciError::Layout { what: what.clone(), found })?;
        if let layout::Next::Entry(entry) = &next {
            let (bytes, content_type) = self.manifest(reference, &entry.digest).await?;
            next = layout::next(&bytes, content_type.as_deref())
                .map_err(|found| OciError::Layout { what: what.clone(), found })?;
        }
        let (layer, layout) = match next {
            layout::Next::Layer(layer, layout) => (layer, layout),
            layout::Next::Entry(_) => {
                let found = "an image index inside an image index".to_string();
                return Err(OciError::Layout { what, found });
            }
        };
        let bytes = self.blob(reference, &layer.digest, layer.size, limit).await?;
        Ok(Pulled { bytes, digest: digest.to_string(), layout })
    }

    /// A manifest by digest, checked, with its `Content-Type`.
    async fn manifest(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<(Vec<u8>, Option<String>), OciError> {
        let what = reference.at(digest);
        reference::check_digest("the manifest digest", digest)
            .map_err(|e| OciError::Layout { what: what.clone(), found: format!("{e:#}") })?;
        let url = self.manifest_url(reference, digest);
        let response = self.send(reference, &what, reqwest::Method::GET, &url).await?;
        let response = check(&what, response).await?;
        let content_type =
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = read_bounded(&what, response, MAX_MANIFEST_SIZE, "manifests").await?;
        verify(&what, digest, &bytes)?;
        Ok((bytes, content_type))
    }

    /// A blob by digest: its declared size checked first, then at most `limit` bytes read and
    /// checked against the digest.
    async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, OciError> {
        let what = format!("oci://{}/{}@{digest}", reference.registry, reference.repository);
        let flag = "`--max-component-size`";
        if size > limit {
            return Err(OciError::TooLarge { what, size, limit, flag });
        }
        reference::check_digest("the layer digest", digest)
            .map_err(|e| OciError::Layout { what: what.clone(), found: format!("{e:#}") })?;
        let url = format!("{}/v2/{}/blobs/{digest}", self.base(reference), reference.api_repository());
        let response = self.send(reference, &what, reqwest::Method::GET, &url).await?;
        let response = check(&what, response).await?;
        // Read one byte past the declared size: more is a lie, caught here rather than by the hash.
        let bytes = read_bounded(&what, response, size.min(limit), "the layer's declared size").await?;
        verify(&what, digest, &bytes)?;
        Ok(bytes)
    }

    fn base(&self, reference: &Reference) -> String {
        let scheme = if self.insecure.iter().any(|h| h == &reference.registry) { "http" } else { "https" };
        format!("{scheme}://{}", reference.api_host())
    }

    fn manifest_url(&self, reference: &Reference, by: &str) -> String {
        format!("{}/v2/{}/manifests/{by}", self.base(reference), reference.api_repository())
    }

    /// Sends one request with what the registry asked for last time; on a 401, answers its
    /// challenge (a Bearer token from its token service, or Basic) and sends it once more.
    async fn send(
        &self,
        reference: &Reference,
        what: &str,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::Response, OciError> {
        let login = self.logins.login(&reference.registry);
        let known =
            self.cache.challenges.lock().unwrap_or_else(|p| p.into_inner()).get(&reference.registry).cloned();
        let mut authorization = match &known {
            Some(challenge) => self.authorization(reference, what, &login, challenge, false).await?,
            None => None,
        };
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), url).header(header::ACCEPT, layout::ACCEPT);
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value.expose());
            }
            let response = request
                .send()
                .await
                .map_err(|e| OciError::Transport { what: what.to_string(), source: e.into() })?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return refused(what, &login, response);
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            let Some(challenge) = challenge else { return refused(what, &login, response) };
            self.cache
                .challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(reference.registry.clone(), challenge.clone());
            // A token that was refused is not offered again.
            authorization = self.authorization(reference, what, &login, &challenge, known.is_some()).await?;
            if authorization.is_none() {
                return refused(what, &login, response);
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The `Authorization` value answering `challenge`; `None` to go anonymous.
    async fn authorization(
        &self,
        reference: &Reference,
        what: &str,
        login: &Login,
        challenge: &Challenge,
        refresh: bool,
    ) -> Result<Option<Secret>, OciError> {
        let token_error = |source: anyhow::Error| OciError::Token { what: what.to_string(), source };
        if refresh {
            self.logins.invalidate(login).await;
        }
        match challenge {
            Challenge::Basic => {
                let basic = self.logins.basic(login).await.map_err(token_error)?;
                Ok(basic.map(|(user, password)| basic_value(&user, &password)))
            }
            Challenge::Bearer { realm, service, .. } => {
                // This repository's pull scope, whichever repository the remembered challenge
                // was for.
                let scope = format!("repository:{}:pull", reference.api_repository());
                let key = (reference.registry.clone(), scope.clone());
                let mut tokens = self.cache.tokens.lock().await;
                if !refresh && let Some(token) = tokens.get(&key).filter(|t| Instant::now() < t.expires_at) {
                    return Ok(Some(bearer_value(&token.value)));
                }
                let token = self.fetch_token(reference, login, realm, service.as_deref(), &scope).await;
                let token = token.map_err(token_error)?;
                let value = bearer_value(&token.value);
                tokens.insert(key, token);
                Ok(Some(value))
            }
        }
    }

    /// A token from the registry's token service (the distribution token spec): `GET realm`
    /// with `service` and `scope`, the login as Basic credentials when there is one.
    async fn fetch_token(
        &self,
        reference: &Reference,
        login: &Login,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> anyhow::Result<CachedToken> {
        let realm_url: reqwest::Url =
            realm.parse().with_context(|| "the token realm is not a URL".to_string())?;
        let plain_ok = self.insecure.iter().any(|h| h == &reference.registry);
        anyhow::ensure!(
            realm_url.scheme() == "https" || (realm_url.scheme() == "http" && plain_ok),
            "the registry sends the token realm `{}` over plain HTTP; only a registry named in `--insecure-registry` may",
            crate::util::redact::url(realm)
        );
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm_url).query(&query);
        if let Some((user, password)) = self.logins.basic(login).await? {
            request = request.header(header::AUTHORIZATION, basic_value(&user, &password).expose());
        }
        let response = request.send().await.context("the token service cannot be reached")?;
        let status = response.status();
        let body = read_bounded("the token", response, MAX_ERROR_BODY, "tokens")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !status.is_success() {
            anyhow::bail!("the token service answered {status}{}", detail(&body));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: Answer =
            serde_json::from_slice(&body).context("the token service's answer is not JSON")?;
        let value =
            answer.token.or(answer.access_token).context("the token service's answer has no token")?;
        self.cache.token_fetches.fetch_add(1, Ordering::Relaxed);
        // Used until 90 % of its lifetime: a poll never sends a token about to expire.
        let lifetime =
            answer.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, |s| Duration::from_secs(s.min(86_400)));
        Ok(CachedToken { value: Secret::new(value), expires_at: Instant::now() + lifetime.mul_f64(0.9) })
    }
}

/// Follows a few redirects, never from HTTPS down to plain HTTP. reqwest drops `Authorization`
/// on a redirect to another host or port, so a storage URL never sees the registry's credentials.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().last().is_some_and(|previous| previous.scheme() == "https");
        if downgrade {
            attempt.error("the registry redirected from HTTPS to plain HTTP")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

fn basic_value(user: &str, password: &Secret) -> Secret {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
    Secret::new(format!("Basic {encoded}"))
}

fn bearer_value(token: &Secret) -> Secret {
    Secret::new(format!("Bearer {}", token.expose()))
}

/// A 401 or 403 as [`OciError::Unauthorized`], saying which login was refused; any other
/// response as it is.
fn refused(what: &str, login: &Login, response: reqwest::Response) -> Result<reqwest::Response, OciError> {
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return Ok(response);
    }
    let login = match login {
        Login::Anonymous => "anonymous access",
        Login::Basic { .. } => "the user and password it was given",
        Login::MetadataToken => "the metadata server's access token",
    };
    Err(OciError::Unauthorized { what: what.to_string(), login, status, detail: String::new() })
}

/// A response that is not a success, as an error (with the registry's own error codes and
/// messages, bounded and printable).
async fn check(what: &str, response: reqwest::Response) -> Result<reqwest::Response, OciError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let what = what.to_string();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let body = read_bounded(&what, response, MAX_ERROR_BODY, "error bodies").await.unwrap_or_default();
    let detail = detail(&body);
    Err(match status {
        StatusCode::NOT_FOUND => OciError::NotFound { what, detail },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            OciError::Unauthorized { what, login: "these credentials", status, detail }
        }
        _ => OciError::Status { what, status, retry_after, detail },
    })
}

/// `: CODE: message; …` from a registry's `{"errors":[{"code","message"}]}`, at most 300
/// printable characters; empty for anything else.
fn detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(errors) = serde_json::from_slice::<Errors>(body) else { return String::new() };
    let text: Vec<String> =
        errors.errors.iter().take(3).map(|e| format!("{}: {}", e.code, e.message)).collect();
    if text.is_empty() {
        return String::new();
    }
    let joined: String =
        text.join("; ").chars().take(300).map(|c| if c.is_control() { '?' } else { c }).collect();
    format!(" ({joined})")
}

/// The body, refused past `limit` bytes (read as it comes, so a lie costs `limit` at most).
async fn read_bounded(
    what: &str,
    mut response: reqwest::Response,
    limit: u64,
    flag: &'static str,
) -> Result<Vec<u8>, OciError> {
    let too_large = |size| OciError::TooLarge { what: what.to_string(), size, limit, flag };
    if let Some(length) = response.content_length()
        && length > limit
    {
        return Err(too_large(length));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OciError::Transport { what: what.to_string(), source: e.into() })?
    {
        let size = (bytes.len() + chunk.len()) as u64;
        if size > limit {
            return Err(too_large(size));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn verify(what: &str, expected: &str, bytes: &[u8]) -> Result<(), OciError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_are_shown_bounded_and_printable() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown\u001b[31m"}]}"#;
        assert_eq!(detail(body), " (MANIFEST_UNKNOWN: manifest unknown?[31m)");
        assert_eq!(detail(b"<html>"), "");
        let long = format!(r#"{{"errors":[{{"code":"X","message":"{}"}}]}}"#, "a".repeat(1000));
        assert!(detail(long.as_bytes()).len() < 320);
    }

    #[test]
    fn credentials_are_not_in_debug_output() {
        let value = basic_value("user", &Secret::new("hunter2".into()));
        assert!(!format!("{value:?}").contains("hunter2") && value.expose().starts_with("Basic "));
    }
}
