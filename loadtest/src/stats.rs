//! Latency histograms (HDR, microseconds) that merge across tasks and processes.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded: a minute; anything slower is clamped (and is a failure anyway).
const MAX_MICROS: u64 = 60_000_000;

#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record_micros(&mut self, micros: u64) {
        let _ = self.0.record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `quantile` (0..=1), in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(quantile) as f64 / 1000.0 }
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    /// (quantile, milliseconds) points from p0 to p99.99, for plots.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        let mut q = 0.0f64;
        while q <= 0.9999 {
            points.push((q, self.ms(q)));
            // Denser towards the tail: step a tenth of what is left to 1.
            q += ((1.0 - q) / 10.0).max(0.0001);
        }
        points
    }

    pub fn to_wire(&self) -> LatencyWire {
        LatencyWire { buckets: self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect() }
    }

    pub fn from_wire(wire: &LatencyWire) -> Self {
        let mut latency = Self::default();
        for &(value, count) in &wire.buckets {
            let _ = latency.0.record_n(value.clamp(1, MAX_MICROS), count);
        }
        latency
    }
}

/// A histogram as (value, count) pairs, to pass between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyWire {
    pub buckets: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_survive_a_round_trip() {
        let mut l = Latency::default();
        for v in 1..=1000 {
            l.record_micros(v * 1000);
        }
        let back = Latency::from_wire(&l.to_wire());
        assert_eq!(back.count(), 1000);
        assert!((back.ms(0.5) - 500.0).abs() < 1.0, "{}", back.ms(0.5));
        assert!((back.ms(0.99) - 990.0).abs() < 2.0);
    }
}
