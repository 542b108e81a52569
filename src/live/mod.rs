//! The live pipeline: ingest -> preprocess -> decode -> generate -> display, one thread per stage (one file per
//! stage here), joined by bounded channels. Ingest, preprocess, decode and the recorder never drop anything (they
//! block); the generator draws the newest latent when it falls behind and counts what it skipped; the display shows
//! the newest frame. The run ends when the receiver ends (run complete, idle timeout), on Ctrl-C, or when the window
//! is closed: each stage sees its input channel close, finishes, and the session is finalised. A stage that fails
//! takes only the stages after it down: the intake keeps receiving and recording, decoding goes on without the
//! generator (which first tolerates a few failed frames), and the failures are in the summary. A generator whose
//! GPU fails moves to the CPU and goes on drawing. The browser console ([`crate::web`]) is handed frames and trials
//! the same way, never holding a stage up.

mod console;
mod display_loop;
pub mod inputs;
mod messages;
pub mod onsets;
mod stage_decode;
mod stage_generate;
mod stage_preprocess;
pub mod stats;
mod stimulus_cache;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;

pub use self::inputs::LiveInputs;
pub use self::stats::{LiveStats, GENERATOR_FAILURES_IN_A_ROW};
use crate::config::DisplayMode;
use crate::display::{Frame, Sink};
use crate::feedback::{Publisher, ResultsServer, ResultsStore};
use crate::ingest::receiver::Receiver;
use crate::volume::Volume;
use console::LiveConsole;
use display_loop::{display_loop, headless_sink};
use messages::{Analysed, Decoded};
use onsets::OnsetSubscriber;
use stage_decode::DecodeStage;
use stage_generate::GenerateStage;
use stage_preprocess::PreprocessStage;

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
        generator,
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

    if let Ok(mut s) = stats.lock() {
        s.generator = generator.describe();
    }
    let console = LiveConsole::start(&config, &stats, &session_dir, bundle.tr_secs);
    let web = console.as_ref().map(LiveConsole::feed);

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

    let preprocess = PreprocessStage {
        bundle: bundle.clone(),
        schedule,
        onsets: config
            .onsets
            .as_deref()
            .map(OnsetSubscriber::connect)
            .transpose()?,
        mode: config.mode,
        sliding_volumes: config.sliding_volumes,
        stats: stats.clone(),
    }
    .spawn(vol_rx, ana_tx)?;
    let frames_dir = session_dir.join("frames");
    std::fs::create_dir_all(&frames_dir)?;
    let generate = GenerateStage {
        generator,
        stimuli,
        latent_size: bundle.latent_size(),
        tr_secs: bundle.tr_secs,
        frames_dir,
        web: web.clone(),
        stats: stats.clone(),
    };
    let decode = DecodeStage {
        bundle,
        boundaries,
        feedback_attribute: config.feedback_attribute.clone(),
        feedback_scale: config.feedback_scale,
        session_dir: session_dir.clone(),
        publisher,
        store,
        web,
        stats: stats.clone(),
    }
    .spawn(ana_rx, dec_tx)?;
    let generate = generate.spawn(dec_rx, frame_tx)?;

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
    let written = std::fs::write(
        session_dir.join("live_summary.json"),
        serde_json::to_string_pretty(&s).unwrap_or_default(),
    );
    if let Some(console) = console {
        console.finish(&s);
    }
    written?;
    Ok((s, session_dir))
}
