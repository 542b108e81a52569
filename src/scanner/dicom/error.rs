//! What goes wrong reading a DICOM file, each error naming the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a DICOM file (no \"DICM\" marker after the 128-byte preamble)")]
    NotDicom { path: PathBuf },
    #[error("{path}: broken at byte {offset}: {reason}")]
    Malformed {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}
