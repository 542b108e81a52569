//! `hyper-rt recover`: finalise session folders that a crash left unfinalised.

use std::path::PathBuf;

use anyhow::{bail, Context};
use hyper_rt::config::Config;
use hyper_rt::ingest::recorder;

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
        bail!(
            "{} is neither an unfinalised session folder nor a folder holding one",
            args.session.display()
        );
    }
    for dir in dirs {
        let summary = recorder::finalise_dir(&dir, "recovered", true, config.session.compress)
            .with_context(|| format!("recovering {}", dir.display()))?;
        super::print_summary(&dir, &summary);
    }
    Ok(())
}
