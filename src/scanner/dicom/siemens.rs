//! Siemens mosaics: the CSA header (Siemens' private element of name/value items), the number of slices a mosaic
//! holds, and a mosaic cut into the slices of one 3-D volume with the Siemens geometry.

use std::collections::HashMap;

use super::error::DicomError;
use super::parse::*;
use super::pixels::*;
use super::slices::*;
use crate::volume::ExportedVolume;

/// The parts of a Siemens CSA header (`SV10` format) this module uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsaHeader {
    /// Element name -> its values as text.
    pub values: HashMap<String, Vec<String>>,
}

impl CsaHeader {
    /// Parses a CSA2 (`SV10`) header. Returns `None` for the older CSA1 layout or damaged bytes.
    pub fn parse(bytes: &[u8]) -> Option<CsaHeader> {
        let le_i32 = |at: usize| -> Option<i64> {
            bytes
                .get(at..at + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
        };
        if bytes.get(0..4) != Some(b"SV10".as_slice()) {
            return None;
        }
        let n_tags = le_i32(8)?;
        if !(1..=1000).contains(&n_tags) {
            return None;
        }
        let mut at = 16;
        let mut values = HashMap::new();
        for _ in 0..n_tags {
            let name_bytes = bytes.get(at..at + 64)?;
            let name = text(&name_bytes[..name_bytes.iter().position(|&b| b == 0).unwrap_or(64)]);
            let n_items = le_i32(at + 76)?;
            if !(0..=10_000).contains(&n_items) {
                return None;
            }
            at += 84;
            let mut items = Vec::new();
            for _ in 0..n_items {
                let item_len = usize::try_from(le_i32(at + 4)?).ok()?;
                at += 16;
                let item = bytes.get(at..at + item_len)?;
                if item_len > 0 {
                    items.push(text(
                        &item[..item.iter().position(|&b| b == 0).unwrap_or(item_len)],
                    ));
                }
                at += item_len.div_ceil(4) * 4;
            }
            values.insert(name, items);
        }
        Some(CsaHeader { values })
    }

    /// The numeric values of an element (empty items skipped).
    pub fn numbers(&self, name: &str) -> Vec<f64> {
        self.values
            .get(name)
            .map(|v| v.iter().filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Unpacks the Siemens mosaic of a parsed file into one volume. The index is `InstanceNumber` (0020,0013)
/// minus one, the series `SeriesNumber` (0020,0011), the TR `RepetitionTime` (0018,0080); the geometry note
/// says where the slice normal came from (the CSA header, or the cross product of the cosines).
pub fn mosaic_from_data_set(ds: &DataSet) -> Result<ExportedVolume, DicomError> {
    let csa = csa_header(ds);
    let n_slices = mosaic_slice_count(ds, csa.as_ref());
    let image_type = ds.text(IMAGE_TYPE).unwrap_or_default();
    let n_slices = match n_slices {
        Some(n) if n > 0 => n,
        _ => {
            return Err(ds.invalid(format!(
                "not a Siemens mosaic: no NumberOfImagesInMosaic in (0019,xx0A) or the CSA header (image type {image_type:?})"
            )))
        }
    };
    let pixels = stored_pixels(ds)?;
    let (rows, columns, itemsize) = (pixels.rows, pixels.columns, pixels.dtype.itemsize());
    let tiles_per_side = (1..=n_slices).find(|t| t * t >= n_slices).unwrap_or(1);
    if !rows.is_multiple_of(tiles_per_side) || !columns.is_multiple_of(tiles_per_side) {
        return Err(ds.invalid(format!(
            "a {rows} x {columns} mosaic cannot hold {n_slices} slices as {tiles_per_side} x {tiles_per_side} equal tiles"
        )));
    }
    let (tile_rows, tile_columns) = (rows / tiles_per_side, columns / tiles_per_side);

    let plane = PlaneGeometry::read(ds)?;
    let csa_normal = csa
        .as_ref()
        .map(|c| c.numbers("SliceNormalVector"))
        .filter(|n| n.len() == 3 && (norm([n[0], n[1], n[2]]) - 1.0).abs() < 1e-3);
    let slice_normal_from_csa = csa_normal.is_some();
    let normal = match csa_normal {
        Some(n) => [n[0], n[1], n[2]],
        None => cross(plane.row_cos, plane.col_cos),
    };
    let slice_spacing = slice_spacing_mm(ds)?;
    // The first voxel: ImagePositionPatient is the corner of the whole mosaic, centred on the first slice.
    let down_mm = (rows - tile_rows) as f64 / 2.0 * plane.spacing[0];
    let across_mm = (columns - tile_columns) as f64 / 2.0 * plane.spacing[1];
    let first_lps: [f64; 3] = std::array::from_fn(|a| {
        plane.position[a] + plane.col_cos[a] * down_mm + plane.row_cos[a] * across_mm
    });
    let mm_from_voxel = plane.ras_affine(first_lps, normal.map(|c| c * slice_spacing));

    // Cut the tiles: voxel (i, j, k) is row i, column j of tile k (tiles row by row).
    let mut stored = vec![0u8; tile_rows * tile_columns * n_slices * itemsize];
    for k in 0..n_slices {
        let (tile_row, tile_column) = (k / tiles_per_side, k % tiles_per_side);
        for j in 0..tile_columns {
            for i in 0..tile_rows {
                let src = ((tile_row * tile_rows + i) * columns + tile_column * tile_columns + j)
                    * itemsize;
                let dst = (i + tile_rows * (j + tile_columns * k)) * itemsize;
                stored[dst..dst + itemsize].copy_from_slice(&pixels.bytes[src..src + itemsize]);
            }
        }
    }
    let (dtype, voxel_bytes) = rescaled(ds, pixels.dtype, stored)?;
    let geometry = if slice_normal_from_csa {
        "Siemens mosaic, slice normal from the CSA header"
    } else {
        "Siemens mosaic, slice normal from the image orientation (no CSA header)"
    };
    Ok(ExportedVolume {
        path: ds.path.clone(),
        series_number: series_number(ds)?,
        series_description: ds.text(SERIES_DESCRIPTION).unwrap_or_default(),
        index: instance_number(ds)? - 1,
        dims: [tile_rows, tile_columns, n_slices],
        mm_from_voxel,
        tr_secs: tr_secs(ds)?,
        dtype,
        voxel_bytes,
        geometry: geometry.to_string(),
        slice_timing_secs: mosaic_slice_times_secs(csa.as_ref(), n_slices),
    })
}

/// The CSA header's `MosaicRefAcqTimes` (milliseconds from the volume's start, one per slice) in seconds, when it
/// has one value per slice.
fn mosaic_slice_times_secs(csa: Option<&CsaHeader>, n_slices: usize) -> Option<Vec<f64>> {
    let times_ms = csa?.numbers("MosaicRefAcqTimes");
    (times_ms.len() == n_slices && times_ms.iter().all(|t| t.is_finite() && *t >= 0.0))
        .then(|| times_ms.iter().map(|t| t / 1000.0).collect())
}

/// Whether a parsed file is a Siemens mosaic (it says how many slices its image holds).
pub fn is_mosaic(ds: &DataSet) -> bool {
    mosaic_slice_count(ds, csa_header(ds).as_ref()).is_some()
}

/// The Siemens CSA image header (0029,xx10), when the file has one that parses.
pub(super) fn csa_header(ds: &DataSet) -> Option<CsaHeader> {
    ds.private(0x0029, "SIEMENS CSA HEADER", 0x10)
        .and_then(CsaHeader::parse)
}

/// The slices a mosaic holds: NumberOfImagesInMosaic from (0019,xx0A), else from the CSA header.
pub(super) fn mosaic_slice_count(ds: &DataSet, csa: Option<&CsaHeader>) -> Option<usize> {
    match ds.private(0x0019, "SIEMENS MR HEADER", 0x0A) {
        Some(v) if v.len() >= 2 => Some(u16::from_le_bytes([v[0], v[1]]) as usize),
        _ => csa.and_then(|c| {
            c.numbers("NumberOfImagesInMosaic")
                .first()
                .map(|&n| n as usize)
        }),
    }
}
