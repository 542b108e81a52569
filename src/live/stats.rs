//! A live run's counters and per-stage latency samples, shared by the stages and written as `live_summary.json`.

use crate::stats::Percentiles;

/// Per-stage latency samples (ms) and counters of a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LiveStats {
    pub volumes_processed: usize,
    pub volumes_rejected_by_preprocessing: usize,
    pub patterns_decoded: usize,
    pub frames_drawn: usize,
    pub latents_skipped_by_generator: usize,
    /// True-stimulus images generated for the display, and those taken from the cache instead (a repeated
    /// stimulus is drawn once).
    pub stimulus_images_drawn: usize,
    pub stimulus_images_reused: usize,
    pub frames_shown: usize,
    /// Frames the generator failed to draw (each logged with its volume).
    pub generator_errors: usize,
    /// Why the generator moved from the GPU to the CPU during the run (the GPU, the volume, the error), if it did.
    pub generator_fell_back_to_cpu: Option<String>,
    /// Stages that stopped before the end of the run, with the error that stopped them.
    pub stage_failures: Vec<String>,
    pub preprocess_ms: Vec<f64>,
    pub decode_ms: Vec<f64>,
    pub generate_ms: Vec<f64>,
    /// Volume arrival -> frame shown, for the volume that completed each shown pattern.
    pub end_to_end_ms: Vec<f64>,
    pub end_reason: String,
}

impl LiveStats {
    /// "stage p50 / p95 / max" lines.
    pub fn latency_table(&self) -> String {
        let line = |name: &str, v: &[f64]| {
            let p = Percentiles::new(v);
            format!(
                "{name:<22} {:>9.2} {:>9.2} {:>9.2} {:>7}\n",
                p.at(50.0),
                p.at(95.0),
                p.at(100.0),
                v.len()
            )
        };
        let mut s = format!(
            "{:<22} {:>9} {:>9} {:>9} {:>7}\n",
            "latency (ms)", "p50", "p95", "max", "n"
        );
        s += &line("preprocess", &self.preprocess_ms);
        s += &line("decode", &self.decode_ms);
        s += &line("generate", &self.generate_ms);
        s += &line("arrival -> shown", &self.end_to_end_ms);
        s
    }
}

/// The generator stops (decoding and recording go on) after this many frames in a row failed.
pub const GENERATOR_FAILURES_IN_A_ROW: usize = 3;
