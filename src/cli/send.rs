//! `hyper-rt send`: play a run to a receiver exactly as Pyneal Scanner would: a 4-D NIfTI-1 file, a finished
//! Siemens mosaic DICOM series, or (`--watch`) the folder a Siemens scanner is exporting into, volume by volume
//! as its files are written.

use std::path::{Path, PathBuf};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::dicom::{file_looks_like_dicom, MosaicVolume};
use hyper_rt::ingest::dicom_series::{mosaic_wire_volume, FolderScan, FolderWatcher, SeriesRun, WatchedVolume};
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, StreamReport, WireVolume};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::stats::Percentiles;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to play: a 4-D (or 3-D, one volume) NIfTI-1 file (.nii, .nii.gz); or Siemens mosaic DICOM: a
    /// folder holding a series, one file per volume (volume number = InstanceNumber), or one such file.
    run: PathBuf,
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
    /// DICOM: the series to send (its SeriesNumber) when the folder holds several. With --watch, its files
    /// already in the folder are sent too (start the sender late without losing volumes).
    #[arg(long)]
    series: Option<i64>,
    /// DICOM: follow the folder while the scanner writes into it and send each volume as soon as its file is
    /// complete (no pacing). Without --series, files already there are earlier runs and the first series to
    /// gain a file is followed. Ends when the receiver says STOP, after --volumes, after --idle-secs, or Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// DICOM: list the series the folder holds (number, volumes, gaps, matrix, TR, description) and exit
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
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    if let Some(v) = args.connect.clone() {
        config.sender.connect = v;
    }
    if let Some(v) = args.handshake.clone() {
        config.sender.handshake = v;
    }
    if let Some(v) = args.reply_timeout_secs {
        config.sender.reply_timeout_secs = v;
    }
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
    if is_dicom(&args.run)? {
        if args.list {
            return list_series(&args.run);
        }
        if args.watch {
            return send_watched_folder(&args, &config, tr_override);
        }
        return send_dicom_series(&args, &config, tr_override);
    }
    for (given, flag) in [(args.watch, "--watch"), (args.series.is_some(), "--series"), (args.volumes.is_some(), "--volumes"), (args.list, "--list")] {
        if given {
            bail!("{flag} is for Siemens DICOM folders; {} is not one", args.run.display());
        }
    }
    send_nifti(&args, &config, tr_override)
}

/// A folder, or a file that starts like DICOM Part 10.
fn is_dicom(run: &Path) -> anyhow::Result<bool> {
    Ok(run.is_dir() || file_looks_like_dicom(run).with_context(|| format!("reading {}", run.display()))?)
}

