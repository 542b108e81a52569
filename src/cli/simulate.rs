//! `hyper-rt simulate`: a synthetic subject as a BIDS dataset, or streamed live to a receiver.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::{Config, SimulateConfig};
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, WireVolume};
use hyper_rt::simulate::{self, Subject};
use hyper_rt::volume::Dtype;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder for the BIDS dataset (not with --stream)
    #[arg(long, required_unless_present = "stream")]
    out: Option<PathBuf>,
    /// Random seed [config: simulate.seed]
    #[arg(long)]
    seed: Option<u64>,
    /// The SNR knob [config: simulate.snr]
    #[arg(long)]
    snr: Option<f64>,
    /// Start from a preset: `hyper` (the config defaults: 6 training runs of 175 faces, 3 test runs) or `small`
    /// (2 short training runs, 1 test run, 32 x 32 x 20 voxels: seconds to make, for tests and rehearsals)
    #[arg(long, default_value = "hyper")]
    preset: Preset,
    /// No head motion (for checks that need the brain to stay put)
    #[arg(long)]
    no_motion: bool,
    /// Stream the runs live to a receiver over the Pyneal Scanner protocol instead of writing files
    #[arg(long, value_name = "ENDPOINT")]
    stream: Option<String>,
    /// With --stream: which runs (1-based), e.g. 7,8,9; default: all
    #[arg(long, value_delimiter = ',')]
    runs: Vec<usize>,
    /// With --stream: playback speed relative to the TR (1 = real time)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Preset {
    Hyper,
    Small,
}

/// The small preset: seconds to generate, still with both sessions, motion and the full noise model.
pub fn small_preset(mut c: SimulateConfig) -> SimulateConfig {
    c.dims = [32, 32, 20];
    c.voxel_mm = 4.0;
    c.train_runs = 2;
    c.train_trials_per_run = 30;
    c.test_runs = 1;
    c.test_faces = 6;
    c.test_repeats = 4;
    c.responsive_voxels = 600;
    c.clusters = 6;
    c
}

pub fn run(args: Args, config: Config) -> anyhow::Result<()> {
    let mut c = match args.preset {
        Preset::Hyper => config.simulate.clone(),
        Preset::Small => small_preset(config.simulate.clone()),
    };
    if let Some(seed) = args.seed {
        c.seed = seed;
    }
    if let Some(snr) = args.snr {
        c.snr = snr;
    }
    if args.no_motion {
        c.max_motion_mm = 0.0;
        c.max_motion_deg = 0.0;
        c.session_offset_mm = 0.0;
        c.session_offset_deg = 0.0;
        c.jerk_probability = 0.0;
    }
    c.validate()
        .map_err(|(key, problem)| anyhow::anyhow!("invalid setting {key}: {problem}"))?;
    if let Some(endpoint) = &args.stream {
        return stream(&c, endpoint, &args.runs, args.speed);
    }
    let out = args.out.context("--out is required without --stream")?;
    let total = simulate::total_volumes(&c) as u64;
    println!(
        "simulating sub-{} (seed {}): {} volumes of {:?} into {}",
        c.subject,
        c.seed,
        total,
        c.dims,
        out.display()
    );
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulating [{bar:30}] {pos}/{len} volumes ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let summary = simulate::write_dataset(&c, &out, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    println!(
        "wrote {} runs ({} volumes), {} stimulus latents, {} responsive voxels to {} in {:.1} s",
        summary.runs,
        summary.volumes,
        summary.stimuli,
        summary.responsive_voxels,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Streams runs at TR pace (or `speed` times faster), one handshake per run, as Pyneal Scanner would.
fn stream(c: &SimulateConfig, endpoint: &str, runs: &[usize], speed: f64) -> anyhow::Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        bail!("--speed must be a positive number, got {speed}");
    }
    let subject = Subject::new(c)?;
    let plans = subject.runs();
    let chosen: Vec<_> = if runs.is_empty() {
        plans.iter().collect()
    } else {
        runs.iter()
            .map(|&r| {
                plans
                    .iter()
                    .find(|p| p.number == r)
                    .with_context(|| format!("--runs: there is no run {r} (1 to {})", plans.len()))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let defaults = hyper_rt::config::SenderConfig::default();
    for plan in chosen {
        println!(
            "streaming run {} ({} volumes, {:?}) to {endpoint}",
            plan.number, plan.volumes, plan.session
        );
        let scanner = ScannerSender::connect(endpoint, &defaults.handshake, 0.0)?;
        let anat = &subject.anatomy;
        let wire = subject.run_volumes(plan).enumerate().map(|(t, v)| {
            // the values a file written by `simulate` gives when read with its scaling (as `send` sends them)
            let values: Vec<u8> = match c.output {
                hyper_rt::config::SimOutput::Int16 => v
                    .iter()
                    .flat_map(|x| {
                        (((x / simulate::INT16_SLOPE).round() as i16) as f64
                            * simulate::INT16_SLOPE as f64)
                            .to_le_bytes()
                    })
                    .collect(),
                hyper_rt::config::SimOutput::Float32 => {
                    v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect()
                }
            };
            WireVolume::from_x_fastest(
                t,
                Dtype::Float64,
                anat.dims,
                anat.mm_from_voxel,
                c.tr_secs,
                &values,
            )
        });
        let bar = indicatif::ProgressBar::new(plan.volumes as u64);
        let report = sender::stream(
            &scanner,
            wire,
            Pacing {
                tr_secs: c.tr_secs,
                speed,
            },
            |_, _| bar.inc(1),
        )?;
        bar.finish_and_clear();
        println!(
            "run {}: sent {} volumes{}",
            plan.number,
            report.sent,
            if report.stopped_by_receiver {
                ", receiver said STOP"
            } else {
                ""
            }
        );
    }
    Ok(())
}
