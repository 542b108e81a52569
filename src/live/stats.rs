//! A live run's counters and per-stage latency samples, shared by the stages and written as `live_summary.json`;
//! also the browser console's summary of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::stats::Percentiles;

/// How many volumes' framewise displacement the console's motion trace shows (the latest).
pub const FD_SHOWN_VOLUMES: usize = 600;

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
    /// The generator the run started on ("CPU (2 threads, Winograd)", "GPU 0, NVIDIA H100 ... (f32)").
    pub generator: String,
    /// The newest preprocessed volume, when it was taken, and the latest [`FD_SHOWN_VOLUMES`] framewise
    /// displacements (for the console).
    #[serde(skip)]
    pub last_volume: Option<usize>,
    #[serde(skip)]
    pub last_volume_at: Option<Instant>,
    #[serde(skip)]
    pub fd_recent_mm: VecDeque<f64>,
    /// The newest neurofeedback value.
    #[serde(skip)]
    pub last_feedback: Option<f64>,
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

/// What the browser console needs to know of the session besides its counters.
pub struct SessionView<'a> {
    pub session: &'a str,
    pub started: Instant,
    pub tr_secs: f64,
    pub feedback_attribute: &'a str,
    pub ended: bool,
}

impl LiveStats {
    /// A volume was preprocessed: its index and framewise displacement.
    pub fn note_volume(&mut self, index: usize, fd_mm: f64) {
        self.last_volume = Some(index);
        self.last_volume_at = Some(Instant::now());
        self.fd_recent_mm.push_back(fd_mm);
        while self.fd_recent_mm.len() > FD_SHOWN_VOLUMES {
            self.fd_recent_mm.pop_front();
        }
    }

    /// "receiving" while volumes arrive, "waiting for the scanner" before the first and when none came for three
    /// TRs (at least 5 s), "ended" after the run.
    pub fn state(&self, view: &SessionView) -> &'static str {
        let quiet_after = Duration::from_secs_f64((3.0 * view.tr_secs).max(5.0));
        match self.last_volume_at {
            _ if view.ended => "ended",
            Some(at) if at.elapsed() <= quiet_after => "receiving",
            _ => "waiting for the scanner",
        }
    }

    /// The console's summary (`/api/summary`): counters, state, per-stage latency percentiles and the motion trace.
    pub fn web_summary(&self, view: &SessionView) -> serde_json::Value {
        let latency = |stage: &str, v: &[f64]| {
            let p = Percentiles::new(v);
            let finite = |x: f64| (!v.is_empty() && x.is_finite()).then_some(x);
            serde_json::json!({"stage": stage, "p50": finite(p.at(50.0)), "p95": finite(p.at(95.0)),
                               "max": finite(p.at(100.0)), "n": v.len()})
        };
        serde_json::json!({
            "state": self.state(view),
            "session": view.session,
            "session_secs": view.started.elapsed().as_secs_f64(),
            "tr_secs": view.tr_secs,
            "last_volume": self.last_volume,
            "run_secs": self.last_volume.map(|v| v as f64 * view.tr_secs),
            "volumes_processed": self.volumes_processed,
            "volumes_rejected_by_preprocessing": self.volumes_rejected_by_preprocessing,
            "patterns_decoded": self.patterns_decoded,
            "frames_drawn": self.frames_drawn,
            "frames_shown": self.frames_shown,
            "latents_skipped_by_generator": self.latents_skipped_by_generator,
            "generator": self.generator,
            "generator_errors": self.generator_errors,
            "generator_fell_back_to_cpu": self.generator_fell_back_to_cpu,
            "stage_failures": self.stage_failures,
            "end_reason": (!self.end_reason.is_empty()).then_some(&self.end_reason),
            "feedback_attribute": view.feedback_attribute,
            "feedback": self.last_feedback,
            "latency_ms": [
                latency("preprocess", &self.preprocess_ms),
                latency("decode", &self.decode_ms),
                latency("generate", &self.generate_ms),
                latency("volume arrival -> frame shown", &self.end_to_end_ms),
            ],
            "fd_mm": self.fd_recent_mm,
            "fd_first_volume": (self.last_volume.unwrap_or(0) + 1).saturating_sub(self.fd_recent_mm.len()),
        })
    }
}

/// The generator stops (decoding and recording go on) after this many frames in a row failed.
pub const GENERATOR_FAILURES_IN_A_ROW: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ended: bool) -> SessionView<'static> {
        SessionView {
            session: "s",
            started: Instant::now(),
            tr_secs: 2.0,
            feedback_attribute: "smile",
            ended,
        }
    }

    #[test]
    fn the_console_summary_says_the_state_and_keeps_the_motion_trace_bounded() {
        let mut stats = LiveStats::default();
        assert_eq!(stats.state(&view(false)), "waiting for the scanner");
        for v in 0..FD_SHOWN_VOLUMES + 50 {
            stats.note_volume(v, v as f64 * 1e-3);
        }
        assert_eq!(stats.state(&view(false)), "receiving");
        assert_eq!(stats.state(&view(true)), "ended");
        stats.last_volume_at = Instant::now().checked_sub(Duration::from_secs(7));
        assert_eq!(stats.state(&view(false)), "waiting for the scanner");
        let summary = stats.web_summary(&view(false));
        assert_eq!(summary["fd_mm"].as_array().unwrap().len(), FD_SHOWN_VOLUMES);
        assert_eq!(summary["fd_first_volume"], 50);
        assert_eq!(summary["run_secs"], (FD_SHOWN_VOLUMES + 49) as f64 * 2.0);
        // no samples yet: no percentile is made up
        assert_eq!(summary["latency_ms"][2]["stage"], "generate");
        assert!(summary["latency_ms"][2]["p95"].is_null());
    }
}
