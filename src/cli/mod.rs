//! Command-line interface: one file per subcommand. Errors are printed once here, with their context chain.

mod bench_generator;
mod bench_intake;
mod bench_preprocess;
mod bench_train;
mod demo;
mod dicom_listen;
mod eval;
mod generate;
mod gpu_info;
mod launch_plan;
mod live;
mod realign;
mod receive;
mod recover;
mod send;
mod simulate;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use hyper_rt::config::Config;

/// hyper-rt: live fMRI face reconstruction (HYPER) with a Pyneal-compatible scanner intake.
///
/// Quick start: `hyper-rt demo` runs everything on built-in defaults. A real session: start
/// `hyper-rt receive --expected-volumes N` beside the scanner, point Pyneal Scanner (or `hyper-rt send`) at it.
#[derive(Parser, Debug)]
#[command(name = "hyper-rt", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file (every key is documented in config/default.toml); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// More log output (debug level). RUST_LOG overrides.
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive volumes from Pyneal Scanner (or `hyper-rt send`) over ZeroMQ and record the session.
    Receive(receive::Args),
    /// Play a run to a receiver exactly as Pyneal Scanner would: a NIfTI file or a scanner export (Siemens or GE DICOM, Philips PAR/REC), also live (--watch).
    Send(send::Args),
    /// Finalise a session folder left unfinalised by a crash (or every such folder under a root).
    Recover(recover::Args),
    /// The built-in demonstration: simulate a subject, train a decoder, stream the test run live and evaluate.
    Demo(demo::Args),
    /// Simulate a subject and scanner runs with known ground truth (BIDS dataset, or streamed live).
    Simulate(simulate::Args),
    /// Realign a run to a reference (rigid body), as done live; writes the resliced run and motion.tsv.
    Realign(realign::Args),
    /// Train the decoder (voxel patterns -> latents) on a BIDS dataset's training trials.
    Train(train::Args),
    /// Evaluate a decoder on test trials with HYPER's measures; writes a report and an image grid.
    Eval(eval::Args),
    /// The live session: receive, preprocess, decode, draw and show, serve results to the stimulus computer.
    Live(live::Args),
    /// Run a recorded session (or a 4-D NIfTI run) through the live pipeline at TR pace or faster.
    Replay(live::ReplayArgs),
    /// Draw latents with the PGGAN generator and write PNGs.
    Generate(generate::Args),
    /// Benchmark the intake: reply latency and sustained volumes per second over loopback TCP.
    BenchIntake(bench_intake::Args),
    /// Benchmark preprocessing: per-volume time of realign + reslice + mask + detrend + z-score on one core.
    BenchPreprocess(bench_preprocess::Args),
    /// Benchmark the decoder fit at HYPER's size (1050 trials x 4096 voxels -> 512, 5-fold CV, 20 penalties).
    BenchTrain(bench_train::Args),
    /// Benchmark the generator: seconds per image, GFLOP/s, peak memory.
    BenchGenerator(bench_generator::Args),
    /// The GPU forward pass as kernel launches (kernels, grids, arguments, buffer sizes), worked out without a
    /// GPU and written with the weights, for replaying them in the CPU emulation of the kernels.
    LaunchPlan(launch_plan::Args),
    /// What the GPU path can use here: the driver, NVRTC, each GPU and which kernels run on it, and what
    /// `--device auto` will choose (and why, when it is the CPU).
    GpuInfo(gpu_info::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", hyper_rt::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Receive(args) => receive::run(args, config),
        Command::Send(args) => send::run(args, config),
        Command::Recover(args) => recover::run(args, config),
        Command::Demo(args) => demo::run(args, config),
        Command::Simulate(args) => simulate::run(args, config),
        Command::Realign(args) => realign::run(args, config),
        Command::Train(args) => train::run(args, config),
        Command::Eval(args) => eval::run(args, config),
        Command::Live(args) => live::run(args, config),
        Command::Replay(args) => live::replay(args, config),
        Command::Generate(args) => generate::run(args, config),
        Command::BenchIntake(args) => bench_intake::run(args, config),
        Command::BenchGenerator(args) => bench_generator::run(args, config),
        Command::BenchPreprocess(args) => bench_preprocess::run(args, config),
        Command::BenchTrain(args) => bench_train::run(args, config),
        Command::LaunchPlan(args) => launch_plan::run(args, config),
        Command::GpuInfo(args) => gpu_info::run(args, config),
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// How the GPU runs the generator, for the commands that draw or plan on it (`generate`, `bench-generator`,
/// `launch-plan`); the CPU ignores them.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct GpuRunArgs {
    /// GPU, TF32 convolution kernels (docs/benchmarks.md has their measured speeds): gather (every layer shape and GPU), staged (pipelined and spatial-tile wherever a layer's
    /// shape allows), or tuned (per layer the fastest on this GPU of the two, on the upsampling layers each also
    /// with the other --upsample form, after checking it against the gather kernel with the form asked for;
    /// `bench-generator --layers` prints what the tuning measured)
    #[arg(long, value_enum, default_value = "gather")]
    pub kernels: hyper_rt::generate::ConvKernels,
    /// GPU: how the upsampling layers run: phased (four 2 x 2 convolutions on the input grid, 4/9 of the
    /// multiply-adds) or folded (the upsample in the 3 x 3 convolution's indexing)
    #[arg(long, value_enum, default_value = "phased")]
    pub upsample: hyper_rt::generate::UpsampleConv,
    /// GPU: how a forward pass is queued: graph (captured once per batch size as a CUDA graph, replayed with one
    /// call; falls back to stream with a warning if the capture fails) or stream (kernel by kernel)
    #[arg(long, value_enum, default_value = "graph")]
    pub launch: hyper_rt::generate::GpuLaunch,
}

