//! Latency histograms: nanosecond samples, microsecond percentiles.

use hdrhistogram::Histogram;

/// Highest latency recorded exactly (60 s); longer samples are clamped to it.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram with 3 significant digits.
///
/// Consecutive equal samples (common: I/Os submitted in one batch and reaped in one poll) are
/// counted and added to the histogram in one step, which keeps recording off the profile of
/// the path being measured without changing the result.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    h: Histogram<u64>,
    /// The sample being repeated and how many times it was seen (not yet in `h`).
    run_value: u64,
    run_len: u64,
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
            run_value: 0,
            run_len: 0,
        }
    }

    /// Records one latency in nanoseconds (clamped to 1 ns ..= 60 s).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        if ns == self.run_value {
            self.run_len += 1;
        } else {
            self.flush();
            self.run_value = ns;
            self.run_len = 1;
        }
    }

    /// Moves the pending run of equal samples into the histogram.
    #[inline(never)]
    fn flush(&mut self) {
        if self.run_len > 0 {
            self.h
                .saturating_record_n(self.run_value.clamp(1, MAX_NS), self.run_len);
            self.run_len = 0;
        }
    }

    /// The histogram with every sample in it.
    fn flushed(&self) -> std::borrow::Cow<'_, Histogram<u64>> {
        if self.run_len == 0 {
            std::borrow::Cow::Borrowed(&self.h)
        } else {
            let mut c = self.clone();
            c.flush();
            std::borrow::Cow::Owned(c.h)
        }
    }

    /// Forgets every sample (end of warm-up).
    pub fn reset(&mut self) {
        self.h.reset();
        self.run_len = 0;
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.h.len() + self.run_len
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds another histogram's samples (e.g. from several cores).
    pub fn merge(&mut self, other: &LatencyHist) {
        self.flush();
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.h.add(other.flushed().as_ref());
    }

    /// p50 / p99 / p99.9 / max in microseconds.
    pub fn percentiles(&self) -> Percentiles {
        let h = self.flushed();
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
            count: h.len(),
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

    #[test]
    fn runs_of_equal_samples_count_each_sample() {
        let mut a = LatencyHist::new();
        for v in [5u64, 5, 5, 7, 7, 5, 0, 0] {
            a.record(v * 1000);
        }
        assert_eq!(a.len(), 8);
        let p = a.percentiles();
        assert_eq!(p.count, 8);
        // Samples: 0 (clamped to 1 ns) x2, 5 µs x4, 7 µs x2.
        assert!((p.p50_us - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.max_us - 7.0).abs() < 0.01, "{p:?}");
        let mut b = LatencyHist::new();
        b.record(9000);
        b.merge(&a);
        assert_eq!(b.len(), 9);
        assert!((b.percentiles().max_us - 9.0).abs() < 0.01);
    }
}
