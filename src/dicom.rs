//! DICOM reading for fMRI exports: a Siemens mosaic file becomes one 3-D [`ExportedVolume`]; a series stored
//! one slice per file (GE, Siemens with mosaic off) becomes [`DicomSlice`]s that [`stack_slices`] makes into
//! volumes.
//!
//! Siemens scanners export each fMRI volume as one DICOM file whose image is a *mosaic*: the slices laid out
//! as tiles of one large 2-D image. This module reads such a file (DICOM Part 10, uncompressed, implicit or
//! explicit VR little endian), cuts the mosaic into slices and computes the voxel -> millimetre affine the
//! way the Siemens geometry defines it (and nibabel's `MosaicWrapper` reads it):
//!
//! - voxel axis 0 walks down the rows of a tile (DICOM column direction cosine, `PixelSpacing[0]` mm),
//!   axis 1 along the columns (row direction cosine, `PixelSpacing[1]` mm), axis 2 across the slices along
//!   the slice normal (the CSA header's `SliceNormalVector`, else the cross product of the two cosines) by
//!   `SpacingBetweenSlices` (else `SliceThickness`);
//! - `ImagePositionPatient` of a mosaic is the corner of the whole mosaic drawn in the first slice's plane
//!   and centred on it, so the first voxel lies half the difference of mosaic and tile sizes further in;
//! - DICOM's patient coordinates are LPS+; the affine returned is RAS+ like every other one in the project.
//!
//! A slice file belongs to volume `(InstanceNumber - 1) / ImagesInAcquisition`; a volume's slices are stacked
//! in `InStackPositionNumber` order (else along the slice normal) with the same in-plane axes as a mosaic, the
//! slice axis running from the first slice's `ImagePositionPatient` to the last one's.
//!
//! The voxels keep their stored type (`uint16` from Siemens) unless the file asks for rescaling, in which
//! case they become float64 computed as `stored * slope + intercept`. Everything a file lacks or gets wrong
//! is an error that names the file, the element and, for structural damage, the byte offset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::volume::{Affine, Dtype, ExportedVolume};

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a DICOM file (no \"DICM\" marker after the 128-byte preamble)")]
    NotDicom { path: PathBuf },
    #[error("{path}: broken at byte {offset}: {reason}")]
    Malformed {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A DICOM tag as `(group << 16) | element`.
pub type Tag = u32;

const fn tag(group: u16, element: u16) -> Tag {
    ((group as u32) << 16) | element as u32
}

const TRANSFER_SYNTAX_UID: Tag = tag(0x0002, 0x0010);
const IMAGE_TYPE: Tag = tag(0x0008, 0x0008);
const SERIES_DESCRIPTION: Tag = tag(0x0008, 0x103E);
const SLICE_THICKNESS: Tag = tag(0x0018, 0x0050);
const REPETITION_TIME: Tag = tag(0x0018, 0x0080);
const SPACING_BETWEEN_SLICES: Tag = tag(0x0018, 0x0088);
const SERIES_NUMBER: Tag = tag(0x0020, 0x0011);
const INSTANCE_NUMBER: Tag = tag(0x0020, 0x0013);
const IMAGES_IN_ACQUISITION: Tag = tag(0x0020, 0x1002);
const IN_STACK_POSITION_NUMBER: Tag = tag(0x0020, 0x9057);
const IMAGE_POSITION_PATIENT: Tag = tag(0x0020, 0x0032);
const IMAGE_ORIENTATION_PATIENT: Tag = tag(0x0020, 0x0037);
const SAMPLES_PER_PIXEL: Tag = tag(0x0028, 0x0002);
const NUMBER_OF_FRAMES: Tag = tag(0x0028, 0x0008);
const ROWS: Tag = tag(0x0028, 0x0010);
const COLUMNS: Tag = tag(0x0028, 0x0011);
const PIXEL_SPACING: Tag = tag(0x0028, 0x0030);
const BITS_ALLOCATED: Tag = tag(0x0028, 0x0100);
const BITS_STORED: Tag = tag(0x0028, 0x0101);
const PIXEL_REPRESENTATION: Tag = tag(0x0028, 0x0103);
const RESCALE_INTERCEPT: Tag = tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = tag(0x0028, 0x1053);
const PIXEL_DATA: Tag = tag(0x7FE0, 0x0010);
const ITEM: Tag = tag(0xFFFE, 0xE000);
const ITEM_END: Tag = tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = tag(0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// Value representations whose explicit-VR length field is 4 bytes (after 2 reserved bytes).
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV",
];

/// The top-level elements of a DICOM file: tag -> value bytes (sequences are skipped over, not kept).
#[derive(Debug, Clone)]
pub struct DataSet {
    path: PathBuf,
    elements: HashMap<Tag, Vec<u8>>,
}

/// Whether a file's bytes begin like DICOM Part 10 (the "DICM" marker after the preamble).
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM".as_slice())
}

