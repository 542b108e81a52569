//! Reading NIfTI-1 single files (`.nii`, `.nii.gz`) into memory, in bounded memory whatever a header claims.

use std::io::Read;
use std::path::Path;

use super::format::{dtype_from_code, NiftiError, DATA_OFFSET, HEADER_BYTES};
use crate::volume::{swap_bytes_in_place, Affine, ByteOrder, Dtype};

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
        let raw = std::fs::read(path).map_err(|source| NiftiError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        NiftiImage::from_bytes(path, raw)
    }

    /// Parses a file's bytes (gzip-compressed or not); `path` only names the file in errors. A compressed file
    /// is decompressed no further than its header's own size claim (capped at [`MAX_FILE_BYTES`]), so a file
    /// that inflates without end cannot exhaust memory.
    pub fn from_bytes(path: &Path, raw: Vec<u8>) -> Result<NiftiImage, NiftiError> {
        if !raw.starts_with(&[0x1f, 0x8b]) {
            return parse(path, raw);
        }
        let io = |source| NiftiError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
        let mut out = Vec::with_capacity(HEADER_BYTES);
        (&mut decoder)
            .take(HEADER_BYTES as u64)
            .read_to_end(&mut out)
            .map_err(io)?;
        let claimed = claimed_file_bytes(&out).unwrap_or(HEADER_BYTES as u64);
        if claimed > MAX_FILE_BYTES {
            return Err(NiftiError::NotNifti {
                path: path.to_path_buf(),
                reason: format!(
                    "its header claims {claimed} bytes, over the {MAX_FILE_BYTES}-byte limit of this reader"
                ),
            });
        }
        let rest = claimed.saturating_sub(out.len() as u64);
        out.reserve(rest.min(raw.len() as u64 * 8) as usize);
        decoder.take(rest).read_to_end(&mut out).map_err(io)?;
        parse(path, out)
    }
}

/// The largest NIfTI file this reader takes (uncompressed): 8 GiB, far beyond a run of 1,000 volumes of
/// 128 x 128 x 64 float32 (4 GiB).
pub const MAX_FILE_BYTES: u64 = 8 << 30;

/// What a header says its file holds: `vox_offset` plus the voxels of every dimension it lists; `None` when
/// the bytes are not a NIfTI-1 header or the claim overflows.
fn claimed_file_bytes(header: &[u8]) -> Option<u64> {
    let first = header.get(0..4)?;
    let order = if i32::from_le_bytes(first.try_into().ok()?) == HEADER_BYTES as i32 {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    };
    let h = HeaderReader {
        bytes: header.get(..HEADER_BYTES)?,
        order,
    };
    let n_dims = usize::try_from(h.i16(40)).ok()?.clamp(1, 7);
    let mut voxels = 1u64;
    for d in 0..n_dims {
        voxels = voxels.checked_mul(u64::try_from(h.i16(42 + 2 * d)).ok()?.max(1))?;
    }
    let bits = u64::try_from(h.i16(72)).ok()?;
    let offset = h.f32(108).max(HEADER_BYTES as f64) as u64;
    voxels.checked_mul(bits.div_ceil(8))?.checked_add(offset)
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
