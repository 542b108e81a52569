//! `hyper-rt receive`: bind the Pyneal-compatible intake, record the session, print the summary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use hyper_rt::config::{overlay, Config};
use hyper_rt::ingest::recorder;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Endpoint to bind, e.g. tcp://0.0.0.0:5555 or ipc:///tmp/scanner [config: receiver.bind]
    #[arg(long)]
    bind: Option<String>,
    /// Volumes in the run; the reply to the last one says STOP [config: receiver.expected_volumes]
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
}

pub fn run(args: Args, mut config: Config) -> anyhow::Result<()> {
    overlay(&mut config.receiver.bind, &args.bind);
    overlay(
        &mut config.receiver.expected_volumes,
        &args.expected_volumes,
    );
    overlay(
        &mut config.receiver.idle_timeout_secs,
        &args.idle_timeout_secs,
    );
    overlay(&mut config.session.root, &args.session_root);
    if args.no_compress {
        config.session.compress = false;
    }
    config.validate(std::path::Path::new("<command line>"))?;

    if config.session.recover_on_start {
        for dir in recorder::find_unfinalised(&config.session.root) {
            tracing::warn!(
                "session {} was left unfinalised (crash?): recovering it",
                dir.display()
            );
            let summary = recorder::finalise_dir(&dir, "recovered", true, config.session.compress)
                .with_context(|| format!("recovering {}", dir.display()))?;
            tracing::info!(
                "recovered {} volumes into {}",
                summary.received,
                dir.display()
            );
        }
    }

    let r = &config.receiver;
    let mut receiver = super::bind_receiver(
        &config,
        &config.session.root,
        &r.bind,
        r.expected_volumes,
        r.idle_timeout_secs,
    )?;
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
