//! [`Window`]: one version's requests, failures and request durations per second over the last
//! ten minutes, for the canary analysis (the last `--canary-window`) and the status page's chart.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::versions::latency::Latencies;

/// Requests and failures of one version over the analysis window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
}

impl Counts {
    /// Failures per request, 0 without requests.
    pub fn rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.failures as f64 / self.requests as f64 }
    }
}

/// Seconds of history kept.
pub const SECONDS: usize = 600;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn second_now() -> u64 {
    EPOCH.elapsed().as_secs()
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// The second (since the process's epoch) this bucket counts; older buckets read as empty.
    second: u64,
    requests: u32,
    failures: u32,
    latencies: Latencies,
}

/// Per-second counts in a ring: recording is one short lock, reading sums at most 600 buckets
/// (115 KiB a version, most of it durations).
pub struct Window {
    buckets: Mutex<Box<[Bucket; SECONDS]>>,
}

impl Default for Window {
    fn default() -> Self {
        LazyLock::force(&EPOCH);
        // Built in place: the array is too large for the stack of a small thread.
        let buckets: Box<[Bucket; SECONDS]> = vec![Bucket::default(); SECONDS]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("the vector has `SECONDS` buckets"));
        Self { buckets: Mutex::new(buckets) }
    }
}

impl Window {
    /// Counts a request, a failure or not, and its duration when it says something about the
    /// version (`None`: the client left, a limit was hit).
    pub fn record(&self, failure: bool, seconds: Option<f64>) {
        let second = second_now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = &mut buckets[(second % SECONDS as u64) as usize];
        if bucket.second != second {
            *bucket = Bucket { second, ..Bucket::default() };
        }
        bucket.requests = bucket.requests.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failure));
        if let Some(seconds) = seconds {
            bucket.latencies.record(seconds);
        }
    }

    /// The request durations over the last `span` (whole seconds, the current one included).
    pub fn latencies(&self, span: Duration) -> Latencies {
        let now = second_now();
        let seconds = span.as_secs().clamp(1, SECONDS as u64);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies = Latencies::default();
        for bucket in buckets.iter().filter(|b| b.requests > 0 && now - b.second.min(now) < seconds) {
            latencies.add(&bucket.latencies);
        }
        latencies
    }

    /// Requests and failures over the last `span` (whole seconds, the current one included).
    pub fn counts(&self, span: Duration) -> Counts {
        let now = second_now();
        let seconds = span.as_secs().clamp(1, SECONDS as u64);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = Counts::default();
        for bucket in buckets.iter().filter(|b| b.requests > 0 && now - b.second.min(now) < seconds) {
            counts.requests += u64::from(bucket.requests);
            counts.failures += u64::from(bucket.failures);
        }
        counts
    }

    /// `buckets` sums of `bucket_seconds` each, oldest first, ending with the current second.
    pub fn series(&self, bucket_seconds: u64, buckets: usize) -> (Vec<u64>, Vec<u64>) {
        let now = second_now();
        let (mut requests, mut failures) = (vec![0; buckets], vec![0; buckets]);
        let ring = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for bucket in ring.iter().filter(|b| b.requests > 0 && b.second <= now) {
            let age = (now - bucket.second) / bucket_seconds.max(1);
            if let Some(index) = usize::try_from(age).ok().filter(|a| *a < buckets).map(|a| buckets - 1 - a) {
                requests[index] += u64::from(bucket.requests);
                failures[index] += u64::from(bucket.failures);
            }
        }
        (requests, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cover_the_recent_seconds() {
        let window = Window::default();
        for i in 0..10 {
            window.record(i % 5 == 0, (i != 9).then_some(0.001 * f64::from(i + 1)));
        }
        assert_eq!(window.counts(Duration::from_secs(60)), Counts { requests: 10, failures: 2 });
        let latencies = window.latencies(Duration::from_secs(60));
        assert_eq!(latencies.count(), 9, "a request without a duration is counted, not timed");
        let p95 = latencies.quantile(0.95).unwrap();
        assert!((0.0075..0.011).contains(&p95), "{p95}");
        let (requests, failures) = window.series(10, 60);
        assert_eq!(requests.len(), 60);
        assert_eq!(requests.iter().sum::<u64>(), 10);
        assert_eq!(failures[59], 2, "the newest bucket is last");
    }
}
