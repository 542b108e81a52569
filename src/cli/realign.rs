//! `hyper-rt realign`: the real-time realignment, offline, as users know it from mcflirt or 3dvolreg.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::nifti::{self, NiftiImage, NiftiSpec};
use hyper_rt::preprocess::realign::{Interpolation, RealignSettings};
use hyper_rt::preprocess::{
    mean_volume, nifti_volume, PreprocessSettings, Preprocessor, Realigned,
};
use hyper_rt::volume::Dtype;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to realign (4-D NIfTI-1)
    run: PathBuf,
    /// Reference volume: a 3-D image, or a 4-D one whose mean is used (default: the run's first volume)
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Output folder: realigned.nii.gz (float32) and motion.tsv
    #[arg(long)]
    out: PathBuf,
    /// Reslicing interpolation
    #[arg(long, value_enum, default_value = "trilinear")]
    interpolation: Interpolation,
    /// Use every n-th voxel along each axis to estimate the motion
    #[arg(long, default_value_t = 2)]
    subsample: usize,
    /// Print each volume's timing
    #[arg(long)]
    verbose_timing: bool,
}

pub fn run(args: Args, _config: Config) -> anyhow::Result<()> {
    let img = NiftiImage::read(&args.run)?;
    let tr_secs = img.tr_secs.unwrap_or(1.0);
    let reference = match &args.reference {
        Some(path) => {
            let r = NiftiImage::read(path)?;
            if r.dims != img.dims {
                bail!(
                    "reference {} has dimensions {:?}, the run {:?}",
                    path.display(),
                    r.dims,
                    img.dims
                );
            }
            mean_volume(&r)
        }
        None => img.volume_values(0).iter().map(|v| *v as f32).collect(),
    };
    let settings = PreprocessSettings {
        realign: RealignSettings {
            interpolation: args.interpolation,
            subsample: args.subsample.max(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let all: Vec<usize> = (0..img.voxels_per_volume()).collect();
    let mut pre = Preprocessor::new(
        &reference,
        img.dims,
        img.mm_from_voxel,
        all,
        tr_secs,
        settings,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut data: Vec<u8> = Vec::with_capacity(img.voxels_per_volume() * img.volumes * 4);
    let mut table = String::from("volume\ttrans_x_mm\ttrans_y_mm\ttrans_z_mm\trot_x_deg\trot_y_deg\trot_z_deg\tfd_mm\titerations\tresidual_rms\tflag\n");
    let mut times = Vec::new();
    let bar = indicatif::ProgressBar::new(img.volumes as u64);
    for t in 0..img.volumes {
        let volume = nifti_volume(&img, t, tr_secs);
        let started = std::time::Instant::now();
        let Realigned {
            resliced,
            alignment: a,
            fd_mm: fd,
            non_finite_replaced: replaced,
            timing_ms: [ms_align, ms_reslice],
        } = pre.realign_only(&volume)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        times.push(ms);
        if args.verbose_timing {
            bar.println(format!("volume {t}: {ms:.2} ms (estimate {ms_align:.2}, reslice {ms_reslice:.2}), {} iterations", a.iterations));
        }
        data.extend(resliced.iter().flat_map(|v| v.to_le_bytes()));
        let m = a.motion;
        let flag = if a.diverged {
            "diverged"
        } else if replaced > 0 {
            "non_finite_replaced"
        } else if !a.converged {
            "not_converged"
        } else {
            "ok"
        };
        table.push_str(&format!(
            "{t}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{fd:.4}\t{}\t{:.3}\t{flag}\n",
            m.trans_mm[0],
            m.trans_mm[1],
            m.trans_mm[2],
            m.rot_deg[0],
            m.rot_deg[1],
            m.rot_deg[2],
            a.iterations,
            a.residual_rms
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = NiftiSpec {
        dims: img.dims,
        volumes: img.volumes,
        dtype: Dtype::Float32,
        mm_from_voxel: img.mm_from_voxel,
        tr_secs,
        scaling: None,
        description: "hyper-rt realign".into(),
    };
    nifti::write(&args.out.join("realigned.nii.gz"), &spec, &data)?;
    std::fs::write(args.out.join("motion.tsv"), table)
        .with_context(|| format!("writing {}", args.out.join("motion.tsv").display()))?;
    let p = hyper_rt::stats::Percentiles::new(&times);
    println!(
        "realigned {} volumes of {:?}: {:.2} ms median, {:.2} ms p99 per volume (estimate + reslice, one core); {} diverged, {} non-finite voxels replaced",
        img.volumes, img.dims, p.at(50.0), p.at(99.0), pre.counts.diverged, pre.counts.non_finite_voxels_replaced
    );
    println!(
        "wrote {} and {}",
        args.out.join("realigned.nii.gz").display(),
        args.out.join("motion.tsv").display()
    );
    Ok(())
}
