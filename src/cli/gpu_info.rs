//! `hyper-rt gpu-info`: what the GPU path can use on this machine (driver, NVRTC, each GPU and which kernels run on
//! it) and what `--device auto` will choose, for setting a workstation up and for answering "why the CPU?". With
//! `--check` it also draws on the GPU as the live pipeline does and compares the images with the CPU's.

use hyper_rt::config::Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as one JSON object instead of a table
    #[arg(long)]
    json: bool,
    /// Also draw on the GPU --gpu names as the live pipeline does (the built-in network, two images, float32 and, where
    /// the GPU has it, TF32, as a CUDA graph) and compare with the CPU: the relative difference, whether the graph
    /// ran, milliseconds per image. Fails when a difference is over its bound (1e-5 float32, 1e-2 TF32) or
    /// there is no GPU to draw on
    #[arg(long, conflicts_with = "json")]
    check: bool,
    // the GPU that --check draws on and that "--device auto" is reported for
    #[command(flatten)]
    which_gpu: super::GpuIndexArg,
}

/// Draws two images of the built-in network on GPU `gpu_index` with each precision the GPU has and compares them
/// with the CPU's direct path; prints a line per precision and fails when one is out of bounds.
#[cfg(feature = "cuda")]
fn check_drawing(gpu_index: usize, tf32_available: bool) -> anyhow::Result<()> {
    use hyper_rt::generate::cpu::{CpuAlgorithm, CpuGenerator};
    use hyper_rt::generate::cuda::generator::CudaGenerator;
    use hyper_rt::generate::model::PgganModel;
    use hyper_rt::generate::Precision;
    use hyper_rt::generate::{gpu_parity_bound, relative_l2};

    let model = std::sync::Arc::new(PgganModel::builtin_random());
    let mut rng = hyper_rt::rng::Rng::new(1);
    let z: Vec<f32> = (0..2 * model.latent_size)
        .map(|_| rng.normal() as f32)
        .collect();
    let cpu = CpuGenerator::new(model.clone(), CpuAlgorithm::Direct).generate(&z)?;
    let mut failures = Vec::new();
    for precision in [Precision::F32, Precision::Tf32] {
        let bound = gpu_parity_bound(precision);
        if precision == Precision::Tf32 && !tf32_available {
            println!("draw TF32        skipped: this GPU has no TF32 tensor cores");
            continue;
        }
        let mut generator = CudaGenerator::new(model.clone(), precision, gpu_index)?;
        let image = generator.generate(&z)?;
        let difference = relative_l2(&image, &cpu);
        let ms = generator.time_forward(&z[..model.latent_size], 10, 3)? * 1e3;
        let (launch, graph_failure) = generator.launch_in_use();
        let verdict = if difference <= bound { "yes" } else { "no " };
        println!(
            "draw {:<11} {verdict} GPU {gpu_index}: relative difference from the CPU {difference:.2e} (bound {bound:e}), {launch:?}, {ms:.3} ms per {} px image",
            format!("{precision:?}"),
            model.resolution
        );
        if let Some(why) = graph_failure {
            println!("                 the CUDA graph could not be used, kernels queued one by one: {why}");
        }
        if difference.is_nan() || difference > bound {
            failures.push(format!(
                "{precision:?}: relative difference {difference:.2e} > {bound:e}"
            ));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "the GPU's images differ from the CPU's: {}",
        failures.join("; ")
    );
    Ok(())
}

#[cfg(feature = "cuda")]
pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    use hyper_rt::generate::cuda::report::{cuda_report, Check};

    let gpu_index = args.which_gpu.gpu_index;
    let report = cuda_report(gpu_index);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let line = |label: &str, check: &Check| {
        println!(
            "{label:<16} {} {}",
            if check.ok { "yes" } else { "no " },
            check.detail
        );
    };
    line("NVIDIA driver", &report.driver);
    line("NVRTC", &report.nvrtc);
    for d in &report.devices {
        println!(
            "GPU {}            {}, compute capability {}, {} multiprocessors, {:.1} GiB",
            d.index, d.name, d.compute_capability, d.multiprocessors, d.memory_gib
        );
        line("  kernels", &d.kernels);
        line("  float32", &d.float32);
        line("  TF32", &d.tf32);
        line("  staged kernels", &d.staged);
    }
    if report.driver.ok && report.devices.is_empty() {
        println!("GPUs             none visible (CUDA_VISIBLE_DEVICES?)");
    }
    println!("--device auto    uses {}", report.auto_choice);
    if !args.check {
        return Ok(());
    }
    match report.devices.get(gpu_index) {
        Some(gpu) if gpu.float32.ok => check_drawing(gpu_index, gpu.tf32.ok),
        Some(gpu) => anyhow::bail!(
            "GPU {} cannot run the kernels: {}",
            gpu.index,
            gpu.float32.detail
        ),
        None => anyhow::bail!(
            "no GPU {gpu_index} to draw on: --device auto uses {}",
            report.auto_choice
        ),
    }
}

#[cfg(not(feature = "cuda"))]
pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let _ = args.which_gpu;
    let why = "this build has no CUDA support (cargo feature `cuda`)";
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "auto_choice": format!("the CPU: {why}") })
        );
    } else {
        println!("--device auto    uses the CPU: {why}");
    }
    anyhow::ensure!(!args.check, "no GPU to draw on: {why}");
    Ok(())
}
