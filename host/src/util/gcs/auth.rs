//! Credentials for Cloud Storage (and Google's registries): none (an emulator), or the instance's
//! service account through the metadata server, its access token cached and refreshed ahead of its
//! expiry, one cache per metadata server in the process ([`TokenSource::shared`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The metadata server's host name on Cloud Run and GCE (`GCE_METADATA_HOST` overrides it).
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const INSTANCE_ID_PATH: &str = "/computeMetadata/v1/instance/id";
const REGION_PATH: &str = "/computeMetadata/v1/instance/region";

/// A token is replaced once less than this (or a third of its lifetime, if shorter) remains.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// Google's tokens live an hour; a day is the most any token is trusted for.
const MAX_TOKEN_LIFETIME_S: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header (`STORAGE_EMULATOR_HOST`).
    Anonymous,
    /// The default service account's token from the metadata server at `host[:port]`.
    MetadataServer { host: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

struct Token {
    value: String,
    expires_at: Instant,
    lifetime: Duration,
}

impl Token {
    fn fresh(&self, now: Instant) -> bool {
        let ahead = REFRESH_AHEAD.min(self.lifetime / 3);
        now + ahead < self.expires_at
    }
}

/// Hands out the current access token; one refresh at a time.
pub struct TokenSource {
    credentials: Credentials,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Token>>,
    fetched: AtomicU64,
}

impl TokenSource {
    pub fn new(credentials: Credentials, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout.min(Duration::from_secs(10)))
            .no_proxy()
            .build()
            .context("cannot build the metadata server client")?;
        Ok(Self { credentials, http, cached: tokio::sync::Mutex::new(None), fetched: AtomicU64::new(0) })
    }

    /// The process's one token source for `credentials`: the release store, a `gs://` source and
    /// the registries' `oauth2accesstoken` logins share one cached token per metadata server.
    pub fn shared(credentials: &Credentials, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let Credentials::MetadataServer { host } = credentials else {
            return Ok(Arc::new(Self::new(credentials.clone(), timeout)?));
        };
        static SOURCES: OnceLock<Mutex<HashMap<String, Arc<TokenSource>>>> = OnceLock::new();
        let mut sources = SOURCES.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(source) = sources.get(host) {
            return Ok(source.clone());
        }
        let source = Arc::new(Self::new(credentials.clone(), timeout)?);
        sources.insert(host.clone(), source.clone());
        Ok(source)
    }

    pub fn has_tokens(&self) -> bool {
        matches!(self.credentials, Credentials::MetadataServer { .. })
    }

    /// Tokens fetched so far (for `info`).
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The token to send, `None` for anonymous access.
    pub async fn token(&self) -> anyhow::Result<Option<String>> {
        let Credentials::MetadataServer { host } = &self.credentials else { return Ok(None) };
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(token) = cached.as_ref()
            && token.fresh(now)
        {
            return Ok(Some(token.value.clone()));
        }
        match self.fetch(host).await {
            Ok(token) => {
                let value = token.value.clone();
                *cached = Some(token);
                Ok(Some(value))
            }
            // Refreshing ahead failed: the old token serves until it actually expires.
            Err(error) => match cached.as_ref() {
                Some(token) if now < token.expires_at => {
                    tracing::warn!(
                        "cannot refresh the access token, using the current one until it expires: {error:#}"
                    );
                    Ok(Some(token.value.clone()))
                }
                _ => Err(error),
            },
        }
    }

    /// Drops the cached token (Cloud Storage answered 401), so the next call fetches a new one.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self, host: &str) -> anyhow::Result<Token> {
        let url = format!("http://{host}{TOKEN_PATH}");
        let response =
            self.http.get(&url).header("Metadata-Flavor", "Google").send().await.with_context(|| {
                format!("cannot reach the metadata server at `{host}` for an access token")
            })?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "the metadata server at `{host}` answered {status} for an access token (does the service have a service account?)"
            );
        }
        let text = response.text().await.with_context(|| format!("cannot read the token from `{host}`"))?;
        let token: TokenResponse = serde_json::from_str(&text)
            .with_context(|| format!("the metadata server at `{host}` sent a token that is not JSON"))?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        // Capped: a metadata server answering `expires_in: 1e19` must not overflow the clock.
        let lifetime = Duration::from_secs(token.expires_in.min(MAX_TOKEN_LIFETIME_S));
        Ok(Token { value: token.access_token, expires_at: Instant::now() + lifetime, lifetime })
    }
}

/// This instance's id from the metadata server (Cloud Run's instance id), if it answers.
pub async fn instance_id(host: &str) -> Option<String> {
    metadata_text(host, INSTANCE_ID_PATH).await
}

/// The region this instance runs in (`us-central1`), from the metadata server's
/// `projects/NUMBER/regions/REGION`, if it answers.
pub async fn instance_region(host: &str) -> Option<String> {
    region_of(&metadata_text(host, REGION_PATH).await?)
}

fn region_of(text: &str) -> Option<String> {
    let region = text.rsplit('/').next()?;
    let plain = !region.is_empty() && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plain.then(|| region.to_string())
}

/// A short text value of the metadata server at `path`; `None` when it does not answer within
/// 2 s, answers an error or something empty or long.
async fn metadata_text(host: &str, path: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build().ok()?;
    let response =
        client.get(format!("http://{host}{path}")).header("Metadata-Flavor", "Google").send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?.trim().to_string();
    (!text.is_empty() && text.len() <= 256).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_is_the_last_segment() {
        assert_eq!(region_of("projects/123456789/regions/europe-west1").as_deref(), Some("europe-west1"));
        assert_eq!(region_of("us-central1").as_deref(), Some("us-central1"));
        assert_eq!(region_of("projects/1/regions/"), None);
        assert_eq!(region_of("projects/1/regions/<script>"), None);
    }

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry() {
        let now = Instant::now();
        let hour = Token {
            value: "t".into(),
            expires_at: now + Duration::from_secs(3600),
            lifetime: Duration::from_secs(3600),
        };
        assert!(hour.fresh(now));
        assert!(hour.fresh(now + Duration::from_secs(3500)));
        assert!(!hour.fresh(now + Duration::from_secs(3541)), "refreshed a minute ahead");
        // A short-lived token is refreshed with a third of its life left, not a minute.
        let short = Token {
            value: "t".into(),
            expires_at: now + Duration::from_secs(3),
            lifetime: Duration::from_secs(3),
        };
        assert!(short.fresh(now));
        assert!(!short.fresh(now + Duration::from_millis(2100)));
    }

    #[test]
    fn one_token_source_per_metadata_server() {
        let timeout = Duration::from_secs(5);
        let server = |host: &str| Credentials::MetadataServer { host: host.into() };
        let a = TokenSource::shared(&server("shared-test-a:1"), timeout).unwrap();
        let again = TokenSource::shared(&server("shared-test-a:1"), timeout).unwrap();
        let b = TokenSource::shared(&server("shared-test-b:1"), timeout).unwrap();
        assert!(Arc::ptr_eq(&a, &again) && !Arc::ptr_eq(&a, &b));
        let none = TokenSource::shared(&Credentials::Anonymous, timeout).unwrap();
        assert!(!none.has_tokens());
    }
}
