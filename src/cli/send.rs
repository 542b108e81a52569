//! `hyper-rt send`: play a run to a receiver exactly as Pyneal Scanner would: a 4-D NIfTI-1 file, a finished
//! series of a scanner's export (Siemens mosaic DICOM, GE DICOM one slice per file, Philips PAR/REC), or
//! (`--watch`) the folder a scanner is exporting into, volume by volume as its files are written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hyper_rt::config::{overlay, Config};
use hyper_rt::ingest::dicom_forward::forward_dicom;
use hyper_rt::ingest::follow::{follow_folder, FollowOptions};
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, StreamReport, WireVolume};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::scanner::export::{is_scanner_export, read_volume};
use hyper_rt::scanner::series::{FolderScan, SeriesRun};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to play: a 4-D (or 3-D, one volume) NIfTI-1 file (.nii, .nii.gz); or a scanner's export: a
    /// folder holding a series of Siemens mosaic DICOM files (one per volume, volume number = InstanceNumber),
    /// of DICOM slices (one slice per file, as GE writes them; volume number = (InstanceNumber - 1) /
    /// ImagesInAcquisition + 1) or of Philips PAR/REC pairs (one per volume, volume number = "Acquisition
    /// nr"), one such file, or a PAR file holding a whole run (volume number = dynamic). Not given with
    /// --dicom-listen.
    #[arg(
        required_unless_present = "dicom_listen",
        conflicts_with = "dicom_listen"
    )]
    run: Option<PathBuf>,
    /// Receiver endpoint [config: sender.connect]
    #[arg(long)]
    connect: Option<String>,
    /// Seconds between volumes, also the TR sent (default: the file's TR; values over 100 are taken as milliseconds)
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
    /// Scanner export: the series to send when the folder holds several (DICOM SeriesNumber; Philips
    /// "Acquisition nr" of a whole-run PAR, or for one-pair-per-volume files the number their folder is named
    /// by, 0 if the name is not a number). With --watch, its files already in the folder are sent too (start
    /// the sender late without losing volumes).
    #[arg(long)]
    series: Option<i64>,
    /// Scanner export: follow the folder while the scanner writes into it and send each volume as soon as its
    /// file is complete (no pacing). Without --series, files already there are earlier runs and the first series to
    /// gain a file is followed. Ends when the receiver says STOP, after --volumes, after --idle-secs, or Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Scanner export: list the series the folder holds (number, volumes, gaps, matrix, TR, description) and exit
    #[arg(long)]
    list: bool,
    /// --watch: stop after sending this many volumes
    #[arg(long)]
    volumes: Option<usize>,
    /// --watch: stop after this many seconds without a new volume (0 = never)
    #[arg(long, default_value_t = 0.0)]
    idle_secs: f64,
    /// --watch: milliseconds between looks at the folder; a volume leaves 1 to 2 intervals after its file is
    /// written (raise it for a slow network share)
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    #[command(flatten)]
    dicom: super::dicom_listen::DicomListenArgs,
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    overlay(&mut config.sender.connect, &args.connect);
    overlay(&mut config.sender.handshake, &args.handshake);
    overlay(
        &mut config.sender.reply_timeout_secs,
        &args.reply_timeout_secs,
    );
    args.dicom.apply(&mut config);
    config.validate(Path::new("<command line>"))?;
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }
    if !(args.idle_secs.is_finite() && args.idle_secs >= 0.0) {
        bail!("--idle-secs must be 0 or more, got {}", args.idle_secs);
    }
    let tr_override = match args.tr_secs {
        Some(tr) if tr > 100.0 => Some(tr / 1000.0),
        Some(tr) if tr > 0.0 && tr.is_finite() => Some(tr),
        Some(tr) => bail!("--tr-secs must be positive, got {tr}"),
        None => None,
    };
    let Some(run) = args.run.clone() else {
        return send_dicom_received(&args, &config, tr_override);
    };
    let run = run.as_path();
    if hyper_rt::scanner::parrec::is_rec_path(run) {
        bail!(
            "{} is a Philips REC file: give its PAR header (or the folder)",
            run.display()
        );
    }
    if is_scanner_export(run).with_context(|| format!("reading {}", run.display()))? {
        if args.list {
            return list_series(run);
        }
        if args.watch {
            return send_watched_folder(run, &args, &config, tr_override);
        }
        return send_export_series(run, &args, &config, tr_override);
    }
    for (given, flag) in [
        (args.watch, "--watch"),
        (args.series.is_some(), "--series"),
        (args.volumes.is_some(), "--volumes"),
        (args.list, "--list"),
    ] {
        if given {
            bail!(
                "{flag} is for a scanner's export (DICOM, Philips PAR/REC); {} is neither",
                run.display()
            );
        }
    }
    send_nifti(run, &args, &config, tr_override)
}

