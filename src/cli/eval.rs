//! `hyper-rt eval`: HYPER's measures on the test trials, with permutation tests, report and image grid.

use std::path::PathBuf;

use hyper_rt::config::Config;
use hyper_rt::decode::bundle::DecoderBundle;
use hyper_rt::decode::Dataset;
use hyper_rt::evaluate::eval::{evaluate, EvalSettings};
use hyper_rt::generate::{self, cpu::CpuAlgorithm, Backend, DeviceChoice, Precision};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Decoder bundle from `hyper-rt train`
    #[arg(long)]
    decoder: PathBuf,
    /// BIDS dataset with test trials
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    subject: Option<String>,
    /// Generator checkpoint (default: the built-in random-weight network)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output folder: report.json, report.md, grid.png
    #[arg(long)]
    out: PathBuf,
    /// A folder of attribute directions (pggan_celebahq_<attribute>_boundary.npy) to use instead of the
    /// InterFaceGAN ones built into the binary
    #[arg(long, value_name = "FOLDER")]
    boundaries: Option<PathBuf>,
    /// Random latents in the permutation test
    #[arg(long, default_value_t = 1000)]
    permutations: usize,
    /// Random images in the image measures' permutation test
    #[arg(long, default_value_t = 100)]
    image_permutations: usize,
    /// Where the generator runs: auto (GPU if usable, else CPU with a warning), cpu, or cuda
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    #[command(flatten)]
    which_gpu: super::GpuIndexArg,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let data = Dataset::open(&args.data, args.subject.as_deref())?;
    let bundle = DecoderBundle::load(&args.decoder)?;
    let model = std::sync::Arc::new(generate::load_model(args.weights.as_deref())?);
    let mut generator = Backend::open(
        model,
        args.device,
        args.which_gpu.gpu_index,
        CpuAlgorithm::Winograd,
        Precision::F32,
    )?;
    generator.check_gpu_against_cpu(args.device, CpuAlgorithm::Winograd)?;
    let settings = EvalSettings {
        boundaries: args.boundaries.clone(),
        permutations: args.permutations,
        image_permutations: args.image_permutations,
        seed: 7,
    };
    let report = evaluate(
        &data,
        &bundle,
        &mut generator,
        &settings,
        &args.out,
        &|step| eprintln!("{step} ..."),
    )?;
    let a = &report.averaged;
    println!(
        "test faces {} (repetitions averaged), {} single trials",
        a.items, report.single_trial.items
    );
    println!(
        "latent similarity  {:.4} ± {:.4} (null {:.4}, p = {:.3})",
        a.latent_similarity.mean,
        a.latent_similarity.se,
        a.latent_similarity.null_mean,
        a.latent_similarity.p
    );
    println!(
        "cosine             {:.4} ± {:.4} (p = {:.3})",
        a.cosine.mean, a.cosine.se, a.cosine.p
    );
    println!(
        "pixel Pearson r    {:.4} ± {:.4} (p = {:.3})",
        report.pixel_pearson.mean, report.pixel_pearson.se, report.pixel_pearson.p
    );
    println!(
        "SSIM               {:.4} ± {:.4} (p = {:.3})",
        report.ssim.mean, report.ssim.se, report.ssim.p
    );
    println!(
        "identification     pairwise {:.3}, {}-way {:.3}",
        a.identification_pairwise, a.items, a.identification_nway
    );
    for (name, r, p) in &a.attributes {
        println!("attribute {name:<10} r = {r:.3} (p = {p:.3})");
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}
