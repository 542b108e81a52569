//! The generate stage: the newest decoded latent drawn as an image (the latents it fell behind on are counted, not
//! drawn), beside the true stimulus when it is known (from the [`StimulusCache`]), saved to the session's `frames/`
//! and sent to the display with its overlay (and offered to the browser console). A GPU that fails moves the
//! generator to the CPU; three failed frames in a row (a full disk) stop this stage alone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::messages::Decoded;
use super::stats::{LiveStats, GENERATOR_FAILURES_IN_A_ROW};
use super::stimulus_cache::{StimulusCache, StimulusImage};
use crate::display::{Frame, Overlay};
use crate::generate::cpu::CpuAlgorithm;
use crate::generate::{rgb8_from_0rgb, Backend, GenerateError};
use crate::web::WebFeed;

/// What the generate stage works with.
pub(super) struct GenerateStage {
    pub generator: Backend,
    /// Stimulus latents `[N, latent]`, when the true stimulus can be shown.
    pub stimuli: Option<Vec<f32>>,
    pub latent_size: usize,
    pub tr_secs: f64,
    pub frames_dir: PathBuf,
    pub web: Option<WebFeed>,
    pub stats: Arc<Mutex<LiveStats>>,
}

impl GenerateStage {
    /// Starts the stage's thread: decoded trials in, frames out, until the decoded channel closes.
    pub(super) fn spawn(
        self,
        dec_rx: Receiver<Decoded>,
        frame_tx: Sender<(Frame, Instant)>,
    ) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
        let GenerateStage {
            mut generator,
            stimuli,
            latent_size,
            tr_secs,
            frames_dir,
            web,
            stats: gen_stats,
        } = self;
        let label = generator.model().label.clone();
        std::thread::Builder::new()
            .name("generate".into())
            .spawn(move || -> anyhow::Result<()> {
                let side = generator.model().resolution;
                let mut failures_in_a_row = 0;
                let mut stimulus_cache = StimulusCache::new(side);
                while let Ok(mut d) = dec_rx.recv() {
                    let mut skipped = 0;
                    while let Ok(newer) = dec_rx.try_recv() {
                        d = newer;
                        skipped += 1;
                    }
                    let started = Instant::now();
                    let mut draw = || -> anyhow::Result<(Vec<u32>, Option<StimulusImage>)> {
                        let reconstruction =
                            draw_display(&mut generator, &d.latent, d.volume_index, &gen_stats)?;
                        let png = frames_dir
                            .join(format!("recon_vol{:05}.png", d.volume_index.min(99_999)));
                        crate::generate::write_png(&png, &rgb8_from_0rgb(&reconstruction), side)?;
                        let stimulus = match (&stimuli, d.trial.as_ref().and_then(|t| t.stim_id)) {
                            (Some(z), Some(s)) if (s + 1) * latent_size <= z.len() => {
                                Some(stimulus_cache.get_or_draw(s, || {
                                    Ok(draw_display(
                                        &mut generator,
                                        &z[s * latent_size..(s + 1) * latent_size],
                                        d.volume_index,
                                        &gen_stats,
                                    )?)
                                })?)
                            }
                            _ => None,
                        };
                        Ok((reconstruction, stimulus))
                    };
                    let (reconstruction, stimulus) = match draw() {
                        Ok(images) => {
                            failures_in_a_row = 0;
                            images
                        }
                        Err(e) => {
                            failures_in_a_row += 1;
                            tracing::error!(
                                "generator, volume {}: {}",
                                d.volume_index,
                                crate::error_chain(&e)
                            );
                            if let Ok(mut s) = gen_stats.lock() {
                                s.generator_errors += 1;
                            }
                            if failures_in_a_row >= GENERATOR_FAILURES_IN_A_ROW {
                                return Err(e.context(format!(
                                "{failures_in_a_row} frames in a row failed, the last at volume {}",
                                d.volume_index
                            )));
                            }
                            continue;
                        }
                    };
                    let generate_ms = started.elapsed().as_secs_f64() * 1e3;
                    let on_cpu_since_gpu_failed = gen_stats
                        .lock()
                        .is_ok_and(|s| s.generator_fell_back_to_cpu.is_some());
                    let stimulus_was_cached = stimulus.as_ref().map(|s| s.cached);
                    let latency = vec![
                        (
                            "ARRIVAL-GEN".to_string(),
                            d.arrived_at.elapsed().as_secs_f64() * 1e3,
                        ),
                        ("GEN".to_string(), generate_ms),
                    ];
                    let frame = Frame {
                        volume_index: d.volume_index,
                        trial_index: d.trial.as_ref().map(|t| t.index),
                        side,
                        reconstruction,
                        stimulus: stimulus.map(|s| s.pixels),
                        overlay: Overlay {
                            volume: d.volume_index,
                            run_secs: d.volume_index as f64 * tr_secs,
                            fd_history_mm: d.fd_history,
                            latency_ms: latency,
                            attributes: d.attributes,
                            feedback: d.feedback,
                            status: match (skipped, on_cpu_since_gpu_failed) {
                                (0, false) => "OK".into(),
                                (0, true) => "GPU FAILED: DRAWING ON THE CPU".into(),
                                (_, false) => format!("GENERATOR BEHIND: SKIPPED {skipped}"),
                                (_, true) => {
                                    format!("GPU FAILED: DRAWING ON THE CPU, SKIPPED {skipped}")
                                }
                            },
                            label: label.clone(),
                        },
                    };
                    if let Ok(mut s) = gen_stats.lock() {
                        s.frames_drawn += 1;
                        s.latents_skipped_by_generator += skipped;
                        match stimulus_was_cached {
                            Some(true) => s.stimulus_images_reused += 1,
                            Some(false) => s.stimulus_images_drawn += 1,
                            None => {}
                        }
                        s.generate_ms.push(generate_ms);
                    }
                    if let Some(web) = &web {
                        web.offer_frame(&frame);
                    }
                    if frame_tx.send((frame, d.arrived_at)).is_err() {
                        break;
                    }
                }
                Ok(())
            })
    }
}

