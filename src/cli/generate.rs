//! `hyper-rt generate`: draw latents with the PGGAN generator and write PNGs (and optionally the float output).

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::generate::{self, cpu::CpuAlgorithm, Backend, DeviceChoice, Precision};
use hyper_rt::rng::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How the CPU computes 3 x 3 convolutions: winograd (fast) or direct (closest to the reference)
    #[arg(long, value_enum, default_value = "winograd")]
    algorithm: CpuAlgorithm,
    /// Where to run: auto (GPU if usable, else CPU with a warning), cpu, or cuda (failure is an error)
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// GPU convolution arithmetic: f32 (exact) or tf32 (tensor cores)
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    #[command(flatten)]
    gpu: super::GpuRunArgs,
    #[command(flatten)]
    which_gpu: super::GpuIndexArg,
    /// Converted checkpoint (.safetensors from scripts/convert_pggan.py). Without it: the built-in random-weight
    /// network, which draws abstract textures, not faces.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Latents to draw: .npy float32/float64 [N, latent_size]
    #[arg(long, conflicts_with = "seed")]
    latents: Option<PathBuf>,
    /// Draw --count latents from N(0, I) with this seed instead
    #[arg(long)]
    seed: Option<u64>,
    /// How many latents to draw with --seed
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// Output folder: image_0000.png, ... (and images.npy with --raw)
    #[arg(long)]
    out: PathBuf,
    /// Also write the float32 NCHW output as images.npy
    #[arg(long)]
    raw: bool,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let model = std::sync::Arc::new(generate::load_model(args.weights.as_deref())?);
    tracing::info!("{}", model.label);
    let latent = model.latent_size;
    let latents = match (&args.latents, args.seed) {
        (Some(path), _) => {
            let a = hyper_rt::npy::read_f32(path)?;
            let rows_ok = match a.shape.as_slice() {
                [_, n] => *n == latent,
                [n] => *n == latent,
                _ => false,
            };
            if !rows_ok {
                bail!(
                    "{}: latents have shape {:?}; this generator needs [N, {latent}]",
                    path.display(),
                    a.shape
                );
            }
            a.data
        }
        (None, Some(seed)) => {
            let mut rng = Rng::new(seed);
            (0..args.count * latent)
                .map(|_| rng.normal() as f32)
                .collect()
        }
        (None, None) => bail!("give --latents FILE.npy or --seed N"),
    };
    let n = latents.len() / latent;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut generator = Backend::open(
        model.clone(),
        args.device,
        args.which_gpu.gpu_index,
        args.algorithm,
        args.precision,
    )?;
    args.gpu.apply(&mut generator)?;
    generator.check_gpu_against_cpu(args.device, args.algorithm)?;
    tracing::info!("generating on {}", generator.describe());
    let bar = indicatif::ProgressBar::new(n as u64);
    let side = model.resolution;
    let mut all = Vec::with_capacity(n * 3 * side * side);
    for (i, z) in latents.chunks_exact(latent).enumerate() {
        let img = generator.generate(z)?;
        generate::write_png(
            &args.out.join(format!("image_{i:04}.png")),
            &generate::image_rgb8(&img, 0, side),
            side,
        )?;
        all.extend_from_slice(&img);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.raw {
        hyper_rt::npy::write_f32(&args.out.join("images.npy"), &[n, 3, side, side], &all)?;
    }
    println!(
        "wrote {n} images of {side} x {side} to {} ({})",
        args.out.display(),
        model.label
    );
    Ok(())
}