/// Whether the file at `path` begins like DICOM Part 10 (reads its first 132 bytes).
pub fn file_looks_like_dicom(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::with_capacity(132);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path)?, 132),
        &mut head,
    )?;
    Ok(looks_like_dicom(&head))
}

impl DataSet {
    /// Parses the bytes of a DICOM Part 10 file; `path` is only used in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<DataSet, DicomError> {
        if !looks_like_dicom(bytes) {
            return Err(DicomError::NotDicom {
                path: path.to_path_buf(),
            });
        }
        let mut reader = Reader {
            path,
            bytes,
            offset: 132,
            explicit_vr: true,
        };
        let mut elements = HashMap::new();
        // The file meta group is always explicit VR little endian; it ends where group 0002 ends.
        while reader.offset < bytes.len() && reader.peek_group()? == 0x0002 {
            let (t, value) = reader.element()?;
            if let Some(value) = value {
                elements.insert(t, value.to_vec());
            }
        }
        let syntax = elements
            .get(&TRANSFER_SYNTAX_UID)
            .map(|v| text(v))
            .unwrap_or_default();
        reader.explicit_vr = match syntax.as_str() {
            "1.2.840.10008.1.2" => false,
            "1.2.840.10008.1.2.1" => true,
            "" => {
                return Err(DicomError::Invalid { path: path.to_path_buf(), reason: "no transfer syntax (0002,0010) in the file meta group".into() })
            }
            "1.2.840.10008.1.2.2" => {
                return Err(DicomError::Unsupported { path: path.to_path_buf(), reason: "big-endian transfer syntax (1.2.840.10008.1.2.2) is not supported".into() })
            }
            other => {
                return Err(DicomError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "transfer syntax {other} (compressed or deflated) is not supported: export the series uncompressed \
                         (implicit or explicit VR little endian)"
                    ),
                })
            }
        };
        while reader.offset < bytes.len() {
            let (t, value) = reader.element()?;
            if let Some(value) = value {
                elements.insert(t, value.to_vec());
            }
        }
        Ok(DataSet {
            path: path.to_path_buf(),
            elements,
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> DicomError {
        DicomError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The raw value bytes of an element, if present.
    pub fn bytes(&self, t: Tag) -> Option<&[u8]> {
        self.elements.get(&t).map(|v| v.as_slice())
    }

    /// A text element (trailing spaces and NULs removed), if present.
    pub fn text(&self, t: Tag) -> Option<String> {
        self.bytes(t).map(text)
    }

    /// A 16-bit unsigned element, required.
    fn u16(&self, t: Tag, name: &str) -> Result<u16, DicomError> {
        match self.bytes(t) {
            Some(v) if v.len() >= 2 => Ok(u16::from_le_bytes([v[0], v[1]])),
            Some(_) => Err(self.invalid(format!("{name} {} is shorter than 2 bytes", tag_name(t)))),
            None => Err(self.invalid(format!("{name} {} is missing", tag_name(t)))),
        }
    }

    /// A decimal or integer string element (backslash-separated values), if present.
    fn numbers(&self, t: Tag, name: &str) -> Result<Option<Vec<f64>>, DicomError> {
        let Some(s) = self.text(t) else {
            return Ok(None);
        };
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.split('\\')
            .map(|part| part.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<Vec<f64>>>()
            .map(Some)
            .ok_or_else(|| {
                self.invalid(format!(
                    "{name} {} is not a list of numbers: {s:?}",
                    tag_name(t)
                ))
            })
    }

    /// A required numeric element with exactly `n` values.
    fn numbers_n(&self, t: Tag, name: &str, n: usize) -> Result<Vec<f64>, DicomError> {
        let values = self
            .numbers(t, name)?
            .ok_or_else(|| self.invalid(format!("{name} {} is missing", tag_name(t))))?;
        if values.len() != n {
            return Err(self.invalid(format!(
                "{name} {} has {} values, expected {n}",
                tag_name(t),
                values.len()
            )));
        }
        Ok(values)
    }

    /// An optional single number.
    fn number(&self, t: Tag, name: &str) -> Result<Option<f64>, DicomError> {
        Ok(self.numbers(t, name)?.and_then(|v| v.first().copied()))
    }

    /// The element `element_low` in the private block a creator named `creator` reserved in `group`
    /// (the creator `(gggg,00xx)` reserves elements `(gggg,xx00)` to `(gggg,xxFF)`).
    pub fn private(&self, group: u16, creator: &str, element_low: u8) -> Option<&[u8]> {
        (0x10u16..=0xFF).find_map(|block| {
            let owner = self.text(tag(group, block))?;
            (owner.trim() == creator)
                .then(|| self.bytes(tag(group, (block << 8) | element_low as u16)))?
        })
    }
}

/// A DICOM text value without its padding.
fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// `(gggg,eeee)`.
pub fn tag_name(t: Tag) -> String {
    format!("({:04X},{:04X})", t >> 16, t & 0xFFFF)
}

/// A cursor over the bytes of a data set.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    offset: usize,
    explicit_vr: bool,
}

impl<'a> Reader<'a> {
    fn malformed(&self, offset: usize, reason: impl Into<String>) -> DicomError {
        DicomError::Malformed {
            path: self.path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DicomError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                self.malformed(
                    self.offset,
                    format!(
                        "{what} needs {n} bytes but the file ends after {}",
                        self.bytes.len() - self.offset
                    ),
                )
            })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u16(&mut self, what: &str) -> Result<u16, DicomError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DicomError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn peek_group(&self) -> Result<u16, DicomError> {
        let b = self
            .bytes
            .get(self.offset..self.offset + 2)
            .ok_or_else(|| self.malformed(self.offset, "a tag is cut off"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn tag(&mut self) -> Result<Tag, DicomError> {
        let group = self.u16("a tag")?;
        let element = self.u16("a tag")?;
        Ok(tag(group, element))
    }

    /// Reads one element. Returns its value, or `None` for a sequence (skipped over).
    fn element(&mut self) -> Result<(Tag, Option<&'a [u8]>), DicomError> {
        let start = self.offset;
        let t = self.tag()?;
        let (vr, length) = if self.explicit_vr && t >> 16 != 0xFFFE {
            let vr_bytes = self.take(2, "a value representation")?;
            let vr = [vr_bytes[0], vr_bytes[1]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Err(self.malformed(
                    start,
                    format!(
                        "element {} has no valid value representation ({vr:?})",
                        tag_name(t)
                    ),
                ));
            }
            if LONG_VRS.contains(&&vr) {
                self.take(2, "reserved bytes")?;
                (Some(vr), self.u32("a value length")?)
            } else {
                (Some(vr), self.u16("a value length")? as u32)
            }
        } else {
            (None, self.u32("a value length")?)
        };
        let is_sequence = vr == Some(*b"SQ")
            || (length == UNDEFINED_LENGTH && vr != Some(*b"OB") && vr != Some(*b"OW"));
        if is_sequence {
            // An explicit-VR UN element of undefined length holds an implicit-VR sequence.
            let nested_explicit = self.explicit_vr && vr != Some(*b"UN");
            self.skip_sequence(t, length, nested_explicit)?;
            return Ok((t, None));
        }
        if length == UNDEFINED_LENGTH {
            return Err(DicomError::Unsupported {
                path: self.path.to_path_buf(),
                reason: format!(
                    "element {} is encapsulated (compressed) pixel data, which is not supported",
                    tag_name(t)
                ),
            });
        }
        let value = self.take(length as usize, &format!("the value of {}", tag_name(t)))?;
        Ok((t, Some(value)))
    }

    /// Skips the items of a sequence (defined length, or up to its delimiter).
    fn skip_sequence(
        &mut self,
        seq: Tag,
        length: u32,
        explicit_vr: bool,
    ) -> Result<(), DicomError> {
        let outer_explicit = self.explicit_vr;
        self.explicit_vr = explicit_vr;
        let result = if length == UNDEFINED_LENGTH {
            self.skip_items_until_delimiter(seq)
        } else {
            let end = self
                .offset
                .checked_add(length as usize)
                .filter(|&e| e <= self.bytes.len());
            match end {
                Some(end) => {
                    self.offset = end;
                    Ok(())
                }
                None => Err(self.malformed(
                    self.offset,
                    format!(
                        "sequence {} claims {length} bytes, more than the file holds",
                        tag_name(seq)
                    ),
                )),
            }
        };
        self.explicit_vr = outer_explicit;
        result
    }

    fn skip_items_until_delimiter(&mut self, seq: Tag) -> Result<(), DicomError> {
        loop {
            let at = self.offset;
            let t = self.tag().map_err(|_| {
                self.malformed(
                    at,
                    format!("sequence {} has no end delimiter", tag_name(seq)),
                )
            })?;
            let length = self.u32("an item length")?;
            match t {
                SEQUENCE_END => return Ok(()),
                ITEM if length == UNDEFINED_LENGTH => loop {
                    if self.peek_tag()? == ITEM_END {
                        self.offset += 8;
                        break;
                    }
                    self.element()?;
                },
                ITEM => {
                    self.take(length as usize, "a sequence item")?;
                }
                other => {
                    return Err(self.malformed(
                        at,
                        format!(
                            "expected an item in sequence {}, found {}",
                            tag_name(seq),
                            tag_name(other)
                        ),
                    ))
                }
            }
        }
    }

    fn peek_tag(&self) -> Result<Tag, DicomError> {
        let b = self
            .bytes
            .get(self.offset..self.offset + 4)
            .ok_or_else(|| self.malformed(self.offset, "an item has no end delimiter"))?;
        Ok(tag(
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ))
    }
}

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
    })
}

/// Whether a parsed file is a Siemens mosaic (it says how many slices its image holds).
pub fn is_mosaic(ds: &DataSet) -> bool {
    mosaic_slice_count(ds, csa_header(ds).as_ref()).is_some()
}

/// The Siemens CSA image header (0029,xx10), when the file has one that parses.
fn csa_header(ds: &DataSet) -> Option<CsaHeader> {
    ds.private(0x0029, "SIEMENS CSA HEADER", 0x10)
        .and_then(CsaHeader::parse)
}

/// The slices a mosaic holds: NumberOfImagesInMosaic from (0019,xx0A), else from the CSA header.
fn mosaic_slice_count(ds: &DataSet, csa: Option<&CsaHeader>) -> Option<usize> {
    match ds.private(0x0019, "SIEMENS MR HEADER", 0x0A) {
        Some(v) if v.len() >= 2 => Some(u16::from_le_bytes([v[0], v[1]]) as usize),
        _ => csa.and_then(|c| {
            c.numbers("NumberOfImagesInMosaic")
                .first()
                .map(|&n| n as usize)
        }),
    }
}

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
    let slices_per_volume = match ds.number(IMAGES_IN_ACQUISITION, "ImagesInAcquisition")? {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
        Some(n) => return Err(ds.invalid(format!("ImagesInAcquisition {n} is not a slice count"))),
        None => {
            return Err(ds.invalid(
                "neither a Siemens mosaic nor a slice with ImagesInAcquisition (0020,1002): cannot tell which volume it belongs to",
            ))
        }
    };
    let in_stack_position = match ds.bytes(IN_STACK_POSITION_NUMBER) {
        Some(b) if b.len() == 4 => {
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).filter(|&p| p >= 1)
        }
        Some(_) => {
            return Err(ds.invalid("InStackPositionNumber (0020,9057) is not one 4-byte number"))
        }
        None => None,
    };
    let pixels = stored_pixels(ds)?;
    let plane = PlaneGeometry::read(ds)?;
    let (rows, columns, itemsize) = (pixels.rows, pixels.columns, pixels.dtype.itemsize());
    let mut transposed = vec![0u8; pixels.bytes.len()];
    for i in 0..rows {
        for j in 0..columns {
            let (src, dst) = ((i * columns + j) * itemsize, (i + rows * j) * itemsize);
            transposed[dst..dst + itemsize].copy_from_slice(&pixels.bytes[src..src + itemsize]);
        }
    }
    let (dtype, voxel_bytes) = rescaled(ds, pixels.dtype, transposed)?;
    Ok(DicomSlice {
        path: ds.path.clone(),
        series_number: series_number(ds)?,
        series_description: ds.text(SERIES_DESCRIPTION).unwrap_or_default(),
        instance_number: instance_number(ds)?,
        slices_per_volume,
        in_stack_position,
        plane,
        slice_spacing_mm: slice_spacing_mm(ds).unwrap_or(0.0),
        tr_secs: tr_secs(ds)?,
        dtype,
        voxel_bytes,
    })
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
        reason: format!(
            "its {what} differs from {}'s, in the same volume",
            first.path.display()
        ),
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
    })
}

