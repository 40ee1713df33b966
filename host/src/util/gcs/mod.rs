//! Cloud Storage through its JSON API: the few calls the host makes (object metadata, a download
//! by generation checked against the object's checksum, a conditional upload, list, delete),
//! with the credentials of [`auth`].
//!
//! Hand-written over the host's `reqwest` rather than the official `google-cloud-storage` crate:
//! that crate does not read `STORAGE_EMULATOR_HOST`, and it brings a gRPC stack (tonic, prost,
//! the gax crates) and aws-lc-rs into a static musl image for five HTTP calls.

pub mod auth;
mod location;

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use http::StatusCode;
use serde::Deserialize;

pub use auth::Credentials;
pub use location::{GsObject, GsPrefix};

/// Google's public JSON API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Where the JSON API is and how requests authenticate (from `--storage-emulator-host`,
/// `--storage-endpoint` and `--metadata-host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Base URL, without a trailing `/`.
    pub endpoint: String,
    pub credentials: Credentials,
    /// The metadata server (`host[:port]`), when one is known to exist: asked for the instance id.
    pub metadata_host: Option<String>,
}

impl Default for StorageConfig {
    /// Google's endpoint with the metadata server's credentials: what Cloud Run has.
    fn default() -> Self {
        let host = auth::DEFAULT_METADATA_HOST.to_string();
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            credentials: Credentials::MetadataServer { host: host.clone() },
            metadata_host: Some(host),
        }
    }
}

/// Why a storage call failed. Callers match on it: a failed precondition is a conflict, a
/// missing object is not an error for a poll.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("`{0}` does not exist")]
    NotFound(String),
    #[error("`{0}` changed since it was read (generation precondition failed)")]
    PreconditionFailed(String),
    #[error("Cloud Storage answered {status} for `{what}`: {message}")]
    Status { what: String, status: StatusCode, message: String },
    #[error("cannot reach Cloud Storage for `{what}`: {source:#}")]
    Transport { what: String, source: anyhow::Error },
    #[error("`{what}` is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("`{what}` is {size} bytes, over the {limit}-byte limit")]
    TooLarge { what: String, size: u64, limit: u64 },
}

/// The metadata of one object (the JSON API's `storage#object`, the fields the host reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(deserialize_with = "number_in_string")]
    pub generation: i64,
    #[serde(deserialize_with = "number_in_string")]
    pub size: i64,
    /// Base64 of the big-endian CRC32C.
    pub crc32c: Option<String>,
    /// Base64 of the MD5 (absent for composite objects).
    pub md5_hash: Option<String>,
    /// RFC 3339, Cloud Storage's clock.
    pub updated: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectMeta>,
    next_page_token: Option<String>,
}

fn number_in_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(i64),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

/// Idle connections kept per storage endpoint.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// A Cloud Storage client: one connection pool, one token cache.
pub struct Gcs {
    http: reqwest::Client,
    endpoint: String,
    auth: std::sync::Arc<auth::TokenSource>,
}

impl Gcs {
    /// `timeout` bounds every call, body included.
    pub fn new(config: &StorageConfig, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            // The fleet view reads heartbeats a few at a time: no more sockets than that idle.
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build()
            .context("cannot build the Cloud Storage HTTP client")?;
        let auth = auth::TokenSource::shared(&config.credentials, timeout)?;
        Ok(Self { http, endpoint: config.endpoint.trim_end_matches('/').to_string(), auth })
    }

    pub fn credentials(&self) -> &auth::TokenSource {
        &self.auth
    }

