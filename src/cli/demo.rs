//! `hyper-rt demo`: the whole product on a fresh machine with no files. It simulates a subject (a small head,
//! four training runs and a test run with repeated faces), trains a decoder on the training runs, streams the
//! test run over loopback ZeroMQ with the Pyneal Scanner protocol at TR pace (`--speed` to go faster) into the
//! live pipeline, shows the reconstructions beside the true stimuli (or writes them as PNG without a display),
//! and ends with the evaluation summary.

use std::path::PathBuf;

use anyhow::Context;
use hyper_rt::config::{Config, DisplayMode, SimulateConfig};
use hyper_rt::decode::metrics::{cosine, identification, latent_similarity};
use hyper_rt::decode::{self, Dataset, TrainProgress, TrainSettings};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::preprocess::trials::read_events;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Playback speed relative to the TR (1 = real time, as in the scanner)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Write frames as PNG instead of opening a window
    #[arg(long)]
    headless: bool,
    /// Random seed of the simulated subject
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the simulated dataset goes (default: a temporary folder)
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the session folder goes [session.root]
    #[arg(long)]
    session_root: Option<PathBuf>,
    /// Results server port of the live pipeline (0 = any free one) [live.results_port]
    #[arg(long)]
    results_port: Option<u16>,
    #[command(flatten)]
    web: super::live::WebFlags,
}

/// Responsive voxels of the demo's subject, and voxels its decoder selects.
const DEMO_VOXELS: usize = 1500;

/// The demo's subject: small enough to simulate and train in seconds on 2 cores (about 5 and 11 s), with enough
/// training trials (1000) for a 512-dimensional decoder to find the faces: offline, its decoder reaches a cosine of
/// about 0.38 and identifies all 8 test faces (with 300 trials it was at chance).
fn demo_subject(seed: u64) -> SimulateConfig {
    SimulateConfig {
        dims: [32, 32, 20],
        voxel_mm: 4.0,
        train_runs: 4,
        train_trials_per_run: 250,
        test_runs: 1,
        test_faces: 8,
        test_repeats: 4,
        responsive_voxels: DEMO_VOXELS,
        clusters: 6,
        snr: 8.0,
        seed,
        ..SimulateConfig::default()
    }
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be positive"
    );
    if let Some(root) = args.session_root {
        config.session.root = root;
    }
    if args.headless {
        config.live.display = DisplayMode::Headless;
    }
    if let Some(port) = args.results_port {
        config.live.results_port = port;
    }
    args.web.apply(&mut config);
    config.validate(std::path::Path::new("<command line>"))?;
    let data_dir = args.data.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hyper-rt-demo-{}", std::process::id()))
    });
    let sim = demo_subject(args.seed);
    println!("hyper-rt demo");
    println!("1/4 simulating a subject into {}", data_dir.display());
    let total = hyper_rt::simulate::total_volumes(&sim) as u64;
    let bar = indicatif::ProgressBar::new(total);
    hyper_rt::simulate::write_dataset(&sim, &data_dir, &|n| bar.inc(n))?;
    bar.finish_and_clear();

    println!("2/4 training the decoder on the training runs");
    let data = Dataset::open(&data_dir, None)?;
    let settings = TrainSettings {
        voxels: DEMO_VOXELS,
        ..TrainSettings::default()
    };
    let bar = indicatif::ProgressBar::new(0);
    let bundle = decode::train(&data, &settings, &|p| match p {
        TrainProgress::Run { done, total } | TrainProgress::Fold { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    println!(
        "    {} trials, {} voxels, penalty {:.2e}",
        bundle.info.trials,
        bundle.voxels.len(),
        bundle.penalty
    );

    let test_run = data
        .runs
        .last()
        .context("the simulated dataset has no runs")?
        .clone();
    let img = NiftiImage::read(&test_run.bold)?;
    let tr = img.tr_secs.unwrap_or(1.5);
    config.live.events = Some(test_run.events.clone());
    config.live.stimuli = Some(data_dir.join("stimuli").join("latents.npy"));
    let inputs = hyper_rt::live::LiveInputs::load(&config.live, Some(bundle))?;
    println!(
        "3/4 streaming the test run ({} volumes, {} s at {}x) over loopback ZeroMQ into the live pipeline",
        img.volumes,
        (img.volumes as f64 * tr / args.speed).round(),
        args.speed
    );
    let receiver = super::bind_receiver(
        &config,
        &config.session.root,
        "tcp://127.0.0.1:*",
        Some(img.volumes),
        30.0,
        false,
    )?;
    let sender_thread = super::live::stream_run_in_background(
        super::live::RunStream::nifti(img),
        receiver.endpoint().to_string(),
        "hello from pynealScanner_sim",
        args.speed,
        true,
    );
    let (stats, session) = hyper_rt::live::run(receiver, inputs, super::interrupt_flag())?;
    sender_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the scanner simulator panicked"))??;
    super::live::report(&stats, &session)?;

    println!("4/4 evaluation of the live decoding (test faces, repetitions averaged)");
    let trials = read_events(&test_run.events, None)?;
    let results = std::fs::read_to_string(session.join("results.jsonl"))?;
    let mut by_stim: std::collections::BTreeMap<usize, Vec<Vec<f32>>> = Default::default();
    for line in results.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(stim), Some(latent)) = (v["stim_id"].as_u64(), v["latent"].as_array()) {
            by_stim.entry(stim as usize).or_default().push(
                latent
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                    .collect(),
            );
        }
    }
    let (mut preds, mut truths) = (Vec::new(), Vec::new());
    for (stim, latents) in &by_stim {
        let n = latents.len() as f32;
        preds.push(
            (0..data.latent_size)
                .map(|i| latents.iter().map(|l| l[i]).sum::<f32>() / n)
                .collect::<Vec<f32>>(),
        );
        truths.push(data.latent(*stim).to_vec());
    }
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (pair, nway) = identification(&preds, &truths);
    println!(
        "    trials decoded live   {} of {}",
        by_stim.values().map(Vec::len).sum::<usize>(),
        trials.len()
    );
    println!(
        "    latent similarity     {:.3} (all-zero prediction 0.5, random latent about 0.33)",
        mean(
            preds
                .iter()
                .zip(&truths)
                .map(|(p, t)| latent_similarity(p, t))
                .collect()
        )
    );
    println!(
        "    cosine similarity     {:.3} (chance 0)",
        mean(
            preds
                .iter()
                .zip(&truths)
                .map(|(p, t)| cosine(p, t))
                .collect()
        )
    );
    println!(
        "    identification        pairwise {:.2} (chance 0.50), {}-way {:.2} (chance {:.2})",
        pair,
        preds.len(),
        nway,
        1.0 / preds.len().max(1) as f64
    );
    println!("    the built-in generator has random weights: the pictures are abstract textures, not faces");
    println!("frames and results: {}", session.display());
    Ok(())
}
