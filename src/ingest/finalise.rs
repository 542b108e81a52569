//! Finalising a session folder, after a normal run or a crash alike: `spool.bin` becomes `volumes.nii[.gz]` (4-D,
//! the run's affine and TR, volumes in index order, gaps zero-filled and listed), strays go to `strays/`, and
//! `summary.json` is written; then the spool is removed.
//!
//! It works in bounded memory whatever the spool holds: the spool is first scanned for its records' headers
//! only (a few hundred bytes each), then each volume is read, converted and written in turn. A record whose
//! index is beyond the session's limit (a spool written before indices were bounded) or whose length does not
//! match its header is skipped with a warning and counted, so one bad record cannot stop a recovery. If writing
//! fails (a full disk) the partial file is removed and the spool kept: nothing is lost, and recovering again once
//! there is room finishes the job.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::recorder::{
    unix_secs_now, LatencyMs, MessageLog, Outcome, RecordError, SessionMeta, Summary, MESSAGES,
    SESSION, SPOOL, SUMMARY,
};
use super::spool_scan::{io_error, read_c_order, scan_spool, SpoolEntry};
use crate::nifti::{NiftiSpec, NiftiWriter};
use crate::volume::{c_order_to_x_fastest, Affine, Dtype};

/// The most volumes a NIfTI-1 file holds, and so the highest index a recording can place.
const NIFTI_MAX_VOLUMES: usize = i16::MAX as usize;
/// Strays beyond this many are counted but not written out one file each.
const MAX_STRAY_FILES: usize = 100;

fn read_messages(dir: &Path) -> Vec<MessageLog> {
    let Ok(text) = std::fs::read_to_string(dir.join(MESSAGES)) else {
        return Vec::new();
    };
    // a line torn by a crash fails to parse and is skipped
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The element type of a 4-D file: the common one, float32 for float16, float64 when types differ.
fn recording_dtype<'a>(mut dtypes: impl Iterator<Item = &'a Dtype>) -> Dtype {
    let Some(&first) = dtypes.next() else {
        return Dtype::Float64;
    };
    if dtypes.all(|&d| d == first) {
        if first == Dtype::Float16 {
            Dtype::Float32
        } else {
            first
        }
    } else {
        Dtype::Float64
    }
}

fn convert_le(bytes: Vec<u8>, from: Dtype, to: Dtype) -> Vec<u8> {
    if from == to {
        return bytes;
    }
    let n = bytes.len() / from.itemsize();
    let mut out = Vec::with_capacity(n * to.itemsize());
    for i in 0..n {
        let v = from.read_f64(&bytes, i);
        match to {
            Dtype::Float32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// One volume from the spool, x fastest, in `dtype`.
fn read_volume(
    spool: &mut File,
    entry: &SpoolEntry,
    dtype: Dtype,
    dir: &Path,
) -> Result<Vec<u8>, RecordError> {
    let c_order = read_c_order(spool, entry, dir)?;
    let itemsize = entry.header.dtype.itemsize();
    let x_fastest = c_order_to_x_fastest(&c_order, entry.header.dims, itemsize);
    Ok(convert_le(x_fastest, entry.header.dtype, dtype))
}

/// A volume's grid: its dimensions and voxel-to-millimetre affine.
type Geometry = ([usize; 3], Affine);

/// The run's geometry: the one most distinct indices share (the first to arrive on a tie). The receiver
/// confirms the same one live; finalising decides again from the spool alone, so a crash changes nothing.
fn run_geometry(entries: &[SpoolEntry]) -> Option<Geometry> {
    let mut groups: Vec<(Geometry, std::collections::BTreeSet<usize>)> = Vec::new();
    for e in entries {
        let key = (e.header.dims, e.header.mm_from_voxel);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, indices)) => {
                indices.insert(e.header.index);
            }
            None => groups.push((key, [e.header.index].into())),
        }
    }
    // max_by_key keeps the last maximum; reversing keeps the first
    groups
        .into_iter()
        .rev()
        .max_by_key(|(_, indices)| indices.len())
        .map(|(key, _)| key)
}

