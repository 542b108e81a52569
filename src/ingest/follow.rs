//! Following a scanner's export folder and sending each volume as soon as its file is complete (`hyper-rt send
//! FOLDER --watch`, `hyper-rt live --export-folder`): the watcher of [`crate::scanner::watch`] feeding the sender.

use std::cell::Cell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::ingest::sender::{self, Pacing, ScannerSender, SendError, StreamReport};
use crate::scanner::watch::{FolderWatcher, WatchedVolume};
use crate::stats::latency_line;

/// How to follow a folder (see [`follow_folder`]).
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The series to follow; `None`: the first to gain a file after the start (files already there are earlier runs).
    pub series: Option<i64>,
    /// Volumes with a lower index are not sent.
    pub start_at: usize,
    /// Stop after sending this many volumes.
    pub max_volumes: Option<usize>,
    /// Stop after this many seconds without a new volume (0: never).
    pub idle_secs: f64,
    /// Milliseconds between looks at the folder.
    pub poll_ms: u64,
    /// The TR sent with every volume instead of the file's `RepetitionTime`.
    pub tr_override_secs: Option<f64>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            series: None,
            start_at: 0,
            max_volumes: None,
            idle_secs: 0.0,
            poll_ms: 20,
            tr_override_secs: None,
        }
    }
}

/// What following a folder did.
#[derive(Debug, Default)]
pub struct FollowReport {
    pub stream: StreamReport,
    /// Files named in a warning and left out (neither DICOM nor PAR/REC, damaged, a repeated volume, no TR).
    pub files_skipped: usize,
    /// For each volume sent: milliseconds from its file's last write to the receiver's reply.
    pub written_to_acknowledged_ms: Vec<f64>,
}

impl FollowReport {
    /// "file written -> volume acknowledged: p50 .. ms, p95 .. ms, max .. ms over N volumes", if any was sent.
    pub fn latency_summary(&self) -> Option<String> {
        latency_line(
            "file written -> volume acknowledged",
            &self.written_to_acknowledged_ms,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("{dir}: {source}")]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Follows `dir` as the scanner writes one file (or PAR/REC pair) per volume into it and sends each volume to `sender` as
/// soon as its file is complete, until the receiver says STOP, `max_volumes` were sent, `idle_secs` passed
/// without a new volume, or `stop` is set. Files left out and a folder that cannot be read for a while are
/// logged (once per outage) and the run goes on. `progress` is called after each reply.
pub fn follow_folder(
    dir: &Path,
    options: &FollowOptions,
    sender: &ScannerSender,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, &str),
) -> Result<FollowReport, FollowError> {
    let mut watcher =
        FolderWatcher::new(dir, options.series).map_err(|source| FollowError::Folder {
            dir: dir.to_path_buf(),
            source,
        })?;
    tracing::info!(
        "watching {} for {}",
        dir.display(),
        options
            .series
            .map_or_else(|| "the next series".to_string(), |n| format!("series {n}"))
    );
    let poll = Duration::from_millis(options.poll_ms.max(1));
    let idle_limit = (options.idle_secs > 0.0).then(|| Duration::from_secs_f64(options.idle_secs));
    let skipped = Cell::new(0usize);
    // When the file of the volume last handed to the sender was written: the stream is lock-step, so the next
    // reply is that volume's.
    let sent_file_written_at: Cell<Option<SystemTime>> = Cell::new(None);
    let mut written_to_acknowledged_ms = Vec::new();
    let mut queue = VecDeque::new();
    let mut sent = 0usize;
    let mut last_volume_at = Instant::now();
    let mut announced = false;
    let mut unreadable_since: Option<Instant> = None;
    let volumes = std::iter::from_fn(|| loop {
        if options.max_volumes.is_some_and(|n| sent >= n) || stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some((v, written_at)) = queue.pop_front() {
            sent += 1;
            sent_file_written_at.set(written_at);
            return Some(v);
        }
        if idle_limit.is_some_and(|limit| last_volume_at.elapsed() >= limit) {
            tracing::info!("no new volume for {} s: stopping", options.idle_secs);
            return None;
        }
        std::thread::sleep(poll);
        // A folder on a network share may vanish for a moment: say so once and keep looking.
        let findings = match watcher.poll() {
            Ok(f) => {
                if let Some(since) = unreadable_since.take() {
                    tracing::info!(
                        "{} is readable again after {:.1} s",
                        dir.display(),
                        since.elapsed().as_secs_f64()
                    );
                }
                f
            }
            Err(e) => {
                if unreadable_since.is_none() {
                    tracing::warn!("cannot read {}: {e}; still trying", dir.display());
                    unreadable_since = Some(Instant::now());
                }
                continue;
            }
        };
        for note in findings.notes {
            tracing::warn!("{note}");
        }
        for message in findings.skipped {
            tracing::warn!("skipped: {message}");
            skipped.set(skipped.get() + 1);
        }
        if let (false, Some(series)) = (announced, watcher.series()) {
            tracing::info!("following series {series}");
            announced = true;
        }
        for WatchedVolume { volume, written_at } in findings.volumes {
            if volume.index < options.start_at {
                continue;
            }
            match options.tr_override_secs.or(volume.tr_secs) {
                Some(tr_secs) => {
                    queue.push_back((sender::exported_wire_volume(&volume, tr_secs), written_at))
                }
                None => {
                    tracing::warn!(
                        "skipped: {} gives no TR: give the TR",
                        volume.path.display()
                    );
                    skipped.set(skipped.get() + 1);
                }
            }
            last_volume_at = Instant::now();
        }
    });
    let as_fast_as_files_come = Pacing {
        tr_secs: 0.0,
        speed: f64::INFINITY,
    };
    let stream = sender::stream(sender, volumes, as_fast_as_files_come, |index, reply| {
        if let Some(age) = sent_file_written_at
            .get()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
        {
            written_to_acknowledged_ms.push(age.as_secs_f64() * 1e3);
        }
        progress(index, reply);
    })?;
    let unfinished = watcher.unfinished();
    if let Some(first) = unfinished.first() {
        tracing::warn!(
            "{} files in {} were still incomplete or unsettled when sending stopped (first: {}); send them with \
             `hyper-rt send FOLDER --series N --start-at I` once written",
            unfinished.len(),
            dir.display(),
            first.display()
        );
    }
    Ok(FollowReport {
        stream,
        files_skipped: skipped.get(),
        written_to_acknowledged_ms,
    })
}
