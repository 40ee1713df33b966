//! [`Latencies`]: a request-duration histogram small enough to keep one per second per version
//! (48 counters), from which the canary analysis reads a quantile over its window. Bucket `i`
//! holds durations up to 0.25 ms × 1.3^i (the last one everything above 44 s); a quantile is
//! interpolated within its bucket: never further from the exact one than the bucket's width
//! (30%), and usually much closer, which is fine for the 2x ratios the analysis compares.

/// Buckets of one histogram.
pub const BUCKETS: usize = 48;
/// The upper bound of the first bucket, in seconds.
const FIRST: f64 = 0.000_25;
/// Each bucket's upper bound over the previous one's.
const GROWTH: f64 = 1.3;

/// Request durations counted by bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    counts: [u32; BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Self { counts: [0; BUCKETS] }
    }
}

/// The upper bound of bucket `i`, in seconds.
fn upper(i: usize) -> f64 {
    FIRST * GROWTH.powi(i as i32)
}

/// The bucket a duration of `seconds` falls in.
fn bucket(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= FIRST {
        return 0;
    }
    // A bound itself belongs to its bucket, whatever the last bit of the logarithm says.
    let i = ((seconds / FIRST).ln() / GROWTH.ln() - 1e-9).ceil();
    (i as usize).min(BUCKETS - 1)
}

impl Latencies {
    pub fn record(&mut self, seconds: f64) {
        let count = &mut self.counts[bucket(seconds)];
        *count = count.saturating_add(1);
    }

    pub fn add(&mut self, other: &Latencies) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile (0 < q ≤ 1) in seconds, `None` without durations: the bucket the `q`-th
    /// duration falls in, interpolated geometrically between its bounds (linearly in the first).
    /// In the last bucket, its lower bound (the duration is at least that).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            let count = u64::from(count);
            if below + count < rank {
                below += count;
                continue;
            }
            let fraction = (rank - below) as f64 / count as f64;
            return Some(match i {
                0 => FIRST * fraction,
                i if i == BUCKETS - 1 => upper(i - 1),
                i => upper(i - 1) * GROWTH.powf(fraction),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(durations: impl IntoIterator<Item = f64>) -> Latencies {
        let mut latencies = Latencies::default();
        for d in durations {
            latencies.record(d);
        }
        latencies
    }

    #[test]
    fn buckets_cover_sub_millisecond_to_tens_of_seconds() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(FIRST), 0);
        assert_eq!(bucket(FIRST * 1.01), 1);
        assert_eq!(bucket(upper(10)), 10);
        assert_eq!(bucket(upper(10) * 1.001), 11);
        assert_eq!(bucket(3600.0), BUCKETS - 1);
        assert!(upper(BUCKETS - 2) > 40.0, "{}", upper(BUCKETS - 2));
    }

    /// Within 20% of the exact quantile across the range the analysis compares.
    #[test]
    fn quantiles_are_close_to_the_exact_ones() {
        assert_eq!(Latencies::default().quantile(0.95), None);
        for base in [0.0004, 0.003, 0.05, 0.2, 1.5, 20.0] {
            // 100 durations evenly from base to 2 x base: the exact p95 is base x 1.95.
            let latencies = of((0..100).map(|i| base * (1.0 + i as f64 / 99.0)));
            let p95 = latencies.quantile(0.95).unwrap();
            let exact = base * (1.0 + 94.0 / 99.0);
            assert!((p95 / exact - 1.0).abs() < 0.2, "base {base}: p95 {p95}, exact {exact}");
            let p50 = latencies.quantile(0.5).unwrap();
            assert!((p50 / (base * 1.5) - 1.0).abs() < 0.2, "base {base}: p50 {p50}");
        }
        // The slowest 5% decide the p95 only once they are more than 5%.
        let mostly_fast = of((0..100).map(|i| if i < 95 { 0.002 } else { 0.5 }));
        assert!(mostly_fast.quantile(0.95).unwrap() < 0.0025);
        let slow_tail = of((0..100).map(|i| if i < 94 { 0.002 } else { 0.5 }));
        assert!(slow_tail.quantile(0.95).unwrap() > 0.4);
        // Past the last bound: its lower bound.
        assert_eq!(of([7200.0]).quantile(0.95), Some(upper(BUCKETS - 2)));
    }

    #[test]
    fn histograms_add_up() {
        let mut sum = of([0.001, 0.002]);
        sum.add(&of([0.5]));
        assert_eq!(sum.count(), 3);
        assert!(sum.quantile(1.0).unwrap() > 0.4);
    }
}
