//! A folder the scanner is writing into: each look finds the files that are complete since the last one (a
//! file is complete when it reads as a volume, or is given up on after it has not changed for a while), reads
//! them as volumes, and counts what it left out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::scanner::assemble::{Placed, VolumeAssembler};
use crate::scanner::export::read_export_file;
use crate::scanner::listing::{folder_files, FolderListing};
use crate::scanner::parrec::{is_par_path, rec_path_for};
use crate::volume::ExportedVolume;

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
    pending: HashMap<PathBuf, Pending>,
    done: HashSet<PathBuf>,
    notes_said: bool,
    /// The series' volumes out of its files, stamped with the files' modification times.
    assembler: VolumeAssembler<Option<SystemTime>>,
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
            pending: HashMap::new(),
            done,
            notes_said: false,
            assembler: VolumeAssembler::new(series),
            focus: None,
            listings: HashMap::new(),
        })
    }

    /// The series followed, once known.
    pub fn series(&self) -> Option<i64> {
        self.assembler.series()
    }

    /// Files seen but neither sent nor given up on yet: still being written, not yet settled, or slices of
    /// a volume whose other slices have not come.
    pub fn unfinished(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        paths.extend(self.assembler.held_paths());
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
            let mut placed: Vec<_> = file
                .volumes
                .into_iter()
                .map(|v| self.assembler.add_volume(v, written_at))
                .collect();
            if let Some(slice) = file.slice {
                placed.push(self.assembler.add_slice(slice, written_at));
            }
            for outcome in placed {
                match outcome {
                    Placed::OtherSeries(_) => continue, // another series written into the same folder
                    Placed::Complete(volume, written_at) => findings.volumes.push(WatchedVolume {
                        volume: *volume,
                        written_at,
                    }),
                    Placed::Held => {}
                    Placed::Refused(message) => findings.skipped.push(message),
                }
                // from the first piece of the followed series on, only its folder is looked at
                self.focus_on(&path);
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
}
