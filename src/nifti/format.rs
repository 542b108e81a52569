//! What the NIfTI-1 reader and writer share: the header's size, the data offset this crate writes, the datatype
//! codes, and the errors.

use std::path::PathBuf;

use crate::volume::Dtype;

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
