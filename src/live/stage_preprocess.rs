//! The preprocess stage: each volume realigned, masked, detrended and z-scored ([`Preprocessor`]), then turned
//! into the patterns to decode: a trial's averaged window once its last volume is in (onsets from the schedule and,
//! live, from the stimulus computer), or the mean of the newest volumes in sliding mode. A volume that cannot be
//! preprocessed is logged, counted and skipped; the run goes on.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::messages::Analysed;
use super::onsets::OnsetSubscriber;
use super::stats::LiveStats;
use crate::config::LiveMode;
use crate::decode::bundle::DecoderBundle;
use crate::preprocess::trials::{ScheduledTrial, TrialAverager};
use crate::preprocess::Preprocessor;
use crate::spatial::Rigid;
use crate::volume::Volume;

/// What the preprocess stage works with.
pub(super) struct PreprocessStage {
    pub bundle: DecoderBundle,
    pub schedule: Vec<ScheduledTrial>,
    pub onsets: Option<OnsetSubscriber>,
    pub mode: LiveMode,
    pub sliding_volumes: usize,
    pub stats: Arc<Mutex<LiveStats>>,
}

impl PreprocessStage {
    /// Starts the stage's thread: volumes in, analysed volumes out, until the volume channel closes.
    pub(super) fn spawn(
        self,
        vol_rx: Receiver<Volume>,
        ana_tx: Sender<Analysed>,
    ) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
        let PreprocessStage {
            bundle: bundle_pre,
            schedule,
            onsets,
            mode,
            sliding_volumes: sliding,
            stats: pre_stats,
        } = self;
        std::thread::Builder::new().name("preprocess".into()).spawn(
            move || -> anyhow::Result<()> {
                let b = &bundle_pre;
                let mut pre = Preprocessor::new(
                    &b.reference,
                    b.dims,
                    b.mm_from_voxel,
                    b.voxels.clone(),
                    b.tr_secs,
                    b.preprocess.clone(),
                )?;
                let mut averager = TrialAverager::new(b.window, b.tr_secs);
                // live onsets are numbered after the schedule's trials
                let mut next_trial_index = schedule.len();
                for t in schedule {
                    averager.add_trial(t);
                }
                let mut recent: std::collections::VecDeque<Vec<f32>> = Default::default();
                for volume in vol_rx.iter() {
                    let started = Instant::now();
                    if let Some(sub) = &onsets {
                        for trial in sub.drain(&mut next_trial_index) {
                            tracing::info!(
                                "onset {:.2} s (stim {:?}) received live",
                                trial.onset_secs,
                                trial.stim_id
                            );
                            averager.add_trial(trial);
                        }
                    }
                    let p = match pre.process(&volume) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("{e}; the run goes on");
                            if let Ok(mut s) = pre_stats.lock() {
                                s.volumes_rejected_by_preprocessing += 1;
                            }
                            continue;
                        }
                    };
                    let mut patterns: Vec<(Option<ScheduledTrial>, Vec<f32>)> = Vec::new();
                    match mode {
                        LiveMode::Trials => patterns.extend(
                            averager
                                .push_volume(p.index, &p.values)
                                .into_iter()
                                .map(|t| (Some(t.trial), t.pattern)),
                        ),
                        LiveMode::Sliding => {
                            recent.push_back(p.values.clone());
                            if recent.len() > sliding {
                                recent.pop_front();
                            }
                            if !p.baseline && recent.len() == sliding {
                                let mut mean = vec![0.0f32; p.values.len()];
                                for v in &recent {
                                    for (m, x) in mean.iter_mut().zip(v) {
                                        *m += x / sliding as f32;
                                    }
                                }
                                patterns.push((None, mean));
                            }
                        }
                    }
                    if let Ok(mut s) = pre_stats.lock() {
                        s.volumes_processed += 1;
                        s.note_volume(p.index, p.fd_mm);
                        s.preprocess_ms.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    let msg = Analysed {
                        index: p.index,
                        arrived_at: volume.arrived_at,
                        motion: p.alignment.motion,
                        fd_mm: p.fd_mm,
                        patterns,
                    };
                    if ana_tx.send(msg).is_err() {
                        break;
                    }
                }
                // trials whose window ran past the end of the run
                let leftovers: Vec<(Option<ScheduledTrial>, Vec<f32>)> = averager
                    .finish()
                    .into_iter()
                    .map(|t| (Some(t.trial), t.pattern))
                    .collect();
                if !leftovers.is_empty() {
                    let _ = ana_tx.send(Analysed {
                        index: usize::MAX,
                        arrived_at: Instant::now(),
                        motion: Rigid::default(),
                        fd_mm: 0.0,
                        patterns: leftovers,
                    });
                }
                Ok(())
            },
        )
    }
}