/// Writes each stray to `strays/` as its own 3-D NIfTI, named by arrival order and index.
fn write_strays(
    dir: &Path,
    spool: &mut File,
    strays: &[&SpoolEntry],
) -> Result<Option<String>, RecordError> {
    if strays.is_empty() {
        return Ok(None);
    }
    let folder = dir.join("strays");
    std::fs::create_dir_all(&folder).map_err(io_error(dir, "creating strays/"))?;
    for (n, entry) in strays.iter().take(MAX_STRAY_FILES).enumerate() {
        let dtype = recording_dtype(std::iter::once(&entry.header.dtype));
        let spec = NiftiSpec {
            dims: entry.header.dims,
            volumes: 1,
            dtype,
            mm_from_voxel: entry.header.mm_from_voxel,
            tr_secs: entry.header.tr_secs,
            scaling: None,
            description: "hyper-rt stray volume".into(),
        };
        let path = folder.join(format!(
            "stray-{:03}-volIdx-{}.nii",
            n + 1,
            entry.header.index
        ));
        let mut writer = NiftiWriter::create(&path, &spec)?;
        writer.write_voxels(&read_volume(spool, entry, dtype, dir)?)?;
        writer.finish()?;
    }
    if strays.len() > MAX_STRAY_FILES {
        tracing::warn!(
            "{}: {} strays; the first {MAX_STRAY_FILES} are written to strays/",
            dir.display(),
            strays.len()
        );
    }
    Ok(Some("strays".to_string()))
}

