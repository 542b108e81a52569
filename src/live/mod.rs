//! The live pipeline: ingest -> preprocess -> decode -> generate -> sinks, one thread per stage, joined by
//! bounded channels (DESIGN.md). Ingest, preprocess, decode and the recorder never drop anything (they block);
//! the generator draws the newest latent when it falls behind and counts what it skipped; the display shows the
//! newest frame. The run ends when the receiver ends (run complete, idle timeout), on Ctrl-C, or when the window
//! is closed: each stage sees its input channel close, finishes, and the session is finalised. A stage that fails
//! takes only the stages after it down: the intake keeps receiving and recording, decoding goes on without the
//! generator (which first tolerates a few failed frames), and the failures are in the summary. A generator whose
//! GPU fails moves to the CPU and goes on drawing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver as Rx, RecvTimeoutError};

use crate::config::{DisplayMode, LiveConfig, LiveMode};
use crate::decode::bundle::DecoderBundle;
use crate::decode::eval::{read_boundary, ATTRIBUTES};
use crate::decode::metrics::attribute_score;
use crate::display::{Frame, Overlay, Sink, View};
use crate::feedback::{Publisher, ResultsServer, ResultsStore};
use crate::generate::cpu::CpuAlgorithm;
use crate::generate::{rgb8_from_0rgb, Backend, GenerateError};
use crate::ingest::receiver::Receiver;
use crate::preprocess::trials::{ScheduledTrial, TrialAverager};
use crate::preprocess::Preprocessor;
use crate::spatial::Rigid;
use crate::stats::Percentiles;
use crate::volume::Volume;

/// Everything a live run needs besides the bound receiver.
pub struct LiveInputs {
    pub config: LiveConfig,
    pub bundle: DecoderBundle,
    pub schedule: Vec<ScheduledTrial>,
    /// Stimulus latents `[N, latent]` for showing the true stimulus, when known.
    pub stimuli: Option<Vec<f32>>,
    pub generator: Backend,
    /// `(name, unit normal)` of the attribute directions.
    pub boundaries: Vec<(String, Vec<f64>)>,
}

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

