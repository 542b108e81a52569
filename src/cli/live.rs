//! `hyper-rt live` and `hyper-rt replay`: the whole pipeline on a scanner's stream, or on a recorded run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use hyper_rt::config::{overlay, Config, DisplayMode, LiveMode};
use hyper_rt::display::View;
use hyper_rt::generate::{DeviceChoice, Precision};
use hyper_rt::ingest::dicom_forward::{forward_dicom, DicomNode, ListenOptions, ListenReport};
use hyper_rt::ingest::follow::{follow_folder, FollowOptions, FollowReport};
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, WireVolume};
use hyper_rt::live::{self, LiveInputs, LiveStats};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::scanner::export::is_scanner_export;
use hyper_rt::scanner::series::SeriesRun;

/// Flags shared by `live` and `replay` (each overrides its `[live]` key).
#[derive(clap::Args, Debug)]
pub struct LiveFlags {
    /// Decoder bundle [live.decoder]
    #[arg(long)]
    decoder: Option<PathBuf>,
    /// Stimulus schedule (events.tsv) [live.events]
    #[arg(long)]
    events: Option<PathBuf>,
    /// Endpoint of a PUB socket sending onsets live as JSON {"onset": s, "stim_id": n} [live.onsets]
    #[arg(long)]
    onsets: Option<String>,
    /// Stimulus latents, to show the true stimulus [live.stimuli]
    #[arg(long)]
    stimuli: Option<PathBuf>,
    /// trials or sliding [live.mode]
    #[arg(long, value_enum)]
    mode: Option<LiveMode>,
    /// window, headless or none [live.display]
    #[arg(long, value_enum)]
    display: Option<DisplayMode>,
    /// Shorthand for --display headless
    #[arg(long)]
    headless: bool,
    /// operator, participant or feedback [live.view]
    #[arg(long, value_enum)]
    view: Option<View>,
    /// Generator checkpoint [live.weights]
    #[arg(long)]
    weights: Option<PathBuf>,
    /// auto, cpu or cuda [live.device]
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// The GPU to run on, in CUDA's numbering (`hyper-rt gpu-info` lists them) [live.gpu]
    #[arg(long, value_name = "INDEX")]
    gpu: Option<usize>,
    /// GPU arithmetic: f32 (the CPU's image to about 1e-6) or tf32 (tensor cores, faster) [live.precision]
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Results server port, 0 = any free one [live.results_port]
    #[arg(long)]
    results_port: Option<u16>,
    /// PUB endpoint [live.publish]
    #[arg(long)]
    publish: Option<String>,
    /// Folder of session folders [session.root]
    #[arg(long)]
    session_root: Option<PathBuf>,
    #[command(flatten)]
    web: WebFlags,
}

/// The browser console's flags, shared by `live`, `replay` and `demo`.
#[derive(clap::Args, Debug)]
pub struct WebFlags {
    /// Serve the browser console here: ADDR:PORT, or off. It prints its URL at the start: the operator console at
    /// /, the participant's screen at /participant (the reconstruction alone, for the stimulus computer's browser
    /// in kiosk mode), the feedback bar at /feedback, and /api/summary and /api/trials as JSON. On 127.0.0.1 only
    /// this computer can open it; on another address (0.0.0.0: every interface) each request needs the token the
    /// printed URL carries [live.web; default 127.0.0.1:8090]
    #[arg(long, value_name = "ADDR:PORT|off")]
    web: Option<String>,
    /// The token a non-loopback console asks for, at least 16 characters of A-Z a-z 0-9 - _ (not given: a new
    /// random one each session) [live.web_token]
    #[arg(long, value_name = "TOKEN")]
    web_token: Option<String>,
}

