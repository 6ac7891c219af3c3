//! Latency samples shared between threads, and their percentiles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency samples (µs), cheap to clone (clones share the samples).
#[derive(Debug, Clone, Default)]
pub struct Samples(Arc<Mutex<Vec<u64>>>);

impl Samples {
    /// Adds one sample.
    pub fn push(&self, d: Duration) {
        if let Ok(mut v) = self.0.lock() {
            v.push(d.as_micros() as u64);
        }
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Adds a copy of `other`'s samples.
    pub fn append(&self, other: &Samples) {
        let theirs = other.0.lock().map(|v| v.clone()).unwrap_or_default();
        if let Ok(mut v) = self.0.lock() {
            v.extend(theirs);
        }
    }

    /// Moves the samples into a new, unshared `Samples`.
    pub fn take(&self) -> Samples {
        let taken = self
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        Samples(Arc::new(Mutex::new(taken)))
    }

    /// The q-quantile in ms (q in 0..=1), NaN without samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let s = Samples::default();
        assert!(s.quantile_ms(0.5).is_nan());
        for ms in 1..=1000 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile_ms(0.5), 501.0);
        assert_eq!(s.quantile_ms(0.99), 990.0);
        assert_eq!(s.quantile_ms(1.0), 1000.0);
        let t = s.take();
        assert_eq!(s.len(), 0);
        assert_eq!(t.len(), 1000);
    }
}
