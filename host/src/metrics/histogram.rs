//! Histograms with fixed upper bounds: one relaxed atomic add per observation, rendered as
//! Prometheus histograms, and snapshots a status reply carries.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in the unit of the bounds, times 1e6 (kept integral for atomics).
    sum_micro: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Its counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            cumulative: self
                .buckets
                .iter()
                .map(|c| {
                    cumulative += c.load(Ordering::Relaxed);
                    cumulative
                })
                .collect(),
            count: self.count(),
        }
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
        );
    }
}

/// A histogram's counts at one moment: `cumulative[i]` observations were at most `bounds[i]`;
/// `count` is all of them (those above the last bound included).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Observations at or under each bound.
    pub cumulative: Vec<u64>,
    /// All observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// The observations made between `earlier` and `self` (same bounds).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        if earlier.bounds != self.bounds {
            return self.clone();
        }
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(&earlier.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The smallest bound under which at least `q` (0..=1) of the observations fall; `None`
    /// without observations or when they fall above the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        self.bounds
            .iter()
            .zip(&self.cumulative)
            .find(|(_, c)| **c >= want)
            .map(|(b, _)| *b)
    }
}
