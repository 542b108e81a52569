//! The DICOM Part-10 byte parser: the preamble and file meta group, then the data set in implicit or explicit VR
//! little endian (inflated first when deflated), every element kept by tag and every sequence (defined or undefined
//! length) as its items, each a data set (at most 16 levels deep); compressed pixel data is kept as its fragments
//! for [`super::compressed`] to decode. Damage is an error naming the file, the element and the byte offset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::compressed::{self, Encoding, Fragments, FrameShape};
use super::error::DicomError;

/// A DICOM tag as `(group << 16) | element`.
pub type Tag = u32;

pub(super) const fn tag(group: u16, element: u16) -> Tag {
    ((group as u32) << 16) | element as u32
}

pub(super) const TRANSFER_SYNTAX_UID: Tag = tag(0x0002, 0x0010);
pub(super) const IMAGE_TYPE: Tag = tag(0x0008, 0x0008);
pub(super) const MEDIA_STORAGE_SOP_CLASS_UID: Tag = tag(0x0002, 0x0002);
pub(super) const SOP_CLASS_UID: Tag = tag(0x0008, 0x0016);
pub(super) const SERIES_DESCRIPTION: Tag = tag(0x0008, 0x103E);
pub(super) const TEMPORAL_POSITION_INDEX: Tag = tag(0x0020, 0x9128);
pub(super) const SHARED_FUNCTIONAL_GROUPS: Tag = tag(0x5200, 0x9229);
pub(super) const PER_FRAME_FUNCTIONAL_GROUPS: Tag = tag(0x5200, 0x9230);
pub(super) const FRAME_ACQUISITION_DATE_TIME: Tag = tag(0x0018, 0x9074);
pub(super) const SLICE_THICKNESS: Tag = tag(0x0018, 0x0050);
pub(super) const REPETITION_TIME: Tag = tag(0x0018, 0x0080);
pub(super) const SPACING_BETWEEN_SLICES: Tag = tag(0x0018, 0x0088);
pub(super) const SERIES_NUMBER: Tag = tag(0x0020, 0x0011);
pub(super) const INSTANCE_NUMBER: Tag = tag(0x0020, 0x0013);
pub(super) const IMAGES_IN_ACQUISITION: Tag = tag(0x0020, 0x1002);
pub(super) const IN_STACK_POSITION_NUMBER: Tag = tag(0x0020, 0x9057);
pub(super) const IMAGE_POSITION_PATIENT: Tag = tag(0x0020, 0x0032);
pub(super) const IMAGE_ORIENTATION_PATIENT: Tag = tag(0x0020, 0x0037);
pub(super) const SAMPLES_PER_PIXEL: Tag = tag(0x0028, 0x0002);
pub(super) const PHOTOMETRIC_INTERPRETATION: Tag = tag(0x0028, 0x0004);
pub(super) const NUMBER_OF_FRAMES: Tag = tag(0x0028, 0x0008);
pub(super) const ROWS: Tag = tag(0x0028, 0x0010);
pub(super) const COLUMNS: Tag = tag(0x0028, 0x0011);
pub(super) const PIXEL_SPACING: Tag = tag(0x0028, 0x0030);
pub(super) const BITS_ALLOCATED: Tag = tag(0x0028, 0x0100);
pub(super) const BITS_STORED: Tag = tag(0x0028, 0x0101);
pub(super) const PIXEL_REPRESENTATION: Tag = tag(0x0028, 0x0103);
pub(super) const RESCALE_INTERCEPT: Tag = tag(0x0028, 0x1052);
pub(super) const RESCALE_SLOPE: Tag = tag(0x0028, 0x1053);
pub(super) const PIXEL_DATA: Tag = tag(0x7FE0, 0x0010);
pub(super) const ITEM: Tag = tag(0xFFFE, 0xE000);
pub(super) const ITEM_END: Tag = tag(0xFFFE, 0xE00D);
pub(super) const SEQUENCE_END: Tag = tag(0xFFFE, 0xE0DD);
pub(super) const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// The SOP class UID of Enhanced MR Image Storage (Siemens XA exports).
pub const ENHANCED_MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4.1";

/// Value representations whose explicit-VR length field is 4 bytes (after 2 reserved bytes).
pub(super) const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV",
];

