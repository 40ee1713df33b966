//! `manifest.json`: the release the fleet serves, with a bounded history. Versioned by `schema`;
//! fields this host does not know (a newer host's) are kept when it rewrites the manifest.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The schema this host writes and understands.
pub const SCHEMA: u32 = 1;

/// History entries kept in the manifest, newest first.
pub const HISTORY_LEN: usize = 20;

/// Largest manifest read (a bounded history keeps real ones to a few KiB).
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;

/// Longest `by` text stored (who pushed or rolled back).
const MAX_BY_LEN: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    /// `sha256:<64 hex>`: the version every instance serves.
    pub stable: String,
    /// Reserved for progressive delivery; `null` in schema 1.
    #[serde(default)]
    pub canary: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Push,
    Rollback,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// `sha256:<64 hex>`.
    pub stable: String,
    pub at: String,
    pub by: String,
    pub action: Action,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    /// Parses and checks a manifest read from the store.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).context("the manifest is not valid JSON of schema 1")?;
        if manifest.schema != SCHEMA {
            bail!("the manifest has schema {}; this host understands schema {SCHEMA}", manifest.schema);
        }
        parse_version(&manifest.stable).context("the manifest's `stable`")?;
        Ok(manifest)
    }

    /// The stable version's sha256 (64 hex).
    pub fn stable_sha256(&self) -> &str {
        self.stable.trim_start_matches("sha256:")
    }

    /// The manifest after a push or rollback to `sha256`: the rest kept, history newest first.
    pub fn next(previous: Option<&Manifest>, sha256: &str, by: &str, action: Action, at: String) -> Manifest {
        let by: String = by.chars().take(MAX_BY_LEN).collect();
        let stable = format!("sha256:{sha256}");
        let entry = HistoryEntry {
            stable: stable.clone(),
            at: at.clone(),
            by: by.clone(),
            action,
            extra: Map::new(),
        };
        let mut next = previous.cloned().unwrap_or_else(|| Manifest {
            schema: SCHEMA,
            stable: String::new(),
            canary: None,
            updated_at: None,
            updated_by: None,
            history: Vec::new(),
            extra: Map::new(),
        });
        next.stable = stable;
        next.updated_at = Some(at);
        next.updated_by = Some(by);
        next.history.insert(0, entry);
        next.history.truncate(HISTORY_LEN);
        next
    }

    /// The version a rollback without a target returns to: the newest in the history that is
    /// not the current one.
    pub fn previous_stable(&self) -> Option<&str> {
        self.history
            .iter()
            .map(|entry| entry.stable.trim_start_matches("sha256:"))
            .find(|sha| *sha != self.stable_sha256())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// `sha256:<64 hex>` (or bare hex) to lowercase hex.
pub fn parse_version(text: &str) -> anyhow::Result<String> {
    let hex = text.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{text}` is not `sha256:` and 64 hex digits");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_push_then_a_rollback() {
        let first = Manifest::next(None, A, "admin:1.2.3.4", Action::Push, "t1".into());
        assert_eq!(first.stable_sha256(), A);
        assert_eq!(first.previous_stable(), None);
        let second = Manifest::next(Some(&first), B, "admin", Action::Push, "t2".into());
        assert_eq!(second.previous_stable(), Some(A));
        let back = Manifest::next(Some(&second), A, "admin", Action::Rollback, "t3".into());
        assert_eq!(back.stable_sha256(), A);
        assert_eq!(back.history.len(), 3);
        assert_eq!(back.history[0].action, Action::Rollback);
        assert_eq!(Manifest::parse(&back.to_bytes()).unwrap(), back);
    }

    #[test]
    fn history_and_provenance_are_bounded() {
        let long = "x".repeat(10_000);
        let mut manifest = Manifest::next(None, A, &long, Action::Push, "t".into());
        for i in 0..100 {
            manifest = Manifest::next(
                Some(&manifest),
                if i % 2 == 0 { B } else { A },
                &long,
                Action::Push,
                "t".into(),
            );
        }
        assert_eq!(manifest.history.len(), HISTORY_LEN);
        assert!(manifest.to_bytes().len() < 16 * 1024, "{} bytes", manifest.to_bytes().len());
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let text = format!(
            r#"{{"schema":1,"stable":"sha256:{A}","canary":{{"sha256":"x","weight":10}},"future":[1,2]}}"#
        );
        let manifest = Manifest::parse(text.as_bytes()).unwrap();
        let next = Manifest::next(Some(&manifest), B, "admin", Action::Push, "t".into());
        let written: Value = serde_json::from_slice(&next.to_bytes()).unwrap();
        assert_eq!(written["future"], serde_json::json!([1, 2]));
        assert_eq!(written["canary"]["weight"], 10);
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(Manifest::parse(b"not json").is_err());
        assert!(Manifest::parse(br#"{"schema":1,"stable":"sha256:abc"}"#).is_err());
        let newer = format!(r#"{{"schema":2,"stable":"sha256:{A}"}}"#);
        assert!(format!("{:#}", Manifest::parse(newer.as_bytes()).unwrap_err()).contains("schema 2"));
    }
}
