//! Crash-safe session recording.
//!
//! A session folder holds, while the run is live:
//! - `session.json`: written at the start (start time, endpoint, expected volume count);
//! - `spool.bin`: every accepted volume appended **before** its reply is sent (a record is a header, the
//!   raw little-endian C-order buffer and an end marker), so after `kill -9` every acknowledged volume is on disk;
//! - `messages.jsonl`: one line per message (arrival time, bytes, outcome, reply latency).
//!
//! Finalising reads those files back, writes `volumes.nii[.gz]` (4-D, the sender's affine and TR, volumes in
//! index order, gaps zero-filled and listed) and `summary.json`, then removes the spool. The same function
//! finalises a normal run and recovers a crashed one, so both give the same result.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::protocol::{Rejection, VolumeHeader};
use crate::ingest::spool::MappedSpool;
use crate::nifti::{self, NiftiSpec};
use crate::stats::Percentiles;
use crate::volume::{c_order_to_x_fastest, Affine, Dtype};

const SPOOL: &str = "spool.bin";
const MESSAGES: &str = "messages.jsonl";
const SESSION: &str = "session.json";
const SUMMARY: &str = "summary.json";
const RECORD_MAGIC: &[u8; 4] = b"HRTV";
const RECORD_END: &[u8; 4] = b"END!";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("session {dir}: {context}: {source}")]
    Io {
        dir: PathBuf,
        context: String,
        source: std::io::Error,
    },
    #[error("session {dir}: {reason}")]
    Invalid { dir: PathBuf, reason: String },
    #[error(transparent)]
    Nifti(#[from] nifti::NiftiError),
}

/// Written at the start of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionMeta {
    pub started_unix_secs: f64,
    pub bind: String,
    /// Volumes in the run, when known.
    pub expected_volumes: Option<usize>,
    pub hyper_rt_version: String,
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
    Handshake,
}

/// One line of `messages.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageLog {
    pub seq: u64,
    pub arrived_unix_secs: f64,
    pub frames: usize,
    pub bytes: usize,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vol_idx: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub reply_latency_ms: f64,
}

