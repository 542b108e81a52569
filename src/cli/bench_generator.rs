//! `hyper-rt bench-generator`: per-image time, GFLOP/s and peak memory of the generator on the CPU.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::ensure;
use hyper_rt::config::Config;
use hyper_rt::generate::{
    self,
    cpu::{CpuAlgorithm, CpuGenerator},
    model, DeviceChoice, Precision,
};
use hyper_rt::rng::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How the CPU computes 3 x 3 convolutions: winograd (fast) or direct (closest to the reference)
    #[arg(long, value_enum, default_value = "winograd")]
    algorithm: CpuAlgorithm,
    /// Where to run: cpu, cuda, or auto
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
    /// GPU convolution arithmetic: f32 (exact) or tf32 (tensor cores)
    #[arg(long, value_enum, default_value = "tf32")]
    precision: Precision,
    #[command(flatten)]
    gpu: super::GpuRunArgs,
    #[command(flatten)]
    which_gpu: super::GpuIndexArg,
    /// GPU: forward passes per timed repetition
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Checkpoint to time; default: a random network with the exact CelebA-HQ 1024 shapes
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Batch sizes to time
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    batch: Vec<usize>,
    /// Timed repetitions per batch size (after one warm-up)
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also print the time of each layer (one image)
    #[arg(long)]
    layers: bool,
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    ensure!(
        args.repeats > 0 && args.batch.iter().all(|&b| b > 0),
        "--repeats and --batch must be positive"
    );
    ensure!(
        args.gpu.are_default() || args.device != DeviceChoice::Cpu,
        "--kernels, --upsample and --launch choose how the GPU runs: use them with --device cuda"
    );
    let model = match &args.weights {
        Some(path) => generate::load_model(Some(path))?,
        None => {
            model::PgganModel::from_checkpoint(&model::random_checkpoint(1024, 8192, 512, 512, 1))?
        }
    };
    let model = std::sync::Arc::new(model);
    let gflop = 2.0 * model.macs_per_image() / 1e9;
    if args.device != DeviceChoice::Cpu {
        return bench_gpu(&args, model, gflop);
    }

    let threads = rayon::current_num_threads();
    println!(
        "generator benchmark: {} ({gflop:.2} GFLOP per image), CPU, {threads} threads",
        model.label
    );
    let generator = CpuGenerator::new(model.clone(), args.algorithm);
    let mut rng = Rng::new(7);
    let mut rows = Vec::new();
    for &batch in &args.batch {
        let z: Vec<f32> = (0..batch * model.latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        generator.generate(&z)?; // warm-up
        let mut per_image = Vec::new();
        for _ in 0..args.repeats {
            let t = Instant::now();
            generator.generate(&z)?;
            per_image.push(t.elapsed().as_secs_f64() / batch as f64);
        }
        per_image.sort_by(f64::total_cmp);
        let best = per_image[0];
        let median = per_image[per_image.len() / 2];
        rows.push(serde_json::json!({"batch": batch, "best_s_per_image": best, "median_s_per_image": median, "gflops": gflop / best}));
        println!(
            "batch {batch}: best {best:.3} s/image, median {median:.3} s/image, {:.1} GFLOP/s",
            gflop / best
        );
    }
    if args.layers {
        let z: Vec<f32> = (0..model.latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        println!("{:<22} {:>9} {:>9}", "layer", "ms", "GFLOP/s");
        let sides = model.layer_sides();
        let times = generator.layer_times(&z)?;
        for (name, secs) in &times {
            let layer = model
                .convs
                .iter()
                .zip(&sides)
                .find(|(c, _)| &c.name == name);
            let gflop = match layer {
                Some((c, &side)) => 2.0 * (9 * c.cin * c.cout * side * side) as f64 / 1e9,
                None => f64::NAN,
            };
            println!("{name:<22} {:>9.2} {:>9.1}", secs * 1e3, gflop / secs);
        }
    }
    let peak = peak_rss_mib();
    println!("peak resident memory {peak:.0} MiB (includes the weights)");
    println!(
        "{}",
        serde_json::json!({"backend": "cpu", "threads": threads, "gflop_per_image": gflop, "peak_rss_mib": peak, "results": rows})
    );
    Ok(())
}

/// Times the GPU backend: the forward pass alone (latents on the device), back-to-back passes.
fn bench_gpu(
    args: &Args,
    model: std::sync::Arc<model::PgganModel>,
    gflop: f64,
) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    {
        use hyper_rt::generate::cuda::generator::CudaGenerator;
        let mut generator =
            CudaGenerator::new(model.clone(), args.precision, args.which_gpu.gpu_index).map_err(
                |e| anyhow::anyhow!("the GPU is not available here ({e}); use --device cpu"),
            )?;
        generator.use_settings(args.gpu.settings())?;
        let kernels = format!(
            "{:?} kernels, {:?} upsampling",
            args.gpu.kernels, args.gpu.upsample
        )
        .to_lowercase();
        // the launch mode is reported after the first pass: a graph capture that fails falls back to the stream
        let computed_gflop = 2.0
            * model.macs_per_image_computed(args.gpu.upsample == generate::UpsampleConv::Phased)
            / 1e9;
        println!(
            "generator benchmark: {} ({gflop:.2} GFLOP per image, {computed_gflop:.2} computed), {}, {kernels}",
            model.label,
            generator.device_name()
        );
        let mut rng = Rng::new(7);
        let mut rows = Vec::new();
        for &batch in &args.batch {
            let z: Vec<f32> = (0..batch * model.latent_size)
                .map(|_| rng.normal() as f32)
                .collect();
            let secs = generator.time_forward(&z, args.iterations, args.repeats)?;
            println!(
                "batch {batch}: {:.3} ms/image, {:.1} TFLOP/s effective, {:.1} computed ({:?})",
                secs * 1e3,
                gflop / secs / 1e3,
                computed_gflop / secs / 1e3,
                args.precision
            );
            rows.push(serde_json::json!({"batch": batch, "best_s_per_image": secs, "median_s_per_image": secs, "gflops": gflop / secs}));
        }
        let (launch, graph_failure) = generator.launch_in_use();
        let graph_failure = graph_failure.map(str::to_string);
        match &graph_failure {
            Some(why) => println!(
                "launch: stream (asked for {:?}; the graph capture failed: {why})",
                args.gpu.launch
            ),
            None => println!("launch: {launch:?}"),
        }
        if args.layers {
            let z: Vec<f32> = (0..model.latent_size)
                .map(|_| rng.normal() as f32)
                .collect();
            println!("per layer, batch 1 (kernels queued one by one, an event after each layer):");
            println!("{:<22} {:>9}", "layer", "ms");
            for (name, ms) in generator.layer_times(&z)? {
                println!("{name:<22} {ms:>9.4}");
            }
            if let Some(tuning) = generator.tuning(1) {
                print_tuning(1, tuning);
            }
        }
        let tuning: std::collections::BTreeMap<_, _> = args
            .batch
            .iter()
            .filter_map(|&b| Some((b.to_string(), generator.tuning(b)?)))
            .collect();
        println!(
            "{}",
            serde_json::json!({"backend": "cuda", "device": generator.device_name(), "precision": args.precision, "kernels": args.gpu.kernels, "upsample": args.gpu.upsample, "launch": launch, "graph_failure": graph_failure, "gflop_per_image": gflop, "peak_rss_mib": peak_rss_mib(), "results": rows, "tuning": tuning})
        );
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (args, model, gflop);
        anyhow::bail!("this build has no CUDA support (cargo feature `cuda`); use --device cpu")
    }
}