/// Finalises (or recovers) a session folder: writes `volumes.nii[.gz]`, `strays/` and `summary.json`, removes the
/// spool.
pub fn finalise_dir(
    dir: &Path,
    end_reason: &str,
    recovered: bool,
    compress: bool,
) -> Result<Summary, RecordError> {
    let meta = read_meta(dir)?;
    // held until the end: a receiver still writing this session, or a second recovery, is kept out
    let _lock = lock_spool(dir)?;
    let max_index = highest_index(&meta);
    let scan = scan_spool(dir, max_index)?;
    if scan.torn {
        tracing::warn!(
            "session {}: skipped a torn record at the end of spool.bin (never acknowledged)",
            dir.display()
        );
    }
    let messages = read_messages(dir);
    let geometry = run_geometry(&scan.entries);
    // the run: its geometry, the first copy of each index; the rest are strays
    let mut run: BTreeMap<usize, &SpoolEntry> = BTreeMap::new();
    let mut strays: Vec<&SpoolEntry> = Vec::new();
    for entry in &scan.entries {
        let in_run = geometry.as_ref().is_some_and(|(dims, affine)| {
            entry.header.dims == *dims && entry.header.mm_from_voxel == *affine
        });
        if in_run {
            run.entry(entry.header.index).or_insert(entry);
        } else {
            strays.push(entry);
        }
    }

    let mut summary = Summary {
        end_reason: end_reason.to_string(),
        recovered_after_crash: recovered,
        started_unix_secs: meta.started_unix_secs,
        finalised_unix_secs: unix_secs_now(),
        expected_volumes: meta.expected_volumes,
        received: run.len(),
        strays: strays.len(),
        strays_folder: None,
        skipped_records: scan.skipped,
        rejected: 0,
        rejected_by_kind: BTreeMap::new(),
        duplicates: 0,
        handshakes: 0,
        missing: 0,
        missing_indices: Vec::new(),
        messages: messages.len(),
        reply_latency_ms: LatencyMs::from_samples(
            &messages
                .iter()
                .map(|m| m.reply_latency_ms)
                .collect::<Vec<_>>(),
        ),
        volumes_file: None,
        volumes_in_file: 0,
        dims: None,
        dtype: None,
        tr_secs: None,
        slice_timing_secs: None,
        peers: None,
    };
    for m in &messages {
        match m.outcome {
            Outcome::Rejected => {
                summary.rejected += 1;
                if let Some(kind) = m.rejection {
                    *summary.rejected_by_kind.entry(kind).or_default() += 1;
                }
            }
            Outcome::Duplicate => summary.duplicates += 1,
            Outcome::Handshake => summary.handshakes += 1,
            Outcome::Accepted => {}
        }
    }

    let mut spool = match File::open(dir.join(SPOOL)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(dir, "opening spool.bin")(e)),
    };
    if let (Some(((dims, affine), first)), Some(spool)) =
        (geometry.zip(run.values().next()), spool.as_mut())
    {
        let dtype = recording_dtype(run.values().map(|e| &e.header.dtype));
        let n_volumes = run.keys().next_back().map(|i| i + 1).unwrap_or(0);
        let per_volume_bytes = dims.iter().product::<usize>() as u64 * dtype.itemsize() as u64;
        let name = if compress {
            "volumes.nii.gz"
        } else {
            "volumes.nii"
        };
        let spec = NiftiSpec {
            dims,
            volumes: n_volumes,
            dtype,
            mm_from_voxel: affine,
            tr_secs: first.header.tr_secs,
            scaling: None,
            description: "hyper-rt session recording".into(),
        };
        let mut writer = NiftiWriter::create(&dir.join(name), &spec)?;
        for index in 0..n_volumes {
            match run.get(&index) {
                Some(entry) => writer.write_voxels(&read_volume(spool, entry, dtype, dir)?)?,
                None => writer.write_zeros(per_volume_bytes)?,
            }
        }
        writer.finish()?;
        summary.volumes_file = Some(name.to_string());
        summary.volumes_in_file = n_volumes;
        summary.dims = Some(dims);
        summary.dtype = Some(dtype);
        summary.tr_secs = Some(first.header.tr_secs);
        summary.slice_timing_secs = first.header.slice_timing_secs.clone();
        write_bids_sidecar(
            dir,
            first.header.tr_secs,
            summary.slice_timing_secs.as_deref(),
        )?;
    }
    if let Some(spool) = spool.as_mut() {
        summary.strays_folder = write_strays(dir, spool, &strays)?;
    }
    let upper = meta
        .expected_volumes
        .unwrap_or(0)
        .max(run.keys().next_back().map(|i| i + 1).unwrap_or(0));
    summary.missing_indices = (0..upper).filter(|i| !run.contains_key(i)).collect();
    summary.missing = summary.missing_indices.len();

    write_summary(dir, &summary)?;
    // the NIfTI and summary are complete: the spool is no longer needed
    let _ = std::fs::remove_file(dir.join(SPOOL));
    Ok(summary)
}

/// A session's `session.json`.
pub(super) fn read_meta(dir: &Path) -> Result<SessionMeta, RecordError> {
    std::fs::read(dir.join(SESSION))
        .map_err(io_error(dir, "reading session.json"))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| RecordError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!("session.json: {e}"),
            })
        })
}

/// The highest index a session may hold: below its expected count, else its configured limit, and never more
/// than a NIfTI-1 file can place.
pub(super) fn highest_index(meta: &SessionMeta) -> usize {
    meta.expected_volumes
        .map(|n| n.saturating_sub(1))
        .or(meta.max_volume_index)
        .unwrap_or(NIFTI_MAX_VOLUMES - 1)
        .min(NIFTI_MAX_VOLUMES - 1)
}

/// Locks the session's spool against its writer and other finalisers; `None` when there is no spool.
fn lock_spool(dir: &Path) -> Result<Option<File>, RecordError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(SPOOL))
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(dir, "opening spool.bin")(e)),
    };
    match super::spool::try_lock_exclusive(&file) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Err(RecordError::InUse {
            dir: dir.to_path_buf(),
        }),
        Err(e) => Err(io_error(dir, "locking spool.bin")(e)),
    }
}

