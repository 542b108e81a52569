//! An append-only file whose writes cost a memory copy: the file is extended and mapped ahead of the writer in
//! segments by a helper thread, which also touches every page so the kernel allocates it before it is needed.
//!
//! Why: the receiver must put each volume on disk (in the page cache, which survives the process being
//! killed) *before* it replies, and a plain `write` of a 1 MiB volume on an ext4 file costs milliseconds on a
//! busy machine (page allocation, block reservation). Copying into a pre-faulted shared mapping is ~0.1 ms.
//!
//! The file's tail past the logical end is zeros while the run is live; [`MappedSpool::finish`] trims it. A
//! reader treats zeros where a record would start as the end of the data.

use std::fs::File;
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use memmap2::{MmapMut, MmapOptions};

/// The helper keeps up to four segments mapped ahead of the writer, so a busy disk does not stall it.
/// Size of the first mapped segment; each next one doubles, up to [`MAX_SEGMENT_BYTES`], so a short run
/// touches little and a long one switches segments rarely.
const FIRST_SEGMENT_BYTES: u64 = 2 << 20;
const MAX_SEGMENT_BYTES: u64 = 8 << 20;
const PAGE_BYTES: usize = 4096;

struct Segment {
    map: MmapMut,
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
    current: Option<Segment>,
    used_in_current: usize,
    logical_len: u64,
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
                        return; // the writer is gone, or the error was handed over
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
            current: None,
            used_in_current: 0,
            logical_len: 0,
        })
    }

    /// Appends `bytes`; when this returns they are in the page cache.
    pub fn append(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let full = self
                .current
                .as_ref()
                .is_none_or(|s| self.used_in_current == s.map.len());
            if full {
                let next = self
                    .ready
                    .as_ref()
                    .and_then(|rx| rx.recv().ok())
                    .unwrap_or_else(|| {
                        Err(std::io::Error::other("the spool helper thread stopped"))
                    })?;
                if let (Some(old), Some(retired)) = (self.current.replace(next), &self.retired) {
                    let _ = retired.send(ToHelper::Unmap(old));
                }
                self.used_in_current = 0;
            }
            let segment = self
                .current
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no spool segment"))?;
            let n = bytes.len().min(segment.map.len() - self.used_in_current);
            segment.map[self.used_in_current..self.used_in_current + n]
                .copy_from_slice(&bytes[..n]);
            self.used_in_current += n;
            self.logical_len += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Stops the helper and trims the file to the bytes written.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop_helper();
        self.current = None;
        self.file.set_len(self.logical_len)?;
        Ok(())
    }

    fn stop_helper(&mut self) {
        // dropping the receiver makes the helper's next send fail; drain one segment it may be blocked on
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
        self.current = None;
        let _ = self.file.set_len(self.logical_len);
    }
}

/// Extends the file to cover `size` bytes from `offset`, maps them and touches every page.
fn map_segment(file: &File, offset: u64, size: u64) -> std::io::Result<Segment> {
    file.set_len(offset + size)?;
    // SAFETY: the file is private to this session's writer; nothing else truncates it while mapped
    // (the writer trims it only after the helper has stopped and every segment is unmapped).
    let mut map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len(size as usize)
            .map_mut(file)?
    };
    for page in (0..map.len()).step_by(PAGE_BYTES) {
        map[page] = 0;
    }
    Ok(Segment { map })
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
