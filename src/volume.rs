//! The internal `Volume` type and the numeric element types a scanner may send.
//!
//! A `Volume` is one 3-D acquisition exactly as the scanner sent it: the raw voxel values in their original
//! element type (so nothing is rounded on the way to the recording), stored **x fastest** (NIfTI / Fortran
//! order: `offset(i, j, k) = i + nx * (j + ny * k)`), together with the voxel-to-millimetre affine
//! (`mm_from_voxel`, RAS+, maps the voxel centre `(i, j, k, 1)` to scanner millimetres) and the repetition
//! time in seconds. The wire protocol sends C order (z fastest); [`Volume::from_c_order`] converts.

use std::time::Instant;

/// A 4 x 4 voxel -> millimetre matrix, row major (`mm = M * [i, j, k, 1]`).
pub type Affine = [[f64; 4]; 4];

/// The identity affine: voxel index equals millimetres.
pub const IDENTITY_AFFINE: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// One volume read from a scanner's exported files (a Siemens mosaic DICOM file, one dynamic of a Philips
/// PAR/REC pair), before it is sent: what the readers in [`crate::scanner::dicom`] and [`crate::parrec`] produce for
/// [`crate::scanner`].
#[derive(Debug, Clone)]
pub struct ExportedVolume {
    /// The file it was read from (for a Philips pair, the PAR header).
    pub path: std::path::PathBuf,
    pub series_number: i64,
    /// Siemens `SeriesDescription`, Philips protocol name; empty when absent.
    pub series_description: String,
    /// 0-based volume index (see [`crate::scanner`] for each vendor's numbering).
    pub index: usize,
    /// `[x, y, slices]`.
    pub dims: [usize; 3],
    /// Voxel -> millimetre, RAS+.
    pub mm_from_voxel: Affine,
    /// The TR the file gives, in seconds.
    pub tr_secs: Option<f64>,
    pub dtype: Dtype,
    /// Little-endian voxel values, axis 0 fastest.
    pub voxel_bytes: Vec<u8>,
    /// Where the geometry came from, for the log.
    pub geometry: String,
    /// BIDS `SliceTiming`: when each slice along axis 2 was acquired, seconds after the volume's first slice;
    /// `None` when the file does not say (GE, Philips, NIfTI).
    pub slice_timing_secs: Option<Vec<f64>>,
}

/// Numeric element types, named as NumPy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float16,
    Float32,
    Float64,
}

/// Byte order of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl Dtype {
    pub const ALL: [Dtype; 11] = [
        Dtype::Int8,
        Dtype::Uint8,
        Dtype::Int16,
        Dtype::Uint16,
        Dtype::Int32,
        Dtype::Uint32,
        Dtype::Int64,
        Dtype::Uint64,
        Dtype::Float16,
        Dtype::Float32,
        Dtype::Float64,
    ];

    /// Parses a NumPy dtype name: `"float64"`, `"int16"`, or array-protocol strings such as `"<f4"`, `"|u1"`,
    /// `">i2"` (big-endian, byte-swapped on arrival), and the one-letter codes (`"f"`, `"d"`, `"h"`, ...).
    /// Returns `None` for anything that is not a real or integer type (bool, complex, strings, objects).
    pub fn parse_numpy(name: &str) -> Option<(Dtype, ByteOrder)> {
        let name = name.trim();
        let (order, body) = match name.as_bytes().first() {
            Some(b'<') | Some(b'=') | Some(b'|') => (ByteOrder::Little, &name[1..]),
            Some(b'>') => (ByteOrder::Big, &name[1..]),
            _ => (ByteOrder::Little, name),
        };
        let dtype = match body {
            "int8" | "i1" | "b" | "byte" => Dtype::Int8,
            "uint8" | "u1" | "B" | "ubyte" => Dtype::Uint8,
            "int16" | "i2" | "h" | "short" => Dtype::Int16,
            "uint16" | "u2" | "H" | "ushort" => Dtype::Uint16,
            "int32" | "i4" | "i" | "intc" => Dtype::Int32,
            "uint32" | "u4" | "I" | "uintc" => Dtype::Uint32,
            "int64" | "i8" | "l" | "q" | "long" | "longlong" | "int" => Dtype::Int64,
            "uint64" | "u8" | "L" | "Q" | "ulong" | "ulonglong" | "uint" => Dtype::Uint64,
            "float16" | "f2" | "e" | "half" => Dtype::Float16,
            "float32" | "f4" | "f" | "single" => Dtype::Float32,
            "float64" | "f8" | "d" | "double" | "float" => Dtype::Float64,
            _ => return None,
        };
        Some((dtype, order))
    }

    /// The canonical NumPy name (`"float32"`).
    pub fn numpy_name(self) -> &'static str {
        match self {
            Dtype::Int8 => "int8",
            Dtype::Uint8 => "uint8",
            Dtype::Int16 => "int16",
            Dtype::Uint16 => "uint16",
            Dtype::Int32 => "int32",
            Dtype::Uint32 => "uint32",
            Dtype::Int64 => "int64",
            Dtype::Uint64 => "uint64",
            Dtype::Float16 => "float16",
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            Dtype::Int8 | Dtype::Uint8 => 1,
            Dtype::Int16 | Dtype::Uint16 | Dtype::Float16 => 2,
            Dtype::Int32 | Dtype::Uint32 | Dtype::Float32 => 4,
            Dtype::Int64 | Dtype::Uint64 | Dtype::Float64 => 8,
        }
    }

    /// Reads element `index` of a little-endian buffer as f64. Exact for every type but 64-bit integers
    /// beyond 2^53.
    pub fn read_f64(self, le_bytes: &[u8], index: usize) -> f64 {
        let s = self.itemsize();
        let b = &le_bytes[index * s..(index + 1) * s];
        match self {
            Dtype::Int8 => b[0] as i8 as f64,
            Dtype::Uint8 => b[0] as f64,
            Dtype::Int16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            Dtype::Uint16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            Dtype::Int32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::Uint32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::Int64 => i64::from_le_bytes(eight(b)) as f64,
            Dtype::Uint64 => u64::from_le_bytes(eight(b)) as f64,
            Dtype::Float16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64,
            Dtype::Float32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::Float64 => f64::from_le_bytes(eight(b)),
        }
    }

    /// True for float types.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::Float16 | Dtype::Float32 | Dtype::Float64)
    }
}

