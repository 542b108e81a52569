//! `hyper-rt receive`: bind the Pyneal-compatible intake, record the session, print the summary.

use std::io::Write;
use std::path::PathBuf;

use hyper_rt::config::{overlay, Config};
use hyper_rt::ingest::finalise;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Endpoint to bind, e.g. tcp://0.0.0.0:5555 or ipc:///tmp/scanner [config: receiver.bind]
    #[arg(long)]
    bind: Option<String>,
    /// Volumes in the run; the reply to the last one says STOP; 0 = not known [config: receiver.expected_volumes]
    #[arg(long, short = 'n')]
    expected_volumes: Option<usize>,
    /// End the run after this many seconds without a message, 0 = never [config: receiver.idle_timeout_secs]
    #[arg(long)]
    idle_timeout_secs: Option<f64>,
    /// Folder holding one session folder per run [config: session.root]
    #[arg(long)]
    session_root: Option<PathBuf>,
    /// Write volumes.nii instead of volumes.nii.gz [config: session.compress = false]
    #[arg(long)]
    no_compress: bool,
    #[command(flatten)]
    guard: super::IntakeGuardArgs,
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    overlay(&mut config.receiver.bind, &args.bind);
    if let Some(n) = args.expected_volumes {
        // 0 = not known (as Pyneal's own setting has it)
        config.receiver.expected_volumes = (n > 0).then_some(n);
    }
    overlay(
        &mut config.receiver.idle_timeout_secs,
        &args.idle_timeout_secs,
    );
    overlay(&mut config.session.root, &args.session_root);
    args.guard.apply(&mut config);
    if args.no_compress {
        config.session.compress = false;
    }
    config.validate(std::path::Path::new("<command line>"))?;

    let r = &config.receiver;
    let mut receiver = super::bind_receiver(
        &config,
        &config.session.root,
        &r.bind,
        r.expected_volumes,
        r.idle_timeout_secs,
        args.guard.resume,
    )?;
    if config.session.recover_on_start {
        // after binding, so that a session resumed here is locked and left alone; a session that cannot be
        // recovered now is named and kept, and does not stop this run
        let (recovered, _failed) =
            finalise::recover_all(&config.session.root, config.session.compress);
        for (dir, summary) in recovered {
            tracing::info!(
                "recovered {} volumes into {}",
                summary.received,
                dir.display()
            );
        }
    }
    let dir = receiver.session_dir().to_path_buf();
    println!("listening on {}", receiver.endpoint());
    println!("recording to {}", dir.display());
    std::io::stdout().flush().ok();
    let stop = super::interrupt_flag();
    let reason = receiver.run(None, &stop)?;
    let summary = receiver.finish(reason, config.session.compress)?;
    super::print_summary(&dir, &summary);
    Ok(())
}
