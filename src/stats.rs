//! Small statistics helpers shared by the summaries and benchmarks: percentiles of latency samples.

/// Sorted samples for percentile queries (nearest-rank with linear interpolation, as NumPy's default).
pub struct Percentiles {
    sorted: Vec<f64>,
}

impl Percentiles {
    /// Copies and sorts the samples; NaNs are dropped.
    pub fn new(samples: &[f64]) -> Percentiles {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Percentiles { sorted }
    }

    /// The `q`-th percentile (0 to 100); 0 when there are no samples.
    pub fn at(&self, q: f64) -> f64 {
        match self.sorted.len() {
            0 => 0.0,
            1 => self.sorted[0],
            n => {
                let pos = (q.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = pos.ceil() as usize;
                let frac = pos - lo as f64;
                self.sorted[lo] + (self.sorted[hi] - self.sorted[lo]) * frac
            }
        }
    }
}

/// "`what`: p50 .. ms, p95 .. ms, max .. ms over N volumes" for latency samples in milliseconds; `None` when there
/// are none.
pub fn latency_line(what: &str, samples_ms: &[f64]) -> Option<String> {
    (!samples_ms.is_empty()).then(|| {
        let p = Percentiles::new(samples_ms);
        format!(
            "{what}: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} volumes",
            p.at(50.0),
            p.at(95.0),
            p.at(100.0),
            samples_ms.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear_percentiles() {
        let p = Percentiles::new(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(p.at(50.0), 2.5);
        assert_eq!(p.at(100.0), 4.0);
        assert!((p.at(95.0) - 3.85).abs() < 1e-12);
        assert_eq!(Percentiles::new(&[]).at(50.0), 0.0);
    }
}