/// Writes `volumes.json`, the BIDS sidecar of the recording: `RepetitionTime`, and `SliceTiming` when known.
fn write_bids_sidecar(
    dir: &Path,
    tr_secs: f64,
    slice_timing_secs: Option<&[f64]>,
) -> Result<(), RecordError> {
    let mut sidecar = serde_json::json!({ "RepetitionTime": tr_secs });
    if let (Some(times), Some(obj)) = (slice_timing_secs, sidecar.as_object_mut()) {
        obj.insert("SliceTiming".into(), serde_json::json!(times));
    }
    let text = serde_json::to_vec_pretty(&sidecar).map_err(|e| RecordError::Invalid {
        dir: dir.to_path_buf(),
        reason: format!("volumes.json: {e}"),
    })?;
    std::fs::write(dir.join(BIDS_SIDECAR), text).map_err(io_error(dir, "writing volumes.json"))
}

/// The BIDS sidecar beside `volumes.nii[.gz]`.
pub const BIDS_SIDECAR: &str = "volumes.json";

/// Writes `summary.json` atomically (a temporary file renamed over it).
pub fn write_summary(dir: &Path, summary: &Summary) -> Result<(), RecordError> {
    let json = serde_json::to_vec_pretty(summary).map_err(|e| RecordError::Invalid {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = dir.join("summary.json.partial");
    std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, dir.join(SUMMARY)))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(dir, "writing summary.json")(e)
        })?;
    Ok(())
}

