//! A scanner's exported files as a source of volumes for the sender: a finished series in a folder (replayed
//! at TR pace) or a folder the scanner is writing into (followed as files arrive).
//!
//! Three layouts are read, with the readers of [`crate::dicom`] and [`crate::parrec`]: Siemens mosaic DICOM
//! (one file per volume), DICOM stored one slice per file (GE; Siemens with mosaic off), whose slices are
//! gathered into volumes, and Philips PAR/REC ([`ParRecRun`]: one pair per volume from the real-time export,
//! or one pair holding a whole run). A file that is neither, or is damaged, never stops the run: it is named
//! in a warning, counted, and skipped. A folder may hold several series; one is chosen by its number.
//!
//! Volume and series numbers, so that the receiver sees the scanner's own numbering even when files arrive
//! out of order or one is missing:
//! - Siemens mosaic: the volume index is `InstanceNumber - 1`, the series its `SeriesNumber`;
//! - one slice per file: the volume index is `(InstanceNumber - 1) / ImagesInAcquisition` (Pyneal Scanner's
//!   reading of GE series), the series its `SeriesNumber`; a volume is complete when all its slices are there;
//! - Philips, a pair holding several dynamics (an offline export): the index is the dynamic number minus
//!   one, the series the "Acquisition nr";
//! - Philips, a pair holding one dynamic (the real-time export, XTC, one pair per volume): the index is
//!   "Acquisition nr" minus one, as Pyneal Scanner reads it, and the folder holding the pairs is the series,
//!   numbered by its name (XTC names them `0000`, `0001`, ... in the session folder), 0 if the name is not a
//!   number.
//!
//! A folder is read with its subfolders one level down, so that a session folder with one subfolder per
//! series (GE's `s1923`, ...; the Philips real-time export's `0000`, ...) can be followed as well as a flat
//! export folder (Siemens).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::dicom::{
    is_mosaic, looks_like_dicom, mosaic_from_data_set, slice_from_data_set, stack_slices,
    DicomError, DicomSlice,
};
use crate::ingest::sender::{self, Pacing, ScannerSender, SendError, StreamReport, WireVolume};
use crate::parrec::{is_par_path, is_rec_path, rec_path_for, ParRecError, ParRecRun};
use crate::stats::Percentiles;
use crate::volume::{Dtype, ExportedVolume};

/// Sending and Philips numbering, for the volume type the readers share.
impl ExportedVolume {
    /// The wire form, sent with `tr_secs`.
    pub fn wire_volume(&self, tr_secs: f64) -> WireVolume {
        WireVolume::from_x_fastest(
            self.index,
            self.dtype,
            self.dims,
            self.mm_from_voxel,
            tr_secs,
            &self.voxel_bytes,
        )
    }

