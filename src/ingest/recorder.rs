//! Crash-safe session recording.
//!
//! A session folder holds, while the run is live:
//! - `session.json`: written at the start (start time, endpoint, expected volume count);
//! - `spool.bin`: every accepted volume appended **before** its reply is sent (a record is a header, the
//!   raw little-endian C-order buffer and an end marker), so after `kill -9` every acknowledged volume is on disk;
//! - `messages.jsonl`: one line per message (arrival time, bytes, outcome, reply latency).
//!
//! Finalising ([`super::finalise`]) reads those files back, writes `volumes.nii[.gz]`, its BIDS sidecar
//! `volumes.json` (TR, slice timing) and `summary.json`, then removes the spool. The same function finalises a normal run and recovers a crashed one, so both give the
//! same result.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::protocol::{Rejection, VolumeHeader};
use crate::ingest::spool::MappedSpool;
use crate::nifti;
use crate::stats::Percentiles;
use crate::volume::{Affine, Dtype};

pub(super) const SPOOL: &str = "spool.bin";
pub(super) const MESSAGES: &str = "messages.jsonl";
pub(super) const SESSION: &str = "session.json";
pub(super) const SUMMARY: &str = "summary.json";
pub(super) const RECORD_MAGIC: &[u8; 4] = b"HRTV";
pub(super) const RECORD_END: &[u8; 4] = b"END!";

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
    #[error("session {dir} is being recorded by a running receiver (its spool.bin is locked); it is left alone")]
    InUse { dir: PathBuf },
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
    /// The highest index accepted (`receiver.max_volume_index`); finalising skips records beyond it. Absent in
    /// sessions recorded before indices were bounded.
    #[serde(default)]
    pub max_volume_index: Option<usize>,
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
pub struct SpoolHeader {
    pub index: usize,
    pub dtype: Dtype,
    pub dims: [usize; 3],
    pub mm_from_voxel: Affine,
    pub tr_secs: f64,
    pub arrived_unix_secs: f64,
    /// BIDS `SliceTiming` when the sender gave it (absent in older spools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_timing_secs: Option<Vec<f64>>,
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
    /// Volumes in the run (its geometry, one copy of each index).
    pub received: usize,
    /// Volumes accepted whose geometry was not the run's (see `ingest::geometry`), written to `strays/`.
    #[serde(default)]
    pub strays: usize,
    #[serde(default)]
    pub strays_folder: Option<String>,
    /// Spool records skipped when finalising (beyond the index limit, or inconsistent).
    #[serde(default)]
    pub skipped_records: usize,
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
    /// BIDS `SliceTiming` of the run (its first volume's), when the sender gave it; also in the BIDS sidecar
    /// `volumes.json` beside the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_timing_secs: Option<Vec<f64>>,
    /// What the receiver saw of its peers; absent after a crash recovery (those counts lived in its memory).
    #[serde(default)]
    pub peers: Option<PeerCounts>,
}

/// Connections and log lines the receiver counted live (they are not in the spool or message log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerCounts {
    /// Connections refused by `receiver.allow_from` / `--allow-from`.
    pub refused: u64,
    /// Peers dropped for sending nothing within `receiver.handshake_timeout_secs`.
    pub dropped_silent: u64,
    /// `messages.jsonl` lines that could not be written (a full disk).
    pub log_lines_lost: u64,
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

    /// Reopens an unfinalised session to go on recording it (see `ingest::resume`): the spool is appended to
    /// after its first `valid_len` bytes, the message log after its last line.
    pub fn reopen(dir: &Path, valid_len: u64) -> Result<Recorder, RecordError> {
        let io = |context: &'static str| {
            let dir = dir.to_path_buf();
            move |source| RecordError::Io {
                dir,
                context: context.to_string(),
                source,
            }
        };
        let spool = MappedSpool::reopen(&dir.join(SPOOL), valid_len).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                RecordError::InUse {
                    dir: dir.to_path_buf(),
                }
            } else {
                io("reopening spool.bin")(e)
            }
        })?;
        let messages = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(MESSAGES))
            .map_err(io("opening messages.jsonl"))?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
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
            slice_timing_secs: header.slice_timing_secs.clone(),
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
        // one record, all or nothing: the spool reserves room for the whole of it before copying any
        self.spool
            .append_all(&[&prefix, c_order_le, RECORD_END])
            .map_err(|source| RecordError::Io {
                dir: self.dir.clone(),
                context: "appending to spool.bin".into(),
                source,
            })
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

    /// Ends the live side: stops the spool's helper and trims the spool. Finalising the folder is
    /// [`super::finalise::finalise_dir`]'s.
    pub fn close(self) -> Result<PathBuf, RecordError> {
        self.spool.finish().map_err(|source| RecordError::Io {
            dir: self.dir.clone(),
            context: "closing spool.bin".into(),
            source,
        })?;
        Ok(self.dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(format_timestamp(0.0), "19700101-000000");
        assert_eq!(format_timestamp(1_795_790_096.0), "20261127-143456");
    }
}
