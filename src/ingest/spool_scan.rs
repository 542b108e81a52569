//! Reading a session spool back: a scan of its records' headers and where each volume's data lies (never the
//! data itself, so any spool is scanned in bounded memory), and one volume's bytes at a time. Finalising and
//! resuming a session both start here.
//!
//! A record is `RECORD_MAGIC`, the header's JSON length (u32 LE), the data length (u64 LE), the JSON header, the
//! data (C order, little endian), `RECORD_END` (see `recorder.rs`). The scan stops at the zeroed tail of a spool
//! that was never trimmed and at a record cut short by a crash (never acknowledged: its reply comes after it).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::recorder::{RecordError, SpoolHeader, RECORD_END, RECORD_MAGIC, SPOOL};

/// A record header longer than this is not one the recorder wrote.
const MAX_RECORD_JSON_BYTES: usize = 64 << 10;

/// Where a volume lies in `spool.bin`.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub header: SpoolHeader,
    pub data_offset: u64,
    pub data_len: u64,
}

/// What the scan of the spool found.
#[derive(Debug, Default)]
pub struct SpoolScan {
    pub entries: Vec<SpoolEntry>,
    /// A record cut short at the end (the process died while writing it, before its reply).
    pub torn: bool,
    /// Records skipped: an index beyond the limit, a length that does not match the header.
    pub skipped: usize,
    /// Where the last complete record ends: a writer resuming the spool appends here.
    pub valid_len: u64,
}

pub(super) fn io_error(dir: &Path, context: &str) -> impl FnOnce(std::io::Error) -> RecordError {
    let (dir, context) = (dir.to_path_buf(), context.to_string());
    move |source| RecordError::Io {
        dir,
        context,
        source,
    }
}

/// Reads the records' headers and where their data lies, never the data itself.
pub fn scan_spool(dir: &Path, max_index: usize) -> Result<SpoolScan, RecordError> {
    let path = dir.join(SPOOL);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SpoolScan::default()),
        Err(e) => return Err(io_error(dir, "opening spool.bin")(e)),
    };
    let file_len = file
        .metadata()
        .map_err(io_error(dir, "reading spool.bin"))?
        .len();
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut scan = SpoolScan::default();
    let mut at = 0u64;
    while at < file_len {
        let mut prefix = [0u8; 16];
        let have = file_len - at;
        if have < 16 {
            // the zeroed tail of a spool whose mapping was never trimmed ends the data; anything else is torn
            let mut rest = vec![0u8; have as usize];
            reader
                .read_exact(&mut rest)
                .map_err(io_error(dir, "reading spool.bin"))?;
            scan.torn = rest.iter().any(|&b| b != 0);
            break;
        }
        reader
            .read_exact(&mut prefix)
            .map_err(io_error(dir, "reading spool.bin"))?;
        if prefix[..4] == [0; 4] {
            break; // the zeroed tail of a spool that was never trimmed (the process died): the end of the data
        }
        let json_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
        let data_len = u64::from_le_bytes([
            prefix[8], prefix[9], prefix[10], prefix[11], prefix[12], prefix[13], prefix[14],
            prefix[15],
        ]);
        let total = 16u64
            .saturating_add(json_len as u64)
            .saturating_add(data_len)
            .saturating_add(4);
        if &prefix[..4] != RECORD_MAGIC || json_len > MAX_RECORD_JSON_BYTES || total > have {
            scan.torn = true;
            break;
        }
        let mut json = vec![0u8; json_len];
        reader
            .read_exact(&mut json)
            .map_err(io_error(dir, "reading spool.bin"))?;
        let data_offset = at + 16 + json_len as u64;
        reader
            .seek(SeekFrom::Start(data_offset + data_len))
            .map_err(io_error(dir, "reading spool.bin"))?;
        let mut end = [0u8; 4];
        reader
            .read_exact(&mut end)
            .map_err(io_error(dir, "reading spool.bin"))?;
        if &end != RECORD_END {
            scan.torn = true;
            break;
        }
        at += total;
        scan.valid_len = at;
        let header: SpoolHeader = match serde_json::from_slice(&json) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(
                    "{}: the record at byte {} has an unreadable header ({e}): skipped",
                    path.display(),
                    at - total
                );
                scan.skipped += 1;
                continue;
            }
        };
        let expected_len =
            header.dims.iter().map(|&d| d as u64).product::<u64>() * header.dtype.itemsize() as u64;
        if header.index > max_index || data_len != expected_len {
            tracing::warn!(
                "{}: the record of volume {} ({} bytes, shape {:?}) is {}: skipped",
                path.display(),
                header.index,
                data_len,
                header.dims,
                if header.index > max_index {
                    format!("beyond this session's highest index {max_index}")
                } else {
                    format!("not the {expected_len} bytes its shape needs")
                }
            );
            scan.skipped += 1;
            continue;
        }
        scan.entries.push(SpoolEntry {
            header,
            data_offset,
            data_len,
        });
    }
    Ok(scan)
}

/// One volume's bytes as spooled: C order, little endian.
pub fn read_c_order(
    spool: &mut File,
    entry: &SpoolEntry,
    dir: &Path,
) -> Result<Vec<u8>, RecordError> {
    let mut c_order = vec![0u8; entry.data_len as usize];
    spool
        .seek(SeekFrom::Start(entry.data_offset))
        .and_then(|_| spool.read_exact(&mut c_order))
        .map_err(io_error(dir, "reading spool.bin"))?;
    Ok(c_order)
}
