//! Writing NIfTI-1 single files: the header for a 4-D series (sform from the affine, pixdim from its column
//! lengths, TR in seconds), whole ([`write`]) or volume by volume ([`NiftiWriter`]), plain or gzip-compressed,
//! always beside the final name and renamed when complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{code_from_dtype, NiftiError, DATA_OFFSET};
use crate::volume::{Affine, Dtype};

/// What to write: geometry, element type and timing of a 4-D series.
#[derive(Debug, Clone)]
pub struct NiftiSpec {
    pub dims: [usize; 3],
    pub volumes: usize,
    pub dtype: Dtype,
    pub mm_from_voxel: Affine,
    pub tr_secs: f64,
    /// Optional `(slope, intercept)` stored in the header.
    pub scaling: Option<(f64, f64)>,
    /// Free text (at most 79 bytes are kept).
    pub description: String,
}

/// Builds the 352-byte header (NIfTI-1 header plus an empty extension flag) for `spec`, little endian.
pub fn header_bytes(spec: &NiftiSpec) -> Result<Vec<u8>, String> {
    let code = code_from_dtype(spec.dtype).ok_or_else(|| {
        format!(
            "{} has no NIfTI datatype; convert it first",
            spec.dtype.numpy_name()
        )
    })?;
    for (axis, &d) in spec
        .dims
        .iter()
        .chain(std::iter::once(&spec.volumes))
        .enumerate()
    {
        if d == 0 || d > i16::MAX as usize {
            return Err(format!(
                "dimension {axis} = {d} does not fit a NIfTI-1 header (1 to 32767)"
            ));
        }
    }
    let mut h = vec![0u8; DATA_OFFSET];
    let put_i16 =
        |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, at: usize, v: f64| {
        h[at..at + 4].copy_from_slice(&(v as f32).to_le_bytes())
    };
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    put_i16(&mut h, 40, 4);
    for (axis, &d) in spec.dims.iter().enumerate() {
        put_i16(&mut h, 42 + 2 * axis, d as i16);
    }
    put_i16(&mut h, 48, spec.volumes as i16);
    for axis in 5..8 {
        put_i16(&mut h, 40 + 2 * axis, 1);
    }
    put_i16(&mut h, 70, code);
    put_i16(&mut h, 72, (spec.dtype.itemsize() * 8) as i16);
    put_f32(&mut h, 76, 1.0); // qfac
    for axis in 0..3 {
        let a = &spec.mm_from_voxel;
        let len = (a[0][axis].powi(2) + a[1][axis].powi(2) + a[2][axis].powi(2)).sqrt();
        put_f32(&mut h, 80 + 4 * axis, len);
    }
    put_f32(&mut h, 92, spec.tr_secs);
    put_f32(&mut h, 108, DATA_OFFSET as f64);
    let (slope, inter) = spec.scaling.unwrap_or((1.0, 0.0));
    put_f32(&mut h, 112, slope);
    put_f32(&mut h, 116, inter);
    h[123] = 2 | 8; // mm, seconds
    let descr = spec.description.as_bytes();
    let n = descr.len().min(79);
    h[148..148 + n].copy_from_slice(&descr[..n]);
    put_i16(&mut h, 254, 1); // sform_code: scanner
    for r in 0..3 {
        for c in 0..4 {
            put_f32(&mut h, 280 + 16 * r + 4 * c, spec.mm_from_voxel[r][c]);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    Ok(h)
}

/// Writes a complete image: `volumes_le` holds all volumes, little endian, x fastest. A path ending in `.gz`
/// is gzip-compressed. The file is written beside its final name and renamed, so a reader never sees half a file.
pub fn write(path: &Path, spec: &NiftiSpec, volumes_le: &[u8]) -> Result<(), NiftiError> {
    let expected = spec.dims.iter().product::<usize>() * spec.volumes * spec.dtype.itemsize();
    if volumes_le.len() != expected {
        return Err(NiftiError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes of voxels given, {expected} expected",
                volumes_le.len()
            ),
        });
    }
    let mut writer = NiftiWriter::create(path, spec)?;
    writer.write_voxels(volumes_le)?;
    writer.finish()
}

/// Writes an image volume by volume, so that a long series never has to be in memory at once. Like [`write`],
/// it writes beside the final name and renames at [`NiftiWriter::finish`]; dropped unfinished, it removes the
/// partial file.
pub struct NiftiWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<Sink>,
    remaining_bytes: u64,
}

enum Sink {
    Plain(std::io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
}

impl NiftiWriter {
    pub fn create(path: &Path, spec: &NiftiSpec) -> Result<NiftiWriter, NiftiError> {
        let header = header_bytes(spec).map_err(|reason| NiftiError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        let partial = path.with_extension("partial");
        let file = std::fs::File::create(&partial).map_err(|source| NiftiError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let buffered = std::io::BufWriter::with_capacity(1 << 20, file);
        let out = if path.extension().is_some_and(|e| e == "gz") {
            Sink::Gzip(flate2::write::GzEncoder::new(
                buffered,
                flate2::Compression::fast(),
            ))
        } else {
            Sink::Plain(buffered)
        };
        let mut writer = NiftiWriter {
            path: path.to_path_buf(),
            partial,
            out: Some(out),
            remaining_bytes: header.len() as u64
                + spec.dims.iter().map(|&d| d as u64).product::<u64>()
                    * spec.volumes as u64
                    * spec.dtype.itemsize() as u64,
        };
        writer.write_voxels(&header)?;
        Ok(writer)
    }

    fn io_error(&self, source: std::io::Error) -> NiftiError {
        NiftiError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends voxels (little endian, x fastest), a volume or part of one at a time.
    pub fn write_voxels(&mut self, bytes: &[u8]) -> Result<(), NiftiError> {
        if bytes.len() as u64 > self.remaining_bytes {
            return Err(NiftiError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "{} more bytes of voxels given, {} expected",
                    bytes.len(),
                    self.remaining_bytes
                ),
            });
        }
        let result = match self.out.as_mut() {
            Some(Sink::Plain(w)) => w.write_all(bytes),
            Some(Sink::Gzip(w)) => w.write_all(bytes),
            None => Err(std::io::Error::other("written after finishing")),
        };
        result.map_err(|e| self.io_error(e))?;
        self.remaining_bytes -= bytes.len() as u64;
        Ok(())
    }

    /// Appends `n_bytes` of zeros (a missing volume).
    pub fn write_zeros(&mut self, n_bytes: u64) -> Result<(), NiftiError> {
        let zeros = vec![0u8; n_bytes.min(1 << 20) as usize];
        let mut left = n_bytes;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.write_voxels(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the file to its final name.
    pub fn finish(mut self) -> Result<(), NiftiError> {
        if self.remaining_bytes != 0 {
            return Err(NiftiError::Invalid {
                path: self.path.clone(),
                reason: format!("{} bytes of voxels still missing", self.remaining_bytes),
            });
        }
        let Some(out) = self.out.take() else {
            return Err(self.io_error(std::io::Error::other("finished twice")));
        };
        let closed = (|| {
            let buffered = match out {
                Sink::Plain(w) => w,
                Sink::Gzip(w) => w.finish()?,
            };
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.partial, &self.path)
        })();
        closed.map_err(|e| {
            let _ = std::fs::remove_file(&self.partial);
            self.io_error(e)
        })
    }
}

impl Drop for NiftiWriter {
    fn drop(&mut self) {
        // unfinished: a failed write, or an error elsewhere; leave no partial file behind
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
