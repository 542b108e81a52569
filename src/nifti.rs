//! NIfTI-1 single-file (`.nii`, `.nii.gz`) reading and writing.
//!
//! Reading accepts both byte orders, every integer and real datatype, the sform / qform / fallback affine in
//! the order nibabel uses (sform if its code is set, else qform, else the centred pixdim diagonal), scaling
//! (`scl_slope`, `scl_inter`) and the time units of `xyzt_units`. Voxel bytes are kept raw (converted to little
//! endian, x fastest), so a caller decides whether to scale; [`NiftiImage::volume_values`] applies the scaling
//! the way nibabel's `get_fdata` does (in float64).
//!
//! Writing produces a NIfTI-1 file with the sform (code 1, scanner) set from the affine, pixdim from the
//! affine's column lengths, and the TR in seconds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::volume::{swap_bytes_in_place, Affine, ByteOrder, Dtype};

/// Size of the NIfTI-1 header in bytes.
pub const HEADER_BYTES: usize = 348;
/// Offset of the voxel data in files this module writes (header + 4 extension bytes).
pub const DATA_OFFSET: usize = 352;

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI-1 file ({reason})")]
    NotNifti { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported NIfTI datatype code {code} (supported: integers, float32, float64)"
    )]
    UnsupportedDatatype { path: PathBuf, code: i16 },
    #[error("{path}: file holds {actual} bytes of voxel data but the header needs {expected}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        actual: usize,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A NIfTI-1 image held in memory.
#[derive(Debug, Clone)]
pub struct NiftiImage {
    /// Spatial dimensions `[nx, ny, nz]` (missing ones are 1).
    pub dims: [usize; 3],
    /// Number of volumes (`dim[4]`, at least 1).
    pub volumes: usize,
    pub dtype: Dtype,
    /// Voxel -> mm affine chosen as nibabel chooses it.
    pub mm_from_voxel: Affine,
    /// Voxel sizes in mm (pixdim[1..4]).
    pub voxel_size_mm: [f64; 3],
    /// TR in seconds, `None` when `pixdim[4]` is zero or absent.
    pub tr_secs: Option<f64>,
    /// Set when the header's time unit said seconds but the value looked like milliseconds (> 100).
    pub tr_unit_was_suspicious: bool,
    /// `(slope, intercept)` when the header asks for scaling (slope finite and non-zero, and not the identity).
    pub scaling: Option<(f64, f64)>,
    /// Voxel bytes, little endian, x fastest, all volumes one after another.
    pub data_le: Vec<u8>,
}

impl NiftiImage {
    /// Voxels per volume.
    pub fn voxels_per_volume(&self) -> usize {
        self.dims.iter().product()
    }

    /// Raw little-endian bytes of volume `t`.
    pub fn volume_bytes(&self, t: usize) -> &[u8] {
        let n = self.voxels_per_volume() * self.dtype.itemsize();
        &self.data_le[t * n..(t + 1) * n]
    }

    /// Values of volume `t` with the header's scaling applied, as nibabel's `get_fdata` computes them.
    pub fn volume_values(&self, t: usize) -> Vec<f64> {
        let bytes = self.volume_bytes(t);
        let (slope, inter) = self.scaling.unwrap_or((1.0, 0.0));
        (0..self.voxels_per_volume())
            .map(|i| {
                let v = self.dtype.read_f64(bytes, i);
                if self.scaling.is_some() {
                    v * slope + inter
                } else {
                    v
                }
            })
            .collect()
    }

    /// Reads a `.nii` or `.nii.gz` file.
    pub fn read(path: &Path) -> Result<NiftiImage, NiftiError> {
        let io = |source| NiftiError::Io {
            path: path.to_path_buf(),
            source,
        };
        let raw = std::fs::read(path).map_err(io)?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(io)?;
            out
        } else {
            raw
        };
        parse(path, bytes)
    }
}

struct HeaderReader<'a> {
    bytes: &'a [u8],
    order: ByteOrder,
}

