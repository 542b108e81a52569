//! Siemens DICOM series on disk as a source of volumes for the sender: a finished series in a folder
//! (replayed at TR pace) or a folder the scanner is writing into (followed as files arrive).
//!
//! Both read every file with [`MosaicVolume::read`]. A file that is not DICOM, or is damaged, never stops the
//! run: it is named in a warning, counted, and skipped. A folder may hold several series; one is chosen by
//! its `SeriesNumber`. The volume index sent is the file's `InstanceNumber` minus one, so the receiver sees
//! the scanner's own numbering even when files arrive out of order or one is missing.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::dicom::{looks_like_dicom, DicomError, MosaicVolume};
use crate::ingest::sender::{self, Pacing, ScannerSender, SendError, StreamReport, WireVolume};
use crate::stats::Percentiles;

/// The wire form of a mosaic volume, sent with `tr_secs`.
pub fn mosaic_wire_volume(v: &MosaicVolume, tr_secs: f64) -> WireVolume {
    WireVolume::from_x_fastest(v.index, v.dtype, v.dims, v.mm_from_voxel, tr_secs, &v.voxel_bytes)
}

/// The regular, non-hidden files of a folder, sorted by name.
fn folder_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// What a folder holds: one entry per series, each volume's file by index.
#[derive(Debug, Default)]
pub struct FolderScan {
    /// SeriesNumber -> (description, index -> file).
    pub series: BTreeMap<i64, (String, BTreeMap<usize, PathBuf>)>,
    /// Files without the DICOM marker.
    pub not_dicom: Vec<PathBuf>,
    /// DICOM files that could not be read as a mosaic volume: the message names the file and the reason.
    pub unreadable: Vec<String>,
    /// Files whose series already had a file for the same volume index (the first by name is kept).
    pub duplicates: Vec<PathBuf>,
}