/// The kernel tuning's measurements for one batch size: a row per candidate, the reference (the gather kernel
/// with the upsampling asked for) first, the chosen one marked, then the sums.
#[cfg(feature = "cuda")]
fn print_tuning(batch: usize, layers: &[generate::cuda::tune::LayerChoice]) {
    println!("kernel tuning (batch {batch}, ms per launch; rel diff: from the reference, the first row of a layer)");
    println!(
        "{:<22} {:<18} {:>9} {:>9}",
        "layer", "candidate", "ms", "rel diff"
    );
    for l in layers {
        for (i, c) in l.candidates.iter().enumerate() {
            let ms = c.ms.map_or("-".to_string(), |v| format!("{v:.4}"));
            let diff = match (i, c.difference) {
                (0, _) => "ref".to_string(),
                (_, Some(d)) => format!("{d:.2e}"),
                (_, None) => "-".to_string(),
            };
            let note = match (i == l.chosen, &c.failure) {
                (true, _) => format!("<- chosen: {}", l.reason),
                (false, Some(why)) => format!("failed: {why}"),
                (false, None) => String::new(),
            };
            let layer = if i == 0 { l.layer.as_str() } else { "" };
            println!("{layer:<22} {:<18} {ms:>9} {diff:>9}  {note}", c.kernel);
        }
    }
    let (reference, tuned) = generate::cuda::tune::tuning_totals(layers);
    println!("sum of the references {reference:.4} ms, of the chosen {tuned:.4} ms");
}
