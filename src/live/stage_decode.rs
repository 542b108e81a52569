//! The decode stage: each pattern decoded into a latent by the ridge decoder, scored along the attribute directions
//! (the neurofeedback value among them), and sent on to the generator; every result is written to the session's
//! `results.jsonl` and `decoded_latents.npy`, served to the stimulus computer, published, and listed in the browser
//! console (without its latent). It never drops a pattern: when the generator has stopped, decoding, recording and
//! serving go on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::messages::{Analysed, Decoded};
use super::stats::LiveStats;
use crate::decode::attributes::Boundary;
use crate::decode::bundle::DecoderBundle;
use crate::decode::metrics::attribute_score;
use crate::feedback::{Publisher, ResultsStore};
use crate::web::WebFeed;

/// What the decode stage works with.
pub(super) struct DecodeStage {
    pub bundle: DecoderBundle,
    pub boundaries: Vec<Boundary>,
    pub feedback_attribute: String,
    pub feedback_scale: f64,
    pub session_dir: PathBuf,
    pub publisher: Publisher,
    pub store: ResultsStore,
    pub web: Option<WebFeed>,
    pub stats: Arc<Mutex<LiveStats>>,
}

impl DecodeStage {
    /// Starts the stage's thread: analysed volumes in, decoded trials out, until the analysed channel closes.
    pub(super) fn spawn(
        self,
        ana_rx: Receiver<Analysed>,
        dec_tx: Sender<Decoded>,
    ) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
        let DecodeStage {
            bundle: bundle_dec,
            boundaries,
            feedback_attribute: feedback_attr,
            feedback_scale,
            session_dir: dec_dir,
            publisher,
            store,
            web,
            stats: dec_stats,
        } = self;
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || -> anyhow::Result<()> {
        use std::io::Write;
        let mut results = std::io::BufWriter::new(std::fs::File::create(dec_dir.join("results.jsonl"))?);
        let mut latents: Vec<f32> = Vec::new();
        let mut fd_history = Vec::new();
        let mut generator_running = true;
        for a in ana_rx.iter() {
            if a.index != usize::MAX {
                fd_history.push(a.fd_mm);
            }
            let mut volume_result = serde_json::json!({
                "volIdx": a.index,
                "fd_mm": a.fd_mm,
                "motion": {"trans_mm": a.motion.trans_mm, "rot_deg": a.motion.rot_deg},
            });
            for (trial, pattern) in a.patterns {
                let started = Instant::now();
                let latent = bundle_dec.decode(&pattern);
                let attributes: Vec<(String, f64)> = boundaries.iter().map(|b| (b.name.clone(), attribute_score(&latent, &b.normal))).collect();
                let feedback = attributes.iter().find(|(n, _)| *n == feedback_attr).map(|(_, s)| (s / feedback_scale).clamp(-1.0, 1.0));
                let decode_ms = started.elapsed().as_secs_f64() * 1e3;
                let trial_json = serde_json::json!({
                    "volIdx": a.index,
                    "trial": trial.as_ref().map(|t| t.index),
                    "stim_id": trial.as_ref().and_then(|t| t.stim_id),
                    "onset_secs": trial.as_ref().map(|t| t.onset_secs),
                    "attributes": attributes.iter().map(|(n, s)| (n.clone(), *s)).collect::<std::collections::BTreeMap<_, _>>(),
                    "feedback": feedback,
                    "latent": latent,
                    "latency_ms": a.arrived_at.elapsed().as_secs_f64() * 1e3,
                });
                writeln!(results, "{trial_json}")?;
                publisher.publish("trial", trial_json.clone());
                if let Some(web) = &web {
                    let mut listed = trial_json.clone();
                    if let Some(fields) = listed.as_object_mut() {
                        fields.remove("latent");
                    }
                    web.add_trial(listed);
                }
                volume_result["decoded"] = serde_json::json!({"trial": trial.as_ref().map(|t| t.index), "attributes": trial_json["attributes"], "feedback": feedback});
                latents.extend_from_slice(&latent);
                if let Ok(mut s) = dec_stats.lock() {
                    s.patterns_decoded += 1;
                    s.decode_ms.push(decode_ms);
                    if feedback.is_some() {
                        s.last_feedback = feedback;
                    }
                }
                let msg = Decoded { volume_index: a.index, arrived_at: a.arrived_at, trial, latent, attributes, feedback, fd_history: fd_history.clone() };
                if generator_running && dec_tx.send(msg).is_err() {
                    tracing::error!("the generator has stopped: decoded latents are still recorded, served and published");
                    generator_running = false;
                }
            }
            if a.index != usize::MAX {
                publisher.publish("volume", volume_result.clone());
                if let Ok(mut s) = store.lock() {
                    s.insert(a.index, volume_result);
                }
            }
        }
        results.flush()?;
        let n = latents.len() / bundle_dec.latent_size().max(1);
        crate::npy::write_f32(&dec_dir.join("decoded_latents.npy"), &[n, bundle_dec.latent_size()], &latents)?;
        Ok(())
            })
    }
}