    fn object_url(&self, bucket: &str, object: &str) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.endpoint, encode(bucket), encode(object))
    }

    /// Sends a request built by `build` with the current token; on a 401 the token is
    /// refreshed and the request sent once more.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GcsError> {
        let transport = |source: anyhow::Error| GcsError::Transport { what: what.to_string(), source };
        for attempt in 0..2 {
            let mut request = build();
            if let Some(token) = self.auth.token().await.map_err(transport)? {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|e| transport(e.into()))?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 && self.auth.has_tokens() {
                self.auth.invalidate().await;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The object's metadata; `None` if it does not exist.
    pub async fn metadata(&self, bucket: &str, object: &str) -> Result<Option<ObjectMeta>, GcsError> {
        let what = format!("gs://{bucket}/{object}");
        let url = self.object_url(bucket, object);
        let response = self.send(&what, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(json(&what, response).await?)),
            _ => Err(failure(&what, response).await),
        }
    }

    /// Whether `bucket` exists (`false` on a 404 for the bucket itself).
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, GcsError> {
        let what = format!("gs://{bucket}");
        let url = format!("{}/storage/v1/b/{}", self.endpoint, encode(bucket));
        let response = self.send(&what, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            _ => Err(failure(&what, response).await),
        }
    }

    /// The bytes of `meta`'s generation, at most `limit` of them, checked against its CRC32C (or
    /// its MD5 when it has no CRC32C).
    pub async fn download(&self, bucket: &str, meta: &ObjectMeta, limit: u64) -> Result<Vec<u8>, GcsError> {
        let what = format!("gs://{bucket}/{}#{}", meta.name, meta.generation);
        let size = u64::try_from(meta.size).unwrap_or(0);
        if size > limit {
            return Err(GcsError::TooLarge { what, size, limit });
        }
        let url = self.object_url(bucket, &meta.name);
        let generation = meta.generation.to_string();
        let mut response = self
            .send(&what, || self.http.get(&url).query(&[("alt", "media"), ("generation", &generation)]))
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Err(GcsError::NotFound(what)),
            status if !status.is_success() => return Err(failure(&what, response).await),
            _ => {}
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| GcsError::Transport { what: what.clone(), source: e.into() })?
        {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(GcsError::TooLarge { what, size: (bytes.len() + chunk.len()) as u64, limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        verify(&what, meta, &bytes)?;
        Ok(bytes)
    }

    /// Writes `object` (a multipart upload, where Cloud Storage and its emulator both enforce
    /// `ifGenerationMatch`). `if_generation`: `Some(0)` only if the object does not exist,
    /// `Some(g)` only if its generation is still `g`.
    pub async fn upload(
        &self,
        bucket: &str,
        object: &str,
        bytes: &[u8],
        content_type: &str,
        if_generation: Option<i64>,
    ) -> Result<ObjectMeta, GcsError> {
        let what = format!("gs://{bucket}/{object}");
        let url = format!("{}/upload/storage/v1/b/{}/o", self.endpoint, encode(bucket));
        let boundary = format!("echo-host-{}", hex::encode(rand_bytes::<12>()));
        let metadata =
            serde_json::json!({ "name": object, "contentType": content_type, "cacheControl": "no-store" });
        let mut body = Vec::with_capacity(bytes.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = bytes::Bytes::from(body);
        let mut query = vec![("uploadType", "multipart".to_string())];
        if let Some(generation) = if_generation {
            query.push(("ifGenerationMatch", generation.to_string()));
        }
        let response = self
            .send(&what, || {
                self.http
                    .post(&url)
                    .query(&query)
                    .header(http::header::CONTENT_TYPE, format!("multipart/related; boundary={boundary}"))
                    .body(body.clone())
            })
            .await?;
        match response.status() {
            StatusCode::PRECONDITION_FAILED => Err(GcsError::PreconditionFailed(what)),
            status if status.is_success() => json(&what, response).await,
            _ => Err(failure(&what, response).await),
        }
    }

    /// Every object whose name starts with `prefix` (all pages).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, GcsError> {
        let what = format!("gs://{bucket}/{prefix}*");
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, encode(bucket));
        let mut items = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut query = vec![("prefix", prefix.to_string())];
            if let Some(token) = &page {
                query.push(("pageToken", token.clone()));
            }
            let response = self.send(&what, || self.http.get(&url).query(&query)).await?;
            if !response.status().is_success() {
                return Err(failure(&what, response).await);
            }
            let list: ObjectList = json(&what, response).await?;
            items.extend(list.items);
            match list.next_page_token {
                Some(token) if !token.is_empty() => page = Some(token),
                _ => return Ok(items),
            }
        }
    }

    /// Deletes `object`; a missing object is not an error.
    pub async fn delete(&self, bucket: &str, object: &str) -> Result<(), GcsError> {
        let what = format!("gs://{bucket}/{object}");
        let url = self.object_url(bucket, object);
        let response = self.send(&what, || self.http.delete(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(()),
            status if status.is_success() => Ok(()),
            _ => Err(failure(&what, response).await),
        }
    }
}

/// Checks downloaded bytes against the checksum Cloud Storage stored for them.
pub fn verify(what: &str, meta: &ObjectMeta, bytes: &[u8]) -> Result<(), GcsError> {
    let corrupt = |reason: String| GcsError::Corrupt { what: what.to_string(), reason };
    if u64::try_from(meta.size).ok() != Some(bytes.len() as u64) {
        return Err(corrupt(format!("got {} bytes, the object has {}", bytes.len(), meta.size)));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(expected) = &meta.crc32c {
        let actual = b64.encode(crc32c::crc32c(bytes).to_be_bytes());
        if &actual != expected {
            return Err(corrupt(format!("crc32c `{actual}` is not the object's `{expected}`")));
        }
    } else if let Some(expected) = &meta.md5_hash {
        let actual = b64.encode(<md5::Md5 as md5::Digest>::digest(bytes));
        if &actual != expected {
            return Err(corrupt(format!("md5 `{actual}` is not the object's `{expected}`")));
        }
    } else {
        return Err(corrupt("the object has neither a crc32c nor an md5 checksum".to_string()));
    }
    Ok(())
}

async fn json<T: serde::de::DeserializeOwned>(
    what: &str,
    response: reqwest::Response,
) -> Result<T, GcsError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| GcsError::Transport { what: what.to_string(), source: e.into() })?;
    serde_json::from_str(&text).map_err(|e| GcsError::Status {
        what: what.to_string(),
        status,
        message: format!("the answer is not the expected JSON ({e})"),
    })
}