impl HeaderReader<'_> {
    fn i16(&self, at: usize) -> i16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        match self.order {
            ByteOrder::Little => i16::from_le_bytes(b),
            ByteOrder::Big => i16::from_be_bytes(b),
        }
    }
    fn i32(&self, at: usize) -> i32 {
        let b = [
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ];
        match self.order {
            ByteOrder::Little => i32::from_le_bytes(b),
            ByteOrder::Big => i32::from_be_bytes(b),
        }
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_bits(self.i32(at) as u32) as f64
    }
}

/// NIfTI datatype code -> element type.
pub fn dtype_from_code(code: i16) -> Option<Dtype> {
    Some(match code {
        2 => Dtype::Uint8,
        4 => Dtype::Int16,
        8 => Dtype::Int32,
        16 => Dtype::Float32,
        64 => Dtype::Float64,
        256 => Dtype::Int8,
        512 => Dtype::Uint16,
        768 => Dtype::Uint32,
        1024 => Dtype::Int64,
        1280 => Dtype::Uint64,
        _ => return None,
    })
}

/// Element type -> NIfTI datatype code; float16 has none (store it as float32).
pub fn code_from_dtype(dtype: Dtype) -> Option<i16> {
    Some(match dtype {
        Dtype::Uint8 => 2,
        Dtype::Int16 => 4,
        Dtype::Int32 => 8,
        Dtype::Float32 => 16,
        Dtype::Float64 => 64,
        Dtype::Int8 => 256,
        Dtype::Uint16 => 512,
        Dtype::Uint32 => 768,
        Dtype::Int64 => 1024,
        Dtype::Uint64 => 1280,
        Dtype::Float16 => return None,
    })
}

