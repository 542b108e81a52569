//! A finished series in a folder: the folder scanned into series and volumes (a volume's file, or its slices'
//! files), one series chosen by its number, and its volumes read one at a time in index order.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::scanner::export::{read_export_file, ExportError, VolumeReader};
use crate::scanner::listing::folder_files;
use crate::volume::ExportedVolume;

/// The single-slice files of one volume found by a folder scan.
struct SliceGroup {
    description: String,
    /// `ImagesInAcquisition`.
    wanted: usize,
    /// Instance number -> file.
    files: BTreeMap<usize, PathBuf>,
}

/// Why a series could not be chosen from a folder or read.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("reading {}: {source}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The one file given could not be read; its reader's message names it.
    #[error("{0}")]
    Unreadable(String),
    #[error("{} holds no volume of series {series}; it holds {present}", dir.display())]
    NoSuchSeries {
        dir: PathBuf,
        series: i64,
        present: String,
    },
    #[error("{} holds no readable volume (DICOM, mosaic or one slice per file, or Philips PAR/REC; {not_scanner_files} files are neither, {unreadable} unreadable, {incomplete} volumes lack slices){reasons}", dir.display())]
    NothingReadable {
        dir: PathBuf,
        not_scanner_files: usize,
        unreadable: usize,
        incomplete: usize,
        /// The first few files' errors, each on a line of its own.
        reasons: String,
    },
    #[error("{} holds several series: {present}; choose one with --series", dir.display())]
    SeveralSeries { dir: PathBuf, present: String },
    #[error("series {series} in {} has no readable volume from index {start_at} on{last_error}", dir.display())]
    NoReadableVolume {
        dir: PathBuf,
        series: i64,
        start_at: usize,
        /// ": " and the last volume's error, if one was tried.
        last_error: String,
    },
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
    pub fn choose(
        &self,
        dir: &Path,
        series: Option<i64>,
    ) -> Result<(i64, VolumeFiles), SeriesError> {
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
                return Err(SeriesError::NoSuchSeries {
                    dir: dir.to_path_buf(),
                    series: n,
                    present: or_nothing(&listing()).to_string(),
                })
            }
            None if self.series.len() == 1 => *self.series.keys().next().unwrap_or(&0),
            None if self.series.is_empty() => {
                let reasons: String = self
                    .unreadable
                    .iter()
                    .take(3)
                    .map(|m| format!("\n  {m}"))
                    .collect();
                return Err(SeriesError::NothingReadable {
                    dir: dir.to_path_buf(),
                    not_scanner_files: self.not_scanner_files.len(),
                    unreadable: self.unreadable.len(),
                    incomplete: self.incomplete.len(),
                    reasons,
                });
            }
            None => {
                return Err(SeriesError::SeveralSeries {
                    dir: dir.to_path_buf(),
                    present: listing(),
                })
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
    /// The reader that read `first`, handed on to [`SeriesRun::volumes`].
    reader: VolumeReader,
}

impl SeriesRun {
    /// Reads `path` (a folder, or one file) and chooses `series` (or the only one) from volume `start_at` on.
    pub fn open(
        path: &Path,
        series: Option<i64>,
        start_at: usize,
    ) -> Result<SeriesRun, SeriesError> {
        let scan = FolderScan::read(path).map_err(|source| SeriesError::Folder {
            path: path.to_path_buf(),
            source,
        })?;
        if let (false, [only_error]) = (path.is_dir(), scan.unreadable.as_slice()) {
            // one file given: its own error says it all
            return Err(SeriesError::Unreadable(only_error.clone()));
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
                return Err(SeriesError::NoReadableVolume {
                    dir: path.to_path_buf(),
                    series: number,
                    start_at,
                    last_error,
                });
            };
            match reader.read(first_files, *first_index) {
                Ok(volume) => break volume,
                Err(e) => {
                    unreadable_volumes.push((e.to_string(), first_files.len()));
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

    /// The volumes, read one at a time (a pair holding the whole run is read once); a volume whose files
    /// changed or broke since the folder was read goes to `skipped` (the message, the number of files left out)
    /// and the run goes on.
    pub fn volumes(
        self,
        mut skipped: impl FnMut(String, usize),
    ) -> impl Iterator<Item = ExportedVolume> {
        let mut reader = self.reader;
        self.files
            .into_iter()
            .filter_map(move |(index, files)| match reader.read(&files, index) {
                Ok(v) => Some(v),
                Err(e) => {
                    skipped(e.to_string(), files.len());
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
