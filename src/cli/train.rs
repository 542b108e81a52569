//! `hyper-rt train`: fit the decoder on a BIDS dataset's training trials and write the bundle.

use std::path::PathBuf;

use hyper_rt::config::Config;
use hyper_rt::decode::{self, ridge, Dataset, TrainProgress, TrainSettings};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// BIDS dataset (sub-*/func/*_bold.nii.gz with _events.tsv, stimuli/latents.npy)
    #[arg(long)]
    data: PathBuf,
    /// Subject label (default: the only one)
    #[arg(long)]
    subject: Option<String>,
    /// Runs to train on (default: every run with trials of type `train`)
    #[arg(long, value_delimiter = ',')]
    runs: Vec<usize>,
    /// Output decoder bundle (.safetensors)
    #[arg(long)]
    out: PathBuf,
    /// Voxels to select (HYPER: 4096)
    #[arg(long, default_value_t = 4096)]
    voxels: usize,
    /// Selection rule: encoding (default; works in continuous designs) or mean-response (HYPER's, needs rest
    /// periods to show a visual response)
    #[arg(long, value_enum, default_value = "encoding")]
    selection: decode::Selection,
    /// Cross-validation folds
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Penalties to try: a log grid of this many values from 1 to 1e6
    #[arg(long, default_value_t = 20)]
    penalties: usize,
    /// Average repeated presentations of the same stimulus before fitting
    #[arg(long)]
    average_repeats: bool,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let data = Dataset::open(&args.data, args.subject.as_deref())?;
    let settings = TrainSettings {
        voxels: args.voxels,
        selection: args.selection,
        folds: args.folds,
        penalties: ridge::log_grid(1.0, 1e6, args.penalties.max(1)),
        runs: args.runs.clone(),
        average_repeats: args.average_repeats,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let bundle = decode::train(&data, &settings, &|p| match p {
        TrainProgress::Run { done, total } => {
            bar.set_message("preprocessing runs");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        TrainProgress::Fold { done, total } => {
            bar.set_message("ridge cross-validation");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    bundle.save(&args.out)?;
    let best = bundle
        .cv_curve
        .iter()
        .map(|c| c.1)
        .fold(f64::INFINITY, f64::min);
    println!("decoder            {}", args.out.display());
    println!(
        "subject            sub-{} runs {:?}",
        bundle.info.subject, bundle.info.runs
    );
    println!("training trials    {}", bundle.info.trials);
    println!(
        "voxels             {} ({})",
        bundle.voxels.len(),
        bundle.info.selection
    );
    println!(
        "penalty            {:.3e} (best CV MSE {best:.5} over {} penalties, {} folds)",
        bundle.penalty,
        bundle.cv_curve.len(),
        args.folds
    );
    println!("latent size        {}", bundle.latent_size());
    println!(
        "time               {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
