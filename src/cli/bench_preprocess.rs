//! `hyper-rt bench-preprocess`: per-volume time of realign + reslice + mask + detrend + z-score on one core.

use hyper_rt::config::Config;
use hyper_rt::preprocess::{PreprocessSettings, Preprocessor};
use hyper_rt::rng::Rng;
use hyper_rt::simulate::anatomy::Anatomy;
use hyper_rt::spatial::{move_volume, Rigid};
use hyper_rt::stats::Percentiles;
use hyper_rt::volume::{Dtype, Volume};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Volumes per size
    #[arg(long, default_value_t = 200)]
    volumes: usize,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "volume", "median ms", "p99 ms", "estimate", "reslice", "normalise", "mask vox"
    );
    for (dims, voxel_mm) in [([64usize, 64, 36], 3.0), ([96, 96, 60], 2.0)] {
        let anat = Anatomy::new(dims, voxel_mm, 1);
        let mut rng = Rng::new(9);
        let mask: Vec<usize> = (0..anat.brain.len()).filter(|&i| anat.brain[i]).collect();
        let mut pre = Preprocessor::new(
            &anat.baseline,
            dims,
            anat.mm_from_voxel,
            mask.clone(),
            1.5,
            PreprocessSettings::default(),
        )?;
        let mut motion = Rigid::default();
        let (mut total, mut stages) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
        for t in 0..args.volumes {
            for i in 0..3 {
                motion.trans_mm[i] = (motion.trans_mm[i] + 0.05 * rng.normal()).clamp(-2.0, 2.0);
                motion.rot_deg[i] = (motion.rot_deg[i] + 0.05 * rng.normal()).clamp(-2.0, 2.0);
            }
            let moved = move_volume(&anat.baseline, dims, &anat.mm_from_voxel, &motion);
            let noisy: Vec<u8> = moved
                .iter()
                .flat_map(|v| (v + 10.0 * rng.normal() as f32).to_le_bytes())
                .collect();
            let volume = Volume {
                index: t,
                dims,
                mm_from_voxel: anat.mm_from_voxel,
                tr_secs: 1.5,
                dtype: Dtype::Float32,
                voxel_bytes: noisy,
                arrived_at: std::time::Instant::now(),
            };
            let started = std::time::Instant::now();
            let p = pre.process(&volume)?;
            total.push(started.elapsed().as_secs_f64() * 1e3);
            for (s, v) in stages.iter_mut().zip(p.timing_ms) {
                s.push(v);
            }
        }
        let med = |v: &[f64]| Percentiles::new(v).at(50.0);
        println!(
            "{:<14} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            format!("{}x{}x{}", dims[0], dims[1], dims[2]),
            med(&total),
            Percentiles::new(&total).at(99.0),
            med(&stages[0]),
            med(&stages[1]),
            med(&stages[2]),
            mask.len()
        );
    }
    Ok(())
}
