//! DICOM stored one slice per file (GE; Siemens with mosaic off): a slice's place in its volume, its plane, and the
//! slices of one volume stacked into a 3-D volume along the slice normal.

use std::path::PathBuf;

use super::error::DicomError;
use super::parse::*;
use super::pixels::*;
use crate::volume::{Affine, Dtype, ExportedVolume};

/// One 2-D slice of a series stored one slice per file (GE, Siemens with mosaic off).
#[derive(Debug, Clone)]
pub struct DicomSlice {
    pub path: PathBuf,
    pub series_number: i64,
    pub series_description: String,
    /// `InstanceNumber`, counting the slices of the whole series from 1.
    pub instance_number: usize,
    /// `ImagesInAcquisition` (0020,1002): the slices of one volume.
    pub slices_per_volume: usize,
    /// `InStackPositionNumber` (0020,9057), the slice's place in its volume from 1, when given.
    pub in_stack_position: Option<usize>,
    plane: PlaneGeometry,
    /// `SpacingBetweenSlices`, else `SliceThickness`, else 0: the slice axis of a volume of one slice.
    slice_spacing_mm: f64,
    pub tr_secs: Option<f64>,
    /// When the slice was acquired, seconds since midnight (an enhanced frame's `FrameAcquisitionDateTime`); the
    /// volume's slice timing comes from these.
    pub acquired_secs: Option<f64>,
    pub dtype: Dtype,
    /// Rows x columns values of `dtype`, little endian, row index fastest (voxel axis 0 runs down the rows).
    pub voxel_bytes: Vec<u8>,
}

impl DicomSlice {
    /// The 0-based volume this slice belongs to: `(InstanceNumber - 1) / ImagesInAcquisition`.
    pub fn volume_index(&self) -> usize {
        (self.instance_number - 1) / self.slices_per_volume
    }

    /// `[rows, columns]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.plane.rows, self.plane.columns]
    }
}

/// Reads one slice of a series stored one slice per file.
pub fn slice_from_data_set(ds: &DataSet) -> Result<DicomSlice, DicomError> {
    if !ds.has_pixel_data() {
        let sop_class = [SOP_CLASS_UID, MEDIA_STORAGE_SOP_CLASS_UID]
            .iter()
            .find_map(|&t| ds.text(t))
            .unwrap_or_else(|| "not given".into());
        return Err(ds.invalid(format!(
            "holds no image (no PixelData; SOP class {sop_class}): a report or other non-image object, not an fMRI volume"
        )));
    }
    let slices_per_volume = match ds.number(IMAGES_IN_ACQUISITION, "ImagesInAcquisition")? {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
        Some(n) => return Err(ds.invalid(format!("ImagesInAcquisition {n} is not a slice count"))),
        None => {
            return Err(ds.invalid(
                "neither a Siemens mosaic nor a slice with ImagesInAcquisition (0020,1002): cannot tell which volume it belongs to",
            ))
        }
    };
    let in_stack_position = ds
        .ul(IN_STACK_POSITION_NUMBER, "InStackPositionNumber")?
        .map(|p| p as usize)
        .filter(|&p| p >= 1);
    let pixels = stored_pixels(ds)?;
    slice_from_parts(
        ds,
        pixels,
        instance_number(ds)?,
        slices_per_volume,
        in_stack_position,
    )
}

/// One frame of an enhanced multi-frame file as a slice of volume `volume_index`: `flat` is the frame's view
/// (`DataSet::frame_view`), `pixels` its stored pixels.
pub(super) fn frame_slice(
    flat: &DataSet,
    pixels: StoredPixels,
    volume_index: usize,
    in_stack_position: Option<usize>,
) -> Result<DicomSlice, DicomError> {
    // numbered as a volume of one slice per instance, so that `volume_index()` is this volume
    let mut slice = slice_from_parts(flat, pixels, volume_index + 1, 1, in_stack_position)?;
    slice.acquired_secs = match flat.text(FRAME_ACQUISITION_DATE_TIME) {
        Some(text) => Some(seconds_of_day(&text).ok_or_else(|| {
            flat.invalid(format!(
                "FrameAcquisitionDateTime (0018,9074) {:?} is not a DICOM date-time",
                text.escape_debug().to_string()
            ))
        })?),
        None => None,
    };
    Ok(slice)
}

