//! Minimal `.npy` (NumPy format 1.0 / 2.0) reading and writing for float arrays: latents `[N, 512]`, images.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// A float array read from `.npy`, converted to f32, C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a little-endian float32 or float64 array in C order.
pub fn read_f32(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_f32(&bytes, path)
}

/// Parses the bytes of a `.npy` file (little-endian float32 or float64, C order); `path` names them in errors.
pub fn parse_f32(bytes: &[u8], path: &Path) -> Result<NpyArray, NpyError> {
    let fail = |message: &str| NpyError::Format {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("not a .npy file (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fail(&format!("unsupported .npy version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| fail("truncated header"))?,
    )
    .map_err(|_| fail("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| fail("header lacks 'descr'"))?;
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| fail("header lacks 'fortran_order'"))?;
    let shape_text = dict_value(header, "shape").ok_or_else(|| fail("header lacks 'shape'"))?;
    if fortran.starts_with("True") {
        return Err(fail(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| fail(&format!("bad shape {shape_text}")))
        })
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let data: Vec<f32> = match descr {
        "<f4" if body.len() >= count * 4 => body[..count * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "<f8" if body.len() >= count * 8 => body[..count * 8]
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        "<f4" | "<f8" => {
            return Err(fail(&format!(
                "file holds fewer values than its shape {shape:?} needs"
            )))
        }
        other => {
            return Err(fail(&format!(
                "dtype {other} is not supported (use float32 or float64)"
            )))
        }
    };
    Ok(NpyArray { shape, data })
}

/// Extracts the text of `'key': value` from a Python dict literal (the value ends at the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

/// Writes a float32 array in C order.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_types() {
        let path = std::env::temp_dir().join(format!("hyper-rt-npy-{}.npy", std::process::id()));
        write_f32(&path, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let a = read_f32(&path).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[5], -6.5);
        std::fs::write(&path, b"\x93NUMPY\x01\x00\x46\x00{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }            \n\x01\x00\x00\x00").unwrap();
        assert!(read_f32(&path).unwrap_err().to_string().contains("<i4"));
        std::fs::remove_file(&path).unwrap();
    }
}