fn progress_bar(quiet: bool, len: Option<u64>) -> indicatif::ProgressBar {
    let bar = match (quiet, len) {
        (true, _) => return indicatif::ProgressBar::hidden(),
        (false, Some(len)) => indicatif::ProgressBar::new(len),
        (false, None) => indicatif::ProgressBar::new_spinner(),
    };
    let template = if len.is_some() { "{spinner} sending [{bar:30}] {pos}/{len} volumes {msg}" } else { "{spinner} {pos} volumes sent {msg}" };
    bar.set_style(indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar
}

/// Streams `volumes` with a progress bar and prints the one-line result.
fn stream_and_report(
    config: &Config,
    volumes: impl IntoIterator<Item = WireVolume>,
    pacing: Pacing,
    bar: &indicatif::ProgressBar,
    mut on_reply: impl FnMut(usize),
    skipped: impl Fn() -> usize,
) -> anyhow::Result<StreamReport> {
    let sender = ScannerSender::connect(&config.sender.connect, &config.sender.handshake, config.sender.reply_timeout_secs)?;
    let report = sender::stream(&sender, volumes, pacing, |index, reply| {
        on_reply(index);
        bar.inc(1);
        bar.set_message(reply.to_string());
    })?;
    bar.finish();
    let skipped = skipped();
    println!(
        "sent {} volumes to {}{}{}{}",
        report.sent,
        config.sender.connect,
        if report.stopped_by_receiver { "; the receiver said STOP" } else { "" },
        if report.error_replies > 0 { format!("; {} rejected (see the warnings)", report.error_replies) } else { String::new() },
        if skipped > 0 { format!("; {skipped} files skipped (see the warnings)") } else { String::new() }
    );
    Ok(report)
}

fn send_nifti(args: &Args, config: &Config, tr_override: Option<f64>) -> anyhow::Result<()> {
    let img = NiftiImage::read(&args.run)?;
    if img.tr_unit_was_suspicious {
        tracing::warn!("{}: pixdim[4] is {} s by its units: taken as milliseconds ({} s)", args.run.display(), img.tr_secs.unwrap_or(0.0) * 1000.0, img.tr_secs.unwrap_or(0.0));
    }
    let tr_secs = match tr_override {
        Some(tr) => tr,
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
    let pacing = Pacing { tr_secs, speed: if args.fast { f64::INFINITY } else { args.speed } };
    let bar = progress_bar(args.quiet, Some((img.volumes - args.start_at) as u64));
    let volumes = (args.start_at..img.volumes).map(|t| sender::nifti_wire_volume(&img, t, tr_secs));
    stream_and_report(config, volumes, pacing, &bar, |_| {}, || 0)?;
    Ok(())
}

/// Prints a table of the series in a DICOM folder.
fn list_series(run: &Path) -> anyhow::Result<()> {
    let scan = FolderScan::read(run).with_context(|| format!("reading {}", run.display()))?;
    println!("{:>6}  {:>7}  {:>11}  {:>7}  {:>14}  {:>7}  {:>6}  description", "series", "volumes", "indices", "missing", "voxels", "dtype", "TR s");
    for (number, (description, files)) in &scan.series {
        let (Some((&first_index, first_path)), Some(&last_index)) = (files.iter().next(), files.keys().next_back()) else { continue };
        let missing = last_index + 1 - first_index - files.len();
        let (voxels, dtype, tr) = match MosaicVolume::read(first_path) {
            Ok(v) => (
                format!("{} x {} x {}", v.dims[0], v.dims[1], v.dims[2]),
                v.dtype.numpy_name().to_string(),
                v.tr_secs.map(|t| format!("{t:.3}")).unwrap_or_else(|| "-".into()),
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
        println!("(no readable Siemens mosaic volume)");
    }
    let others = [(scan.not_dicom.len(), "files are not DICOM"), (scan.unreadable.len(), "DICOM files are unreadable (run without --list to see why)"), (scan.duplicates.len(), "files repeat a volume of their series")];
    for (count, what) in others {
        if count > 0 {
            println!("{count} {what}");
        }
    }
    Ok(())
}

/// A finished series: every volume of the chosen series in index order, at TR pace.
fn send_dicom_series(args: &Args, config: &Config, tr_override: Option<f64>) -> anyhow::Result<()> {
    let run = SeriesRun::open(&args.run, args.series, args.start_at).map_err(anyhow::Error::msg)?;
    for warning in run.folder_warnings() {
        tracing::warn!("{warning}");
    }
    let tr_secs = match tr_override.or(run.first.tr_secs) {
        Some(tr) => tr,
        None => bail!("{} has no RepetitionTime (0018,0080): give --tr-secs", run.first.path.display()),
    };
    tracing::info!("{}", run.describe(tr_secs));
    let skipped = std::cell::Cell::new(run.files_skipped());
    let pacing = Pacing { tr_secs, speed: if args.fast { f64::INFINITY } else { args.speed } };
    let bar = progress_bar(args.quiet, Some(run.files.len() as u64));
    let volumes = run.wire_volumes(tr_secs, |e| {
        tracing::warn!("skipped: {e}");
        skipped.set(skipped.get() + 1);
    });
    stream_and_report(config, volumes, pacing, &bar, |_| {}, || skipped.get())?;
    Ok(())
}

/// A series still being written: each volume goes out as soon as its file is complete.
fn send_watched_folder(args: &Args, config: &Config, tr_override: Option<f64>) -> anyhow::Result<()> {
    if !args.run.is_dir() {
        bail!("--watch follows a folder; {} is a file", args.run.display());
    }
    let mut watcher = FolderWatcher::new(&args.run, args.series).with_context(|| format!("reading {}", args.run.display()))?;
    tracing::info!(
        "watching {} for {}",
        args.run.display(),
        match args.series {
            Some(n) => format!("series {n}"),
            None => "the next series".to_string(),
        }
    );
    let skipped = std::cell::Cell::new(0usize);
    // Index -> when its file was last written, and how long after that the receiver acknowledged it.
    let written = std::cell::RefCell::new(HashMap::new());
    let mut acknowledged_ms = Vec::new();
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let idle_limit = (args.idle_secs > 0.0).then(|| Duration::from_secs_f64(args.idle_secs));
    let mut queue = std::collections::VecDeque::new();
    let mut sent = 0usize;
    let mut last_volume_at = Instant::now();
    let mut announced = false;
    let mut folder_unreadable_since: Option<Instant> = None;
    let volumes = std::iter::from_fn(|| loop {
        if args.volumes.is_some_and(|n| sent >= n) {
            return None;
        }
        if let Some(v) = queue.pop_front() {
            sent += 1;
            return Some(v);
        }
        if idle_limit.is_some_and(|limit| last_volume_at.elapsed() >= limit) {
            tracing::info!("no new volume for {} s: stopping", args.idle_secs);
            return None;
        }
        std::thread::sleep(poll);
        // A folder on a network share may vanish for a moment: say so once and keep looking.
        let findings = match watcher.poll() {
            Ok(f) => {
                if let Some(since) = folder_unreadable_since.take() {
                    tracing::info!("{} is readable again after {:.1} s", args.run.display(), since.elapsed().as_secs_f64());
                }
                f
            }
            Err(e) => {
                if folder_unreadable_since.is_none() {
                    tracing::warn!("cannot read {}: {e}; still trying", args.run.display());
                    folder_unreadable_since = Some(Instant::now());
                }
                continue;
            }
        };
        for message in findings.skipped {
            tracing::warn!("skipped: {message}");
            skipped.set(skipped.get() + 1);
        }
        if let (false, Some(series)) = (announced, watcher.series()) {
            tracing::info!("following series {series}");
            announced = true;
        }
        for WatchedVolume { volume: v, written_at } in findings.volumes {
            if v.index < args.start_at {
                continue;
            }
            match tr_override.or(v.tr_secs) {
                Some(tr_secs) => {
                    if let Some(t) = written_at {
                        written.borrow_mut().insert(v.index, t);
                    }
                    queue.push_back(mosaic_wire_volume(&v, tr_secs));
                }
                None => {
                    tracing::warn!("skipped: {} has no RepetitionTime (0018,0080): give --tr-secs", v.path.display());
                    skipped.set(skipped.get() + 1);
                }
            }
            last_volume_at = Instant::now();
        }
    });
    let pacing = Pacing { tr_secs: 0.0, speed: f64::INFINITY };
    let bar = progress_bar(args.quiet, args.volumes.map(|n| n as u64));
    let on_reply = |index: usize| {
        if let Some(age) = written.borrow().get(&index).and_then(|t| SystemTime::now().duration_since(*t).ok()) {
            acknowledged_ms.push(age.as_secs_f64() * 1e3);
        }
    };
    stream_and_report(config, volumes, pacing, &bar, on_reply, || skipped.get())?;
    if !acknowledged_ms.is_empty() {
        let p = Percentiles::new(&acknowledged_ms);
        println!(
            "file written -> volume acknowledged: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms over {} volumes (polling every {} ms)",
            p.at(50.0),
            p.at(95.0),
            p.at(100.0),
            acknowledged_ms.len(),
            args.poll_ms
        );
    }
    let unfinished = watcher.unfinished();
    if let Some(first) = unfinished.first() {
        tracing::warn!(
            "{} files in {} were still incomplete or unsettled when sending stopped (first: {}); send them with \
             `hyper-rt send FOLDER --series N --start-at I` once written",
            unfinished.len(),
            args.run.display(),
            first.display()
        );
    }
    Ok(())
}