impl FolderScan {
    /// Reads every file of `dir` (or the one file `dir` names).
    pub fn read(dir: &Path) -> std::io::Result<FolderScan> {
        let files = if dir.is_dir() { folder_files(dir)? } else { vec![dir.to_path_buf()] };
        let mut scan = FolderScan::default();
        for path in files {
            match MosaicVolume::read(&path) {
                Ok(v) => {
                    let (_, by_index) = scan.series.entry(v.series_number).or_insert_with(|| (v.series_description.clone(), BTreeMap::new()));
                    match by_index.entry(v.index) {
                        std::collections::btree_map::Entry::Occupied(_) => scan.duplicates.push(path),
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert(path);
                        }
                    }
                }
                Err(DicomError::NotDicom { .. }) => scan.not_dicom.push(path),
                Err(e) => scan.unreadable.push(e.to_string()),
            }
        }
        Ok(scan)
    }

    /// The files of the chosen series in volume order: `series` if given, else the only one present.
    pub fn choose(&self, dir: &Path, series: Option<i64>) -> Result<(i64, Vec<(usize, PathBuf)>), String> {
        let listing = || {
            self.series
                .iter()
                .map(|(n, (desc, files))| format!("series {n} ({}{} volumes)", if desc.is_empty() { String::new() } else { format!("{desc}, ") }, files.len()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let number = match series {
            Some(n) if self.series.contains_key(&n) => n,
            Some(n) => return Err(format!("{} holds no volume of series {n}; it holds {}", dir.display(), or_nothing(&listing()))),
            None if self.series.len() == 1 => *self.series.keys().next().unwrap_or(&0),
            None if self.series.is_empty() => {
                let reasons: String = self.unreadable.iter().take(3).map(|m| format!("\n  {m}")).collect();
                return Err(format!(
                    "{} holds no readable Siemens mosaic volume ({} not DICOM, {} unreadable){reasons}",
                    dir.display(),
                    self.not_dicom.len(),
                    self.unreadable.len()
                ));
            }
            None => return Err(format!("{} holds several series: {}; choose one with --series", dir.display(), listing())),
        };
        let files = self.series.get(&number).map(|(_, f)| f.iter().map(|(&i, p)| (i, p.clone())).collect()).unwrap_or_default();
        Ok((number, files))
    }
}

/// A finished series chosen from a folder, ready to be played: its files in volume order and its first volume
/// (for the geometry, type and TR), with what the folder held besides.
pub struct SeriesRun {
    pub number: i64,
    /// Volume index -> file, ascending.
    pub files: Vec<(usize, PathBuf)>,
    pub first: MosaicVolume,
    pub scan: FolderScan,
}

impl SeriesRun {
    /// Reads `path` (a folder, or one file) and chooses `series` (or the only one) from volume `start_at` on.
    pub fn open(path: &Path, series: Option<i64>, start_at: usize) -> Result<SeriesRun, String> {
        let scan = FolderScan::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (number, files) = scan.choose(path, series)?;
        let files: Vec<(usize, PathBuf)> = files.into_iter().filter(|(index, _)| *index >= start_at).collect();
        let Some((_, first_path)) = files.first() else {
            return Err(format!("series {number} in {} has no volume from index {start_at} on", path.display()));
        };
        let first = MosaicVolume::read(first_path).map_err(|e| e.to_string())?;
        Ok(SeriesRun { number, files, first, scan })
    }

    /// Warnings for what the folder held that is not sent: files that are not DICOM, unreadable or repeated.
    pub fn folder_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self.scan.unreadable.iter().map(|m| format!("skipped: {m}")).collect();
        if let Some(first) = self.scan.not_dicom.first() {
            warnings.push(format!("skipped {} files that are not DICOM (first: {})", self.scan.not_dicom.len(), first.display()));
        }
        warnings.extend(self.scan.duplicates.iter().map(|p| format!("skipped {}: its series already has a file for the same volume number", p.display())));
        warnings
    }

    /// Files left out of the run by [`SeriesRun::folder_warnings`].
    pub fn files_skipped(&self) -> usize {
        self.scan.unreadable.len() + self.scan.not_dicom.len() + self.scan.duplicates.len()
    }

    /// One line for the log: series, volumes, gaps, matrix, type, TR and where the slice normal came from.
    pub fn describe(&self, tr_secs: f64) -> String {
        let (first_index, last_index) = (self.files.first().map_or(0, |f| f.0), self.files.last().map_or(0, |f| f.0));
        let missing = last_index + 1 - first_index - self.files.len();
        format!(
            "series {}{}: {} volumes ({first_index} to {last_index}{}) of {:?} {}, TR {tr_secs} s, slice normal from {}",
            self.number,
            if self.first.series_description.is_empty() { String::new() } else { format!(" ({})", self.first.series_description) },
            self.files.len(),
            if missing > 0 { format!(", {missing} missing") } else { String::new() },
            self.first.dims,
            self.first.dtype.numpy_name(),
            if self.first.slice_normal_from_csa { "the CSA header" } else { "the image orientation (no CSA header)" }
        )
    }

    /// The volumes for the wire, read one at a time; a file that changed or broke since the folder was read
    /// goes to `skipped` and the run goes on.
    pub fn wire_volumes(self, tr_secs: f64, mut skipped: impl FnMut(DicomError)) -> impl Iterator<Item = WireVolume> {
        self.files.into_iter().filter_map(move |(_, path)| match MosaicVolume::read(&path) {
            Ok(v) => Some(mosaic_wire_volume(&v, tr_secs)),
            Err(e) => {
                skipped(e);
                None
            }
        })
    }
}

fn or_nothing(s: &str) -> &str {
    if s.is_empty() {
        "nothing readable"
    } else {
        s
    }
}

/// How long a file that does not read as a mosaic volume is waited for (it may still be being written, or
/// have been allocated at full size before being filled) before it is reported and skipped.
pub const SETTLE_SECS: f64 = 2.0;

/// A file the watcher has seen but not yet sent or given up on.
struct Pending {
    /// Size and modification time: a file is read once both are unchanged since the previous look.
    signature: (u64, Option<SystemTime>),
    /// When the signature was last seen to change.
    changed_at: Instant,
}

/// A volume read from a watched folder.
#[derive(Debug)]
pub struct WatchedVolume {
    pub volume: MosaicVolume,
    /// The file's modification time: when the scanner finished writing it (for the latency summary).
    pub written_at: Option<SystemTime>,
}

/// What one look at the watched folder found.
#[derive(Debug, Default)]
pub struct WatchFindings {
    /// Volumes of the followed series, ready to send, by index.
    pub volumes: Vec<WatchedVolume>,
    /// Files given up on, each message naming the file and why (not DICOM, damaged, a repeated volume index).
    pub skipped: Vec<String>,
}

/// Follows a folder the scanner writes one mosaic file per volume into.
pub struct FolderWatcher {
    dir: PathBuf,
    series: Option<i64>,
    pending: HashMap<PathBuf, Pending>,
    done: HashSet<PathBuf>,
    sent_indices: HashSet<usize>,
}

impl FolderWatcher {
    /// Starts following `dir`. With `series`, its files already present are sent too; without, the files
    /// present now are taken as earlier runs and the first series to gain a new file is followed.
    pub fn new(dir: &Path, series: Option<i64>) -> std::io::Result<FolderWatcher> {
        let done = if series.is_some() { HashSet::new() } else { folder_files(dir)?.into_iter().collect() };
        Ok(FolderWatcher { dir: dir.to_path_buf(), series, pending: HashMap::new(), done, sent_indices: HashSet::new() })
    }

    /// The series followed, once known.
    pub fn series(&self) -> Option<i64> {
        self.series
    }

    /// Files seen but neither sent nor given up on yet (still being written, or not yet settled).
    pub fn unfinished(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// Looks at the folder once: files whose size and modification time did not change since the previous
    /// look are read. One that does not read as a mosaic volume is retried until it has been unchanged for
    /// [`SETTLE_SECS`], then reported.
    pub fn poll(&mut self) -> std::io::Result<WatchFindings> {
        let now = Instant::now();
        let mut findings = WatchFindings::default();
        let listing = folder_files(&self.dir)?;
        // A file renamed or removed before it was read (a writer's temporary name) is forgotten.
        let present: HashSet<&PathBuf> = listing.iter().collect();
        self.pending.retain(|path, _| present.contains(path));
        for path in listing {
            if self.done.contains(&path) {
                continue;
            }
            let signature = match std::fs::metadata(&path) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => continue, // removed between listing and looking
            };
            let unchanged = match self.pending.get_mut(&path) {
                Some(p) if p.signature == signature => true,
                Some(p) => {
                    p.signature = signature;
                    p.changed_at = now;
                    false
                }
                None => {
                    self.pending.insert(path.clone(), Pending { signature, changed_at: now });
                    false
                }
            };
            if !unchanged {
                continue;
            }
            let settled = self.pending.get(&path).is_some_and(|p| now.duration_since(p.changed_at) >= Duration::from_secs_f64(SETTLE_SECS));
            let outcome = match std::fs::read(&path) {
                Ok(bytes) if !looks_like_dicom(&bytes) => Err(format!("{}: not a DICOM file", path.display())),
                Ok(bytes) => crate::dicom::DataSet::parse(&path, &bytes).and_then(|ds| MosaicVolume::from_data_set(&ds)).map_err(|e| e.to_string()),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
            if outcome.is_err() && !settled {
                continue; // perhaps still being written: try again at the next look
            }
            self.pending.remove(&path);
            self.done.insert(path.clone());
            match outcome {
                Ok(v) => {
                    let series = *self.series.get_or_insert(v.series_number);
                    if v.series_number != series {
                        continue; // another series written into the same folder
                    }
                    if !self.sent_indices.insert(v.index) {
                        findings.skipped.push(format!("{}: volume {} of series {series} was already sent from another file", path.display(), v.index));
                        continue;
                    }
                    findings.volumes.push(WatchedVolume { volume: v, written_at: signature.1 });
                }
                Err(message) => findings.skipped.push(message),
            }
        }
        findings.volumes.sort_by_key(|v| v.volume.index);
        Ok(findings)
    }
}

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
        FollowOptions { series: None, start_at: 0, max_volumes: None, idle_secs: 0.0, poll_ms: 20, tr_override_secs: None }
    }
}

