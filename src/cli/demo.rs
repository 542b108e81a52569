//! `hyper-rt demo`: the built-in demonstration on defaults. For now it exercises the intake end to end: a
//! synthetic 4-D run made in memory is streamed over loopback ZeroMQ (the Pyneal Scanner protocol) into the
//! receiver, the recording is read back and compared voxel for voxel, and the session summary is printed.

use std::path::PathBuf;

use anyhow::{bail, ensure};
use hyper_rt::config::Config;
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, WireVolume};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::rng::Rng;
use hyper_rt::volume::{x_fastest_to_c_order, Dtype};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Volumes in the synthetic run
    #[arg(long, default_value_t = 20)]
    volumes: usize,
    /// TR of the synthetic run in seconds
    #[arg(long, default_value_t = 1.5)]
    tr_secs: f64,
    /// Playback speed relative to the TR (1 = real time)
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Random seed of the synthetic run
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the session folder goes [config: session.root]
    #[arg(long)]
    session_root: Option<PathBuf>,
}

const DIMS: [usize; 3] = [64, 64, 30];

/// A head-like phantom: an ellipsoid of "tissue" with a brighter core, a slow global drift and Gaussian noise,
/// stored as int16 (as scanners do), x fastest.
fn synthetic_volume(t: usize, rng: &mut Rng) -> Vec<u8> {
    let [nx, ny, nz] = DIMS;
    let mut out = Vec::with_capacity(nx * ny * nz * 2);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let x = (i as f64 - nx as f64 / 2.0) / (nx as f64 * 0.4);
                let y = (j as f64 - ny as f64 / 2.0) / (ny as f64 * 0.45);
                let z = (k as f64 - nz as f64 / 2.0) / (nz as f64 * 0.45);
                let r2 = x * x + y * y + z * z;
                let tissue = if r2 < 1.0 { 800.0 + 400.0 * (1.0 - r2) } else { 20.0 };
                let v = tissue * (1.0 + 0.002 * t as f64) + 10.0 * rng.normal();
                out.extend_from_slice(&(v.round() as i16).to_le_bytes());
            }
        }
    }
    out
}

pub fn run(args: Args, config: Config) -> anyhow::Result<()> {
    ensure!(args.volumes > 0, "--volumes must be positive");
    ensure!(args.tr_secs > 0.0 && args.speed > 0.0, "--tr-secs and --speed must be positive");
    let root = args.session_root.unwrap_or(config.session.root.clone());
    println!("hyper-rt demo: {} synthetic volumes of {:?} int16 at TR {} s, played at {}x over loopback ZeroMQ", args.volumes, DIMS, args.tr_secs, args.speed);
    let mut rng = Rng::new(args.seed);
    let volumes: Vec<Vec<u8>> = (0..args.volumes).map(|t| synthetic_volume(t, &mut rng)).collect();
    let affine = [[3.0, 0.0, 0.0, -96.0], [0.0, 3.0, 0.0, -96.0], [0.0, 0.0, 3.0, -45.0], [0.0, 0.0, 0.0, 1.0]];

    let receiver = super::LoopbackReceiver::start(&root, args.volumes, config.session.compress)?;
    let scanner = ScannerSender::connect(&receiver.endpoint, &config.sender.handshake, config.sender.reply_timeout_secs)?;
    let bar = indicatif::ProgressBar::new(args.volumes as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} streaming [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    let wire = volumes.iter().enumerate().map(|(t, v)| WireVolume {
        index: t,
        dtype: Dtype::Int16,
        dims: DIMS,
        mm_from_voxel: affine,
        tr_secs: args.tr_secs,
        c_order_le: x_fastest_to_c_order(v, DIMS, 2),
    });
    let report = sender::stream(&scanner, wire, Pacing { tr_secs: args.tr_secs, speed: args.speed }, |_, reply| {
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    drop(scanner);
    let dir = receiver.session_dir.clone();
    let summary = receiver.join()?;
    super::print_summary(&dir, &summary);

    // check the recording against what was sent
    let file = summary.volumes_file.as_deref().ok_or_else(|| anyhow::anyhow!("nothing was recorded"))?;
    let img = NiftiImage::read(&dir.join(file))?;
    let recorded_ok = img.volumes == args.volumes && (0..args.volumes).all(|t| img.volume_bytes(t) == volumes[t].as_slice());
    if !recorded_ok || report.sent != args.volumes {
        bail!("the recording in {} does not match what was sent", dir.display());
    }
    println!("recording verified: {} volumes identical to what was sent, affine and TR {} s kept", args.volumes, img.tr_secs.unwrap_or(0.0));
    Ok(())
}