/// Draws `latents` as display pixels. When the GPU fails (device lost, its memory taken by another process), the
/// generator moves to the CPU for the rest of the run, said once in the log and in `stats`, and the frame is drawn
/// there: a GPU failure costs speed, not frames. A failure on the CPU is returned.
fn draw_display(
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

/// Memory the cache of true-stimulus images may take (64 images at 1024 x 1024).
const STIMULUS_CACHE_BYTES: usize = 256 << 20;

/// A true-stimulus image for the display, and whether it came from the cache.
struct StimulusImage {
    pixels: Vec<u32>,
    cached: bool,
}

/// The true-stimulus images already drawn, by stimulus id, so that a repeated stimulus (test sets repeat each
/// face many times) costs no second pass of the generator; the oldest is dropped when the cache is full.
struct StimulusCache {
    images: std::collections::HashMap<usize, Vec<u32>>,
    oldest_first: std::collections::VecDeque<usize>,
    capacity: usize,
}

impl StimulusCache {
    fn new(side: usize) -> StimulusCache {
        let capacity =
            (STIMULUS_CACHE_BYTES / (side * side * std::mem::size_of::<u32>()).max(1)).max(1);
        StimulusCache {
            images: Default::default(),
            oldest_first: Default::default(),
            capacity,
        }
    }

    /// The image of stimulus `id`, drawn by `draw` unless cached.
    fn get_or_draw(
        &mut self,
        id: usize,
        draw: impl FnOnce() -> anyhow::Result<Vec<u32>>,
    ) -> anyhow::Result<StimulusImage> {
        if let Some(image) = self.images.get(&id) {
            return Ok(StimulusImage {
                pixels: image.clone(),
                cached: true,
            });
        }
        let image = draw()?;
        if self.oldest_first.len() >= self.capacity {
            if let Some(oldest) = self.oldest_first.pop_front() {
                self.images.remove(&oldest);
            }
        }
        self.oldest_first.push_back(id);
        self.images.insert(id, image.clone());
        Ok(StimulusImage {
            pixels: image,
            cached: false,
        })
    }
}

struct Analysed {
    index: usize,
    arrived_at: Instant,
    motion: Rigid,
    fd_mm: f64,
    patterns: Vec<(Option<ScheduledTrial>, Vec<f32>)>,
}

struct Decoded {
    volume_index: usize,
    arrived_at: Instant,
    trial: Option<ScheduledTrial>,
    latent: Vec<f32>,
    attributes: Vec<(String, f64)>,
    feedback: Option<f64>,
    fd_history: Vec<f64>,
}

/// Runs the pipeline until the receiver ends, `stop` is set, or the window closes; returns the statistics and
/// the session folder.
pub fn run(
    mut receiver: Receiver,
    inputs: LiveInputs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(LiveStats, PathBuf)> {
    let LiveInputs {
        config,
        bundle,
        schedule,
        stimuli,
        mut generator,
        boundaries,
    } = inputs;
    let session_dir = receiver.session_dir().to_path_buf();
    let stats = Arc::new(Mutex::new(LiveStats::default()));
    let store: ResultsStore = Arc::new(Mutex::new(Default::default()));
    let server = ResultsServer::start(&config.results_host, config.results_port, store.clone())?;
    let publisher = Publisher::start(&config.publish)
        .map_err(|e| anyhow::anyhow!("ZeroMQ PUB on {}: {e}", config.publish))?;
    tracing::info!(
        "results server on {}:{}, PUB stream on {}",
        config.results_host,
        server.port,
        publisher.endpoint
    );
    println!(
        "results server {}:{}  publish {}",
        config.results_host, server.port, publisher.endpoint
    );

    let (vol_tx, vol_rx) = bounded::<Volume>(8);
    let (ana_tx, ana_rx) = bounded::<Analysed>(8);
    let (dec_tx, dec_rx) = bounded::<Decoded>(8);
    let (frame_tx, frame_rx) = bounded::<(Frame, Instant)>(2);

    // ingest
    let ingest_stop = stop.clone();
    let intake_over = Arc::new(AtomicBool::new(false));
    let ingest_over = intake_over.clone();
    let compress = true;
    let ingest = std::thread::Builder::new().name("ingest".into()).spawn(
        move || -> anyhow::Result<&'static str> {
            let received = receiver.run(Some(&vol_tx), &ingest_stop);
            drop(vol_tx);
            ingest_over.store(true, Ordering::SeqCst);
            let reason = received?;
            let summary = receiver.finish(reason, compress)?;
            tracing::info!(
                "intake: {} received, {} rejected, {} missing",
                summary.received,
                summary.rejected,
                summary.missing
            );
            Ok(reason.as_str())
        },
    )?;

    // preprocess
    let pre_stats = stats.clone();
    let (mode, sliding) = (config.mode, config.sliding_volumes);
    let bundle_pre = bundle.clone();
    let onsets = if config.onsets.is_empty() {
        None
    } else {
        Some(OnsetSubscriber::connect(&config.onsets)?)
    };
    let preprocess = std::thread::Builder::new()
        .name("preprocess".into())
        .spawn(move || -> anyhow::Result<()> {
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
        })?;

    // decode (+ results store, PUB stream, recording of results and latents)
    let dec_stats = stats.clone();
    let dec_dir = session_dir.clone();
    let (feedback_attr, feedback_scale) =
        (config.feedback_attribute.clone(), config.feedback_scale);
    let bundle_dec = bundle.clone();
    let decode = std::thread::Builder::new().name("decode".into()).spawn(move || -> anyhow::Result<()> {
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
                let attributes: Vec<(String, f64)> = boundaries.iter().map(|(n, b)| (n.clone(), attribute_score(&latent, b))).collect();
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
                volume_result["decoded"] = serde_json::json!({"trial": trial.as_ref().map(|t| t.index), "attributes": trial_json["attributes"], "feedback": feedback});
                latents.extend_from_slice(&latent);
                if let Ok(mut s) = dec_stats.lock() {
                    s.patterns_decoded += 1;
                    s.decode_ms.push(decode_ms);
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
    })?;

    // generate: the newest latent, counting the skipped ones
    let gen_stats = stats.clone();
    let frames_dir = session_dir.join("frames");
    std::fs::create_dir_all(&frames_dir)?;
    let label = generator.model().label.clone();
    let latent_size = bundle.latent_size();
    let tr_secs = bundle.tr_secs;
    let generate = std::thread::Builder::new().name("generate".into()).spawn(
        move || -> anyhow::Result<()> {
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
                    let png =
                        frames_dir.join(format!("recon_vol{:05}.png", d.volume_index.min(99_999)));
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
                if frame_tx.send((frame, d.arrived_at)).is_err() {
                    break;
                }
            }
            Ok(())
        },
    )?;

    // display on this thread
    let mut sink = match config.display {
        DisplayMode::Window => match Sink::window("hyper-rt", config.view) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no window ({e}): writing frames as PNG instead");
                Some(headless_sink(&session_dir)?)
            }
        },
        DisplayMode::Headless => Some(headless_sink(&session_dir)?),
        DisplayMode::None => None,
    };
    display_loop(
        &mut sink,
        &frame_rx,
        config.view,
        &stats,
        &stop,
        &intake_over,
    );

    // shutdown: the stages end as their inputs close; a failed stage is recorded, and the others still finish
    let mut failures = Vec::new();
    let mut joined = |name: &str, result: std::thread::Result<anyhow::Result<()>>| match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!("{name} stopped: {}", crate::error_chain(&e));
            failures.push(format!("{name}: {}", crate::error_chain(&e)));
        }
        Err(_) => failures.push(format!("{name}: the thread panicked")),
    };
    let mut reason = "failed";
    joined("ingest", ingest.join().map(|r| r.map(|end| reason = end)));
    joined("preprocess", preprocess.join());
    joined("decode", decode.join());
    joined("generate", generate.join());
    // frames still queued when the generator finished
    display_loop(
        &mut sink,
        &frame_rx,
        config.view,
        &stats,
        &AtomicBool::new(true),
        &AtomicBool::new(true),
    );
    server.stop();
    let mut s = stats.lock().map(|s| s.clone()).unwrap_or_default();
    s.end_reason = reason.to_string();
    s.stage_failures = failures;
    std::fs::write(
        session_dir.join("live_summary.json"),
        serde_json::to_string_pretty(&s).unwrap_or_default(),
    )?;
    Ok((s, session_dir))
}