fn eight(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// IEEE 754 half -> single, exact (every half value is representable as f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: value = m * 2^-24
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Swaps the byte order of every element in place.
pub fn swap_bytes_in_place(bytes: &mut [u8], itemsize: usize) {
    if itemsize > 1 {
        for chunk in bytes.chunks_exact_mut(itemsize) {
            chunk.reverse();
        }
    }
}

/// Reorders a C-order `[nx, ny, nz]` buffer (z fastest) into x-fastest order, element by element.
pub fn c_order_to_x_fastest(c_order: &[u8], dims: [usize; 3], itemsize: usize) -> Vec<u8> {
    let [nx, ny, nz] = dims;
    let mut out = vec![0u8; c_order.len()];
    for i in 0..nx {
        for j in 0..ny {
            let src_row = (i * ny + j) * nz;
            for k in 0..nz {
                let src = (src_row + k) * itemsize;
                let dst = (i + nx * (j + ny * k)) * itemsize;
                out[dst..dst + itemsize].copy_from_slice(&c_order[src..src + itemsize]);
            }
        }
    }
    out
}

/// Reorders an x-fastest buffer into C order (z fastest): the inverse of [`c_order_to_x_fastest`].
pub fn x_fastest_to_c_order(x_fastest: &[u8], dims: [usize; 3], itemsize: usize) -> Vec<u8> {
    let [nx, ny, nz] = dims;
    let mut out = vec![0u8; x_fastest.len()];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let src = (i + nx * (j + ny * k)) * itemsize;
                let dst = ((i * ny + j) * nz + k) * itemsize;
                out[dst..dst + itemsize].copy_from_slice(&x_fastest[src..src + itemsize]);
            }
        }
    }
    out
}

/// One 3-D acquisition. See the module documentation for axis order and units.
#[derive(Debug, Clone)]
pub struct Volume {
    /// 0-based volume index within the run (`volIdx` on the wire).
    pub index: usize,
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel -> millimetre affine (RAS+).
    pub mm_from_voxel: Affine,
    /// Repetition time in seconds.
    pub tr_secs: f64,
    /// Element type as sent.
    pub dtype: Dtype,
    /// Little-endian voxel values, x fastest, `nx * ny * nz * dtype.itemsize()` bytes.
    pub voxel_bytes: Vec<u8>,
    /// When the message holding this volume was received.
    pub arrived_at: Instant,
}

impl Volume {
    /// Builds a volume from a little-endian C-order buffer as the Pyneal Scanner protocol sends it.
    pub fn from_c_order(
        index: usize,
        dims: [usize; 3],
        mm_from_voxel: Affine,
        tr_secs: f64,
        dtype: Dtype,
        c_order_le: &[u8],
        arrived_at: Instant,
    ) -> Volume {
        Volume {
            index,
            dims,
            mm_from_voxel,
            tr_secs,
            dtype,
            voxel_bytes: c_order_to_x_fastest(c_order_le, dims, dtype.itemsize()),
            arrived_at,
        }
    }

    /// Number of voxels.
    pub fn voxel_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Voxel values as f32, x fastest.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.voxel_count())
            .map(|i| self.dtype.read_f64(&self.voxel_bytes, i) as f32)
            .collect()
    }

    /// Voxel values as f64, x fastest.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.voxel_count())
            .map(|i| self.dtype.read_f64(&self.voxel_bytes, i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_names_and_protocol_strings() {
        assert_eq!(
            Dtype::parse_numpy("float64"),
            Some((Dtype::Float64, ByteOrder::Little))
        );
        assert_eq!(
            Dtype::parse_numpy("<f4"),
            Some((Dtype::Float32, ByteOrder::Little))
        );
        assert_eq!(
            Dtype::parse_numpy("|u1"),
            Some((Dtype::Uint8, ByteOrder::Little))
        );
        assert_eq!(
            Dtype::parse_numpy(">i2"),
            Some((Dtype::Int16, ByteOrder::Big))
        );
        assert_eq!(Dtype::parse_numpy("complex64"), None);
        assert_eq!(Dtype::parse_numpy("bool"), None);
        for d in Dtype::ALL {
            assert_eq!(
                Dtype::parse_numpy(d.numpy_name()),
                Some((d, ByteOrder::Little))
            );
        }
    }

    #[test]
    fn half_precision_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn c_order_round_trips_through_x_fastest() {
        let dims = [3, 4, 5];
        let c: Vec<u8> = (0..60u16).flat_map(|v| v.to_le_bytes()).collect();
        let f = c_order_to_x_fastest(&c, dims, 2);
        // element (i=2, j=1, k=3) has C offset (2*4+1)*5+3 = 48 and x-fastest offset 2 + 3*(1 + 4*3) = 41
        assert_eq!(u16::from_le_bytes([f[82], f[83]]), 48);
        assert_eq!(x_fastest_to_c_order(&f, dims, 2), c);
    }
}
