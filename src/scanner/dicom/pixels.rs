//! What every DICOM reader here needs besides the geometry: the stored pixels (8 to 32 bits, sign-extended where
//! fewer bits are stored), their rescaling to float64, the series and instance numbers and the TR.

use super::compressed::FrameShape;
use super::error::DicomError;
use super::parse::*;
use crate::volume::Dtype;

/// The grey-scale pixels of a file, row by row (columns fastest), signed values sign-extended.
pub(super) struct StoredPixels {
    pub(super) rows: usize,
    pub(super) columns: usize,
    pub(super) dtype: Dtype,
    pub(super) bytes: Vec<u8>,
}

/// The pixels of a single-frame file.
pub(super) fn stored_pixels(ds: &DataSet) -> Result<StoredPixels, DicomError> {
    if let Some(frames) = ds
        .number(NUMBER_OF_FRAMES, "NumberOfFrames")?
        .filter(|&n| n > 1.0)
    {
        return Err(ds.invalid(format!(
            "a multi-frame (enhanced) image of {frames} frames: not read (of multi-frame files, Enhanced MR \
             Images, SOP class {ENHANCED_MR_IMAGE_STORAGE}, are read)"
        )));
    }
    stored_frame(ds, 0, 1)
}

/// Frame `frame` of the `n_frames` a file's pixel data holds one after another.
pub(super) fn stored_frame(
    ds: &DataSet,
    frame: usize,
    n_frames: usize,
) -> Result<StoredPixels, DicomError> {
    let samples = ds
        .bytes(SAMPLES_PER_PIXEL)
        .map(|_| ds.u16(SAMPLES_PER_PIXEL, "SamplesPerPixel"))
        .transpose()?
        .unwrap_or(1);
    if samples != 1 {
        return Err(ds.invalid(format!(
            "SamplesPerPixel is {samples}: only grey-scale images are fMRI volumes"
        )));
    }
    let rows = ds.u16(ROWS, "Rows")? as usize;
    let columns = ds.u16(COLUMNS, "Columns")? as usize;
    if rows == 0 || columns == 0 {
        return Err(ds.invalid(format!("a {rows} x {columns} image")));
    }
    let bits = ds.u16(BITS_ALLOCATED, "BitsAllocated")?;
    let signed = ds.u16(PIXEL_REPRESENTATION, "PixelRepresentation")? == 1;
    let bits_stored = ds
        .bytes(BITS_STORED)
        .map(|_| ds.u16(BITS_STORED, "BitsStored"))
        .transpose()?
        .unwrap_or(bits);
    let dtype = match (bits, signed) {
        (8, false) => Dtype::Uint8,
        (8, true) => Dtype::Int8,
        (16, false) => Dtype::Uint16,
        (16, true) => Dtype::Int16,
        (32, false) => Dtype::Uint32,
        (32, true) => Dtype::Int32,
        _ => {
            return Err(ds.invalid(format!(
                "BitsAllocated {bits} is not supported (8, 16 or 32)"
            )))
        }
    };
    let shape = FrameShape {
        rows,
        columns,
        bits_allocated: bits,
        bits_stored,
        frames: n_frames,
    };
    let pixels = ds
        .pixel_data(&shape)?
        .ok_or_else(|| ds.invalid("PixelData (7FE0,0010) is missing"))?;
    let frame_bytes = rows * columns * dtype.itemsize();
    let needed = frame_bytes * n_frames;
    if pixels.len() < needed {
        return Err(ds.invalid(format!(
            "PixelData holds {} bytes, {n_frames} frame(s) of {rows} x {columns} x {bits} bits need {needed}",
            pixels.len()
        )));
    }
    let mut bytes = pixels[frame * frame_bytes..(frame + 1) * frame_bytes].to_vec();
    if signed && bits_stored < bits {
        sign_extend(&mut bytes, dtype, bits_stored);
    }
    Ok(StoredPixels {
        rows,
        columns,
        dtype,
        bytes,
    })
}

/// The stored values as they are, or as float64 `stored * RescaleSlope + RescaleIntercept` when the file
/// asks for rescaling.
pub(super) fn rescaled(
    ds: &DataSet,
    dtype: Dtype,
    stored: Vec<u8>,
) -> Result<(Dtype, Vec<u8>), DicomError> {
    let slope = ds.number(RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
    let intercept = ds
        .number(RESCALE_INTERCEPT, "RescaleIntercept")?
        .unwrap_or(0.0);
    if slope == 1.0 && intercept == 0.0 {
        return Ok((dtype, stored));
    }
    let itemsize = dtype.itemsize();
    let values = (0..stored.len() / itemsize)
        .flat_map(|n| (dtype.read_f64(&stored, n) * slope + intercept).to_le_bytes());
    Ok((Dtype::Float64, values.collect()))
}

pub(super) fn series_number(ds: &DataSet) -> Result<i64, DicomError> {
    Ok(ds
        .number(SERIES_NUMBER, "SeriesNumber")?
        .map(|n| n as i64)
        .unwrap_or(0))
}

pub(super) fn instance_number(ds: &DataSet) -> Result<usize, DicomError> {
    let instance = ds
        .number(INSTANCE_NUMBER, "InstanceNumber")?
        .ok_or_else(|| {
            ds.invalid("InstanceNumber (0020,0013), the image's number in its series, is missing")
        })?;
    if instance < 1.0 || instance.fract() != 0.0 {
        return Err(ds.invalid(format!(
            "InstanceNumber {instance} is not an image number (1, 2, ...)"
        )));
    }
    Ok(instance as usize)
}

/// `RepetitionTime` (ms) in seconds, when given and positive.
pub(super) fn tr_secs(ds: &DataSet) -> Result<Option<f64>, DicomError> {
    Ok(ds
        .number(REPETITION_TIME, "RepetitionTime")?
        .filter(|&t| t > 0.0)
        .map(|ms| ms / 1000.0))
}

pub(super) fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

pub(super) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Sign-extends signed values stored in the low `bits_stored` bits of each element.
pub(super) fn sign_extend(bytes: &mut [u8], dtype: Dtype, bits_stored: u16) {
    let itemsize = dtype.itemsize();
    let shift = (itemsize * 8) as u32 - bits_stored as u32;
    for chunk in bytes.chunks_exact_mut(itemsize) {
        match itemsize {
            1 => chunk[0] = (((chunk[0] as i8) << shift) >> shift) as u8,
            2 => {
                let v = (i16::from_le_bytes([chunk[0], chunk[1]]) << shift) >> shift;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let v = (i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) << shift)
                    >> shift;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}