/// The error for a non-2xx answer, with Google's `error.message` when the body has one.
async fn failure(what: &str, response: reqwest::Response) -> GcsError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect());
    GcsError::Status { what: what.to_string(), status, message }
}

/// Percent-encodes a path segment (object names may hold `/`, which must be `%2F`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub(crate) fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // A failing OS random source leaves zeros: only multipart boundaries and ids depend on it.
    let _ = getrandom::fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(bytes: &[u8]) -> ObjectMeta {
        let b64 = base64::engine::general_purpose::STANDARD;
        ObjectMeta {
            name: "o".into(),
            generation: 1,
            size: bytes.len() as i64,
            crc32c: Some(b64.encode(crc32c::crc32c(bytes).to_be_bytes())),
            md5_hash: None,
            updated: None,
        }
    }

    #[test]
    fn checksums_catch_a_flipped_byte_and_a_short_body() {
        let object = meta(b"hello world");
        assert!(verify("o", &object, b"hello world").is_ok());
        assert!(matches!(verify("o", &object, b"hello_world"), Err(GcsError::Corrupt { .. })));
        assert!(matches!(verify("o", &object, b"hello"), Err(GcsError::Corrupt { .. })));
        // The emulator's value for `{"schema":1}`, as measured.
        let emulator = ObjectMeta { crc32c: Some("kxuVfA==".into()), ..meta(b"{\"schema\":1}") };
        assert!(verify("o", &emulator, b"{\"schema\":1}").is_ok());
    }

    #[test]
    fn md5_is_the_fallback_and_no_checksum_is_refused() {
        let md5 = base64::engine::general_purpose::STANDARD.encode(<md5::Md5 as md5::Digest>::digest(b"x"));
        let object = ObjectMeta { crc32c: None, md5_hash: Some(md5), ..meta(b"x") };
        assert!(verify("o", &object, b"x").is_ok());
        assert!(verify("o", &object, b"y").is_err());
        let bare = ObjectMeta { crc32c: None, md5_hash: None, ..meta(b"x") };
        assert!(verify("o", &bare, b"x").is_err());
    }

    #[test]
    fn object_names_are_one_path_segment() {
        assert_eq!(encode("fleet/manifest.json"), "fleet%2Fmanifest.json");
        assert_eq!(encode("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn generations_parse_from_strings() {
        let meta: ObjectMeta =
            serde_json::from_str(r#"{"name":"o","generation":"1796128994367623","size":"12"}"#).unwrap();
        assert_eq!(meta.generation, 1796128994367623);
        assert_eq!(meta.size, 12);
    }
}