/// The image plane of a file: pixel spacing, the first pixel's position and the direction cosines (LPS).
#[derive(Debug, Clone, Copy)]
struct PlaneGeometry {
    rows: usize,
    columns: usize,
    /// `PixelSpacing`: between rows, between columns (mm).
    spacing: [f64; 2],
    position: [f64; 3],
    row_cos: [f64; 3],
    col_cos: [f64; 3],
}

impl PlaneGeometry {
    fn read(ds: &DataSet) -> Result<PlaneGeometry, DicomError> {
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
    fn ras_affine(&self, first_lps: [f64; 3], slice_step_lps: [f64; 3]) -> Affine {
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
fn slice_spacing_mm(ds: &DataSet) -> Result<f64, DicomError> {
    match ds.number(SPACING_BETWEEN_SLICES, "SpacingBetweenSlices")? {
        Some(s) if s > 0.0 => Ok(s),
        _ => ds
            .number(SLICE_THICKNESS, "SliceThickness")?
            .filter(|&s| s > 0.0)
            .ok_or_else(|| ds.invalid("neither SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050) gives the slice spacing")),
    }
}

/// The grey-scale pixels of a file, row by row (columns fastest), signed values sign-extended.
struct StoredPixels {
    rows: usize,
    columns: usize,
    dtype: Dtype,
    bytes: Vec<u8>,
}

fn stored_pixels(ds: &DataSet) -> Result<StoredPixels, DicomError> {
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
    if let Some(frames) = ds
        .number(NUMBER_OF_FRAMES, "NumberOfFrames")?
        .filter(|&n| n > 1.0)
    {
        return Err(ds.invalid(format!("a multi-frame (enhanced) image of {frames} frames: not read; export one image per file")));
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
    let pixels = ds
        .bytes(PIXEL_DATA)
        .ok_or_else(|| ds.invalid("PixelData (7FE0,0010) is missing"))?;
    let needed = rows * columns * dtype.itemsize();
    if pixels.len() < needed {
        return Err(ds.invalid(format!(
            "PixelData holds {} bytes, a {rows} x {columns} x {bits}-bit image needs {needed}",
            pixels.len()
        )));
    }
    let mut bytes = pixels[..needed].to_vec();
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
fn rescaled(ds: &DataSet, dtype: Dtype, stored: Vec<u8>) -> Result<(Dtype, Vec<u8>), DicomError> {
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

fn series_number(ds: &DataSet) -> Result<i64, DicomError> {
    Ok(ds
        .number(SERIES_NUMBER, "SeriesNumber")?
        .map(|n| n as i64)
        .unwrap_or(0))
}

fn instance_number(ds: &DataSet) -> Result<usize, DicomError> {
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
fn tr_secs(ds: &DataSet) -> Result<Option<f64>, DicomError> {
    Ok(ds
        .number(REPETITION_TIME, "RepetitionTime")?
        .filter(|&t| t > 0.0)
        .map(|ms| ms / 1000.0))
}

fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Sign-extends signed values stored in the low `bits_stored` bits of each element.
fn sign_extend(bytes: &mut [u8], dtype: Dtype, bits_stored: u16) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes DICOM Part 10 bytes: the meta group (explicit VR) and then `elements` in the given encoding.
    fn file_bytes(
        transfer_syntax: &str,
        explicit: bool,
        elements: &[(Tag, &[u8; 2], Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        let mut uid = transfer_syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        write_element(&mut out, true, TRANSFER_SYNTAX_UID, b"UI", &uid);
        for (t, vr, value) in elements {
            write_element(&mut out, explicit, *t, vr, value);
        }
        out
    }

    fn write_element(out: &mut Vec<u8>, explicit: bool, t: Tag, vr: &[u8; 2], value: &[u8]) {
        out.extend_from_slice(&((t >> 16) as u16).to_le_bytes());
        out.extend_from_slice(&((t & 0xFFFF) as u16).to_le_bytes());
        let length = if vr == b"SQ" {
            UNDEFINED_LENGTH
        } else {
            value.len() as u32
        };
        if explicit {
            out.extend_from_slice(vr);
            if LONG_VRS.contains(&vr) {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&length.to_le_bytes());
            } else {
                out.extend_from_slice(&(length as u16).to_le_bytes());
            }
        } else {
            out.extend_from_slice(&length.to_le_bytes());
        }
        out.extend_from_slice(value);
    }

    fn ds_text(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(b' ');
        }
        v
    }

    /// A CSA2 header holding `SliceNormalVector` (and an empty element, as real headers have many).
    fn csa_bytes(normal: [f64; 3]) -> Vec<u8> {
        let mut out = b"SV10\x04\x03\x02\x01".to_vec();
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&77u32.to_le_bytes());
        for (name, items) in [
            ("EchoLinePosition", vec![]),
            (
                "SliceNormalVector",
                normal.iter().map(|v| format!("{v:.8}")).collect::<Vec<_>>(),
            ),
        ] {
            let mut name_field = [0u8; 64];
            name_field[..name.len()].copy_from_slice(name.as_bytes());
            out.extend_from_slice(&name_field);
            out.extend_from_slice(&(items.len() as i32).to_le_bytes()); // vm
            out.extend_from_slice(b"FD\0\0");
            out.extend_from_slice(&4i32.to_le_bytes()); // syngodt
            out.extend_from_slice(&(items.len() as i32).to_le_bytes());
            out.extend_from_slice(&77i32.to_le_bytes());
            for item in items {
                let mut bytes = item.into_bytes();
                bytes.push(0);
                let len = bytes.len() as i32;
                for field in [len, len, 77, len] {
                    out.extend_from_slice(&field.to_le_bytes());
                }
                bytes.resize(bytes.len().div_ceil(4) * 4, 0);
                out.extend_from_slice(&bytes);
            }
        }
        out
    }

    /// A 3-slice mosaic (2 x 2 tiles of 2 rows x 3 columns); pixel value = 100 * slice + 10 * row + column.
    fn mosaic_elements(
        csa_normal: Option<[f64; 3]>,
        extra: Vec<(Tag, &'static [u8; 2], Vec<u8>)>,
    ) -> Vec<(Tag, &'static [u8; 2], Vec<u8>)> {
        let (rows, columns, tile_rows, tile_columns) = (4usize, 6usize, 2usize, 3usize);
        let mut pixels = vec![0u8; rows * columns * 2];
        for k in 0..3 {
            for i in 0..tile_rows {
                for j in 0..tile_columns {
                    let (r, c) = ((k / 2) * tile_rows + i, (k % 2) * tile_columns + j);
                    let v = (100 * k + 10 * i + j) as u16;
                    pixels[(r * columns + c) * 2..][..2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        let mut elements: Vec<(Tag, &'static [u8; 2], Vec<u8>)> = vec![
            (IMAGE_TYPE, b"CS", ds_text("ORIGINAL\\PRIMARY\\M\\MOSAIC")),
            (REPETITION_TIME, b"DS", ds_text("2000")),
            (SPACING_BETWEEN_SLICES, b"DS", ds_text("4")),
            (tag(0x0019, 0x0010), b"LO", ds_text("SIEMENS MR HEADER")),
            (tag(0x0019, 0x100A), b"US", 3u16.to_le_bytes().to_vec()),
            (SERIES_NUMBER, b"IS", ds_text("7")),
            (INSTANCE_NUMBER, b"IS", ds_text("5")),
            (IMAGE_POSITION_PATIENT, b"DS", ds_text("-10\\-20\\30")),
            (
                IMAGE_ORIENTATION_PATIENT,
                b"DS",
                ds_text("1\\0\\0\\0\\1\\0"),
            ),
            (ROWS, b"US", (rows as u16).to_le_bytes().to_vec()),
            (COLUMNS, b"US", (columns as u16).to_le_bytes().to_vec()),
            (PIXEL_SPACING, b"DS", ds_text("2\\3")),
            (BITS_ALLOCATED, b"US", 16u16.to_le_bytes().to_vec()),
            (PIXEL_REPRESENTATION, b"US", 0u16.to_le_bytes().to_vec()),
        ];
        if let Some(normal) = csa_normal {
            elements.push((tag(0x0029, 0x0010), b"LO", ds_text("SIEMENS CSA HEADER")));
            elements.push((tag(0x0029, 0x1010), b"OB", csa_bytes(normal)));
        }
        elements.extend(extra);
        elements.sort_by_key(|(t, _, _)| *t);
        elements.push((PIXEL_DATA, b"OW", pixels));
        elements
    }

    fn mosaic(bytes: &[u8]) -> Result<ExportedVolume, DicomError> {
        mosaic_from_data_set(&DataSet::parse(Path::new("test.dcm"), bytes)?)
    }

    #[test]
    fn a_mosaic_is_cut_into_slices_with_the_siemens_geometry() {
        let v = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(None, vec![]),
        ))
        .expect("reads");
        assert_eq!(v.dims, [2, 3, 3]);
        assert_eq!(
            (v.series_number, v.index, v.dtype, v.tr_secs),
            (7, 4, Dtype::Uint16, Some(2.0))
        );
        for k in 0..3 {
            for j in 0..3 {
                for i in 0..2 {
                    let at = (i + 2 * (j + 3 * k)) * 2;
                    assert_eq!(
                        u16::from_le_bytes([v.voxel_bytes[at], v.voxel_bytes[at + 1]]),
                        (100 * k + 10 * i + j) as u16
                    );
                }
            }
        }
        // Axis 0 (rows) runs along the column cosine (0,1,0) by 2 mm, axis 1 along the row cosine (1,0,0) by
        // 3 mm, axis 2 along their cross product (0,0,1) by 4 mm. The first voxel is (4-2)/2 rows and (6-3)/2
        // columns in from the mosaic corner (-10,-20,30): (-10 + 1.5*3, -20 + 1*2, 30) in LPS.
        let expected = [
            [0.0, -3.0, 0.0, 5.5],
            [-2.0, 0.0, 0.0, 18.0],
            [0.0, 0.0, 4.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(v.mm_from_voxel, expected);
        assert!(v.geometry.contains("no CSA header"), "{}", v.geometry);
    }

    #[test]
    fn the_csa_slice_normal_wins_over_the_cross_product() {
        let v = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(Some([0.0, 0.0, -1.0]), vec![]),
        ))
        .expect("reads");
        assert!(v.geometry.contains("from the CSA header"), "{}", v.geometry);
        assert_eq!(
            [
                v.mm_from_voxel[0][2],
                v.mm_from_voxel[1][2],
                v.mm_from_voxel[2][2]
            ],
            [0.0, 0.0, -4.0]
        );
    }

    #[test]
    fn implicit_vr_with_nested_sequences_reads_the_same() {
        let explicit = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(Some([0.0, 0.0, 1.0]), vec![]),
        ))
        .expect("explicit");
        // A sequence of undefined length holding an item of undefined length, before the pixel data.
        let mut item = Vec::new();
        write_element(
            &mut item,
            false,
            tag(0x0008, 0x0100),
            b"SH",
            &ds_text("CODE"),
        );
        let mut sequence = Vec::new();
        sequence.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        sequence.extend_from_slice(&item);
        sequence.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        sequence.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let extra = vec![(tag(0x0040, 0x0260), b"SQ", sequence)];
        let implicit = mosaic(&file_bytes(
            "1.2.840.10008.1.2",
            false,
            &mosaic_elements(Some([0.0, 0.0, 1.0]), extra),
        ))
        .expect("implicit");
        assert_eq!(implicit.voxel_bytes, explicit.voxel_bytes);
        assert_eq!(implicit.mm_from_voxel, explicit.mm_from_voxel);
        assert_eq!(
            (implicit.index, implicit.series_number),
            (explicit.index, explicit.series_number)
        );
    }

    #[test]
    fn rescaled_pixels_become_float64() {
        let extra = vec![
            (RESCALE_INTERCEPT, b"DS", ds_text("-5")),
            (RESCALE_SLOPE, b"DS", ds_text("0.5")),
        ];
        let v = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(None, extra),
        ))
        .expect("reads");
        assert_eq!(v.dtype, Dtype::Float64);
        let last = (1 + 2 * (2 + 3 * 2)) * 8; // voxel (1, 2, 2): stored 212
        assert_eq!(
            f64::from_le_bytes(v.voxel_bytes[last..last + 8].try_into().expect("8 bytes")),
            212.0 * 0.5 - 5.0
        );
    }

    #[test]
    fn damage_and_unsupported_files_are_named() {
        let good = file_bytes("1.2.840.10008.1.2.1", true, &mosaic_elements(None, vec![]));
        let cut = mosaic(&good[..good.len() - 10]).expect_err("cut");
        assert!(
            matches!(cut, DicomError::Malformed { .. }) && cut.to_string().contains("(7FE0,0010)"),
            "{cut}"
        );
        let mut no_marker = good.clone();
        no_marker[128] = b'X';
        assert!(matches!(
            mosaic(&no_marker),
            Err(DicomError::NotDicom { .. })
        ));
        let big_endian =
            mosaic(&file_bytes("1.2.840.10008.1.2.2", true, &[])).expect_err("big endian");
        assert!(
            big_endian.to_string().contains("big-endian"),
            "{big_endian}"
        );
        let jpeg = mosaic(&file_bytes("1.2.840.10008.1.2.4.50", true, &[])).expect_err("jpeg");
        assert!(
            jpeg.to_string().contains("export the series uncompressed"),
            "{jpeg}"
        );
        let not_mosaic = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(None, vec![])
                .into_iter()
                .filter(|e| e.0 != tag(0x0019, 0x100A))
                .collect::<Vec<_>>(),
        ))
        .expect_err("no mosaic count");
        assert!(
            not_mosaic.to_string().contains("not a Siemens mosaic"),
            "{not_mosaic}"
        );
        let bad_spacing = mosaic(&file_bytes(
            "1.2.840.10008.1.2.1",
            true,
            &mosaic_elements(None, vec![])
                .into_iter()
                .map(|e| {
                    if e.0 == PIXEL_SPACING {
                        (e.0, e.1, ds_text("2\\x"))
                    } else {
                        e
                    }
                })
                .collect::<Vec<_>>(),
        ))
        .expect_err("bad spacing");
        assert!(
            bad_spacing
                .to_string()
                .contains("PixelSpacing (0028,0030) is not a list of numbers"),
            "{bad_spacing}"
        );
    }

    #[test]
    fn signed_values_with_fewer_stored_bits_are_sign_extended() {
        let mut bytes = [0x0FFFu16, 0x0800, 0x07FF]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        sign_extend(&mut bytes, Dtype::Int16, 12);
        let values: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(values, [-1, -2048, 2047]);
    }
}
