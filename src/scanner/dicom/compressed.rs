//! Transfer syntaxes beyond plain little endian: which ones a file may use, and the decoding of compressed pixel
//! data. The data set itself is read by [`super::parse`]; a deflated one is inflated first (bounded). Compressed
//! (encapsulated) pixel data is decoded by dicom-rs's pure-Rust decoders (JPEG baseline, extended and lossless
//! with `jpeg-decoder`; RLE Lossless), all frames of a file at once (the first time its pixels are asked for), after
//! checking that the frame the file claims is of
//! a plausible size and that a JPEG's own header agrees with the file's Rows and Columns, so that no header can
//! make the reader allocate what it merely claims. Every other syntax is refused by name.

use std::borrow::Cow;

use dicom_core::value::C;
use dicom_encoding::adapters::{PixelDataObject, RawPixelData};
use dicom_encoding::transfer_syntax::{Endianness, TransferSyntaxIndex};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Implicit VR little endian, the DICOM default.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Explicit VR little endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Deflated explicit VR little endian: the data set after the file meta group is raw-deflate compressed.
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// The most a deflated data set may inflate to (a multi-frame fMRI volume is a few MB).
pub const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// The largest decoded frame accepted (8192 x 4096 pixels of 16 bits): a mosaic of 1024 x 1024 is 2 MiB.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The most a file's compressed pixel data may decode to, all frames together.
pub const MAX_DECODED_BYTES: usize = 1 << 30;

/// How a file's data set and pixel data are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// Implicit VR little endian, native pixels.
    Implicit,
    /// Explicit VR little endian, native pixels.
    Explicit,
    /// Explicit VR little endian after inflating, native pixels.
    Deflated,
    /// Explicit VR little endian, pixel data compressed with the transfer syntax `uid`, decodable here.
    Compressed { uid: String, name: &'static str },
}

/// The encoding of transfer syntax `uid`, or why it cannot be read.
pub fn encoding(uid: &str) -> Result<Encoding, String> {
    let uid = uid.trim_end_matches(['\0', ' ']);
    match uid {
        IMPLICIT_VR_LITTLE_ENDIAN => return Ok(Encoding::Implicit),
        EXPLICIT_VR_LITTLE_ENDIAN => return Ok(Encoding::Explicit),
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => return Ok(Encoding::Deflated),
        "" => return Err("no transfer syntax (0002,0010) in the file meta group".into()),
        _ => {}
    }
    let Some(syntax) = TransferSyntaxRegistry.get(uid) else {
        return Err(format!(
            "transfer syntax {uid} is not one this reader knows: export the series uncompressed (implicit or \
             explicit VR little endian)"
        ));
    };
    if syntax.endianness() == Endianness::Big {
        return Err(format!(
            "big-endian transfer syntax ({uid}) is not supported"
        ));
    }
    if syntax.is_encapsulated_pixel_data() && syntax.pixel_data_reader().is_some() {
        return Ok(Encoding::Compressed {
            uid: uid.to_string(),
            name: syntax.name(),
        });
    }
    Err(format!(
        "transfer syntax {uid} ({}) cannot be decoded here (JPEG baseline, extended and lossless, RLE Lossless and \
         deflate can): export the series uncompressed or in one of those",
        syntax.name()
    ))
}

/// The transfer syntaxes this reader decodes, native ones first (for the DICOM network's presentation contexts).
pub fn readable_transfer_syntaxes() -> Vec<&'static str> {
    let compressed = [
        "1.2.840.10008.1.2.4.70", // JPEG Lossless, first-order prediction
        "1.2.840.10008.1.2.4.57", // JPEG Lossless
        "1.2.840.10008.1.2.5",    // RLE Lossless
        "1.2.840.10008.1.2.4.50", // JPEG Baseline
        "1.2.840.10008.1.2.4.51", // JPEG Extended
    ];
    [
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ]
    .into_iter()
    .chain(
        compressed
            .into_iter()
            .filter(|uid| matches!(encoding(uid), Ok(Encoding::Compressed { .. }))),
    )
    .collect()
}

