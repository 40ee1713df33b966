//! The Cloud Storage flags: the release store, where the JSON API is, and the credentials.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::parse_duration;
use crate::gcs::auth::DEFAULT_METADATA_HOST;
use crate::gcs::{Credentials, DEFAULT_ENDPOINT, GsPrefix, StorageConfig};

pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "10s";
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

#[derive(Debug, Args, Clone)]
pub struct StorageArgs {
    /// The fleet's release store, `gs://BUCKET/PREFIX/`: every instance serves the version its
    /// manifest names and follows it every `--poll-interval`; an admin upload or rollback on any
    /// instance is written there, so the whole fleet moves. `--component` is then only what serves
    /// until the store has a release.
    #[arg(long, env = "ECHO_HOST_STORE")]
    pub store: Option<String>,

    /// How often this instance writes its heartbeat to the store (the fleet view lists instances
    /// heard from within three intervals).
    #[arg(long, env = "ECHO_HOST_HEARTBEAT_INTERVAL", default_value = DEFAULT_HEARTBEAT_INTERVAL, value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// A Cloud Storage emulator (`http://HOST:PORT`, or `HOST:PORT`): `gs://` requests go there
    /// without credentials, as Google's client libraries do with this variable.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    pub storage_emulator_host: Option<String>,

    /// The Cloud Storage JSON API endpoint (e.g. a Private Service Connect one); requests carry
    /// the service account's token from the metadata server.
    #[arg(long, env = "ECHO_HOST_STORAGE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub storage_endpoint: String,

    /// The metadata server (`HOST[:PORT]`) that hands out the service account's tokens and the
    /// instance id.
    #[arg(long, env = "GCE_METADATA_HOST")]
    pub metadata_host: Option<String>,
}

impl StorageArgs {
    /// The store location and the storage client's settings, checked.
    pub fn validate(&self) -> anyhow::Result<(Option<GsPrefix>, StorageConfig)> {
        let store = self.store.as_deref().map(|text| GsPrefix::parse("--store", text)).transpose()?;
        let (low, high) = HEARTBEAT_RANGE;
        if !(low..=high).contains(&self.heartbeat_interval) {
            bail!(
                "`--heartbeat-interval` must be between {low:?} and {high:?}, not {:?}",
                self.heartbeat_interval
            );
        }
        let metadata_host = self.metadata_host.as_deref().map(str::trim).filter(|h| !h.is_empty());
        if let Some(host) = metadata_host
            && (host.contains('/') || host.contains(' '))
        {
            bail!("`--metadata-host` (`GCE_METADATA_HOST`) `{host}` must be `HOST` or `HOST:PORT`");
        }
        let storage = match self.storage_emulator_host.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            Some(emulator) => StorageConfig {
                endpoint: endpoint("--storage-emulator-host` (`STORAGE_EMULATOR_HOST`", emulator, "http")?,
                credentials: Credentials::Anonymous,
                // A local emulator has no metadata server unless one is named.
                metadata_host: metadata_host.map(str::to_string),
            },
            None => {
                let host = metadata_host.unwrap_or(DEFAULT_METADATA_HOST).to_string();
                StorageConfig {
                    endpoint: endpoint("--storage-endpoint", &self.storage_endpoint, "https")?,
                    credentials: Credentials::MetadataServer { host: host.clone() },
                    metadata_host: Some(host),
                }
            }
        };
        Ok((store, storage))
    }
}

/// `text` as a base URL: a scheme (`default_scheme` when none), a host, no path or query.
fn endpoint(flag: &str, text: &str, default_scheme: &str) -> anyhow::Result<String> {
    let url = if text.contains("://") { text.to_string() } else { format!("{default_scheme}://{text}") };
    let uri: http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(_) => bail!("`{flag}` `{text}` is not a URL"),
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = uri.path() == "/" || uri.path().is_empty();
    if !scheme_ok || uri.host().is_none() || !path_ok || uri.query().is_some() {
        bail!("`{flag}` `{text}` must be `http(s)://HOST[:PORT]`");
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(store: Option<&str>, emulator: Option<&str>) -> StorageArgs {
        StorageArgs {
            store: store.map(str::to_string),
            heartbeat_interval: Duration::from_secs(10),
            storage_emulator_host: emulator.map(str::to_string),
            storage_endpoint: DEFAULT_ENDPOINT.to_string(),
            metadata_host: None,
        }
    }

    #[test]
    fn the_emulator_means_no_credentials() {
        let (store, storage) = args(Some("gs://bkt/fleet"), Some("127.0.0.1:4443")).validate().unwrap();
        assert_eq!(store.unwrap().prefix, "fleet/");
        assert_eq!(storage.endpoint, "http://127.0.0.1:4443");
        assert_eq!(storage.credentials, Credentials::Anonymous);
        assert_eq!(storage.metadata_host, None);
        let (_, storage) = args(None, None).validate().unwrap();
        assert_eq!(storage.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(storage.credentials, Credentials::MetadataServer { host: DEFAULT_METADATA_HOST.into() });
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = args(None, Some("ftp://x")).validate().unwrap_err();
        assert!(error.to_string().contains("STORAGE_EMULATOR_HOST"), "{error}");
        let error = args(Some("bucket/prefix"), None).validate().unwrap_err();
        assert!(error.to_string().contains("--store"), "{error}");
        let mut slow = args(None, None);
        slow.heartbeat_interval = Duration::from_millis(10);
        assert!(slow.validate().unwrap_err().to_string().contains("--heartbeat-interval"));
    }
}
