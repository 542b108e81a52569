//! One folder's visible files and subfolders, listed again only when its modification time changes (or once a
//! second, for network shares with coarse times): what a folder scan and the watcher look at.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The regular, non-hidden files of a folder and of its non-hidden subfolders (one level down), sorted by
/// path. A subfolder that vanishes while being listed is passed over.
pub fn folder_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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
pub const FULL_LISTING_SECS: f64 = 1.0;

/// One folder's visible regular files and subfolders, as listed at `listed_at`.
pub struct FolderListing {
    pub modified: Option<SystemTime>,
    pub listed_at: Instant,
    pub files: Vec<PathBuf>,
    pub subfolders: Vec<PathBuf>,
    /// Every file was sent or given up on at the last look: nothing to do while the folder is unchanged.
    pub all_done: bool,
}

impl FolderListing {
    pub fn read(dir: &Path, now: Instant) -> std::io::Result<FolderListing> {
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
    pub fn still_holds(&self, dir: &Path, now: Instant) -> bool {
        let modified = std::fs::metadata(dir).ok().and_then(|m| m.modified().ok());
        modified.is_some()
            && modified == self.modified
            && now.duration_since(self.listed_at).as_secs_f64() < FULL_LISTING_SECS
    }
}
