//! The Cloud Storage flags: the release store, where the JSON API is, and the credentials.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::parse_duration;
use crate::release::store::FollowSettings;
use crate::util::gcs::auth::DEFAULT_METADATA_HOST;
use crate::util::gcs::{Credentials, DEFAULT_ENDPOINT, GsPrefix, StorageConfig};

pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "10s";
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
pub const DEFAULT_STALENESS_WAIT: &str = "1s";
pub const DEFAULT_FLEET_FORGET_AFTER: &str = "30m";
const STALENESS_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
const STALENESS_WAIT_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
const FORGET_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

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

    /// With `--store`: how old this instance's view of the release may be when a request
    /// arrives (default: twice `--poll-interval`). An older view (Cloud Run froze the instance
    /// between requests) is re-checked first: one metadata request, which the requests arriving
    /// meanwhile share; a canary abort, a rollback, a weight change or a promotion applies
    /// before they are routed.
    #[arg(long, env = "ECHO_HOST_MAX_STALENESS", value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,

    /// How long a request waits for that re-check; past it, the request is served on the
    /// instance's last view (counted and logged), or answered 503 with `--staleness-strict`.
    #[arg(long, env = "ECHO_HOST_STALENESS_WAIT", default_value = DEFAULT_STALENESS_WAIT, value_parser = parse_duration)]
    pub staleness_wait: Duration,

    /// Answer 503 (with `Retry-After`) rather than serve on a view of the release the store
    /// did not confirm within `--staleness-wait`.
    #[arg(long, env = "ECHO_HOST_STALENESS_STRICT")]
    pub staleness_strict: bool,

    /// How long the fleet view keeps an instance that stopped writing heartbeats, shown as
    /// asleep (Cloud Run freezes idle instances), before it counts as gone. An instance that
    /// stops gracefully leaves the view at once.
    #[arg(long, env = "ECHO_HOST_FLEET_FORGET_AFTER", default_value = DEFAULT_FLEET_FORGET_AFTER, value_parser = parse_duration)]
    pub fleet_forget_after: Duration,
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

    /// The staleness bound and the fleet view's memory, checked. `poll_interval` gives the
    /// default bound (twice it); the bound must not be shorter than one poll.
    pub fn follow_settings(&self, poll_interval: Duration) -> anyhow::Result<FollowSettings> {
        let (low, high) = STALENESS_RANGE;
        // Without a store nothing is followed: the default only has to be valid.
        let max_age = self.max_staleness.unwrap_or((poll_interval * 2).clamp(low, high));
        if !(low..=high).contains(&max_age) {
            bail!("`--max-staleness` must be between {low:?} and {high:?}, not {max_age:?}");
        }
        if self.store.is_some() && max_age < poll_interval {
            bail!(
                "`--max-staleness` ({max_age:?}) must be at least `--poll-interval` ({poll_interval:?}): a busy instance confirms its view once a poll"
            );
        }
        let (low, high) = STALENESS_WAIT_RANGE;
        if !(low..=high).contains(&self.staleness_wait) {
            bail!("`--staleness-wait` must be between {low:?} and {high:?}, not {:?}", self.staleness_wait);
        }
        let (low, high) = FORGET_RANGE;
        if !(low..=high).contains(&self.fleet_forget_after) {
            bail!(
                "`--fleet-forget-after` must be between {low:?} and {high:?}, not {:?}",
                self.fleet_forget_after
            );
        }
        Ok(FollowSettings {
            staleness: crate::util::freshness::StalenessPolicy {
                max_age,
                wait: self.staleness_wait,
                strict: self.staleness_strict,
            },
            forget_after: self.fleet_forget_after,
        })
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
            max_staleness: None,
            staleness_wait: Duration::from_secs(1),
            staleness_strict: false,
            fleet_forget_after: Duration::from_secs(1800),
        }
    }

    #[test]
    fn the_staleness_bound_defaults_to_two_polls_and_is_checked() {
        let store = args(Some("gs://bkt/fleet"), None);
        let settings = store.follow_settings(Duration::from_secs(2)).unwrap();
        assert_eq!(settings.staleness.max_age, Duration::from_secs(4));
        assert!(!settings.staleness.strict);
        let mut short = store.clone();
        short.max_staleness = Some(Duration::from_secs(1));
        let error = short.follow_settings(Duration::from_secs(2)).unwrap_err().to_string();
        assert!(error.contains("--max-staleness") && error.contains("--poll-interval"), "{error}");
        let mut long_wait = store;
        long_wait.staleness_wait = Duration::from_secs(61);
        assert!(
            long_wait
                .follow_settings(Duration::from_secs(2))
                .unwrap_err()
                .to_string()
                .contains("--staleness-wait")
        );
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