/// Compressed pixel data as the file holds it: the fragments (the basic offset table left out) and that table.
#[derive(Debug, Clone, Default)]
pub struct Fragments {
    pub uid: String,
    pub name: &'static str,
    pub offset_table: Vec<u32>,
    pub fragments: Vec<Vec<u8>>,
}

/// What the dicom-rs decoders are shown of a file: its image attributes and fragments.
struct Source<'a> {
    data: &'a Fragments,
    rows: u16,
    columns: u16,
    bits_allocated: u16,
    bits_stored: u16,
    frames: u32,
    photometric: Option<String>,
}

impl PixelDataObject for Source<'_> {
    fn transfer_syntax_uid(&self) -> &str {
        &self.data.uid
    }
    fn rows(&self) -> Option<u16> {
        Some(self.rows)
    }
    fn cols(&self) -> Option<u16> {
        Some(self.columns)
    }
    fn samples_per_pixel(&self) -> Option<u16> {
        Some(1)
    }
    fn bits_allocated(&self) -> Option<u16> {
        Some(self.bits_allocated)
    }
    fn bits_stored(&self) -> Option<u16> {
        Some(self.bits_stored)
    }
    fn photometric_interpretation(&self) -> Option<&str> {
        self.photometric.as_deref()
    }
    fn number_of_frames(&self) -> Option<u32> {
        Some(self.frames)
    }
    fn number_of_fragments(&self) -> Option<u32> {
        u32::try_from(self.data.fragments.len()).ok()
    }
    fn fragment(&self, fragment: usize) -> Option<Cow<'_, [u8]>> {
        self.data
            .fragments
            .get(fragment)
            .map(|f| Cow::Borrowed(f.as_slice()))
    }
    fn offset_table(&self) -> Option<Cow<'_, [u32]>> {
        Some(Cow::Borrowed(&self.data.offset_table))
    }
    fn raw_pixel_data(&self) -> Option<RawPixelData> {
        Some(RawPixelData {
            fragments: self.data.fragments.iter().cloned().collect::<C<Vec<u8>>>(),
            offset_table: self.data.offset_table.iter().copied().collect::<C<u32>>(),
        })
    }
}

/// The image a compressed frame should decode to.
pub(super) struct FrameShape {
    pub rows: usize,
    pub columns: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub frames: usize,
}

