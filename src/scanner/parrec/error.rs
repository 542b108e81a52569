//! What goes wrong reading a PAR/REC pair, each error naming the file (and, in a header, the line).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ParRecError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Header {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: no REC file beside it ({expected} or its lower/upper-case twin)")]
    NoRec { path: PathBuf, expected: String },
    #[error("{path}: {size} bytes, but its PAR file places images up to byte {needed} (still being written, or truncated)")]
    RecTooShort {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
}