/// Recovers every unfinalised session under `root`, going on past one that fails (saying which and why), so
/// that one bad session cannot keep the others unrecovered. A session whose receiver is still running is left
/// alone. Returns the recovered and the failed folders.
pub fn recover_all(root: &Path, compress: bool) -> (Vec<(PathBuf, Summary)>, Vec<PathBuf>) {
    let mut recovered = Vec::new();
    let mut failed = Vec::new();
    for dir in super::recorder::find_unfinalised(root) {
        match finalise_dir(&dir, "recovered", true, compress) {
            Ok(summary) => {
                tracing::warn!(
                    "session {} was left unfinalised (crash?): recovered it",
                    dir.display()
                );
                recovered.push((dir, summary))
            }
            Err(e @ RecordError::InUse { .. }) => tracing::info!("{e}"),
            Err(e) => {
                tracing::error!(
                    "could not recover {}: {e}; its spool is kept: run `hyper-rt recover {}` again once the cause is fixed",
                    dir.display(),
                    dir.display()
                );
                failed.push(dir);
            }
        }
    }
    (recovered, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::protocol::VolumeHeader;
    use crate::ingest::recorder::{is_unfinalised, Recorder};

    #[test]
    fn a_torn_last_record_is_skipped_and_earlier_ones_kept() {
        let root = std::env::temp_dir().join(format!("hyper-rt-rec-{}", std::process::id()));
        let meta = SessionMeta {
            started_unix_secs: 1.0,
            bind: "x".into(),
            expected_volumes: Some(3),
            max_volume_index: Some(9999),
            hyper_rt_version: "t".into(),
        };
        let mut rec = Recorder::create(&root, &meta).unwrap();
        let header = |index| VolumeHeader {
            index,
            dtype: Dtype::Int16,
            byte_order: crate::volume::ByteOrder::Little,
            dims: [2, 2, 1],
            mm_from_voxel: crate::volume::IDENTITY_AFFINE,
            tr_secs: 2.0,
            slice_timing_secs: Some(vec![0.5]),
        };
        rec.append_volume(&header(0), &[1, 0, 2, 0, 3, 0, 4, 0], 1.0)
            .unwrap();
        rec.append_volume(&header(2), &[5, 0, 6, 0, 7, 0, 8, 0], 1.0)
            .unwrap();
        let dir = rec.dir().to_path_buf();
        rec.close().unwrap();
        // simulate a crash in the middle of a third record
        let mut spool_bytes = std::fs::read(dir.join(SPOOL)).unwrap();
        spool_bytes.extend_from_slice(b"HRTV\x10\x00");
        spool_bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(dir.join(SPOOL), spool_bytes).unwrap();
        assert!(is_unfinalised(&dir));
        let s = finalise_dir(&dir, "recovered", true, false).unwrap();
        assert_eq!(
            (s.received, s.missing_indices.clone(), s.volumes_in_file),
            (2, vec![1], 3)
        );
        // the slice timing travels from the header through the spool to the summary and the BIDS sidecar
        assert_eq!(s.slice_timing_secs, Some(vec![0.5]));
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(BIDS_SIDECAR)).unwrap()).unwrap();
        assert_eq!(
            sidecar,
            serde_json::json!({"RepetitionTime": 2.0, "SliceTiming": [0.5]})
        );
        let img = crate::nifti::NiftiImage::read(&dir.join("volumes.nii")).unwrap();
        // C order [2,2,1] -> x fastest: (0,0),(1,0),(0,1),(1,1) = c offsets 0,2,1,3
        assert_eq!(img.volume_values(0), vec![1.0, 3.0, 2.0, 4.0]);
        assert_eq!(img.volume_values(1), vec![0.0; 4]);
        assert!(!is_unfinalised(&dir));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn meta(expected_volumes: Option<usize>) -> SessionMeta {
        SessionMeta {
            started_unix_secs: 1.0,
            bind: "x".into(),
            expected_volumes,
            max_volume_index: Some(99),
            hyper_rt_version: "t".into(),
        }
    }

    fn header(index: usize, dims: [usize; 3]) -> VolumeHeader {
        VolumeHeader {
            index,
            dtype: Dtype::Int16,
            byte_order: crate::volume::ByteOrder::Little,
            dims,
            mm_from_voxel: crate::volume::IDENTITY_AFFINE,
            tr_secs: 2.0,
            slice_timing_secs: None,
        }
    }

    /// What the hostile test left behind: a spool holding a record at index 10^12 (written before indices were
    /// bounded) aborted every recovery by sizing memory with it. Now it is skipped and counted.
    #[test]
    fn a_record_beyond_the_index_limit_is_skipped_not_trusted() {
        let root = std::env::temp_dir().join(format!("hyper-rt-fin-range-{}", std::process::id()));
        let mut rec = Recorder::create(&root, &meta(None)).unwrap();
        rec.append_volume(&header(0, [2, 1, 1]), &[1, 0, 2, 0], 1.0)
            .unwrap();
        rec.append_volume(&header(1_000_000_000_000, [2, 1, 1]), &[3, 0, 4, 0], 1.0)
            .unwrap();
        rec.append_volume(&header(1, [2, 1, 1]), &[5, 0, 6, 0], 1.0)
            .unwrap();
        let dir = rec.close().unwrap();
        let s = finalise_dir(&dir, "recovered", true, true).unwrap();
        assert_eq!(
            (s.received, s.skipped_records, s.volumes_in_file),
            (2, 1, 2)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn strays_are_kept_apart_from_the_run() {
        let root = std::env::temp_dir().join(format!("hyper-rt-fin-strays-{}", std::process::id()));
        let mut rec = Recorder::create(&root, &meta(Some(3))).unwrap();
        rec.append_volume(&header(0, [2, 2, 2]), &[7; 16], 1.0)
            .unwrap();
        for i in 0..3u8 {
            rec.append_volume(&header(usize::from(i), [2, 1, 1]), &[i, 0, i, 0], 1.0)
                .unwrap();
        }
        let dir = rec.close().unwrap();
        let s = finalise_dir(&dir, "complete", false, false).unwrap();
        assert_eq!((s.received, s.strays, s.missing), (3, 1, 0));
        assert_eq!(s.dims, Some([2, 1, 1]));
        let stray =
            crate::nifti::NiftiImage::read(&dir.join("strays/stray-001-volIdx-0.nii")).unwrap();
        assert_eq!(
            (stray.dims, stray.volume_values(0)),
            ([2, 2, 2], vec![1799.0; 8])
        );
        let run = crate::nifti::NiftiImage::read(&dir.join("volumes.nii")).unwrap();
        assert_eq!(run.volume_values(2), vec![2.0, 2.0]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
