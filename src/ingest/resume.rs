//! Resuming a session after the receiver restarts mid-run (`--resume`), so that one run stays one session.
//!
//! Without it, a receiver restarted after a crash recovers the old session and starts a new one: the run is split
//! over two folders, and the second never sends `STOP` because it counts only its own volumes. With `--resume`,
//! the newest unfinalised session recorded on the same endpoint is reopened instead: its spool is appended to
//! (after its last complete record), its volumes count as received, and the analysis gets them first. It is a
//! choice the operator makes, not a default: a receiver started for a *new* run must not take the old run's
//! volumes as its own. A session another receiver is still writing is never taken (its spool is locked).

use std::path::{Path, PathBuf};

use super::finalise::{highest_index, read_meta};
use super::receiver::{IngestError, Receiver, ReceiverSettings};
use super::recorder::{find_unfinalised, Recorder, SPOOL};
use super::spool_scan::scan_spool;

/// The newest unfinalised session under `root` that was recorded on `bind` (by its spool's last change).
pub fn find_resumable(root: &Path, bind: &str) -> Option<PathBuf> {
    find_unfinalised(root)
        .into_iter()
        .filter(|dir| read_meta(dir).is_ok_and(|meta| meta.bind == bind))
        .filter_map(|dir| {
            let changed = std::fs::metadata(dir.join(SPOOL))
                .and_then(|m| m.modified())
                .ok()?;
            Some((changed, dir))
        })
        .max_by_key(|(changed, _)| *changed)
        .map(|(_, dir)| dir)
}

/// Reopens `dir` and binds a receiver that goes on with it.
pub fn resume(dir: &Path, settings: ReceiverSettings) -> Result<Receiver, IngestError> {
    let meta = read_meta(dir)?;
    let scan = scan_spool(dir, highest_index(&meta))?;
    if scan.torn {
        tracing::warn!(
            "resuming {}: a record torn by the crash (never acknowledged) is cut off",
            dir.display()
        );
    }
    let recorder = Recorder::reopen(dir, scan.valid_len)?;
    Receiver::resume(settings, recorder, scan.entries)
}
