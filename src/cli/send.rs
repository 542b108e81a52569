//! `hyper-rt send`: play a 4-D NIfTI-1 file to a receiver exactly as Pyneal Scanner would.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender};
use hyper_rt::nifti::NiftiImage;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to play: a 4-D (or 3-D, one volume) NIfTI-1 file, .nii or .nii.gz.
    run: PathBuf,
    /// Receiver endpoint [config: sender.connect]
    #[arg(long)]
    connect: Option<String>,
    /// Seconds between volumes (default: the file's TR; values over 100 are taken as milliseconds)
    #[arg(long)]
    tr_secs: Option<f64>,
    /// Play faster (2 = twice the TR pace) or slower (0.5)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Send as fast as the receiver replies (no pacing)
    #[arg(long)]
    fast: bool,
    /// First volume index to send (resume a run after a restart)
    #[arg(long, default_value_t = 0)]
    start_at: usize,
    /// Handshake string [config: sender.handshake]
    #[arg(long)]
    handshake: Option<String>,
    /// Give up after this many seconds without a reply, 0 = wait forever [config: sender.reply_timeout_secs]
    #[arg(long)]
    reply_timeout_secs: Option<f64>,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    if let Some(v) = args.connect {
        config.sender.connect = v;
    }
    if let Some(v) = args.handshake {
        config.sender.handshake = v;
    }
    if let Some(v) = args.reply_timeout_secs {
        config.sender.reply_timeout_secs = v;
    }
    config.validate(std::path::Path::new("<command line>"))?;
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }

    let img = NiftiImage::read(&args.run)?;
    if img.tr_unit_was_suspicious {
        tracing::warn!("{}: pixdim[4] is {} s by its units: taken as milliseconds ({} s)", args.run.display(), img.tr_secs.unwrap_or(0.0) * 1000.0, img.tr_secs.unwrap_or(0.0));
    }
    let tr_secs = match args.tr_secs {
        Some(tr) if tr > 100.0 => tr / 1000.0,
        Some(tr) if tr > 0.0 && tr.is_finite() => tr,
        Some(tr) => bail!("--tr-secs must be positive, got {tr}"),
        None => img.tr_secs.with_context(|| format!("{} has no TR (pixdim[4] = 0): give --tr-secs", args.run.display()))?,
    };
    if args.start_at >= img.volumes {
        bail!("--start-at {} but {} holds only {} volumes", args.start_at, args.run.display(), img.volumes);
    }
    tracing::info!(
        "{}: {} volumes of {:?} {}{}, TR {tr_secs} s",
        args.run.display(),
        img.volumes,
        img.dims,
        img.dtype.numpy_name(),
        if img.scaling.is_some() { " (scaled: sent as float64)" } else { "" }
    );

    let sender = ScannerSender::connect(&config.sender.connect, &config.sender.handshake, config.sender.reply_timeout_secs)?;
    let pacing = Pacing { tr_secs, speed: if args.fast { f64::INFINITY } else { args.speed } };
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new((img.volumes - args.start_at) as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} sending [{bar:30}] {pos}/{len} volumes {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let volumes = (args.start_at..img.volumes).map(|t| sender::nifti_wire_volume(&img, t, tr_secs));
    let report = sender::stream(&sender, volumes, pacing, |_, reply| {
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    println!(
        "sent {} volumes to {}{}{}",
        report.sent,
        config.sender.connect,
        if report.stopped_by_receiver { "; the receiver said STOP" } else { "" },
        if report.error_replies > 0 { format!("; {} rejected (see the warnings)", report.error_replies) } else { String::new() }
    );
    Ok(())
}