fn parse(path: &Path, bytes: Vec<u8>) -> Result<NiftiImage, NiftiError> {
    let not_nifti = |reason: &str| NiftiError::NotNifti {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_BYTES {
        return Err(not_nifti(&format!(
            "only {} bytes, a header needs 348",
            bytes.len()
        )));
    }
    let order = if i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == 348 {
        ByteOrder::Little
    } else if i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == 348 {
        ByteOrder::Big
    } else {
        return Err(not_nifti(
            "sizeof_hdr is not 348 (NIfTI-2 and ANALYZE files are not supported)",
        ));
    };
    match &bytes[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(not_nifti(
                "a header/image pair (.hdr/.img); convert it to a single .nii file",
            ))
        }
        _ => return Err(not_nifti("magic is not \"n+1\"")),
    }
    let h = HeaderReader {
        bytes: &bytes,
        order,
    };
    let ndim = h.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(NiftiError::Invalid {
            path: path.to_path_buf(),
            reason: format!("dim[0] = {ndim}"),
        });
    }
    let mut dims = [1usize; 4];
    for (axis, d) in dims.iter_mut().enumerate().take(ndim.min(4) as usize) {
        let v = h.i16(42 + 2 * axis);
        if v < 1 {
            return Err(NiftiError::Invalid {
                path: path.to_path_buf(),
                reason: format!("dim[{}] = {v} is not positive", axis + 1),
            });
        }
        *d = v as usize;
    }
    for axis in 5..=(ndim as usize) {
        if h.i16(40 + 2 * axis) > 1 {
            return Err(NiftiError::Invalid {
                path: path.to_path_buf(),
                reason: format!("dim[{axis}] > 1: only 3-D and 4-D images are supported"),
            });
        }
    }
    let code = h.i16(70);
    let dtype = dtype_from_code(code).ok_or(NiftiError::UnsupportedDatatype {
        path: path.to_path_buf(),
        code,
    })?;
    let pixdim: Vec<f64> = (0..8).map(|i| h.f32(76 + 4 * i)).collect();
    let vox_offset = h.f32(108);
    let offset = if vox_offset < DATA_OFFSET as f64 {
        DATA_OFFSET
    } else {
        vox_offset as usize
    };
    let slope = h.f32(112);
    let inter = h.f32(116);
    let scaling = if slope.is_finite() && slope != 0.0 {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        if slope == 1.0 && inter == 0.0 {
            None
        } else {
            Some((slope, inter))
        }
    } else {
        None
    };
    let xyzt_units = bytes[123];
    let (tr_secs, tr_unit_was_suspicious) = tr_from_pixdim(pixdim[4], xyzt_units & 0x38);

    let voxel_size_mm = [pixdim[1].abs(), pixdim[2].abs(), pixdim[3].abs()];
    let sform_code = h.i16(254);
    let qform_code = h.i16(252);
    let (mm_from_voxel, affine_source) = if sform_code > 0 {
        let mut a = [[0.0; 4]; 4];
        for (r, row) in a.iter_mut().enumerate().take(3) {
            for (c, v) in row.iter_mut().enumerate() {
                *v = h.f32(280 + 16 * r + 4 * c);
            }
        }
        a[3][3] = 1.0;
        (a, "sform")
    } else if qform_code > 0 {
        let a = qform_affine(
            [h.f32(256), h.f32(260), h.f32(264)],
            [h.f32(268), h.f32(272), h.f32(276)],
            voxel_size_mm,
            if pixdim[0] < 0.0 { -1.0 } else { 1.0 },
        );
        (a, "qform and pixdim")
    } else {
        // nibabel's fallback: x flipped, origin at the volume centre
        let mut a = [[0.0; 4]; 4];
        let zooms = [-voxel_size_mm[0], voxel_size_mm[1], voxel_size_mm[2]];
        for axis in 0..3 {
            a[axis][axis] = zooms[axis];
            a[axis][3] = -((dims[axis] as f64 - 1.0) / 2.0) * zooms[axis];
        }
        a[3][3] = 1.0;
        (a, "pixdim (no sform or qform)")
    };
    crate::spatial::check_affine(&mm_from_voxel).map_err(|why| NiftiError::Invalid {
        path: path.to_path_buf(),
        reason: format!("the voxel-to-mm affine from the {affine_source}: {why}"),
    })?;

    let n_bytes = dims.iter().product::<usize>() * dtype.itemsize();
    let available = bytes.len().saturating_sub(offset);
    if available < n_bytes {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            expected: n_bytes,
            actual: available,
        });
    }
    let mut data_le = bytes[offset..offset + n_bytes].to_vec();
    if order == ByteOrder::Big {
        swap_bytes_in_place(&mut data_le, dtype.itemsize());
    }
    Ok(NiftiImage {
        dims: [dims[0], dims[1], dims[2]],
        volumes: dims[3],
        dtype,
        mm_from_voxel,
        voxel_size_mm,
        tr_secs,
        tr_unit_was_suspicious,
        scaling,
        data_le,
    })
}

/// Interprets `pixdim[4]` with the time bits of `xyzt_units` (8 s, 16 ms, 24 us). A value over 100 said to be in
/// seconds (or with no unit) is taken as milliseconds, as real files do; the flag tells the caller to warn.
pub fn tr_from_pixdim(value: f64, time_unit: u8) -> (Option<f64>, bool) {
    if !(value.is_finite() && value > 0.0) {
        return (None, false);
    }
    match time_unit {
        16 => (Some(value / 1000.0), false),
        24 => (Some(value / 1_000_000.0), false),
        _ if value > 100.0 => (Some(value / 1000.0), true),
        _ => (Some(value), false),
    }
}

