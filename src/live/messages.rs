//! What the stages pass each other on their bounded channels.

use std::time::Instant;

use crate::preprocess::trials::ScheduledTrial;
use crate::spatial::Rigid;

/// A volume after preprocessing: its motion and the patterns it completed.
pub(super) struct Analysed {
    pub(super) index: usize,
    pub(super) arrived_at: Instant,
    pub(super) motion: Rigid,
    pub(super) fd_mm: f64,
    pub(super) patterns: Vec<(Option<ScheduledTrial>, Vec<f32>)>,
}

/// One decoded pattern on its way to the generator.
pub(super) struct Decoded {
    pub(super) volume_index: usize,
    pub(super) arrived_at: Instant,
    pub(super) trial: Option<ScheduledTrial>,
    pub(super) latent: Vec<f32>,
    pub(super) attributes: Vec<(String, f64)>,
    pub(super) feedback: Option<f64>,
    pub(super) fd_history: Vec<f64>,
}
