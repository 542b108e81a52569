//! `hyper-rt launch-plan`: the GPU forward pass as kernel launches, worked out without a GPU, written with the
//! device weights so that the launches can be replayed elsewhere (the emulated kernel tests do, on the CPU).

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::generate::cuda::{launches, plan};
use hyper_rt::generate::{self, ConvKernels, Precision, UpsampleConv};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Converted checkpoint (.safetensors); without it, the built-in random-weight network
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per launch sequence
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Convolution arithmetic: f32 or tf32
    #[arg(long, value_enum, default_value = "tf32")]
    precision: Precision,
    // the kernels planned for: gather or staged (tuned chooses on a GPU, by timing, so it has no plan without one)
    #[command(flatten)]
    gpu: super::GpuRunArgs,
    /// Streaming multiprocessors of the GPU planned for (split-K depends on it): 132 on an H100 SXM
    #[arg(long, default_value_t = 132)]
    sm_count: usize,
    /// Output folder: launches.json, and each weight buffer as raw float32 (NAME.bin)
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    if args.batch == 0 || args.sm_count == 0 {
        bail!("--batch and --sm-count must be positive");
    }
    let staged = match (args.gpu.kernels, args.precision) {
        (ConvKernels::Tuned, _) => bail!(
            "--kernels tuned is decided by timing both families on a GPU: plan gather or staged"
        ),
        (ConvKernels::Staged, Precision::F32) => {
            bail!("the staged kernels are TF32 kernels: use --precision tf32")
        }
        (kernels, _) => kernels == ConvKernels::Staged,
    };
    let model = generate::load_model(args.weights.as_deref())?;
    let plans = plan::layer_plans(
        &model,
        args.sm_count,
        args.batch,
        staged,
        args.gpu.upsample == UpsampleConv::Phased,
    );
    let plan = launches::describe(&model, &plans, args.precision, args.batch);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: String, data: &[f32]| -> anyhow::Result<()> {
        let path = args.out.join(format!("{name}.bin"));
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    use launches::Buf;
    write(Buf::DenseWeight.name(), &model.dense_weight)?;
    write(Buf::DenseBias.name(), &model.dense_bias)?;
    for (i, c) in model.convs.iter().enumerate() {
        write(Buf::ConvWeight(i).name(), &c.weight)?;
        write(Buf::ConvBias(i).name(), &c.bias)?;
        if c.upsample {
            write(Buf::PhaseWeight(i).name(), &c.phase_weights())?;
        }
    }
    write(Buf::RgbWeight.name(), &model.to_rgb_weight)?;
    write(Buf::RgbBias.name(), &model.to_rgb_bias)?;
    let path = args.out.join("launches.json");
    std::fs::write(&path, serde_json::to_string_pretty(&plan)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let launches: usize = plan["layers"].as_array().map_or(0, |l| {
        l.iter()
            .map(|x| x["launches"].as_array().map_or(0, Vec::len))
            .sum()
    });
    println!(
        "{launches} launches for {} ({} px, batch {}) in {}",
        model.label,
        model.resolution,
        args.batch,
        path.display()
    );
    Ok(())
}