impl WebFlags {
    pub fn apply(&self, config: &mut Config) {
        overlay(&mut config.live.web, &self.web);
        if self.web_token.is_some() {
            config.live.web_token = self.web_token.clone();
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    flags: LiveFlags,
    /// Receiver endpoint [receiver.bind]
    #[arg(long)]
    bind: Option<String>,
    /// Volumes in the run; 0 = not known [receiver.expected_volumes]
    #[arg(long, short = 'n')]
    expected_volumes: Option<usize>,
    /// Follow a scanner's export folder (Siemens mosaic DICOM, GE DICOM one slice per file, Philips PAR/REC;
    /// also a session folder that gains one subfolder per series): each volume is sent to this session's
    /// receiver as soon as its file is complete (no scanner-side program needed) [live.export_folder]
    #[arg(long, visible_alias = "dicom-folder", value_name = "FOLDER")]
    export_folder: Option<PathBuf>,
    /// The series to follow in --export-folder (its files already there are taken too); not given: the next
    /// series to appear [live.export_series]
    #[arg(long, visible_alias = "dicom-series", value_name = "NUMBER")]
    export_series: Option<i64>,
    #[command(flatten)]
    guard: super::IntakeGuardArgs,
    #[command(flatten)]
    dicom: super::dicom_listen::DicomListenArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// A recorded session folder (its volumes.nii[.gz]), a 4-D NIfTI run, or a scanner's export as `hyper-rt
    /// send` reads it: a Siemens mosaic DICOM series (one file per volume), a GE series (one slice per file), a
    /// Philips PAR file holding the run, or a folder of Philips real-time PAR/REC pairs
    source: PathBuf,
    /// Scanner export: the series to replay (as `hyper-rt send --series`) when the folder holds several
    #[arg(long)]
    series: Option<i64>,
    #[command(flatten)]
    flags: LiveFlags,
    /// Playback speed relative to the TR
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

fn apply(flags: &LiveFlags, config: &mut Config) {
    let l = &mut config.live;
    overlay(&mut l.decoder, &flags.decoder);
    overlay(&mut l.events, &flags.events);
    overlay(&mut l.onsets, &flags.onsets);
    overlay(&mut l.stimuli, &flags.stimuli);
    overlay(&mut l.mode, &flags.mode);
    overlay(&mut l.display, &flags.display);
    if flags.headless {
        l.display = DisplayMode::Headless;
    }
    overlay(&mut l.view, &flags.view);
    overlay(&mut l.weights, &flags.weights);
    overlay(&mut l.device, &flags.device);
    overlay(&mut l.gpu, &flags.gpu);
    overlay(&mut l.precision, &flags.precision);
    overlay(&mut l.results_port, &flags.results_port);
    overlay(&mut l.publish, &flags.publish);
    overlay(&mut config.session.root, &flags.session_root);
    flags.web.apply(config);
}

/// A run to stream: how many volumes, the TR, and the volumes themselves.
pub struct RunStream {
    pub volumes: usize,
    pub tr_secs: f64,
    pub wire: Box<dyn Iterator<Item = WireVolume> + Send>,
}

impl RunStream {
    /// Every volume of a NIfTI run (TR 1 s when the file has none).
    pub fn nifti(img: NiftiImage) -> RunStream {
        let tr_secs = img.tr_secs.unwrap_or(1.0);
        let volumes = img.volumes;
        RunStream {
            volumes,
            tr_secs,
            wire: Box::new((0..volumes).map(move |t| sender::nifti_wire_volume(&img, t, tr_secs))),
        }
    }
}

/// Streams a run to `endpoint` on a background thread as Pyneal Scanner would, at `speed` times the TR pace.
pub fn stream_run_in_background(
    run: RunStream,
    endpoint: String,
    handshake: &'static str,
    speed: f64,
    progress: bool,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let scanner = ScannerSender::connect(&endpoint, handshake, 30.0)?;
        let bar = if progress {
            indicatif::ProgressBar::new(run.volumes as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        sender::stream(
            &scanner,
            run.wire,
            Pacing {
                tr_secs: run.tr_secs,
                speed,
            },
            |_, _| bar.inc(1),
        )?;
        bar.finish_and_clear();
        Ok(())
    })
}

/// Prints the run's summary; a stage that stopped early makes it an error (after the summary: the session is
/// complete and recorded either way).
pub fn report(stats: &LiveStats, dir: &Path) -> anyhow::Result<()> {
    println!("session          {}", dir.display());
    println!("end              {}", stats.end_reason);
    println!(
        "volumes          {} processed, {} rejected by preprocessing",
        stats.volumes_processed, stats.volumes_rejected_by_preprocessing
    );
    println!("decoded          {} patterns", stats.patterns_decoded);
    println!(
        "frames           {} drawn, {} shown, {} latents skipped by the generator, {} failed",
        stats.frames_drawn,
        stats.frames_shown,
        stats.latents_skipped_by_generator,
        stats.generator_errors
    );
    if let Some(why) = &stats.generator_fell_back_to_cpu {
        println!("generator        moved to the CPU: {why}");
    }
    if stats.stimulus_images_drawn + stats.stimulus_images_reused > 0 {
        println!(
            "stimuli          {} drawn, {} repeats taken from the cache",
            stats.stimulus_images_drawn, stats.stimulus_images_reused
        );
    }
    print!("{}", stats.latency_table());
    if !stats.stage_failures.is_empty() {
        let recording = if stats
            .stage_failures
            .iter()
            .any(|f| f.starts_with("ingest:"))
        {
            format!("the volumes acknowledged so far are in its spool: finalise them with `hyper-rt recover {}`", dir.display())
        } else {
            format!("the session in {} is complete", dir.display())
        };
        bail!(
            "{recording}, but these stages stopped early:\n  {}",
            stats.stage_failures.join("\n  ")
        );
    }
    Ok(())
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    apply(&args.flags, &mut config);
    overlay(&mut config.receiver.bind, &args.bind);
    if let Some(n) = args.expected_volumes {
        // 0 = not known (as Pyneal's own setting has it)
        config.receiver.expected_volumes = (n > 0).then_some(n);
    }
    overlay(&mut config.live.export_folder, &args.export_folder);
    overlay(&mut config.live.export_series, &args.export_series);
    args.guard.apply(&mut config);
    args.dicom.apply(&mut config);
    config.validate(Path::new("<command line>"))?;
    if let Some(folder) = config.live.export_folder.as_ref().filter(|f| !f.is_dir()) {
        bail!(
            "live.export_folder (--export-folder): {} is not a folder",
            folder.display()
        );
    }
    let inputs = LiveInputs::load(&config.live, None)?;
    let receiver = super::bind_receiver(
        &config,
        &config.session.root,
        &config.receiver.bind,
        config.receiver.expected_volumes,
        config.receiver.idle_timeout_secs,
        args.guard.resume,
    )?;
    println!("listening on {}", receiver.endpoint());
    let stop = super::interrupt_flag();
    let follower = config
        .live
        .export_folder
        .clone()
        .map(|folder| follow_in_background(&config, folder, receiver.endpoint(), stop.clone()));
    let dicom_node = match config.dicom.listen {
        Some(_) => {
            let options = super::dicom_listen::listen_options(
                &config,
                config.live.export_series,
                config.receiver.expected_volumes,
                0.0,
                None,
            )?;
            let node = super::dicom_listen::start_node(&options)?;
            Some(listen_in_background(
                node,
                options,
                receiver.endpoint(),
                stop.clone(),
            ))
        }
        None => None,
    };
    let outcome = live::run(receiver, inputs, stop.clone());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for (thread, what) in [
        (follower, "the export folder follower"),
        (dicom_node, "the DICOM network receiver"),
    ] {
        if thread.is_some_and(|t| t.join().is_err()) {
            tracing::error!("{what} panicked");
        }
    }
    let (stats, dir) = outcome?;
    report(&stats, &dir)
}

/// Follows the export `folder` on a background thread, sending each volume to this session's own receiver.
fn follow_in_background(
    config: &Config,
    folder: PathBuf,
    receiver_endpoint: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let endpoint = local_endpoint(receiver_endpoint);
    let options = FollowOptions {
        series: config.live.export_series,
        max_volumes: config.receiver.expected_volumes,
        ..FollowOptions::default()
    };
    std::thread::spawn(move || {
        // Said at once: the session goes on (a scanner-side sender may still connect) but gets nothing from here.
        let follow = || -> anyhow::Result<FollowReport> {
            let sender = ScannerSender::connect(
                &endpoint,
                "hello from hyper-rt live (export folder)",
                30.0,
            )?;
            Ok(follow_folder(&folder, &options, &sender, &stop, |_, _| {})?)
        };
        let report = match follow() {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(
                    "following {} stopped: {}",
                    folder.display(),
                    hyper_rt::error_chain(&e)
                );
                return;
            }
        };
        let latency = report
            .latency_summary()
            .map(|s| format!("; {s}"))
            .unwrap_or_default();
        tracing::info!(
            "{}: {} volumes sent, {} files skipped{latency}",
            folder.display(),
            report.stream.sent,
            report.files_skipped
        );
    })
}

/// The receiver may be bound to every interface; a sender inside this process reaches it on this machine.
fn local_endpoint(receiver_endpoint: &str) -> String {
    receiver_endpoint
        .replace("://0.0.0.0:", "://127.0.0.1:")
        .replace("://*:", "://127.0.0.1:")
}

/// Receives images over the DICOM network on a background thread, sending each volume to this session's own
/// receiver.
fn listen_in_background(
    node: DicomNode,
    options: ListenOptions,
    receiver_endpoint: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let endpoint = local_endpoint(receiver_endpoint);
    std::thread::spawn(move || {
        let listen = || -> anyhow::Result<ListenReport> {
            let sender = ScannerSender::connect(
                &endpoint,
                "hello from hyper-rt live (DICOM network)",
                30.0,
            )?;
            Ok(forward_dicom(node, &options, &sender, &stop, |_, _| {})?)
        };
        match listen() {
            Ok(report) => {
                let latency = report
                    .latency_summary()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default();
                tracing::info!("{}{latency}", super::dicom_listen::counts_line(&report));
            }
            // Said at once: the session goes on (a scanner-side sender may still connect) but gets nothing from here.
            Err(e) => tracing::error!(
                "the DICOM network receiver stopped: {}",
                hyper_rt::error_chain(&e)
            ),
        }
    })
}

pub fn replay(args: ReplayArgs, mut config: Config) -> anyhow::Result<()> {
    apply(&args.flags, &mut config);
    config.validate(Path::new("<command line>"))?;
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be positive");
    }
    let session_volumes = ["volumes.nii.gz", "volumes.nii"]
        .iter()
        .map(|n| args.source.join(n))
        .find(|p| p.is_file());
    let is_export_series = is_scanner_export(&args.source)
        .with_context(|| format!("reading {}", args.source.display()))?;
    let (run, dims) = match session_volumes {
        None if args.source.join("spool.bin").is_file() => {
            bail!(
                "{} is a session that was not finalised: run `hyper-rt recover {}` first",
                args.source.display(),
                args.source.display()
            )
        }
        None if is_export_series => {
            let series = SeriesRun::open(&args.source, args.series, 0)?;
            for warning in series.folder_warnings() {
                tracing::warn!("{warning}");
            }
            let tr_secs = series.first.tr_secs.unwrap_or(1.0);
            tracing::info!("replaying {}", series.describe(tr_secs));
            let (volumes, dims) = (series.files.len(), series.first.dims);
            let wire = Box::new(
                series
                    .volumes(|message, _| tracing::warn!("skipped: {message}"))
                    .map(move |v| sender::exported_wire_volume(&v, tr_secs)),
            );
            (
                RunStream {
                    volumes,
                    tr_secs,
                    wire,
                },
                dims,
            )
        }
        found => {
            let img = NiftiImage::read(found.as_deref().unwrap_or(&args.source))?;
            let dims = img.dims;
            (RunStream::nifti(img), dims)
        }
    };
    let inputs = LiveInputs::load(&config.live, None)?;
    if inputs.bundle.dims != dims {
        bail!(
            "{} has volumes of {:?} but the decoder was trained on {:?}: every volume would be rejected",
            args.source.display(),
            dims,
            inputs.bundle.dims
        );
    }
    let receiver = super::bind_receiver(
        &config,
        &config.session.root,
        "tcp://127.0.0.1:*",
        Some(run.volumes),
        30.0,
        false,
    )?;
    let sender_thread = stream_run_in_background(
        run,
        receiver.endpoint().to_string(),
        "hello from hyper-rt replay",
        args.speed,
        false,
    );
    let stop = super::interrupt_flag();
    let (stats, dir) = live::run(receiver, inputs, stop.clone())?;
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Ctrl-C: the session is finalised; the sender may be waiting for a reply that will not come, and ends
        // with the process
        println!("replay interrupted: the volumes so far are in the session");
    } else {
        sender_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the replay sender panicked"))??;
    }
    report(&stats, &dir)
}