/// Record header inside `spool.bin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpoolHeader {
    index: usize,
    dtype: Dtype,
    dims: [usize; 3],
    mm_from_voxel: Affine,
    tr_secs: f64,
    arrived_unix_secs: f64,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyMs {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn from_samples(samples: &[f64]) -> LatencyMs {
        let p = Percentiles::new(samples);
        LatencyMs {
            count: samples.len(),
            p50: p.at(50.0),
            p95: p.at(95.0),
            p99: p.at(99.0),
            max: p.at(100.0),
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub end_reason: String,
    pub recovered_after_crash: bool,
    pub started_unix_secs: f64,
    pub finalised_unix_secs: f64,
    pub expected_volumes: Option<usize>,
    pub received: usize,
    pub rejected: usize,
    pub rejected_by_kind: BTreeMap<Rejection, usize>,
    pub duplicates: usize,
    pub handshakes: usize,
    pub missing: usize,
    pub missing_indices: Vec<usize>,
    pub messages: usize,
    pub reply_latency_ms: LatencyMs,
    /// File holding the volumes, relative to the session folder; absent when nothing was accepted.
    pub volumes_file: Option<String>,
    pub volumes_in_file: usize,
    pub dims: Option<[usize; 3]>,
    pub dtype: Option<Dtype>,
    pub tr_secs: Option<f64>,
}

/// The live side: appends volumes and message lines.
pub struct Recorder {
    dir: PathBuf,
    spool: MappedSpool,
    messages: BufWriter<File>,
}

/// Seconds since the Unix epoch.
pub fn unix_secs_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Recorder {
    /// Creates a new session folder under `root`, named by the local start time (with a suffix if taken).
    pub fn create(root: &Path, meta: &SessionMeta) -> Result<Recorder, RecordError> {
        let io = |dir: &Path, context: &str| {
            let dir = dir.to_path_buf();
            let context = context.to_string();
            move |source| RecordError::Io {
                dir: dir.clone(),
                context: context.clone(),
                source,
            }
        };
        std::fs::create_dir_all(root).map_err(io(root, "creating the sessions root"))?;
        let stamp = format_timestamp(meta.started_unix_secs);
        let mut dir = root.join(&stamp);
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = root.join(format!("{stamp}-{n}"));
        }
        std::fs::create_dir(&dir).map_err(io(&dir, "creating the session folder"))?;
        let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| RecordError::Invalid {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(dir.join(SESSION), meta_json).map_err(io(&dir, "writing session.json"))?;
        let spool =
            MappedSpool::create(&dir.join(SPOOL)).map_err(io(&dir, "creating spool.bin"))?;
        let messages = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(MESSAGES))
            .map_err(io(&dir, "opening messages.jsonl"))?;
        Ok(Recorder {
            dir,
            spool,
            messages: BufWriter::new(messages),
        })
    }

    /// The session folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends an accepted volume (little-endian C-order buffer). Returns once the bytes are in the kernel's
    /// page cache, which survives the process being killed.
    pub fn append_volume(
        &mut self,
        header: &VolumeHeader,
        c_order_le: &[u8],
        arrived_unix_secs: f64,
    ) -> Result<(), RecordError> {
        let record = SpoolHeader {
            index: header.index,
            dtype: header.dtype,
            dims: header.dims,
            mm_from_voxel: header.mm_from_voxel,
            tr_secs: header.tr_secs,
            arrived_unix_secs,
        };
        let json = serde_json::to_vec(&record).map_err(|e| RecordError::Invalid {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let mut prefix = Vec::with_capacity(16 + json.len());
        prefix.extend_from_slice(RECORD_MAGIC);
        prefix.extend_from_slice(&(json.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&(c_order_le.len() as u64).to_le_bytes());
        prefix.extend_from_slice(&json);
        let io = |source| RecordError::Io {
            dir: self.dir.clone(),
            context: "appending to spool.bin".into(),
            source,
        };
        self.spool.append(&prefix).map_err(io)?;
        self.spool.append(c_order_le).map_err(io)?;
        self.spool.append(RECORD_END).map_err(io)?;
        Ok(())
    }

    /// Appends one line to `messages.jsonl` and flushes it.
    pub fn log_message(&mut self, entry: &MessageLog) -> Result<(), RecordError> {
        let io = |source| RecordError::Io {
            dir: self.dir.clone(),
            context: "appending to messages.jsonl".into(),
            source,
        };
        let line = serde_json::to_string(entry).map_err(|e| RecordError::Invalid {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        writeln!(self.messages, "{line}").map_err(io)?;
        self.messages.flush().map_err(io)
    }

    /// Ends the session: writes the NIfTI and the summary.
    pub fn finalise(self, end_reason: &str, compress: bool) -> Result<Summary, RecordError> {
        let dir = self.dir.clone();
        self.spool.finish().map_err(|source| RecordError::Io {
            dir: dir.clone(),
            context: "closing spool.bin".into(),
            source,
        })?;
        finalise_dir(&dir, end_reason, false, compress)
    }
}

/// Formats Unix seconds as `YYYYmmdd-HHMMSS` (UTC).
pub fn format_timestamp(unix_secs: f64) -> String {
    let secs = unix_secs.max(0.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// True when `dir` is a session folder that was never finalised (a crash).
pub fn is_unfinalised(dir: &Path) -> bool {
    dir.join(SESSION).is_file() && !dir.join(SUMMARY).is_file()
}

/// Unfinalised session folders directly under `root`.
pub fn find_unfinalised(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_unfinalised(p))
        .collect();
    dirs.sort();
    dirs
}

/// A volume read back from the spool.
struct SpooledVolume {
    header: SpoolHeader,
    c_order_le: Vec<u8>,
}

/// Reads every complete record of `spool.bin`; a torn record at the end (the process died while writing it,
/// before its reply) is reported and skipped.
fn read_spool(dir: &Path) -> Result<(Vec<SpooledVolume>, bool), RecordError> {
    let path = dir.join(SPOOL);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|source| RecordError::Io {
                    dir: dir.to_path_buf(),
                    context: "reading spool.bin".into(),
                    source,
                })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(source) => {
            return Err(RecordError::Io {
                dir: dir.to_path_buf(),
                context: "opening spool.bin".into(),
                source,
            })
        }
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut torn = false;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.iter().take(4).all(|&b| b == 0) {
            break; // the zeroed tail of a spool that was never trimmed (the process died): the end of the data
        }
        if rest.len() < 16 || &rest[..4] != RECORD_MAGIC {
            torn = true;
            break;
        }
        let json_len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let data_len = u64::from_le_bytes([
            rest[8], rest[9], rest[10], rest[11], rest[12], rest[13], rest[14], rest[15],
        ]) as usize;
        let total = 16usize
            .saturating_add(json_len)
            .saturating_add(data_len)
            .saturating_add(4);
        if rest.len() < total || &rest[total - 4..total] != RECORD_END {
            torn = true;
            break;
        }
        let header: SpoolHeader =
            serde_json::from_slice(&rest[16..16 + json_len]).map_err(|e| RecordError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!("spool record at byte {at}: {e}"),
            })?;
        out.push(SpooledVolume {
            header,
            c_order_le: rest[16 + json_len..16 + json_len + data_len].to_vec(),
        });
        at += total;
    }
    Ok((out, torn))
}

fn read_messages(dir: &Path) -> Vec<MessageLog> {
    let Ok(text) = std::fs::read_to_string(dir.join(MESSAGES)) else {
        return Vec::new();
    };
    // a line torn by a crash fails to parse and is skipped
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The element type of the 4-D file: the common one, float32 for float16, float64 when types differ.
fn recording_dtype(volumes: &[SpooledVolume]) -> Dtype {
    let first = volumes[0].header.dtype;
    if volumes.iter().all(|v| v.header.dtype == first) {
        if first == Dtype::Float16 {
            Dtype::Float32
        } else {
            first
        }
    } else {
        Dtype::Float64
    }
}

fn convert_le(bytes: &[u8], from: Dtype, to: Dtype) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    let n = bytes.len() / from.itemsize();
    let mut out = Vec::with_capacity(n * to.itemsize());
    for i in 0..n {
        let v = from.read_f64(bytes, i);
        match to {
            Dtype::Float32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Finalises (or recovers) a session folder: writes `volumes.nii[.gz]` and `summary.json`, removes the spool.
pub fn finalise_dir(
    dir: &Path,
    end_reason: &str,
    recovered: bool,
    compress: bool,
) -> Result<Summary, RecordError> {
    let meta: SessionMeta = std::fs::read(dir.join(SESSION))
        .map_err(|source| RecordError::Io {
            dir: dir.to_path_buf(),
            context: "reading session.json".into(),
            source,
        })
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| RecordError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!("session.json: {e}"),
            })
        })?;
    let (mut volumes, torn) = read_spool(dir)?;
    if torn {
        tracing::warn!(
            "session {}: skipped a torn record at the end of spool.bin (never acknowledged)",
            dir.display()
        );
    }
    let messages = read_messages(dir);

    // keep the first of each index (the receiver never spools duplicates, but be safe)
    volumes.sort_by_key(|v| v.header.index);
    volumes.dedup_by_key(|v| v.header.index);

    let mut summary = Summary {
        end_reason: end_reason.to_string(),
        recovered_after_crash: recovered,
        started_unix_secs: meta.started_unix_secs,
        finalised_unix_secs: unix_secs_now(),
        expected_volumes: meta.expected_volumes,
        received: volumes.len(),
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

    if let Some(first) = volumes.first() {
        let dims = first.header.dims;
        let dtype = recording_dtype(&volumes);
        let n_volumes = volumes.last().map(|v| v.header.index + 1).unwrap_or(0);
        let per_volume = dims.iter().product::<usize>() * dtype.itemsize();
        let mut data = vec![0u8; per_volume * n_volumes];
        for v in &volumes {
            if v.header.dims != dims {
                return Err(RecordError::Invalid {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "volume {} has dims {:?}, the run {:?}",
                        v.header.index, v.header.dims, dims
                    ),
                });
            }
            let x_fastest = c_order_to_x_fastest(&v.c_order_le, dims, v.header.dtype.itemsize());
            let converted = convert_le(&x_fastest, v.header.dtype, dtype);
            data[v.header.index * per_volume..(v.header.index + 1) * per_volume]
                .copy_from_slice(&converted);
        }
        let name = if compress {
            "volumes.nii.gz"
        } else {
            "volumes.nii"
        };
        let spec = NiftiSpec {
            dims,
            volumes: n_volumes,
            dtype,
            mm_from_voxel: first.header.mm_from_voxel,
            tr_secs: first.header.tr_secs,
            scaling: None,
            description: "hyper-rt session recording".into(),
        };
        nifti::write(&dir.join(name), &spec, &data)?;
        summary.volumes_file = Some(name.to_string());
        summary.volumes_in_file = n_volumes;
        summary.dims = Some(dims);
        summary.dtype = Some(dtype);
        summary.tr_secs = Some(first.header.tr_secs);
    }
    let present: std::collections::BTreeSet<usize> =
        volumes.iter().map(|v| v.header.index).collect();
    let upper = meta
        .expected_volumes
        .unwrap_or(0)
        .max(present.iter().next_back().map(|i| i + 1).unwrap_or(0));
    summary.missing_indices = (0..upper).filter(|i| !present.contains(i)).collect();
    summary.missing = summary.missing_indices.len();

    let json = serde_json::to_vec_pretty(&summary).map_err(|e| RecordError::Invalid {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = dir.join("summary.json.partial");
    std::fs::write(&tmp, json).map_err(|source| RecordError::Io {
        dir: dir.to_path_buf(),
        context: "writing summary.json".into(),
        source,
    })?;
    std::fs::rename(&tmp, dir.join(SUMMARY)).map_err(|source| RecordError::Io {
        dir: dir.to_path_buf(),
        context: "writing summary.json".into(),
        source,
    })?;
    // the NIfTI and summary are complete: the spool is no longer needed
    let _ = std::fs::remove_file(dir.join(SPOOL));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(format_timestamp(0.0), "19700101-000000");
        assert_eq!(format_timestamp(1_795_790_096.0), "20261127-143456");
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_earlier_ones_kept() {
        let root = std::env::temp_dir().join(format!("hyper-rt-rec-{}", std::process::id()));
        let meta = SessionMeta {
            started_unix_secs: 1.0,
            bind: "x".into(),
            expected_volumes: Some(3),
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
        };
        rec.append_volume(&header(0), &[1, 0, 2, 0, 3, 0, 4, 0], 1.0)
            .unwrap();
        rec.append_volume(&header(2), &[5, 0, 6, 0, 7, 0, 8, 0], 1.0)
            .unwrap();
        let dir = rec.dir().to_path_buf();
        drop(rec);
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
        let img = crate::nifti::NiftiImage::read(&dir.join("volumes.nii")).unwrap();
        // C order [2,2,1] -> x fastest: (0,0),(1,0),(0,1),(1,1) = c offsets 0,2,1,3
        assert_eq!(img.volume_values(0), vec![1.0, 3.0, 2.0, 4.0]);
        assert_eq!(img.volume_values(1), vec![0.0; 4]);
        assert!(!is_unfinalised(&dir));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
