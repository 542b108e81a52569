//! `hyper-rt gpu-info`: what the GPU path can use on this machine (driver, NVRTC, each GPU and which kernels run on
//! it) and what `--device auto` will choose, for setting a workstation up and for answering "why the CPU?".

use hyper_rt::config::Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "cuda")]
pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    use hyper_rt::generate::cuda_report::{cuda_report, Check};

    let report = cuda_report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let line = |label: &str, check: &Check| {
        println!("{label:<16} {} {}", if check.ok { "yes" } else { "no " }, check.detail);
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
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let why = "this build has no CUDA support (cargo feature `cuda`)";
    if args.json {
        println!("{}", serde_json::json!({ "auto_choice": format!("the CPU: {why}") }));
    } else {
        println!("--device auto    uses the CPU: {why}");
    }
    Ok(())
}