/// Decodes every frame of `data` into little-endian native pixels of `shape`, one frame after another (as native
/// pixel data lies in a file); an error says why not.
pub(super) fn decode_frames(
    data: &Fragments,
    shape: &FrameShape,
    photometric: Option<String>,
) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{} pixel data: {what}", data.name);
    let frame_bytes = shape.rows * shape.columns * (shape.bits_allocated as usize / 8);
    if frame_bytes > MAX_FRAME_BYTES {
        return Err(fail(format!(
            "a frame of {} x {} x {} bits is over the {} MiB a frame may hold",
            shape.rows,
            shape.columns,
            shape.bits_allocated,
            MAX_FRAME_BYTES >> 20
        )));
    }
    if frame_bytes.saturating_mul(shape.frames) > MAX_DECODED_BYTES {
        return Err(fail(format!(
            "{} frames of {frame_bytes} bytes are over the {} MiB a file may decode to",
            shape.frames,
            MAX_DECODED_BYTES >> 20
        )));
    }
    if data.fragments.is_empty() {
        return Err(fail("no fragments".into()));
    }
    if data.name.contains("JPEG") {
        for fragment in &data.fragments {
            if let Some((height, width)) = jpeg_frame_size(fragment) {
                if (height as usize, width as usize) != (shape.rows, shape.columns) {
                    return Err(fail(format!(
                        "the JPEG stream is {height} x {width}, the file says {} x {}",
                        shape.rows, shape.columns
                    )));
                }
            }
        }
    }
    let reader = TransferSyntaxRegistry
        .get(&data.uid)
        .and_then(|s| s.pixel_data_reader())
        .ok_or_else(|| fail("no decoder".into()))?;
    let source = Source {
        data,
        rows: shape.rows as u16,
        columns: shape.columns as u16,
        bits_allocated: shape.bits_allocated,
        bits_stored: shape.bits_stored,
        frames: shape.frames as u32,
        photometric,
    };
    let mut pixels = Vec::with_capacity(frame_bytes);
    for frame in 0..shape.frames {
        if data.uid == RLE_LOSSLESS {
            let segments = shape.bits_allocated as usize / 8;
            let frame_fragment = data
                .fragments
                .get(frame)
                .map(Vec::as_slice)
                .unwrap_or_default();
            rle_segments_fit(frame_fragment, segments, shape.rows * shape.columns)
                .map_err(|why| fail(format!("frame {frame}: {why}")))?;
        }
        let before = pixels.len();
        // a decoder that panics on hostile data is an error for this file, not the end of the session
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reader.decode_frame(&source, frame as u32, &mut pixels)
        }));
        match decoded {
            Ok(Ok(())) if pixels.len() - before == frame_bytes => {}
            Ok(Ok(())) => {
                return Err(fail(format!(
                    "frame {frame} decoded to {} bytes, {} x {} x {} bits need {frame_bytes}",
                    pixels.len() - before,
                    shape.rows,
                    shape.columns,
                    shape.bits_allocated
                )))
            }
            Ok(Err(e)) => return Err(fail(format!("frame {frame} could not be decoded: {e}"))),
            Err(_) => return Err(fail(format!("the decoder failed on frame {frame}"))),
        }
    }
    Ok(pixels)
}

/// RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks an RLE Lossless frame before the decoder sees it (which trusts it): its 64-byte header names `segments`
/// segments (one per byte of a sample), each within the fragment, each unpacking to at least `bytes_per_segment`
/// bytes.
fn rle_segments_fit(
    fragment: &[u8],
    segments: usize,
    bytes_per_segment: usize,
) -> Result<(), String> {
    let word = |i: usize| {
        fragment
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)
        .filter(|_| fragment.len() >= 64)
        .ok_or("no RLE header")?;
    if count != segments {
        return Err(format!(
            "the RLE header names {count} segments, {segments} expected"
        ));
    }
    for i in 0..count {
        let start = word(1 + i).unwrap_or(usize::MAX);
        let end = if i + 1 < count {
            word(2 + i).unwrap_or(0)
        } else {
            fragment.len()
        };
        let segment = fragment
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| format!("RLE segment {i} lies outside its fragment"))?;
        // PackBits: a header byte n < 128 copies n + 1 bytes, n > 128 repeats the next byte 257 - n times
        let (mut at, mut unpacked) = (0, 0usize);
        while at < segment.len() && unpacked < bytes_per_segment {
            let n = segment[at] as usize;
            // a literal run cut off by the segment's end copies only what is there
            let available = segment.len() - at - 1;
            (at, unpacked) = match n {
                0..=127 => (at + 2 + n, unpacked + (n + 1).min(available)),
                128 => (at + 1, unpacked),
                _ if available == 0 => (at + 2, unpacked),
                _ => (at + 2, unpacked + 257 - n),
            };
        }
        if unpacked < bytes_per_segment {
            return Err(format!(
                "RLE segment {i} unpacks to {unpacked} bytes, the image needs {bytes_per_segment}"
            ));
        }
    }
    Ok(())
}

