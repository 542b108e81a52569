//! An append-only file whose writes cost a memory copy: the file is extended and mapped ahead of the writer in
//! segments by a helper thread, which also touches every page so the kernel allocates it before it is needed.
//!
//! Why: the receiver must put each volume on disk (in the page cache, which survives the process being
//! killed) *before* it replies, and a plain `write` of a 1 MiB volume on an ext4 file costs milliseconds on a
//! busy machine (page allocation, block reservation). Copying into a pre-faulted shared mapping is ~0.1 ms.
//!
//! A full disk must be an error, never a SIGBUS: a store into a mapped page the filesystem cannot back kills the
//! process. So every segment's blocks are reserved with `posix_fallocate` before it is mapped, and a record is
//! appended all or nothing ([`MappedSpool::append_all`]): room for the whole record is mapped before any byte
//! is copied. When the helper cannot reserve ahead (the disk is filling), the writer maps just what each record
//! needs itself, so the last megabytes are used, a record that does not fit is refused with ENOSPC, and
//! appending works again once space returns.
//!
//! The file's tail past the logical end is zeros while the run is live; [`MappedSpool::finish`] trims it. A
//! reader treats zeros where a record would start as the end of the data.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use memmap2::{MmapMut, MmapOptions};

/// The helper keeps up to four segments mapped ahead of the writer (its channel holds four), so a busy disk does
/// not stall it. Size of the first mapped segment; each next one doubles, up to [`MAX_SEGMENT_BYTES`], so a short run
/// touches little and a long one switches segments rarely.
const FIRST_SEGMENT_BYTES: u64 = 2 << 20;
const MAX_SEGMENT_BYTES: u64 = 8 << 20;
const PAGE_BYTES: u64 = 4096;

struct Segment {
    map: MmapMut,
    offset: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.offset + self.map.len() as u64
    }
}

/// Returned segments are unmapped by the helper, off the writer's path.
enum ToHelper {
    Unmap(Segment),
}

/// The writer side. Not `Sync`: one thread appends.
pub struct MappedSpool {
    file: File,
    ready: Option<Receiver<std::io::Result<Segment>>>,
    retired: Option<Sender<ToHelper>>,
    helper: Option<JoinHandle<()>>,
    /// Mapped segments in file order; the front one is being written.
    segments: VecDeque<Segment>,
    /// Bytes of data in the file; the next record goes here.
    logical_len: u64,
    /// End of the mapped (reserved) part of the file.
    mapped_end: u64,
}

impl MappedSpool {
    /// Creates (truncating) the file and starts the helper that maps segments ahead.
    pub fn create(path: &Path) -> std::io::Result<MappedSpool> {
        MappedSpool::open(path, None)
    }

    /// Opens an existing spool to append after its first `valid_len` bytes (the end of its last complete
    /// record: anything after it, a record torn by a crash or the zeroed tail, is cut off).
    pub fn reopen(path: &Path, valid_len: u64) -> std::io::Result<MappedSpool> {
        MappedSpool::open(path, Some(valid_len))
    }