/// The elements of a DICOM file: tag -> value bytes, and tag -> items for sequences (each item a data set of
/// its own, as the functional groups of an enhanced multi-frame file are).
#[derive(Debug, Clone)]
pub struct DataSet {
    pub(super) path: PathBuf,
    elements: HashMap<Tag, Vec<u8>>,
    sequences: HashMap<Tag, Vec<DataSet>>,
    /// The pixel data, when it is compressed, and its frames decoded (on first use).
    pub(super) compressed: Option<Fragments>,
    decoded: OnceLock<Result<Vec<u8>, String>>,
}

/// Sequences nested deeper than this are refused: real files nest a few levels, and each level of a hostile
/// file would otherwise cost a stack frame.
pub(super) const MAX_SEQUENCE_DEPTH: usize = 16;

/// One element as read: a value, or a sequence's items.
pub(super) enum Element<'a> {
    Value(&'a [u8]),
    Sequence(Vec<DataSet>),
    /// Encapsulated pixel data: the basic offset table, then the fragments.
    Fragments(Vec<&'a [u8]>),
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
            encapsulated: false,
            depth: 0,
        };
        let mut data_set = DataSet::empty(path);
        // The file meta group is always explicit VR little endian; it ends where group 0002 ends.
        while reader.offset < bytes.len() && reader.peek_group()? == 0x0002 {
            let (t, element) = reader.element()?;
            data_set.insert(t, element);
        }
        let syntax = data_set.text(TRANSFER_SYNTAX_UID).unwrap_or_default();
        let encoding = compressed::encoding(&syntax).map_err(|reason| {
            if syntax.is_empty() {
                DicomError::Invalid {
                    path: path.to_path_buf(),
                    reason,
                }
            } else {
                DicomError::Unsupported {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        })?;
        // a deflated data set is read from its inflated bytes, its offsets counted there
        let inflated = match encoding {
            Encoding::Deflated => Some(
                compressed::inflate(&bytes[reader.offset..])
                    .map_err(|reason| data_set.invalid(reason))?,
            ),
            _ => None,
        };
        if let Some(inflated) = &inflated {
            reader.bytes = inflated;
            reader.offset = 0;
        }
        reader.explicit_vr = encoding != Encoding::Implicit;
        reader.encapsulated = matches!(encoding, Encoding::Compressed { .. });
        while reader.offset < reader.bytes.len() {
            let (t, element) = reader.element()?;
            data_set.insert(t, element);
        }
        if let (Encoding::Compressed { uid, name }, Some(fragments)) =
            (encoding, data_set.compressed.as_mut())
        {
            fragments.uid = uid;
            fragments.name = name;
        }
        Ok(data_set)
    }

    fn empty(path: &Path) -> DataSet {
        DataSet {
            path: path.to_path_buf(),
            elements: HashMap::new(),
            sequences: HashMap::new(),
            compressed: None,
            decoded: OnceLock::new(),
        }
    }

    fn insert(&mut self, t: Tag, element: Element<'_>) {
        match element {
            Element::Value(value) => {
                self.elements.insert(t, value.to_vec());
            }
            Element::Sequence(items) => {
                self.sequences.insert(t, items);
            }
            Element::Fragments(mut fragments) => {
                let table = if fragments.is_empty() {
                    Vec::new()
                } else {
                    fragments
                        .remove(0)
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                };
                self.compressed = Some(Fragments {
                    offset_table: table,
                    fragments: fragments.into_iter().map(<[u8]>::to_vec).collect(),
                    ..Fragments::default()
                });
            }
        }
    }

    /// One frame of an enhanced multi-frame file as a flat data set: this data set's own values (not its pixel
    /// data) with the attributes of each functional-group macro in `groups` laid over them, later groups over
    /// earlier ones (the shared groups, then the frame's own). A group item holds one sequence per macro, each
    /// with one item of attributes.
    pub(super) fn frame_view(&self, groups: &[&DataSet]) -> DataSet {
        let mut flat = DataSet::empty(&self.path);
        for (t, v) in &self.elements {
            if *t != PIXEL_DATA {
                flat.elements.insert(*t, v.clone());
            }
        }
        for group in groups {
            for items in group.sequences.values() {
                if let Some(attributes) = items.first() {
                    for (t, v) in &attributes.elements {
                        flat.elements.insert(*t, v.clone());
                    }
                }
            }
        }
        flat
    }

    /// The items of a sequence; empty when it is absent.
    pub fn items(&self, t: Tag) -> &[DataSet] {
        self.sequences.get(&t).map_or(&[], |v| v.as_slice())
    }

    /// The first item of a sequence, if any (functional-group macros hold one).
    pub fn item(&self, t: Tag) -> Option<&DataSet> {
        self.items(t).first()
    }

    pub(super) fn invalid(&self, reason: impl Into<String>) -> DicomError {
        DicomError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Whether the file holds pixel data, native or compressed.
    pub fn has_pixel_data(&self) -> bool {
        self.compressed.is_some() || self.elements.contains_key(&PIXEL_DATA)
    }

    /// Every frame's pixels as they lie in an uncompressed file: the PixelData element's bytes, or compressed pixel
    /// data decoded to `shape` (once, the first time they are asked for); `None` when the file has no pixel data.
    pub(super) fn pixel_data(&self, shape: &FrameShape) -> Result<Option<&[u8]>, DicomError> {
        let Some(data) = &self.compressed else {
            return Ok(self.bytes(PIXEL_DATA));
        };
        self.decoded
            .get_or_init(|| {
                compressed::decode_frames(data, shape, self.text(PHOTOMETRIC_INTERPRETATION))
            })
            .as_deref()
            .map(Some)
            .map_err(|why| self.invalid(why.clone()))
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
    pub(super) fn u16(&self, t: Tag, name: &str) -> Result<u16, DicomError> {
        match self.bytes(t) {
            Some(v) if v.len() >= 2 => Ok(u16::from_le_bytes([v[0], v[1]])),
            Some(_) => Err(self.invalid(format!("{name} {} is shorter than 2 bytes", tag_name(t)))),
            None => Err(self.invalid(format!("{name} {} is missing", tag_name(t)))),
        }
    }

    /// An unsigned long (UL) element, if present; `name` says which, in the error.
    pub(super) fn ul(&self, t: Tag, name: &str) -> Result<Option<u32>, DicomError> {
        match self.bytes(t) {
            None => Ok(None),
            Some(b) if b.len() == 4 => Ok(Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Some(_) => {
                Err(self.invalid(format!("{name} {} is not one 4-byte number", tag_name(t))))
            }
        }
    }

    /// A decimal or integer string element (backslash-separated values), if present.
    pub(super) fn numbers(&self, t: Tag, name: &str) -> Result<Option<Vec<f64>>, DicomError> {
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
    pub(super) fn numbers_n(&self, t: Tag, name: &str, n: usize) -> Result<Vec<f64>, DicomError> {
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
    pub(super) fn number(&self, t: Tag, name: &str) -> Result<Option<f64>, DicomError> {
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
pub(super) fn text(v: &[u8]) -> String {
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
pub(super) struct Reader<'a> {
    pub(super) path: &'a Path,
    pub(super) bytes: &'a [u8],
    pub(super) offset: usize,
    pub(super) explicit_vr: bool,
    /// Whether the pixel data may be encapsulated (a compressed transfer syntax).
    pub(super) encapsulated: bool,
    /// Sequences entered and not yet left.
    pub(super) depth: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn malformed(&self, offset: usize, reason: impl Into<String>) -> DicomError {
        DicomError::Malformed {
            path: self.path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DicomError> {
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

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, DicomError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, DicomError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn peek_group(&self) -> Result<u16, DicomError> {
        let b = self
            .bytes
            .get(self.offset..self.offset + 2)
            .ok_or_else(|| self.malformed(self.offset, "a tag is cut off"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn tag(&mut self) -> Result<Tag, DicomError> {
        let group = self.u16("a tag")?;
        let element = self.u16("a tag")?;
        Ok(tag(group, element))
    }

    /// Reads one element: its value, or a sequence's items.
    pub(super) fn element(&mut self) -> Result<(Tag, Element<'a>), DicomError> {
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
        if length == UNDEFINED_LENGTH && t == PIXEL_DATA && self.encapsulated && self.depth == 0 {
            return Ok((t, Element::Fragments(self.fragments()?)));
        }
        let is_sequence = vr == Some(*b"SQ")
            || (length == UNDEFINED_LENGTH && vr != Some(*b"OB") && vr != Some(*b"OW"));
        if is_sequence {
            // An explicit-VR UN element of undefined length holds an implicit-VR sequence.
            let nested_explicit = self.explicit_vr && vr != Some(*b"UN");
            let items = self.sequence(t, length, nested_explicit)?;
            return Ok((t, Element::Sequence(items)));
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
        Ok((t, Element::Value(value)))
    }

    /// Reads the items of a sequence (defined length, or up to its delimiter).
    pub(super) fn sequence(
        &mut self,
        seq: Tag,
        length: u32,
        explicit_vr: bool,
    ) -> Result<Vec<DataSet>, DicomError> {
        if self.depth >= MAX_SEQUENCE_DEPTH {
            return Err(self.malformed(
                self.offset,
                format!(
                    "sequence {} is nested more than {MAX_SEQUENCE_DEPTH} levels deep",
                    tag_name(seq)
                ),
            ));
        }
        let end = if length == UNDEFINED_LENGTH {
            None
        } else {
            Some(
                self.offset
                    .checked_add(length as usize)
                    .filter(|&e| e <= self.bytes.len())
                    .ok_or_else(|| {
                        self.malformed(
                            self.offset,
                            format!(
                                "sequence {} claims {length} bytes, more than the file holds",
                                tag_name(seq)
                            ),
                        )
                    })?,
            )
        };
        let outer_explicit = self.explicit_vr;
        self.explicit_vr = explicit_vr;
        self.depth += 1;
        let result = self.items_until(seq, end);
        self.depth -= 1;
        self.explicit_vr = outer_explicit;
        result
    }

    /// Items up to `end`, or up to the sequence delimiter when the length is undefined.
    fn items_until(&mut self, seq: Tag, end: Option<usize>) -> Result<Vec<DataSet>, DicomError> {
        let mut items = Vec::new();
        loop {
            if end.is_some_and(|end| self.offset >= end) {
                return Ok(items);
            }
            let at = self.offset;
            let t = self.tag().map_err(|_| {
                self.malformed(
                    at,
                    format!("sequence {} has no end delimiter", tag_name(seq)),
                )
            })?;
            let length = self.u32("an item length")?;
            match t {
                SEQUENCE_END if end.is_none() => return Ok(items),
                ITEM => {
                    let mut item = DataSet::empty(self.path);
                    let item_end = if length == UNDEFINED_LENGTH {
                        None
                    } else {
                        Some(self.offset.saturating_add(length as usize))
                    };
                    loop {
                        match item_end {
                            Some(item_end) if self.offset >= item_end => break,
                            None if self.peek_tag()? == ITEM_END => {
                                self.offset += 8;
                                break;
                            }
                            _ => {}
                        }
                        let (t, element) = self.element()?;
                        item.insert(t, element);
                    }
                    if item_end.is_some_and(|item_end| self.offset != item_end) {
                        return Err(self.malformed(
                            at,
                            format!("an item of sequence {} overruns its length", tag_name(seq)),
                        ));
                    }
                    items.push(item);
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

    /// The items of encapsulated pixel data up to its delimiter: the basic offset table, then the fragments.
    fn fragments(&mut self) -> Result<Vec<&'a [u8]>, DicomError> {
        let mut items = Vec::new();
        loop {
            let at = self.offset;
            let t = self.tag().map_err(|_| {
                self.malformed(at, "the compressed pixel data has no end delimiter")
            })?;
            let length = self.u32("a fragment length")?;
            match t {
                SEQUENCE_END => return Ok(items),
                ITEM if length != UNDEFINED_LENGTH => {
                    items.push(self.take(length as usize, "a pixel data fragment")?);
                }
                other => {
                    return Err(self.malformed(
                        at,
                        format!(
                            "expected a fragment of the compressed pixel data, found {} of length {length}",
                            tag_name(other)
                        ),
                    ))
                }
            }
        }
    }

    pub(super) fn peek_tag(&self) -> Result<Tag, DicomError> {
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