    fn from_parrec(run: ParRecRun) -> Result<Vec<ExportedVolume>, ExportError> {
        let realtime_pair = run.volumes.len() == 1;
        let folder_number = || {
            run.par_path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i64>().ok())
        };
        let series_number = if realtime_pair {
            folder_number().unwrap_or(0)
        } else {
            run.acquisition_number
        };
        let geometry = format!(
            "Philips PAR {} angulation and off-centre",
            if run.version.is_empty() {
                "(version not given)"
            } else {
                &run.version
            }
        );
        run.volumes
            .into_iter()
            .map(|v| {
                let index = if realtime_pair {
                    run.acquisition_number - 1
                } else {
                    v.dynamic as i64 - 1
                };
                let index = usize::try_from(index).map_err(|_| {
                    ExportError::ParRec(ParRecError::Invalid {
                        path: run.par_path.clone(),
                        reason: format!(
                            "\"Acquisition nr\" {}: it counts from 1",
                            run.acquisition_number
                        ),
                    })
                })?;
                Ok(ExportedVolume {
                    path: run.par_path.clone(),
                    series_number,
                    series_description: run.protocol_name.clone(),
                    index,
                    dims: run.dims,
                    mm_from_voxel: run.mm_from_voxel,
                    tr_secs: run.tr_secs,
                    dtype: Dtype::Float64,
                    voxel_bytes: v.values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    geometry: geometry.clone(),
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: neither DICOM nor a Philips PAR header", path.display())]
    NotScannerFile { path: PathBuf },
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(transparent)]
    ParRec(#[from] ParRecError),
}

/// What one file of an export holds.
#[derive(Debug, Default)]
pub struct ExportFile {
    /// Its volumes: one for a mosaic file, one per complete dynamic for a PAR/REC pair, none for a REC file
    /// (read through its PAR header) or a single-slice file.
    pub volumes: Vec<ExportedVolume>,
    /// A single-slice file's slice, to be stacked with the rest of its volume.
    pub slice: Option<DicomSlice>,
    /// What the reader left out of the file (other echoes, incomplete dynamics), to be said once.
    pub notes: Vec<String>,
}

/// Reads one exported file: a PAR header by its extension, anything else that starts like DICOM Part 10.
pub fn read_export_file(path: &Path) -> Result<ExportFile, ExportError> {
    if is_rec_path(path) {
        return Ok(ExportFile::default());
    }
    if is_par_path(path) {
        let mut run = ParRecRun::read(path)?;
        let notes = std::mem::take(&mut run.notes)
            .into_iter()
            .map(|n| format!("{}: {n}", path.display()))
            .collect();
        return Ok(ExportFile {
            volumes: ExportedVolume::from_parrec(run)?,
            slice: None,
            notes,
        });
    }
    let bytes = std::fs::read(path).map_err(|source| DicomError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !looks_like_dicom(&bytes) {
        return Err(ExportError::NotScannerFile {
            path: path.to_path_buf(),
        });
    }
    let ds = crate::dicom::DataSet::parse(path, &bytes)?;
    if is_mosaic(&ds) {
        return Ok(ExportFile {
            volumes: vec![mosaic_from_data_set(&ds)?],
            ..ExportFile::default()
        });
    }
    Ok(ExportFile {
        slice: Some(slice_from_data_set(&ds)?),
        ..ExportFile::default()
    })
}

/// Reads the volume `index` made of `files`: one file (a mosaic, or a PAR/REC pair holding it), or the
/// single-slice files of one volume, stacked.
pub fn read_volume(files: &[PathBuf], index: usize) -> Result<ExportedVolume, String> {
    VolumeReader::default().read(files, index)
}

/// Reads volumes one after another, keeping the volumes of the last single file read, so that a PAR/REC pair
/// holding a whole run is read once however many of its volumes are asked for.
#[derive(Default)]
pub struct VolumeReader {
    last_file: Option<(PathBuf, Vec<ExportedVolume>)>,
}

impl VolumeReader {
    /// As [`read_volume`].
    pub fn read(&mut self, files: &[PathBuf], index: usize) -> Result<ExportedVolume, String> {
        if let [one] = files {
            if self.last_file.as_ref().is_none_or(|(path, _)| path != one) {
                self.last_file = None;
                let file = read_export_file(one).map_err(|e| e.to_string())?;
                if let Some(slice) = file.slice {
                    return stack_slices(vec![slice]).map_err(|e| e.to_string());
                }
                self.last_file = Some((one.clone(), file.volumes));
            }
            let volumes = self
                .last_file
                .as_ref()
                .map_or(&[][..], |(_, v)| v.as_slice());
            return volumes
                .iter()
                .find(|v| v.index == index)
                .cloned()
                .ok_or_else(|| format!("{}: volume {index} is no longer in it", one.display()));
        }
        let mut slices = Vec::with_capacity(files.len());
        for path in files {
            match read_export_file(path).map_err(|e| e.to_string())?.slice {
                Some(slice) => slices.push(slice),
                None => {
                    return Err(format!(
                        "{}: no longer a single-slice image",
                        path.display()
                    ))
                }
            }
        }
        stack_slices(slices).map_err(|e| e.to_string())
    }
}

/// Whether `path` is something [`read_export_file`] or a folder scan reads: a folder, a PAR header, a REC
/// file, or a file that starts like DICOM.
pub fn is_scanner_export(path: &Path) -> std::io::Result<bool> {
    Ok(path.is_dir()
        || is_par_path(path)
        || is_rec_path(path)
        || crate::dicom::file_looks_like_dicom(path)?)
}

/// The regular, non-hidden files of a folder and of its non-hidden subfolders (one level down), sorted by
/// path. A subfolder that vanishes while being listed is passed over.
fn folder_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let top = FolderListing::read(dir, Instant::now())?;
    let mut files = top.files;
    for sub in top.subfolders {
        if let Ok(inner) = FolderListing::read(&sub, Instant::now()) {
            files.extend(inner.files);
        }
    }
    files.sort();
    Ok(files)
}

/// How often the watcher lists a folder again even though its modification time says nothing was added or
/// removed: some file systems (network shares) keep coarse or cached times.
const FULL_LISTING_SECS: f64 = 1.0;

/// One folder's visible regular files and subfolders, as listed at `listed_at`.
struct FolderListing {
    modified: Option<SystemTime>,
    listed_at: Instant,
    files: Vec<PathBuf>,
    subfolders: Vec<PathBuf>,
    /// Every file was sent or given up on at the last look: nothing to do while the folder is unchanged.
    all_done: bool,
}

impl FolderListing {
    fn read(dir: &Path, now: Instant) -> std::io::Result<FolderListing> {
        let modified = std::fs::metadata(dir)?.modified().ok();
        let (mut files, mut subfolders) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(kind) if kind.is_file() => files.push(entry.path()),
                Ok(kind) if kind.is_dir() => subfolders.push(entry.path()),
                _ => {}
            }
        }
        Ok(FolderListing {
            modified,
            listed_at: now,
            files,
            subfolders,
            all_done: false,
        })
    }

    /// Whether this listing still holds: the folder's modification time is unchanged (and known) and the
    /// listing is younger than [`FULL_LISTING_SECS`].
    fn still_holds(&self, dir: &Path, now: Instant) -> bool {
        let modified = std::fs::metadata(dir).ok().and_then(|m| m.modified().ok());
        modified.is_some()
            && modified == self.modified
            && now.duration_since(self.listed_at).as_secs_f64() < FULL_LISTING_SECS
    }
}

/// The single-slice files of one volume found by a folder scan.
struct SliceGroup {
    description: String,
    /// `ImagesInAcquisition`.
    wanted: usize,
    /// Instance number -> file.
    files: BTreeMap<usize, PathBuf>,
}

/// Volume index -> the volume's file, or its slices' files.
pub type VolumeFiles = BTreeMap<usize, Vec<PathBuf>>;

/// What a folder holds: one entry per series, each volume's files by index.
#[derive(Debug, Default)]
pub struct FolderScan {
    /// Series number -> (description, index -> the volume's file, or its slices' files).
    pub series: BTreeMap<i64, (String, VolumeFiles)>,
    /// Files that are neither DICOM nor PAR/REC.
    pub not_scanner_files: Vec<PathBuf>,
    /// Files that could not be read as volumes: the message names the file and the reason.
    pub unreadable: Vec<String>,
    /// Files whose series already had a file for the same volume index (the first by name is kept).
    pub duplicates: Vec<PathBuf>,
    /// What readers left out of files, each said once per distinct note.
    pub notes: Vec<String>,
    /// Volumes of single-slice files that lack slices: series, index, slices there, slices wanted.
    pub incomplete: Vec<(i64, usize, usize, usize)>,
}

impl FolderScan {
    /// Reads every file of `dir` (or the one file `dir` names).
    pub fn read(dir: &Path) -> std::io::Result<FolderScan> {
        let files = if dir.is_dir() {
            folder_files(dir)?
        } else {
            vec![dir.to_path_buf()]
        };
        let mut scan = FolderScan::default();
        let mut slice_groups: BTreeMap<(i64, usize), SliceGroup> = BTreeMap::new();
        for path in files {
            match read_export_file(&path) {
                Ok(file) => {
                    if let Some(note) = file.notes.into_iter().next() {
                        scan.notes.push(note);
                    }
                    for v in file.volumes {
                        let (_, by_index) = scan
                            .series
                            .entry(v.series_number)
                            .or_insert_with(|| (v.series_description.clone(), BTreeMap::new()));
                        match by_index.entry(v.index) {
                            std::collections::btree_map::Entry::Occupied(_) => {
                                scan.duplicates.push(path.clone())
                            }
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                slot.insert(vec![path.clone()]);
                            }
                        }
                    }
                    if let Some(s) = file.slice {
                        let group = slice_groups
                            .entry((s.series_number, s.volume_index()))
                            .or_insert_with(|| SliceGroup {
                                description: s.series_description.clone(),
                                wanted: s.slices_per_volume,
                                files: BTreeMap::new(),
                            });
                        if group
                            .files
                            .insert(s.instance_number, path.clone())
                            .is_some()
                        {
                            scan.duplicates.push(path);
                        }
                    }
                }
                Err(ExportError::NotScannerFile { path }) => scan.not_scanner_files.push(path),
                Err(e) => scan.unreadable.push(e.to_string()),
            }
        }
        for (
            (series, index),
            SliceGroup {
                description,
                wanted,
                files,
            },
        ) in slice_groups
        {
            if files.len() != wanted {
                scan.incomplete.push((series, index, files.len(), wanted));
                continue;
            }
            let (_, by_index) = scan
                .series
                .entry(series)
                .or_insert_with(|| (description, BTreeMap::new()));
            by_index.insert(index, files.into_values().collect());
        }
        Ok(scan)
    }

    /// The files of the chosen series in volume order: `series` if given, else the only one present.
    pub fn choose(&self, dir: &Path, series: Option<i64>) -> Result<(i64, VolumeFiles), String> {
        let listing = || {
            self.series
                .iter()
                .map(|(n, (desc, files))| {
                    format!(
                        "series {n} ({}{} volumes)",
                        if desc.is_empty() {
                            String::new()
                        } else {
                            format!("{desc}, ")
                        },
                        files.len()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let number = match series {
            Some(n) if self.series.contains_key(&n) => n,
            Some(n) => {
                return Err(format!(
                    "{} holds no volume of series {n}; it holds {}",
                    dir.display(),
                    or_nothing(&listing())
                ))
            }
            None if self.series.len() == 1 => *self.series.keys().next().unwrap_or(&0),
            None if self.series.is_empty() => {
                let reasons: String = self
                    .unreadable
                    .iter()
                    .take(3)
                    .map(|m| format!("\n  {m}"))
                    .collect();
                return Err(format!(
                    "{} holds no readable volume (DICOM, mosaic or one slice per file, or Philips PAR/REC; {} files are neither, {} unreadable, {} volumes lack slices){reasons}",
                    dir.display(),
                    self.not_scanner_files.len(),
                    self.unreadable.len(),
                    self.incomplete.len()
                ));
            }
            None => {
                return Err(format!(
                    "{} holds several series: {}; choose one with --series",
                    dir.display(),
                    listing()
                ))
            }
        };
        Ok((
            number,
            self.series
                .get(&number)
                .map(|(_, f)| f.clone())
                .unwrap_or_default(),
        ))
    }
}

/// A finished series chosen from a folder, ready to be played: its files in volume order and its first volume
/// (for the geometry, type and TR), with what the folder held besides.
pub struct SeriesRun {
    pub number: i64,
    /// Volume index -> its file or its slices' files, ascending (a Philips pair holding a whole run is
    /// listed once per volume).
    pub files: Vec<(usize, Vec<PathBuf>)>,
    pub first: ExportedVolume,
    pub scan: FolderScan,
    /// Volumes at the start of the run that did not read (the message, the files left out with them).
    pub unreadable_volumes: Vec<(String, usize)>,
    /// The reader that read `first`, handed on to [`SeriesRun::wire_volumes`].
    reader: VolumeReader,
}

impl SeriesRun {
    /// Reads `path` (a folder, or one file) and chooses `series` (or the only one) from volume `start_at` on.
    pub fn open(path: &Path, series: Option<i64>, start_at: usize) -> Result<SeriesRun, String> {
        let scan =
            FolderScan::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if let (false, [only_error]) = (path.is_dir(), scan.unreadable.as_slice()) {
            return Err(only_error.clone()); // one file given: its own error says it all
        }
        let (number, files) = scan.choose(path, series)?;
        let mut files: VecDeque<(usize, Vec<PathBuf>)> = files
            .into_iter()
            .filter(|(index, _)| *index >= start_at)
            .collect();
        // The first volume that reads gives the run's geometry; any before it are reported and left out.
        let mut unreadable_volumes = Vec::new();
        let mut reader = VolumeReader::default();
        let first = loop {
            let Some((first_index, first_files)) = files.front() else {
                let last_error = unreadable_volumes
                    .last()
                    .map(|(m, _): &(String, usize)| format!(": {m}"))
                    .unwrap_or_default();
                return Err(format!("series {number} in {} has no readable volume from index {start_at} on{last_error}", path.display()));
            };
            match reader.read(first_files, *first_index) {
                Ok(volume) => break volume,
                Err(message) => {
                    unreadable_volumes.push((message, first_files.len()));
                    files.pop_front();
                }
            }
        };
        Ok(SeriesRun {
            number,
            files: files.into(),
            first,
            scan,
            unreadable_volumes,
            reader,
        })
    }

    /// Warnings for what the folder held that is not sent: files that are neither DICOM nor PAR/REC,
    /// unreadable or repeated, and what readers left out of files.
    pub fn folder_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .scan
            .unreadable
            .iter()
            .map(|m| format!("skipped: {m}"))
            .collect();
        if let Some(first) = self.scan.not_scanner_files.first() {
            warnings.push(format!(
                "skipped {} files that are neither DICOM nor PAR/REC (first: {})",
                self.scan.not_scanner_files.len(),
                first.display()
            ));
        }
        warnings.extend(self.scan.duplicates.iter().map(|p| {
            format!(
                "skipped {}: its series already has a file for the same volume (or slice) number",
                p.display()
            )
        }));
        warnings.extend(self.scan.incomplete.iter().map(|(series, index, there, wanted)| format!("skipped volume {index} of series {series}: {there} of its {wanted} slice files are there")));
        warnings.extend(
            self.unreadable_volumes
                .iter()
                .map(|(m, _)| format!("skipped: {m}")),
        );
        let distinct_notes: std::collections::BTreeSet<&String> = self.scan.notes.iter().collect();
        warnings.extend(distinct_notes.into_iter().take(3).cloned());
        warnings
    }

    /// Files left out of the run by [`SeriesRun::folder_warnings`].
    pub fn files_skipped(&self) -> usize {
        let scan = &self.scan;
        let volumes_left_out: usize = scan.incomplete.iter().map(|i| i.2).sum::<usize>()
            + self.unreadable_volumes.iter().map(|u| u.1).sum::<usize>();
        scan.unreadable.len()
            + scan.not_scanner_files.len()
            + scan.duplicates.len()
            + volumes_left_out
    }

    /// One line for the log: series, volumes, gaps, matrix, type, TR and where the geometry came from.
    pub fn describe(&self, tr_secs: f64) -> String {
        let (first_index, last_index) = (
            self.files.first().map_or(0, |f| f.0),
            self.files.last().map_or(0, |f| f.0),
        );
        let missing = last_index + 1 - first_index - self.files.len();
        format!(
            "series {}{}: {} volumes ({first_index} to {last_index}{}) of {:?} {}, TR {tr_secs} s, geometry: {}",
            self.number,
            if self.first.series_description.is_empty() { String::new() } else { format!(" ({})", self.first.series_description) },
            self.files.len(),
            if missing > 0 { format!(", {missing} missing") } else { String::new() },
            self.first.dims,
            self.first.dtype.numpy_name(),
            self.first.geometry
        )
    }

    /// The volumes for the wire, read one at a time (a pair holding the whole run is read once); a volume
    /// whose files changed or broke since the folder was read goes to `skipped` (the message, the number of
    /// files left out) and the run goes on.
    pub fn wire_volumes(
        self,
        tr_secs: f64,
        mut skipped: impl FnMut(String, usize),
    ) -> impl Iterator<Item = WireVolume> {
        let mut reader = self.reader;
        self.files
            .into_iter()
            .filter_map(move |(index, files)| match reader.read(&files, index) {
                Ok(v) => Some(v.wire_volume(tr_secs)),
                Err(message) => {
                    skipped(message, files.len());
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

/// How long a file that does not read as a volume is waited for (it may still be being written, or have
/// been allocated at full size before being filled, or be a PAR header whose REC file is yet to come) before
/// it is reported and skipped.
pub const SETTLE_SECS: f64 = 2.0;

/// Size and modification time of a file and, for a PAR header, of its REC file (zero and none while absent).
type Signature = [(u64, Option<SystemTime>); 2];

fn signature(path: &Path) -> Option<Signature> {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let own = of(path)?;
    let rec = if is_par_path(path) {
        rec_path_for(path)
            .ok()
            .and_then(|rec| of(&rec))
            .unwrap_or((0, None))
    } else {
        (0, None)
    };
    Some([own, rec])
}

/// A file the watcher has seen but not yet sent or given up on.
struct Pending {
    /// A file is read once its signature is unchanged since the previous look.
    signature: Signature,
    /// When the signature was last seen to change.
    changed_at: Instant,
}

/// A volume read from a watched folder.
#[derive(Debug)]
pub struct WatchedVolume {
    pub volume: ExportedVolume,
    /// The file's (for a Philips pair, the later of the two files') modification time: when the scanner
    /// finished writing it (for the latency summary).
    pub written_at: Option<SystemTime>,
}

/// What one look at the watched folder found.
#[derive(Debug, Default)]
pub struct WatchFindings {
    /// Volumes of the followed series, ready to send, by index.
    pub volumes: Vec<WatchedVolume>,
    /// Files given up on, each message naming the file and why (neither DICOM nor PAR/REC, damaged, a repeated volume index).
    pub skipped: Vec<String>,
    /// What a reader left out of a file (other echoes, incomplete dynamics): the first file's only, since a
    /// real-time export repeats them for every volume.
    pub notes: Vec<String>,
}

/// Follows a folder the scanner writes one file (Siemens) or file pair (Philips) per volume into.
pub struct FolderWatcher {
    dir: PathBuf,
    series: Option<i64>,
    pending: HashMap<PathBuf, Pending>,
    done: HashSet<PathBuf>,
    sent_indices: HashSet<usize>,
    notes_said: bool,
    /// Single-slice files read so far, by volume index, with their files' modification times.
    partial_volumes: BTreeMap<usize, Vec<(DicomSlice, Option<SystemTime>)>>,
    /// The folder the followed series is written into, once known: only it is looked at from then on.
    focus: Option<PathBuf>,
    /// The last listing of each folder looked at, reused while the folder is unchanged.
    listings: HashMap<PathBuf, FolderListing>,
}

impl FolderWatcher {
    /// Starts following `dir`. With `series`, its files already present are sent too; without, the files
    /// present now are taken as earlier runs and the first series to gain a new file is followed.
    pub fn new(dir: &Path, series: Option<i64>) -> std::io::Result<FolderWatcher> {
        let done = if series.is_some() {
            HashSet::new()
        } else {
            folder_files(dir)?.into_iter().collect()
        };
        Ok(FolderWatcher {
            dir: dir.to_path_buf(),
            series,
            pending: HashMap::new(),
            done,
            sent_indices: HashSet::new(),
            notes_said: false,
            partial_volumes: BTreeMap::new(),
            focus: None,
            listings: HashMap::new(),
        })
    }

    /// The series followed, once known.
    pub fn series(&self) -> Option<i64> {
        self.series
    }

    /// Files seen but neither sent nor given up on yet: still being written, not yet settled, or slices of
    /// a volume whose other slices have not come.
    pub fn unfinished(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        paths.extend(
            self.partial_volumes
                .values()
                .flatten()
                .map(|(s, _)| s.path.clone()),
        );
        paths.sort();
        paths
    }

    /// Looks at the folder once: files whose size and modification time (for a PAR header, also its REC
    /// file's) did not change since the previous look are read. One that does not read as a volume is
    /// retried until it has been unchanged for [`SETTLE_SECS`], then reported.
    pub fn poll(&mut self) -> std::io::Result<WatchFindings> {
        let now = Instant::now();
        let mut findings = WatchFindings::default();
        let listing = self.files_to_look_at(now)?;
        // A file renamed or removed before it was read (a writer's temporary name) is forgotten.
        let present: HashSet<&PathBuf> = listing.iter().collect();
        self.pending.retain(|path, _| present.contains(path));
        for path in listing {
            let Some(signature) = signature(&path) else {
                continue; // removed between listing and looking
            };
            let unchanged = match self.pending.get_mut(&path) {
                Some(p) if p.signature == signature => true,
                Some(p) => {
                    p.signature = signature;
                    p.changed_at = now;
                    false
                }
                None => {
                    self.pending.insert(
                        path.clone(),
                        Pending {
                            signature,
                            changed_at: now,
                        },
                    );
                    false
                }
            };
            if !unchanged {
                continue;
            }
            let settled = self.pending.get(&path).is_some_and(|p| {
                now.duration_since(p.changed_at) >= Duration::from_secs_f64(SETTLE_SECS)
            });
            let outcome = read_export_file(&path);
            if outcome.is_err() && !settled {
                continue; // perhaps still being written: try again at the next look
            }
            self.pending.remove(&path);
            self.done.insert(path.clone());
            let file = match outcome {
                Ok(file) => file,
                Err(e) => {
                    findings.skipped.push(e.to_string());
                    continue;
                }
            };
            if !file.notes.is_empty() && !self.notes_said {
                findings.notes = file.notes;
                self.notes_said = true;
            }
            let written_at = signature.iter().filter_map(|(_, modified)| *modified).max();
            for v in file.volumes {
                let series = *self.series.get_or_insert(v.series_number);
                if v.series_number != series {
                    continue; // another series written into the same folder
                }
                self.focus_on(&path);
                if !self.sent_indices.insert(v.index) {
                    findings.skipped.push(format!(
                        "{}: volume {} of series {series} was already sent from another file",
                        path.display(),
                        v.index
                    ));
                    continue;
                }
                findings.volumes.push(WatchedVolume {
                    volume: v,
                    written_at,
                });
            }
            if let Some(slice) = file.slice {
                self.add_slice(slice, written_at, &mut findings);
            }
        }
        findings.volumes.sort_by_key(|v| v.volume.index);
        Ok(findings)
    }
}

impl FolderWatcher {
    /// The files not yet sent or given up on: in the followed series' folder once it is known, else in the
    /// watched folder and its subfolders. A folder whose listing still holds and whose files were all done at
    /// the last look is passed over, so an export folder holding many earlier runs costs little to watch.
    fn files_to_look_at(&mut self, now: Instant) -> std::io::Result<Vec<PathBuf>> {
        let top = self.focus.clone().unwrap_or_else(|| self.dir.clone());
        let mut folders = vec![top.clone()];
        let mut candidates = Vec::new();
        let mut index = 0;
        while index < folders.len() {
            let dir = folders[index].clone();
            index += 1;
            let listing = match self.listings.remove(&dir) {
                Some(l) if l.still_holds(&dir, now) => l,
                _ => match FolderListing::read(&dir, now) {
                    Ok(l) => l,
                    Err(e) if dir == top => return Err(e), // the watched folder itself: said by the caller
                    Err(_) => continue,                    // a subfolder removed meanwhile
                },
            };
            if dir == top && self.focus.is_none() {
                folders.extend(listing.subfolders.iter().cloned());
            }
            let mut listing = listing;
            if !listing.all_done {
                let before = candidates.len();
                candidates.extend(
                    listing
                        .files
                        .iter()
                        .filter(|p| !self.done.contains(*p))
                        .cloned(),
                );
                listing.all_done = candidates.len() == before;
            }
            self.listings.insert(dir, listing);
        }
        candidates.sort();
        Ok(candidates)
    }

    /// From the first volume of the followed series on, only the folder it came from is looked at.
    fn focus_on(&mut self, path: &Path) {
        if self.focus.is_none() {
            self.focus = path.parent().map(Path::to_path_buf);
        }
    }

    /// Keeps a slice of the followed series until its volume is complete, then stacks the volume.
    fn add_slice(
        &mut self,
        slice: DicomSlice,
        written_at: Option<SystemTime>,
        findings: &mut WatchFindings,
    ) {
        let series = *self.series.get_or_insert(slice.series_number);
        if slice.series_number != series {
            return; // another series written into the same folder
        }
        let index = slice.volume_index();
        let path = slice.path.clone();
        self.focus_on(&path);
        if self.sent_indices.contains(&index) {
            findings.skipped.push(format!(
                "{}: a slice of volume {index} of series {series}, which was already sent",
                path.display()
            ));
            return;
        }
        let wanted = slice.slices_per_volume;
        let slices = self.partial_volumes.entry(index).or_default();
        if slices
            .iter()
            .any(|(s, _)| s.instance_number == slice.instance_number)
        {
            findings.skipped.push(format!(
                "{}: image {} of series {series} came already in another file",
                path.display(),
                slice.instance_number
            ));
            return;
        }
        slices.push((slice, written_at));
        if slices.len() < wanted {
            return;
        }
        let slices = self.partial_volumes.remove(&index).unwrap_or_default();
        let written_at = slices.iter().filter_map(|(_, t)| *t).max();
        self.sent_indices.insert(index);
        match stack_slices(slices.into_iter().map(|(s, _)| s).collect()) {
            Ok(volume) => findings.volumes.push(WatchedVolume { volume, written_at }),
            Err(e) => findings
                .skipped
                .push(format!("volume {index} of series {series}: {e}")),
        }
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
                Some(tr_secs) => queue.push_back((volume.wire_volume(tr_secs), written_at)),
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