impl GpuRunArgs {
    /// The settings these flags ask for.
    pub fn settings(&self) -> hyper_rt::generate::GpuSettings {
        hyper_rt::generate::GpuSettings {
            kernels: self.kernels,
            upsample: self.upsample,
            launch: self.launch,
        }
    }

    /// Whether all are the defaults (nothing asked of a GPU).
    pub fn are_default(&self) -> bool {
        self.settings() == Default::default()
    }

    /// Sets them on the generator (the CPU ignores them).
    pub fn apply(
        &self,
        generator: &mut hyper_rt::generate::Backend,
    ) -> Result<(), hyper_rt::generate::GenerateError> {
        generator.use_gpu_settings(self.settings())
    }
}

/// Who may connect to the intake, and how far a header is trusted (`receive` and `live`).
#[derive(clap::Args, Debug, Clone)]
pub struct IntakeGuardArgs {
    /// Hosts that may connect over TCP: addresses or networks, e.g. --allow-from 192.168.2.10,192.168.2.0/24.
    /// Anyone else is refused before sending anything (logged with its address) [config: receiver.allow_from]
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS[/BITS]")]
    allow_from: Vec<String>,
    /// Drop a peer that connects and sends nothing for this long, so a hung old sender or a stray client cannot
    /// lock the scanner out; 0 = never [config: receiver.handshake_timeout_secs]
    #[arg(long)]
    handshake_timeout_secs: Option<f64>,
    /// Highest volIdx accepted when the run's length is not given [config: receiver.max_volume_index]
    #[arg(long)]
    max_volume_index: Option<usize>,
    /// After a crash or restart mid-run: go on with the newest unfinalised session recorded on this endpoint
    /// (same folder, volumes so far count, STOP at the right volume) instead of starting a new one. Only for the
    /// same run: a new run must start without it
    #[arg(long)]
    pub resume: bool,
}

impl IntakeGuardArgs {
    /// Lays the flags over `[receiver]`.
    pub fn apply(&self, config: &mut Config) {
        if !self.allow_from.is_empty() {
            config.receiver.allow_from = self.allow_from.clone();
        }
        hyper_rt::config::overlay(
            &mut config.receiver.handshake_timeout_secs,
            &self.handshake_timeout_secs,
        );
        hyper_rt::config::overlay(
            &mut config.receiver.max_volume_index,
            &self.max_volume_index,
        );
    }
}

/// Which GPU a command that draws runs on, when it runs on one.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct GpuIndexArg {
    /// The GPU to run on, in CUDA's numbering (`hyper-rt gpu-info` lists them; CUDA_VISIBLE_DEVICES hides and
    /// renumbers, CUDA_DEVICE_ORDER=PCI_BUS_ID gives nvidia-smi's order). Ignored on the CPU
    #[arg(long = "gpu", value_name = "INDEX", default_value_t = 0)]
    pub gpu_index: usize,
}

/// A flag set by Ctrl-C, SIGTERM or SIGHUP (the `ctrlc` crate's termination feature), so that a run ends
/// through its normal path and its session is finalised.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    if let Err(e) =
        ctrlc::set_handler(move || handler_flag.store(true, std::sync::atomic::Ordering::SeqCst))
    {
        tracing::warn!("Ctrl-C handler not installed: {e}");
    }
    flag
}