/// The qform affine from the quaternion (b, c, d), offsets, voxel sizes and qfac.
pub fn qform_affine(bcd: [f64; 3], offset: [f64; 3], voxel_size_mm: [f64; 3], qfac: f64) -> Affine {
    let [b, c, d] = bcd;
    let a2 = 1.0 - (b * b + c * c + d * d);
    let a = if a2 > 0.0 { a2.sqrt() } else { 0.0 };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let zooms = [voxel_size_mm[0], voxel_size_mm[1], voxel_size_mm[2] * qfac];
    let mut out = [[0.0; 4]; 4];
    for row in 0..3 {
        for col in 0..3 {
            out[row][col] = r[row][col] * zooms[col];
        }
        out[row][3] = offset[row];
    }
    out[3][3] = 1.0;
    out
}

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
    let header = header_bytes(spec).map_err(|reason| NiftiError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    let io = |source| NiftiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, file);
        let gz = path.extension().is_some_and(|e| e == "gz");
        if gz {
            let mut enc = flate2::write::GzEncoder::new(buffered, flate2::Compression::fast());
            enc.write_all(&header).map_err(io)?;
            enc.write_all(volumes_le).map_err(io)?;
            buffered = enc.finish().map_err(io)?;
        } else {
            buffered.write_all(&header).map_err(io)?;
            buffered.write_all(volumes_le).map_err(io)?;
        }
        let file = buffered.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("hyper-rt-nifti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let affine = [
            [2.0, 0.0, 0.0, -10.0],
            [0.0, 3.0, 0.5, 4.0],
            [0.0, -0.5, 3.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let spec = NiftiSpec {
            dims: [3, 4, 2],
            volumes: 2,
            dtype: Dtype::Int16,
            mm_from_voxel: affine,
            tr_secs: 1.5,
            scaling: None,
            description: "test".into(),
        };
        let data: Vec<u8> = (0..48i16)
            .flat_map(|v| (v * 7 - 100).to_le_bytes())
            .collect();
        for name in ["a.nii", "a.nii.gz"] {
            let path = dir.join(name);
            write(&path, &spec, &data).unwrap();
            let img = NiftiImage::read(&path).unwrap();
            assert_eq!(img.dims, [3, 4, 2]);
            assert_eq!(img.volumes, 2);
            assert_eq!(img.dtype, Dtype::Int16);
            assert_eq!(img.data_le, data);
            assert_eq!(img.tr_secs, Some(1.5));
            assert_eq!(img.mm_from_voxel, affine);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_singular_affine_is_refused_naming_the_file_and_its_source() {
        let path =
            std::env::temp_dir().join(format!("hyper-rt-singular-{}.nii", std::process::id()));
        let spec = NiftiSpec {
            dims: [2, 2, 2],
            volumes: 1,
            dtype: Dtype::Int16,
            mm_from_voxel: [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            tr_secs: 1.0,
            scaling: None,
            description: "singular".into(),
        };
        write(&path, &spec, &[0u8; 16]).unwrap();
        let err = NiftiImage::read(&path).unwrap_err().to_string();
        assert!(
            err.contains(path.to_str().unwrap())
                && err.contains("affine from the sform")
                && err.contains("singular"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tr_units_follow_xyzt_units_and_flag_millisecond_values() {
        assert_eq!(tr_from_pixdim(2.0, 8), (Some(2.0), false));
        assert_eq!(tr_from_pixdim(2000.0, 8), (Some(2.0), true));
        assert_eq!(tr_from_pixdim(1500.0, 16), (Some(1.5), false));
        assert_eq!(tr_from_pixdim(0.0, 8), (None, false));
    }

    #[test]
    fn identity_quaternion_gives_diagonal_affine() {
        let a = qform_affine([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 2.0, 3.0], -1.0);
        assert_eq!(a[0], [2.0, 0.0, 0.0, 1.0]);
        assert_eq!(a[2], [0.0, 0.0, -3.0, 3.0]);
    }

    #[test]
    fn rejects_garbage_with_the_path_in_the_message() {
        let path =
            std::env::temp_dir().join(format!("hyper-rt-garbage-{}.nii", std::process::id()));
        std::fs::write(&path, vec![7u8; 400]).unwrap();
        let err = NiftiImage::read(&path).unwrap_err().to_string();
        assert!(err.contains("not a NIfTI-1 file"), "{err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
