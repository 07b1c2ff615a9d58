//! Latency histograms: nanosecond samples, microsecond percentiles.

use hdrhistogram::Histogram;

/// Highest latency recorded exactly (60 s); longer samples are clamped to it.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram with 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    h: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

/// The percentiles a report shows, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Number of samples.
    pub count: u64,
}

impl LatencyHist {
    /// An empty histogram covering 1 ns to 60 s.
    pub fn new() -> Self {
        LatencyHist {
            h: Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one latency in nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.h.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Forgets every sample (end of warm-up).
    pub fn reset(&mut self) {
        self.h.reset();
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.h.len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// Adds another histogram's samples (e.g. from several cores).
    pub fn merge(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.h.add(&other.h);
    }

    /// p50 / p99 / p99.9 / max in microseconds.
    pub fn percentiles(&self) -> Percentiles {
        let us = |q: f64| self.h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.h.max() as f64 / 1000.0,
            count: self.h.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = LatencyHist::new();
        for i in 1..=1000u64 {
            h.record(i * 1000); // 1..1000 µs
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.p999_us - 999.0).abs() <= 1.0, "{p:?}");
        h.record(u64::MAX);
        assert!(h.percentiles().max_us >= 59_000_000.0);
        h.reset();
        assert!(h.is_empty());
    }
}