/// Prints a session summary as a short table.
pub fn print_summary(dir: &std::path::Path, s: &hyper_rt::ingest::recorder::Summary) {
    println!("session       {}", dir.display());
    println!(
        "end           {}{}",
        s.end_reason,
        if s.recovered_after_crash {
            " (recovered after a crash)"
        } else {
            ""
        }
    );
    println!("received      {}", s.received);
    println!(
        "rejected      {}{}",
        s.rejected,
        if s.rejected_by_kind.is_empty() {
            String::new()
        } else {
            format!(" {:?}", s.rejected_by_kind)
        }
    );
    println!("duplicates    {}", s.duplicates);
    println!(
        "missing       {}{}",
        s.missing,
        if s.missing_indices.is_empty() {
            String::new()
        } else {
            format!(" {:?}", s.missing_indices)
        }
    );
    println!("handshakes    {}", s.handshakes);
    let l = &s.reply_latency_ms;
    println!(
        "reply latency p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} messages",
        l.p50, l.p95, l.p99, l.max, l.count
    );
    if let Some(file) = &s.volumes_file {
        println!(
            "volumes       {} ({} volumes, {:?}, {})",
            dir.join(file).display(),
            s.volumes_in_file,
            s.dims.unwrap_or_default(),
            s.dtype.map(|d| d.numpy_name()).unwrap_or("-")
        );
    }
}

/// Binds a receiver (limits from `[receiver]`) with a new session recorder under `root`.
pub fn bind_receiver(
    config: &Config,
    root: &std::path::Path,
    bind: &str,
    expected: Option<usize>,
    idle_secs: f64,
    resume: bool,
) -> anyhow::Result<hyper_rt::ingest::receiver::Receiver> {
    use anyhow::Context;
    use hyper_rt::ingest::access::AllowRule;
    use hyper_rt::ingest::protocol::Limits;
    use hyper_rt::ingest::receiver::{Receiver, ReceiverSettings};
    use hyper_rt::ingest::recorder::{unix_secs_now, Recorder, SessionMeta};
    let meta = SessionMeta {
        started_unix_secs: unix_secs_now(),
        bind: bind.to_string(),
        expected_volumes: expected,
        max_volume_index: Some(config.receiver.max_volume_index),
        hyper_rt_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let settings = ReceiverSettings {
        bind: bind.to_string(),
        expected_volumes: expected,
        idle_timeout_secs: idle_secs,
        handshake_timeout_secs: config.receiver.handshake_timeout_secs,
        allow_from: config
            .receiver
            .allow_from
            .iter()
            .map(|entry| AllowRule::parse(entry))
            .collect::<Result<_, _>>()
            .context("receiver.allow_from (--allow-from)")?,
        limits: Limits {
            max_volume_bytes: config.receiver.max_volume_bytes,
            max_dim: config.receiver.max_dim,
            max_volume_index: config.receiver.max_volume_index,
        },
    };
    if resume {
        match hyper_rt::ingest::resume::find_resumable(root, bind) {
            Some(dir) => {
                tracing::info!("--resume: going on with {}", dir.display());
                return hyper_rt::ingest::resume::resume(&dir, settings)
                    .with_context(|| format!("--resume: reopening {}", dir.display()));
            }
            None => tracing::warn!(
                "--resume: no unfinalised session recorded on {bind} under {}: starting a new one",
                root.display()
            ),
        }
    }
    let recorder = Recorder::create(root, &meta)?;
    Ok(Receiver::bind(settings, recorder)?)
}

/// A receiver running in a background thread on an ephemeral loopback port (demo and benchmark).
pub struct LoopbackReceiver {
    pub endpoint: String,
    handle: std::thread::JoinHandle<anyhow::Result<hyper_rt::ingest::recorder::Summary>>,
}

impl LoopbackReceiver {
    /// Binds `tcp://127.0.0.1:*` and starts receiving `expected_volumes` volumes into a session under `root`.
    pub fn start(
        config: &Config,
        root: &std::path::Path,
        expected_volumes: Option<usize>,
        compress: bool,
    ) -> anyhow::Result<LoopbackReceiver> {
        let mut receiver = bind_receiver(
            config,
            root,
            "tcp://127.0.0.1:*",
            expected_volumes,
            30.0,
            false,
        )?;
        let endpoint = receiver.endpoint().to_string();
        let handle = std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                let never = AtomicBool::new(false);
                let reason = receiver.run(None, &never)?;
                Ok(receiver.finish(reason, compress)?)
            })?;
        Ok(LoopbackReceiver { endpoint, handle })
    }

    /// Waits for the run to end and returns the finalised summary.
    pub fn join(self) -> anyhow::Result<hyper_rt::ingest::recorder::Summary> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?
    }
}
