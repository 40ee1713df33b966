//! Which version serves a request: a pin (`echo-host-version`) to a version of the release, else
//! a sticky key (`echo-host-version-key`) hashed against the canary's weight, else the weight
//! itself over a low-discrepancy sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::versions::registry::{ActiveComponent, CanarySlot};

/// Pins a request to a version of the release: `sha256:PREFIX`.
pub const PIN_HEADER: &str = "echo-host-version";
/// Routes a request by a hash of its value, so one user stays on one version.
pub const KEY_HEADER: &str = "echo-host-version-key";

/// Shortest prefix a pin may name.
const MIN_PIN_HEX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Stable,
    Canary,
}

/// What serves one request.
pub struct Routed {
    pub component: Arc<ActiveComponent>,
    pub role: Role,
    /// A pin was sent that names no version of the release (routed by weight instead).
    pub pin_ignored: bool,
}

/// Picks the version for a request with `headers`. `sequence` spreads requests without a key.
pub fn pick(
    stable: Arc<ActiveComponent>,
    canary: Option<&CanarySlot>,
    headers: &HeaderMap,
    sequence: &AtomicU64,
) -> Routed {
    let mut pin_ignored = false;
    if let Some(pin) = headers.get(PIN_HEADER).and_then(|v| v.to_str().ok()) {
        match pin_prefix(pin) {
            Some(prefix) if stable.sha256.starts_with(&prefix) => {
                return Routed { component: stable, role: Role::Stable, pin_ignored };
            }
            Some(prefix) if canary.is_some_and(|c| c.component.sha256.starts_with(&prefix)) => {
                let component = canary.map(|c| c.component.clone()).expect("checked above");
                return Routed { component, role: Role::Canary, pin_ignored };
            }
            _ => pin_ignored = true,
        }
    }
    let Some(canary) = canary else {
        return Routed { component: stable, role: Role::Stable, pin_ignored };
    };
    let position = match headers.get(KEY_HEADER) {
        Some(key) => key_position(&canary.component.sha256, key.as_bytes()),
        None => sequence_position(sequence.fetch_add(1, Ordering::Relaxed)),
    };
    if position < canary.weight.permille() {
        Routed { component: canary.component.clone(), role: Role::Canary, pin_ignored }
    } else {
        Routed { component: stable, role: Role::Stable, pin_ignored }
    }
}

/// `sha256:PREFIX` (or bare hex) as lowercase hex, when it is at least 4 and at most 64 digits.
fn pin_prefix(value: &str) -> Option<String> {
    let hex = value.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    (hex.len() >= MIN_PIN_HEX && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// A key's place in 0..1000 for this canary: the same on every instance, and independent of the
/// weight, so a key under the weight stays under it as the weight grows.
pub fn key_position(canary_sha256: &str, key: &[u8]) -> u16 {
    let digest =
        Sha256::new().chain_update(canary_sha256.as_bytes()).chain_update([0]).chain_update(key).finalize();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % 1000) as u16
}

/// The `n`th request's place in 0..1000: Weyl's sequence with the golden ratio, so any run of
/// requests splits close to the weight.
fn sequence_position(n: u64) -> u16 {
    let fraction = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((fraction * 1000) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::Weight;

    /// The weight as a share of `0..1000` positions, for tests of the split.
    fn share(weight: Weight, positions: impl Iterator<Item = u16>) -> (usize, usize) {
        positions.fold((0, 0), |(canary, all), p| (canary + usize::from(p < weight.permille()), all + 1))
    }

    #[test]
    fn the_sequence_splits_close_to_the_weight() {
        for permille in [0u16, 1, 100, 333, 500, 999, 1000] {
            let weight = Weight::from_permille(permille);
            let (canary, all) = share(weight, (0..10_000).map(sequence_position));
            let expected = usize::from(permille) * 10;
            assert!(canary.abs_diff(expected) <= 5, "{weight}: {canary} of {all}");
        }
    }

    #[test]
    fn keys_stay_as_the_weight_grows() {
        let sha = "ab".repeat(32);
        let positions: Vec<u16> =
            (0..1000).map(|i| key_position(&sha, format!("user-{i}").as_bytes())).collect();
        let at_10: Vec<bool> = positions.iter().map(|p| *p < 100).collect();
        let at_50: Vec<bool> = positions.iter().map(|p| *p < 500).collect();
        assert!(at_10.iter().zip(&at_50).all(|(ten, fifty)| !ten || *fifty));
        let on_canary = at_10.iter().filter(|c| **c).count();
        assert!((60..=140).contains(&on_canary), "{on_canary} of 1000 keys at 10%");
    }

    #[test]
    fn pins_are_hex_prefixes() {
        assert_eq!(pin_prefix("sha256:ABCDEF012345").as_deref(), Some("abcdef012345"));
        assert_eq!(pin_prefix("abcd").as_deref(), Some("abcd"));
        assert_eq!(pin_prefix("sha256:abc"), None);
        assert_eq!(pin_prefix("sha256:xyz123"), None);
        assert_eq!(pin_prefix(&"a".repeat(65)), None);
    }
}