/// Draws `latents` as display pixels. When the GPU fails (device lost, its memory taken by another process), the
/// generator moves to the CPU for the rest of the run, said once in the log and in `stats`, and the frame is drawn
/// there: a GPU failure costs speed, not frames. A failure on the CPU is returned.
pub(super) fn draw_display(
    generator: &mut Backend,
    latents: &[f32],
    volume_index: usize,
    stats: &Mutex<LiveStats>,
) -> Result<Vec<u32>, GenerateError> {
    let (drawn, fell_back) =
        generator.draw_falling_back_to_cpu(CpuAlgorithm::Winograd, |g| g.generate_display(latents));
    if let Some((gpu, gpu_error)) = fell_back {
        let why = format!("{gpu} failed at volume {volume_index}: {gpu_error}");
        tracing::error!(
            "{why}; the generator draws on the CPU ({}) from now on",
            generator.describe()
        );
        if let Ok(mut s) = stats.lock() {
            s.generator_fell_back_to_cpu = Some(why);
        }
    }
    drawn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::backend::TestGpu;
    use crate::generate::cpu::CpuGenerator;
    use crate::generate::model::PgganModel;
    use std::sync::Arc;

    #[test]
    fn a_gpu_that_fails_mid_run_hands_over_to_the_cpu_without_losing_the_frame() {
        let model = Arc::new(PgganModel::builtin_random());
        let mut reference = Backend::Cpu(CpuGenerator::new(model.clone(), CpuAlgorithm::Winograd));
        let mut generator = TestGpu::boxed(model.clone(), CpuAlgorithm::Winograd, 2, 0.0);
        let stats = Mutex::new(LiveStats::default());
        let mut rng = crate::rng::Rng::new(5);
        for volume in 0..4 {
            let z: Vec<f32> = (0..model.latent_size)
                .map(|_| rng.normal() as f32)
                .collect();
            let drawn = draw_display(&mut generator, &z, volume, &stats).unwrap();
            assert!(
                drawn == reference.generate_display(&z).unwrap(),
                "volume {volume}: not the network's image"
            );
            let fell_back = stats.lock().unwrap().generator_fell_back_to_cpu.clone();
            match volume {
                0 | 1 => {
                    assert!(fell_back.is_none() && matches!(generator, Backend::Gpu(_)))
                }
                _ => {
                    assert!(
                        matches!(generator, Backend::Cpu(_)),
                        "volume {volume}: not on the CPU"
                    );
                    let why = fell_back.expect("the fall-back is recorded");
                    assert!(
                        why.starts_with("GPU 0, a test stand-in failed at volume 2: CUDA backend: launching conv3x3_f32_n64"),
                        "{why}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failure_on_the_cpu_is_returned() {
        let model = Arc::new(PgganModel::builtin_random());
        let mut generator = Backend::Cpu(CpuGenerator::new(model, CpuAlgorithm::Winograd));
        let stats = Mutex::new(LiveStats::default());
        let e = draw_display(&mut generator, &[0.5; 3], 7, &stats).unwrap_err();
        assert!(matches!(e, GenerateError::Latent { actual: 3, .. }), "{e}");
        assert!(stats.lock().unwrap().generator_fell_back_to_cpu.is_none());
    }
}
