//! `hyper-rt bench-train`: the decoder fit alone (HYPER's size: 1050 trials x 4096 voxels -> 512, 5-fold CV over
//! 20 penalties) on random patterns with a planted linear map.

use hyper_rt::config::Config;
use hyper_rt::decode::ridge::{fit_ridge_cv, log_grid};
use hyper_rt::rng::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 1050)]
    trials: usize,
    #[arg(long, default_value_t = 4096)]
    voxels: usize,
    #[arg(long, default_value_t = 512)]
    latent: usize,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let (n, p, q) = (args.trials, args.voxels, args.latent);
    let mut rng = Rng::new(5);
    let y: Vec<f32> = (0..n * q).map(|_| rng.normal() as f32).collect();
    let mixing: Vec<f32> = (0..q * 64).map(|_| rng.normal() as f32 / 8.0).collect();
    // voxels respond to 64 random combinations of the latent, plus noise
    let x: Vec<f32> = (0..n)
        .flat_map(|i| {
            let z = &y[i * q..(i + 1) * q];
            let factors: Vec<f32> = (0..64)
                .map(|f| (0..q).map(|d| z[d] * mixing[d * 64 + f]).sum::<f32>())
                .collect();
            (0..p)
                .map(|v| factors[v % 64] + rng.normal() as f32)
                .collect::<Vec<f32>>()
        })
        .collect();
    let started = std::time::Instant::now();
    let fit = fit_ridge_cv(
        ndarray::ArrayView2::from_shape((n, p), &x)?,
        ndarray::ArrayView2::from_shape((n, q), &y)?,
        &log_grid(1.0, 1e6, 20),
        5,
        &|_, _| {},
    )?;
    let secs = started.elapsed().as_secs_f64();
    println!("ridge fit: {n} trials x {p} voxels -> {q}, 5-fold CV over 20 penalties: {secs:.2} s on {} threads (penalty {:.3e})", rayon::current_num_threads(), fit.penalty);
    Ok(())
}