fn progress_bar(quiet: bool, len: Option<u64>) -> indicatif::ProgressBar {
    let bar = match (quiet, len) {
        (true, _) => return indicatif::ProgressBar::hidden(),
        (false, Some(len)) => indicatif::ProgressBar::new(len),
        (false, None) => indicatif::ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{spinner} sending [{bar:30}] {pos}/{len} volumes {msg}"
    } else {
        "{spinner} {pos} volumes sent {msg}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Streams `volumes` with a progress bar and prints the one-line result.
fn stream_and_report(
    config: &Config,
    volumes: impl IntoIterator<Item = WireVolume>,
    pacing: Pacing,
    bar: &indicatif::ProgressBar,
    skipped: impl Fn() -> usize,
) -> anyhow::Result<()> {
    let sender = ScannerSender::connect(
        &config.sender.connect,
        &config.sender.handshake,
        config.sender.reply_timeout_secs,
    )?;
    let report = sender::stream(&sender, volumes, pacing, |_, reply| {
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    print_result(config, &report, (skipped(), "files skipped"))
}

/// The one-line result: volumes sent, whether the receiver ended the run, rejections, and what was left out (files
/// skipped, images refused) with what to call it. A run
/// in which the receiver rejected volumes is a failure (exit status 1), so that a script notices.
fn print_result(
    config: &Config,
    report: &StreamReport,
    (left_out, what_left_out): (usize, &str),
) -> anyhow::Result<()> {
    println!(
        "sent {} volumes to {}{}{}{}",
        report.sent,
        config.sender.connect,
        if report.stopped_by_receiver {
            "; the receiver said STOP"
        } else {
            ""
        },
        if report.error_replies > 0 {
            format!("; {} rejected (see the warnings)", report.error_replies)
        } else {
            String::new()
        },
        if left_out > 0 {
            format!("; {left_out} {what_left_out} (see the warnings)")
        } else {
            String::new()
        }
    );
    if report.error_replies > 0 {
        bail!(
            "the receiver at {} rejected {} of the volumes sent (its replies are in the warnings above)",
            config.sender.connect,
            report.error_replies
        );
    }
    Ok(())
}

fn send_nifti(
    run: &Path,
    args: &Args,
    config: &Config,
    tr_override: Option<f64>,
) -> anyhow::Result<()> {
    let img = NiftiImage::read(run)?;
    if img.tr_unit_was_suspicious {
        tracing::warn!(
            "{}: pixdim[4] is {} s by its units: taken as milliseconds ({} s)",
            run.display(),
            img.tr_secs.unwrap_or(0.0) * 1000.0,
            img.tr_secs.unwrap_or(0.0)
        );
    }
    let tr_secs = match tr_override {
        Some(tr) => tr,
        None => img.tr_secs.with_context(|| {
            format!(
                "{} has no TR (pixdim[4] = 0): give --tr-secs",
                run.display()
            )
        })?,
    };
    if args.start_at >= img.volumes {
        bail!(
            "--start-at {} but {} holds only {} volumes",
            args.start_at,
            run.display(),
            img.volumes
        );
    }
    tracing::info!(
        "{}: {} volumes of {:?} {}{}, TR {tr_secs} s",
        run.display(),
        img.volumes,
        img.dims,
        img.dtype.numpy_name(),
        if img.scaling.is_some() {
            " (scaled: sent as float64)"
        } else {
            ""
        }
    );
    let pacing = Pacing {
        tr_secs,
        speed: if args.fast { f64::INFINITY } else { args.speed },
    };
    let bar = progress_bar(args.quiet, Some((img.volumes - args.start_at) as u64));
    let volumes = (args.start_at..img.volumes).map(|t| sender::nifti_wire_volume(&img, t, tr_secs));
    stream_and_report(config, volumes, pacing, &bar, || 0)?;
    Ok(())
}

/// Prints a table of the series in a scanner's export folder.
fn list_series(run: &Path) -> anyhow::Result<()> {
    let scan = FolderScan::read(run).with_context(|| format!("reading {}", run.display()))?;
    println!(
        "{:>6}  {:>7}  {:>11}  {:>7}  {:>14}  {:>7}  {:>6}  description",
        "series", "volumes", "indices", "missing", "voxels", "dtype", "TR s"
    );
    for (number, (description, files)) in &scan.series {
        let (Some((&first_index, first_path)), Some(&last_index)) =
            (files.iter().next(), files.keys().next_back())
        else {
            continue;
        };
        let missing = last_index + 1 - first_index - files.len();
        let (voxels, dtype, tr) = match read_volume(first_path, first_index) {
            Ok(v) => (
                format!("{} x {} x {}", v.dims[0], v.dims[1], v.dims[2]),
                v.dtype.numpy_name().to_string(),
                v.tr_secs
                    .map(|t| format!("{t:.3}"))
                    .unwrap_or_else(|| "-".into()),
            ),
            Err(e) => (format!("unreadable: {e}"), String::new(), String::new()),
        };
        println!(
            "{number:>6}  {:>7}  {:>11}  {missing:>7}  {voxels:>14}  {dtype:>7}  {tr:>6}  {description}",
            files.len(),
            format!("{first_index}-{last_index}")
        );
    }
    if scan.series.is_empty() {
        println!("(no readable volume: Siemens mosaic DICOM, DICOM one slice per file, or Philips PAR/REC)");
    }
    let others = [
        (
            scan.not_scanner_files.len(),
            "files are neither DICOM nor PAR/REC",
        ),
        (
            scan.unreadable.len(),
            "files are unreadable (run without --list to see why)",
        ),
        (
            scan.duplicates.len(),
            "files repeat a volume (or slice) of their series",
        ),
        (
            scan.incomplete.len(),
            "volumes lack slice files (run without --list to see which)",
        ),
    ];
    for (count, what) in others {
        if count > 0 {
            println!("{count} {what}");
        }
    }
    Ok(())
}

/// A finished series: every volume of the chosen series in index order, at TR pace.
fn send_export_series(
    run: &Path,
    args: &Args,
    config: &Config,
    tr_override: Option<f64>,
) -> anyhow::Result<()> {
    let run = SeriesRun::open(run, args.series, args.start_at)?;
    for warning in run.folder_warnings() {
        tracing::warn!("{warning}");
    }
    let tr_secs = match tr_override.or(run.first.tr_secs) {
        Some(tr) => tr,
        None => bail!("{} gives no TR: give --tr-secs", run.first.path.display()),
    };
    tracing::info!("{}", run.describe(tr_secs));
    let skipped = std::cell::Cell::new(run.files_skipped());
    let pacing = Pacing {
        tr_secs,
        speed: if args.fast { f64::INFINITY } else { args.speed },
    };
    let bar = progress_bar(args.quiet, Some(run.files.len() as u64));
    let volumes = run
        .volumes(|message, files| {
            tracing::warn!("skipped: {message}");
            skipped.set(skipped.get() + files);
        })
        .map(|v| sender::exported_wire_volume(&v, tr_secs));
    stream_and_report(config, volumes, pacing, &bar, || skipped.get())?;
    Ok(())
}

/// A series still being written: each volume goes out as soon as its file is complete.
fn send_watched_folder(
    run: &Path,
    args: &Args,
    config: &Config,
    tr_override: Option<f64>,
) -> anyhow::Result<()> {
    if !run.is_dir() {
        bail!("--watch follows a folder; {} is a file", run.display());
    }
    let options = FollowOptions {
        series: args.series,
        start_at: args.start_at,
        max_volumes: args.volumes,
        idle_secs: args.idle_secs,
        poll_ms: args.poll_ms,
        tr_override_secs: tr_override,
    };
    let bar = progress_bar(args.quiet, args.volumes.map(|n| n as u64));
    let sender = ScannerSender::connect(
        &config.sender.connect,
        &config.sender.handshake,
        config.sender.reply_timeout_secs,
    )?;
    let never = std::sync::atomic::AtomicBool::new(false); // Ctrl-C ends the process
    let report = follow_folder(run, &options, &sender, &never, |_, reply| {
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    if let Some(latency) = report.latency_summary() {
        println!("{latency} (polling every {} ms)", args.poll_ms);
    }
    print_result(
        config,
        &report.stream,
        (report.files_skipped, "files skipped"),
    )
}

/// Images pushed by the scanner console over the DICOM network: each volume goes out as soon as its last image is
/// in, until the receiver says STOP, after --volumes, after --idle-secs, or Ctrl-C.
fn send_dicom_received(
    args: &Args,
    config: &Config,
    tr_override: Option<f64>,
) -> anyhow::Result<()> {
    let options = super::dicom_listen::listen_options(
        config,
        args.series,
        args.volumes,
        args.idle_secs,
        tr_override,
    )?;
    let sender = ScannerSender::connect(
        &config.sender.connect,
        &config.sender.handshake,
        config.sender.reply_timeout_secs,
    )?;
    let node = super::dicom_listen::start_node(&options)?;
    let stop = super::interrupt_flag();
    let bar = progress_bar(args.quiet, args.volumes.map(|n| n as u64));
    let report = forward_dicom(node, &options, &sender, &stop, |_, reply| {
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    println!("{}", super::dicom_listen::counts_line(&report));
    if let Some(latency) = report.latency_summary() {
        println!("{latency}");
    }
    print_result(
        config,
        &report.stream,
        (report.failed, "images answered with a failure status"),
    )
}