/// The height and width in a JPEG stream's start-of-frame header, if it has one.
fn jpeg_frame_size(stream: &[u8]) -> Option<(u16, u16)> {
    let mut at = 2; // after SOI
    while at + 4 <= stream.len() {
        if stream[at] != 0xFF {
            return None;
        }
        let marker = stream[at + 1];
        let length = u16::from_be_bytes([stream[at + 2], stream[at + 3]]) as usize;
        let start_of_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if start_of_frame {
            let header = stream.get(at + 4..at + 9)?;
            return Some((
                u16::from_be_bytes([header[1], header[2]]),
                u16::from_be_bytes([header[3], header[4]]),
            ));
        }
        at += 2 + length;
    }
    None
}

/// Inflates a deflated data set, at most [`MAX_INFLATED_BYTES`]; an error says why not.
pub(super) fn inflate(deflated: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| format!("the deflated data set cannot be inflated: {e}"))?;
    if inflated.len() as u64 > MAX_INFLATED_BYTES {
        return Err(format!(
            "the deflated data set inflates to over {} MiB",
            MAX_INFLATED_BYTES >> 20
        ));
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntaxes_are_read_or_refused_by_name() {
        assert_eq!(encoding("1.2.840.10008.1.2\0"), Ok(Encoding::Implicit));
        assert_eq!(encoding("1.2.840.10008.1.2.1.99"), Ok(Encoding::Deflated));
        assert!(matches!(
            encoding("1.2.840.10008.1.2.4.70"),
            Ok(Encoding::Compressed { .. })
        ));
        assert!(matches!(
            encoding("1.2.840.10008.1.2.5"),
            Ok(Encoding::Compressed { .. })
        ));
        let big = encoding("1.2.840.10008.1.2.2").unwrap_err();
        assert!(big.contains("big-endian"), "{big}");
        let j2k = encoding("1.2.840.10008.1.2.4.90").unwrap_err();
        assert!(
            j2k.contains("1.2.840.10008.1.2.4.90") && j2k.contains("JPEG 2000"),
            "{j2k}"
        );
        let unknown = encoding("1.2.3.4").unwrap_err();
        assert!(unknown.contains("1.2.3.4"), "{unknown}");
        assert!(readable_transfer_syntaxes().contains(&"1.2.840.10008.1.2.4.70"));
    }

    #[test]
    fn an_rle_frame_is_checked_before_it_is_decoded() {
        // one segment at offset 64: a run of 200 copies of 7, then 56 literal bytes
        let mut frame = vec![0u8; 64];
        frame[..4].copy_from_slice(&1u32.to_le_bytes());
        frame[4..8].copy_from_slice(&64u32.to_le_bytes());
        frame.extend_from_slice(&[(257 - 128) as u8, 7, 127]);
        frame.extend_from_slice(&[1; 128]);
        assert_eq!(rle_segments_fit(&frame, 1, 256), Ok(()));
        let short = rle_segments_fit(&frame, 1, 257).unwrap_err();
        assert!(short.contains("unpacks to 256 bytes"), "{short}");
        assert!(rle_segments_fit(&frame, 2, 256)
            .unwrap_err()
            .contains("names 1 segments"));
        let mut huge = frame.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(rle_segments_fit(&huge, 2, 256).is_err());
        let mut outside = frame.clone();
        outside[4..8].copy_from_slice(&9_999u32.to_le_bytes());
        assert!(rle_segments_fit(&outside, 1, 256)
            .unwrap_err()
            .contains("outside"));
        assert!(rle_segments_fit(&frame[..40], 1, 256).is_err());
    }

    #[test]
    fn a_jpeg_header_s_size_is_found() {
        // SOI, APP0 (length 4), SOF3 with height 0x0102 and width 0x0304
        let stream = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC3, 0x00, 0x0B, 0x10, 0x01,
            0x02, 0x03, 0x04, 0x01,
        ];
        assert_eq!(jpeg_frame_size(&stream), Some((0x0102, 0x0304)));
        assert_eq!(jpeg_frame_size(&stream[..10]), None);
    }
}
