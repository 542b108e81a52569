//! `hyper-rt recover`: finalise session folders that a crash left unfinalised.

use std::path::PathBuf;

use anyhow::bail;
use hyper_rt::config::Config;
use hyper_rt::ingest::{finalise, recorder};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A session folder, or a sessions root (every unfinalised folder under it is recovered).
    session: PathBuf,
}

pub fn run(args: Args, config: Config) -> anyhow::Result<()> {
    let dirs = if recorder::is_unfinalised(&args.session) {
        vec![args.session.clone()]
    } else {
        recorder::find_unfinalised(&args.session)
    };
    if dirs.is_empty() {
        if args.session.join("summary.json").is_file() {
            println!("{} is already finalised", args.session.display());
            return Ok(());
        }
        if args.session.is_dir() {
            println!(
                "nothing to recover: no unfinalised session under {}",
                args.session.display()
            );
            return Ok(());
        }
        bail!(
            "{} is neither a session folder nor a folder of sessions",
            args.session.display()
        );
    }
    let mut failed = Vec::new();
    for dir in dirs {
        // one session that cannot be recovered (a full disk, a damaged spool) does not keep the others back
        match finalise::finalise_dir(&dir, "recovered", true, config.session.compress) {
            Ok(summary) => super::print_summary(&dir, &summary),
            Err(e @ recorder::RecordError::InUse { .. }) => eprintln!("note: {e}"),
            Err(e) => {
                eprintln!(
                    "error: recovering {}: {e}\n  its spool is kept; fix the cause (free disk space?) and run `hyper-rt recover {}` again",
                    dir.display(),
                    dir.display()
                );
                failed.push(dir);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} of the sessions could not be recovered", failed.len());
    }
    Ok(())
}