/// What following a folder did.
#[derive(Debug, Default)]
pub struct FollowReport {
    pub stream: StreamReport,
    /// Files named in a warning and left out (not DICOM, damaged, a repeated volume, no TR).
    pub files_skipped: usize,
    /// For each volume sent: milliseconds from its file's last write to the receiver's reply.
    pub written_to_acknowledged_ms: Vec<f64>,
}

impl FollowReport {
    /// "file written -> volume acknowledged: p50 .. ms, p95 .. ms, max .. ms over N volumes", if any was sent.
    pub fn latency_summary(&self) -> Option<String> {
        let samples = &self.written_to_acknowledged_ms;
        (!samples.is_empty()).then(|| {
            let p = Percentiles::new(samples);
            format!(
                "file written -> volume acknowledged: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms over {} volumes",
                p.at(50.0),
                p.at(95.0),
                p.at(100.0),
                samples.len()
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("{dir}: {source}")]
    Folder { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Follows `dir` as the scanner writes one mosaic file per volume into it and sends each volume to `sender` as
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
    let mut watcher = FolderWatcher::new(dir, options.series).map_err(|source| FollowError::Folder { dir: dir.to_path_buf(), source })?;
    tracing::info!(
        "watching {} for {}",
        dir.display(),
        options.series.map_or_else(|| "the next series".to_string(), |n| format!("series {n}"))
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
                    tracing::info!("{} is readable again after {:.1} s", dir.display(), since.elapsed().as_secs_f64());
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
                Some(tr_secs) => queue.push_back((mosaic_wire_volume(&volume, tr_secs), written_at)),
                None => {
                    tracing::warn!("skipped: {} has no RepetitionTime (0018,0080): give the TR", volume.path.display());
                    skipped.set(skipped.get() + 1);
                }
            }
            last_volume_at = Instant::now();
        }
    });
    let as_fast_as_files_come = Pacing { tr_secs: 0.0, speed: f64::INFINITY };
    let stream = sender::stream(sender, volumes, as_fast_as_files_come, |index, reply| {
        if let Some(age) = sent_file_written_at.get().and_then(|t| SystemTime::now().duration_since(t).ok()) {
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
    Ok(FollowReport { stream, files_skipped: skipped.get(), written_to_acknowledged_ms })
}