/// Seconds since midnight of a DICOM date-time (`YYYYMMDDHHMMSS.FFFFFF`, an optional UTC offset ignored); the
/// date is dropped, so a volume acquired across midnight would get a wrong slice order (none is that long).
fn seconds_of_day(date_time: &str) -> Option<f64> {
    let text = date_time.trim().split(['+', '-']).next()?;
    let time = text.get(8..)?;
    let digits = |range: std::ops::Range<usize>| -> Option<f64> {
        let part = time.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let hours = digits(0..2)?;
    let minutes = digits(2..4).unwrap_or(0.0);
    let seconds = digits(4..6).unwrap_or(0.0);
    let fraction = match time.get(6..) {
        Some(f) if f.starts_with('.') && f.len() > 1 => format!("0{f}").parse::<f64>().ok()?,
        Some("") | None => 0.0,
        Some(_) => return None,
    };
    (hours < 24.0 && minutes < 60.0 && seconds < 61.0)
        .then_some(hours * 3600.0 + minutes * 60.0 + seconds + fraction)
}

/// A slice from the values of `ds` (a single-slice file, or an enhanced frame's view) and its stored pixels.
fn slice_from_parts(
    ds: &DataSet,
    pixels: StoredPixels,
    instance_number: usize,
    slices_per_volume: usize,
    in_stack_position: Option<usize>,
) -> Result<DicomSlice, DicomError> {
    let plane = PlaneGeometry::read(ds)?;
    let (dtype, voxel_bytes) = rescaled(ds, pixels.dtype, transposed(&pixels))?;
    Ok(DicomSlice {
        path: ds.path.clone(),
        series_number: series_number(ds)?,
        series_description: ds.text(SERIES_DESCRIPTION).unwrap_or_default(),
        instance_number,
        slices_per_volume,
        in_stack_position,
        plane,
        slice_spacing_mm: slice_spacing_mm(ds).unwrap_or(0.0),
        tr_secs: tr_secs(ds)?,
        acquired_secs: None,
        dtype,
        voxel_bytes,
    })
}

/// Rows x columns stored row by row -> row index fastest (voxel axis 0 runs down the rows).
fn transposed(pixels: &StoredPixels) -> Vec<u8> {
    let (rows, columns, itemsize) = (pixels.rows, pixels.columns, pixels.dtype.itemsize());
    let mut out = vec![0u8; pixels.bytes.len()];
    for i in 0..rows {
        for j in 0..columns {
            let (src, dst) = ((i * columns + j) * itemsize, (i + rows * j) * itemsize);
            out[dst..dst + itemsize].copy_from_slice(&pixels.bytes[src..src + itemsize]);
        }
    }
    out
}

/// Stacks the slices of one volume (any order) into a volume. The slices are ordered by
/// `InStackPositionNumber` where every slice has one, else along the slice normal; the slice axis runs from
/// the first slice's `ImagePositionPatient` to the last one's.
pub fn stack_slices(mut slices: Vec<DicomSlice>) -> Result<ExportedVolume, DicomError> {
    let Some(first) = slices.first() else {
        return Err(DicomError::Invalid {
            path: PathBuf::new(),
            reason: "no slice to stack".into(),
        });
    };
    let mismatch = |s: &DicomSlice, what: &str| DicomError::Invalid {
        path: s.path.clone(),
        reason: if s.path == first.path {
            // frames of one enhanced file
            format!(
                "the frame at InStackPositionNumber {} has another {what} than the first frame's: frames of one \
                 volume must share their matrix and plane",
                s.in_stack_position.map_or("?".to_string(), |p| p.to_string())
            )
        } else {
            format!(
                "its {what} differs from {}'s, in the same volume",
                first.path.display()
            )
        },
    };
    for s in &slices[1..] {
        if s.shape() != first.shape() || s.dtype != first.dtype {
            return Err(mismatch(s, "matrix or pixel type"));
        }
        let same_plane = (0..3).all(|a| {
            (s.plane.row_cos[a] - first.plane.row_cos[a]).abs() < 1e-4
                && (s.plane.col_cos[a] - first.plane.col_cos[a]).abs() < 1e-4
        });
        if !same_plane || s.plane.spacing != first.plane.spacing {
            return Err(mismatch(s, "ImageOrientationPatient or PixelSpacing"));
        }
    }
    let normal = cross(first.plane.row_cos, first.plane.col_cos);
    let along_normal =
        |s: &DicomSlice| (0..3).map(|a| s.plane.position[a] * normal[a]).sum::<f64>();
    if slices.iter().all(|s| s.in_stack_position.is_some()) {
        slices.sort_by_key(|s| s.in_stack_position);
    } else {
        slices.sort_by(|a, b| along_normal(a).total_cmp(&along_normal(b)));
    }
    let (first, last) = (&slices[0], &slices[slices.len() - 1]);
    let n = slices.len();
    let slice_step: [f64; 3] = if n > 1 {
        std::array::from_fn(|a| (last.plane.position[a] - first.plane.position[a]) / (n - 1) as f64)
    } else {
        normal.map(|c| c * first.slice_spacing_mm)
    };
    let mm_from_voxel = first.plane.ras_affine(first.plane.position, slice_step);
    let [rows, columns] = first.shape();
    // BIDS SliceTiming: each slice's acquisition time after the volume's earliest, when every slice has one
    let slice_timing_secs = slices
        .iter()
        .map(|s| s.acquired_secs)
        .collect::<Option<Vec<f64>>>()
        .map(|times| {
            let start = times.iter().copied().fold(f64::INFINITY, f64::min);
            // to the 0.1 ms the DICOM times carry, without the subtraction's rounding noise
            times
                .iter()
                .map(|t| ((t - start) * 1e4).round() / 1e4)
                .collect()
        });
    let mut voxel_bytes = Vec::with_capacity(first.voxel_bytes.len() * n);
    for s in &slices {
        voxel_bytes.extend_from_slice(&s.voxel_bytes);
    }
    Ok(ExportedVolume {
        path: first.path.clone(),
        series_number: first.series_number,
        series_description: first.series_description.clone(),
        index: first.volume_index(),
        dims: [rows, columns, n],
        mm_from_voxel,
        tr_secs: first.tr_secs,
        dtype: first.dtype,
        voxel_bytes,
        geometry: format!(
            "{n} single-slice files, slice axis from the first to the last ImagePositionPatient"
        ),
        slice_timing_secs,
    })
}

/// The image plane of a file: pixel spacing, the first pixel's position and the direction cosines (LPS).
#[derive(Debug, Clone, Copy)]
pub(super) struct PlaneGeometry {
    pub(super) rows: usize,
    pub(super) columns: usize,
    /// `PixelSpacing`: between rows, between columns (mm).
    pub(super) spacing: [f64; 2],
    pub(super) position: [f64; 3],
    pub(super) row_cos: [f64; 3],
    pub(super) col_cos: [f64; 3],
}

impl PlaneGeometry {
    pub(super) fn read(ds: &DataSet) -> Result<PlaneGeometry, DicomError> {
        let spacing = ds.numbers_n(PIXEL_SPACING, "PixelSpacing", 2)?;
        let position = ds.numbers_n(IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
        let orientation = ds.numbers_n(IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6)?;
        let row_cos = [orientation[0], orientation[1], orientation[2]];
        let col_cos = [orientation[3], orientation[4], orientation[5]];
        for (name, v) in [("row", row_cos), ("column", col_cos)] {
            if (norm(v) - 1.0).abs() > 1e-3 {
                return Err(ds.invalid(format!(
                    "ImageOrientationPatient's {name} cosine {v:?} is not a unit vector"
                )));
            }
        }
        if spacing.iter().any(|&s| s <= 0.0) {
            return Err(ds.invalid(format!("PixelSpacing {spacing:?} must be positive")));
        }
        Ok(PlaneGeometry {
            rows: ds.u16(ROWS, "Rows")? as usize,
            columns: ds.u16(COLUMNS, "Columns")? as usize,
            spacing: [spacing[0], spacing[1]],
            position: [position[0], position[1], position[2]],
            row_cos,
            col_cos,
        })
    }

    /// The RAS+ affine of voxels (i down the rows, j along the columns, k along `slice_step_lps`) whose first
    /// voxel is at `first_lps`.
    pub(super) fn ras_affine(&self, first_lps: [f64; 3], slice_step_lps: [f64; 3]) -> Affine {
        let lps_columns = [
            self.col_cos.map(|c| c * self.spacing[0]),
            self.row_cos.map(|c| c * self.spacing[1]),
            slice_step_lps,
        ];
        let mut mm_from_voxel = [[0.0; 4]; 4];
        for axis in 0..3 {
            let ras_sign = if axis < 2 { -1.0 } else { 1.0 }; // LPS -> RAS flips x and y
            for (v, column) in lps_columns.iter().enumerate() {
                mm_from_voxel[axis][v] = ras_sign * column[axis];
            }
            mm_from_voxel[axis][3] = ras_sign * first_lps[axis];
        }
        mm_from_voxel[3][3] = 1.0;
        mm_from_voxel
    }
}

/// `SpacingBetweenSlices`, else `SliceThickness`.
pub(super) fn slice_spacing_mm(ds: &DataSet) -> Result<f64, DicomError> {
    match ds.number(SPACING_BETWEEN_SLICES, "SpacingBetweenSlices")? {
        Some(s) if s > 0.0 => Ok(s),
        _ => ds
            .number(SLICE_THICKNESS, "SliceThickness")?
            .filter(|&s| s > 0.0)
            .ok_or_else(|| ds.invalid("neither SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050) gives the slice spacing")),
    }
}