    fn open(path: &Path, keep_bytes: Option<u64>) -> std::io::Result<MappedSpool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(keep_bytes.is_none())
            .truncate(keep_bytes.is_none())
            .open(path)?;
        if !try_lock_exclusive(&file)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another process is writing this spool",
            ));
        }
        let logical_len = keep_bytes.unwrap_or(0);
        file.set_len(logical_len)?;
        // mappings start on a page: the first one takes in the partly written page the data ends in
        let first_offset = logical_len / PAGE_BYTES * PAGE_BYTES;
        let helper_file = file.try_clone()?;
        let (tx, rx) = bounded(4);
        let (retired_tx, retired_rx) = crossbeam_channel::unbounded::<ToHelper>();
        let helper = std::thread::Builder::new()
            .name("spool-prefault".into())
            .spawn(move || {
                let mut offset = first_offset;
                let mut size = FIRST_SEGMENT_BYTES;
                loop {
                    let segment = map_segment(&helper_file, offset, size);
                    let failed = segment.is_err();
                    if tx.send(segment).is_err() || failed {
                        return; // the writer is gone, or the error was handed over: it maps by itself now
                    }
                    while let Ok(ToHelper::Unmap(old)) = retired_rx.try_recv() {
                        drop(old);
                    }
                    offset += size;
                    size = (size * 2).min(MAX_SEGMENT_BYTES);
                }
            })?;
        Ok(MappedSpool {
            file,
            ready: Some(rx),
            retired: Some(retired_tx),
            helper: Some(helper),
            segments: VecDeque::new(),
            logical_len,
            mapped_end: first_offset,
        })
    }

    /// Appends `bytes`; when this returns they are in the page cache.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.append_all(&[bytes])
    }

    /// Appends the parts as one record: either all of it is in the page cache when this returns, or (an
    /// error, such as ENOSPC) none of it counts and the next append starts where this one would have.
    pub fn append_all(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let needed: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.reserve(needed)?;
        let mut at = self.logical_len;
        for mut bytes in parts.iter().copied() {
            while !bytes.is_empty() {
                while self.segments.front().is_some_and(|s| at >= s.end()) {
                    if let (Some(old), Some(retired)) = (self.segments.pop_front(), &self.retired) {
                        let _ = retired.send(ToHelper::Unmap(old));
                    }
                }
                let segment = self
                    .segments
                    .front_mut()
                    .ok_or_else(|| std::io::Error::other("no spool segment reserved"))?;
                let start = (at - segment.offset) as usize;
                let n = bytes.len().min(segment.map.len() - start);
                segment.map[start..start + n].copy_from_slice(&bytes[..n]);
                at += n as u64;
                bytes = &bytes[n..];
            }
        }
        self.logical_len = at;
        Ok(())
    }

    /// Maps segments until `needed` more bytes fit.
    fn reserve(&mut self, needed: u64) -> std::io::Result<()> {
        loop {
            let room = self.mapped_end.saturating_sub(self.logical_len);
            if room >= needed {
                return Ok(());
            }
            let segment = self.next_segment(needed - room)?;
            self.mapped_end = segment.end();
            self.segments.push_back(segment);
        }
    }

    /// The helper's next segment; once the helper has failed (a filling disk), a segment mapped here of just
    /// the size needed, which fails with the filesystem's error when even that does not fit.
    fn next_segment(&mut self, shortfall: u64) -> std::io::Result<Segment> {
        if let Some(rx) = &self.ready {
            match rx.recv() {
                Ok(Ok(segment)) if segment.offset == self.mapped_end => return Ok(segment),
                Ok(Ok(_)) => tracing::error!("spool: the helper mapped out of order; mapping here"),
                Ok(Err(e)) => tracing::warn!(
                    "spool: cannot reserve disk space ahead ({e}); reserving record by record from now on"
                ),
                Err(_) => {}
            }
            self.stop_helper();
        }
        let wanted = shortfall.max(FIRST_SEGMENT_BYTES).div_ceil(PAGE_BYTES) * PAGE_BYTES;
        map_segment(&self.file, self.mapped_end, wanted).or_else(|_| {
            map_segment(
                &self.file,
                self.mapped_end,
                shortfall.div_ceil(PAGE_BYTES) * PAGE_BYTES,
            )
        })
    }

    /// Stops the helper and trims the file to the bytes written.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop_helper();
        self.segments.clear();
        self.file.set_len(self.logical_len)?;
        Ok(())
    }

    fn stop_helper(&mut self) {
        // dropping the receiver makes the helper's next send fail
        if let Some(rx) = self.ready.take() {
            drop(rx);
        }
        self.retired.take();
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

impl Drop for MappedSpool {
    fn drop(&mut self) {
        self.stop_helper();
        self.segments.clear();
        let _ = self.file.set_len(self.logical_len);
    }
}

/// Takes an exclusive advisory lock (`flock`) on the open file, without waiting: `Ok(false)` when another
/// process holds it. The writer holds it for the spool's life, so that finalising or recovering a session whose
/// receiver is still running (two receivers sharing a session root) is refused instead of racing it. The lock
/// goes with the last descriptor of the open file.
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    // SAFETY: a plain system call on a file descriptor this function borrows; it touches no memory of ours.
    let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if status == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Reserves the blocks for `size` bytes from `offset` (extending the file), maps them and touches every page.
/// Reserving first is what makes a full disk an ENOSPC here instead of a SIGBUS at a later store.
fn map_segment(file: &File, offset: u64, size: u64) -> std::io::Result<Segment> {
    let (start, len) = (
        libc::off_t::try_from(offset).map_err(std::io::Error::other)?,
        libc::off_t::try_from(size).map_err(std::io::Error::other)?,
    );
    // SAFETY: a plain system call on a file descriptor this function borrows; it touches no memory of ours.
    let status = unsafe { libc::posix_fallocate(file.as_raw_fd(), start, len) };
    if status != 0 {
        return Err(std::io::Error::from_raw_os_error(status));
    }
    // SAFETY: the file is private to this session's writer; nothing else truncates it while mapped
    // (the writer trims it only after the helper has stopped and every segment is unmapped).
    let mut map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len(size as usize)
            .map_mut(file)?
    };
    // touch each page (a volatile read and write of the same byte, as the first page may hold data already)
    for page in (0..map.len()).step_by(PAGE_BYTES as usize) {
        let byte = &mut map[page];
        // SAFETY: `byte` is a valid, aligned reference into the mapping for the duration of both calls.
        unsafe { std::ptr::write_volatile(byte, std::ptr::read_volatile(byte)) };
    }
    Ok(Segment { map, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_across_segments_and_trims() {
        let path = std::env::temp_dir().join(format!("hyper-rt-spool-{}", std::process::id()));
        let mut spool = MappedSpool::create(&path).unwrap();
        let chunk: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8 + 1).collect();
        let mut expected = Vec::new();
        for _ in 0..14 {
            spool.append(&chunk).unwrap(); // 42 MiB: crosses a segment boundary
            expected.extend_from_slice(&chunk);
        }
        spool.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reopening_appends_after_the_valid_bytes_and_cuts_a_torn_tail() {
        let path = std::env::temp_dir().join(format!("hyper-rt-spool-re-{}", std::process::id()));
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8 + 1).collect();
        let mut spool = MappedSpool::create(&path).unwrap();
        spool.append(&first).unwrap();
        spool.append(b"torn record").unwrap();
        spool.finish().unwrap();
        // a second writer is refused while one holds the spool
        let holder = MappedSpool::reopen(&path, first.len() as u64).unwrap();
        assert!(MappedSpool::reopen(&path, first.len() as u64).is_err());
        drop(holder);
        let mut spool = MappedSpool::reopen(&path, first.len() as u64).unwrap();
        let second: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 7) as u8 + 1).collect();
        spool.append(&second).unwrap();
        spool.finish().unwrap();
        let mut expected = first.clone();
        expected.extend_from_slice(&second);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(&path).unwrap();
    }
}
