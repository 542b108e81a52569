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
    used_in_front: usize,
    logical_len: u64,
    /// End of the mapped (reserved) part of the file.
    mapped_end: u64,
}

impl MappedSpool {
    /// Creates (truncating) the file and starts the helper that maps segments ahead.
    pub fn create(path: &Path) -> std::io::Result<MappedSpool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let helper_file = file.try_clone()?;
        let (tx, rx) = bounded(4);
        let (retired_tx, retired_rx) = crossbeam_channel::unbounded::<ToHelper>();
        let helper = std::thread::Builder::new()
            .name("spool-prefault".into())
            .spawn(move || {
                let mut offset = 0u64;
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
            used_in_front: 0,
            logical_len: 0,
            mapped_end: 0,
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
        for mut bytes in parts.iter().copied() {
            while !bytes.is_empty() {
                let full = self
                    .segments
                    .front()
                    .is_some_and(|s| self.used_in_front == s.map.len());
                if full {
                    if let (Some(old), Some(retired)) = (self.segments.pop_front(), &self.retired) {
                        let _ = retired.send(ToHelper::Unmap(old));
                    }
                    self.used_in_front = 0;
                }
                let segment = self
                    .segments
                    .front_mut()
                    .ok_or_else(|| std::io::Error::other("no spool segment reserved"))?;
                let n = bytes.len().min(segment.map.len() - self.used_in_front);
                segment.map[self.used_in_front..self.used_in_front + n]
                    .copy_from_slice(&bytes[..n]);
                self.used_in_front += n;
                bytes = &bytes[n..];
            }
        }
        self.logical_len += needed;
        Ok(())
    }

    /// Maps segments until `needed` more bytes fit.
    fn reserve(&mut self, needed: u64) -> std::io::Result<()> {
        loop {
            let room = self.mapped_end - self.logical_len;
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
    for page in (0..map.len()).step_by(PAGE_BYTES as usize) {
        map[page] = 0;
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
}