/// Stimulus onsets arriving live on a ZeroMQ SUB socket as JSON `{"onset": seconds from the run's first volume,
/// "stim_id": n, "duration": s, "trial_type": "..."}` (only `onset` is required). Malformed messages are logged,
/// counted and skipped.
pub struct OnsetSubscriber {
    _context: zmq::Context,
    socket: zmq::Socket,
    pub malformed: std::cell::Cell<usize>,
}

impl OnsetSubscriber {
    pub fn connect(endpoint: &str) -> anyhow::Result<OnsetSubscriber> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::SUB)?;
        socket.set_subscribe(b"")?;
        socket
            .connect(endpoint)
            .map_err(|e| anyhow::anyhow!("onsets: connecting to {endpoint}: {e}"))?;
        Ok(OnsetSubscriber {
            _context: context,
            socket,
            malformed: std::cell::Cell::new(0),
        })
    }

    /// Every onset that has arrived, without waiting.
    pub fn drain(&self, next_index: &mut usize) -> Vec<ScheduledTrial> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.socket.recv_bytes(zmq::DONTWAIT) {
            let parsed: Option<ScheduledTrial> =
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        let onset = v
                            .get("onset")?
                            .as_f64()
                            .filter(|o| o.is_finite() && *o >= 0.0)?;
                        Some(ScheduledTrial {
                            index: 0,
                            onset_secs: onset,
                            duration_secs: v
                                .get("duration")
                                .and_then(|d| d.as_f64())
                                .unwrap_or(0.0),
                            trial_type: v
                                .get("trial_type")
                                .and_then(|t| t.as_str())
                                .unwrap_or("live")
                                .to_string(),
                            stim_id: v
                                .get("stim_id")
                                .and_then(|s| s.as_u64())
                                .map(|s| s as usize),
                        })
                    });
            match parsed {
                Some(mut trial) => {
                    trial.index = *next_index;
                    *next_index += 1;
                    out.push(trial);
                }
                None => {
                    self.malformed.set(self.malformed.get() + 1);
                    tracing::warn!(
                        "onsets: ignored a message that is not {{\"onset\": seconds, ...}}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
        out
    }
}

fn headless_sink(session_dir: &Path) -> std::io::Result<Sink> {
    let dir = session_dir.join("display");
    std::fs::create_dir_all(&dir)?;
    Ok(Sink::Headless(dir))
}

/// Shows frames (newest first) until `stop`, or the frame channel closes once the intake is over (a window whose
/// generator stopped early stays open and responsive while the run goes on); a closed window sets `stop`.
fn display_loop(
    sink: &mut Option<Sink>,
    frames: &Rx<(Frame, Instant)>,
    view: View,
    stats: &Arc<Mutex<LiveStats>>,
    stop: &AtomicBool,
    intake_over: &AtomicBool,
) {
    loop {
        let first = match frames.recv_timeout(std::time::Duration::from_millis(30)) {
            Ok(f) => f,
            Err(no_frame) => {
                // keep the window responsive; end once nothing more can come
                if let Some(s) = sink.as_mut() {
                    if !s.idle() {
                        tracing::info!("window closed: ending the run");
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                let stopping = stop.load(Ordering::SeqCst);
                match no_frame {
                    RecvTimeoutError::Timeout if stopping && frames.is_empty() => return,
                    RecvTimeoutError::Disconnected
                        if stopping || intake_over.load(Ordering::SeqCst) =>
                    {
                        return
                    }
                    // the generator stopped early: the run goes on
                    RecvTimeoutError::Disconnected => {
                        std::thread::sleep(std::time::Duration::from_millis(30))
                    }
                    RecvTimeoutError::Timeout => {}
                }
                continue;
            }
        };
        let mut newest = first;
        while let Ok(f) = frames.try_recv() {
            newest = f;
        }
        let (frame, arrived_at) = newest;
        let shown = match sink.as_mut() {
            Some(s) => s.show(&frame, view).unwrap_or_else(|e| {
                tracing::warn!("display: {e}");
                true
            }),
            None => true,
        };
        if let Ok(mut s) = stats.lock() {
            s.frames_shown += 1;
            s.end_to_end_ms
                .push(arrived_at.elapsed().as_secs_f64() * 1e3);
        }
        if !shown {
            tracing::info!("window closed: ending the run");
            stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Loads the InterFaceGAN boundaries that exist in `dir` (missing or misshapen ones are skipped with a warning:
/// the live session runs without them).
pub fn load_boundaries(dir: &Path, latent_size: usize) -> Vec<(String, Vec<f64>)> {
    ATTRIBUTES
        .iter()
        .filter_map(|a| match read_boundary(dir, a, latent_size) {
            Ok(b) => Some((a.to_string(), b)),
            Err(e) => {
                tracing::warn!("attribute {a} not shown: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::backend::TestGpu;
    use crate::generate::cpu::CpuGenerator;
    use crate::generate::model::PgganModel;

    #[test]
    fn a_gpu_that_fails_mid_run_hands_over_to_the_cpu_without_losing_the_frame() {
        let model = Arc::new(PgganModel::builtin_random());
        let mut reference = Backend::Cpu(CpuGenerator::new(model.clone(), CpuAlgorithm::Winograd));
        let mut generator = TestGpu::boxed(model.clone(), 2, 0.0);
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

    #[test]
    fn a_repeated_stimulus_is_drawn_once_and_the_oldest_goes_when_the_cache_is_full() {
        let mut cache = StimulusCache {
            images: Default::default(),
            oldest_first: Default::default(),
            capacity: 2,
        };
        let draws = std::cell::Cell::new(0);
        let get = |cache: &mut StimulusCache, id: usize| {
            cache
                .get_or_draw(id, || {
                    draws.set(draws.get() + 1);
                    Ok(vec![id as u32; 4])
                })
                .map(|image| (image.pixels[0], image.cached))
        };
        assert_eq!(get(&mut cache, 7).unwrap(), (7, false));
        assert_eq!(get(&mut cache, 7).unwrap(), (7, true));
        assert_eq!(get(&mut cache, 8).unwrap(), (8, false));
        assert_eq!(get(&mut cache, 9).unwrap(), (9, false)); // full: 7 goes
        assert_eq!(get(&mut cache, 8).unwrap(), (8, true));
        assert_eq!(get(&mut cache, 7).unwrap(), (7, false));
        assert_eq!(draws.get(), 4);
        // a failed draw is an error and caches nothing
        assert!(cache
            .get_or_draw(3, || anyhow::bail!("the GPU fell over"))
            .is_err());
        assert!(!cache.images.contains_key(&3));
        // the default holds 64 images of 1024 x 1024, and at least one of any size
        assert_eq!(StimulusCache::new(1024).capacity, 64);
        assert_eq!(StimulusCache::new(1 << 14).capacity, 1);
    }
}
