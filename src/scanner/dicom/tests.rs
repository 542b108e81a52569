//! The DICOM readers on files written here byte by byte: mosaics, implicit VR with nested sequences, rescaled and
//! signed pixels, and damaged or unsupported files.

use std::path::Path;

use super::parse::*;
use super::pixels::*;
use super::siemens::*;
use super::DicomError;
use crate::volume::{Dtype, ExportedVolume};

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
    let big_endian = mosaic(&file_bytes("1.2.840.10008.1.2.2", true, &[])).expect_err("big endian");
    assert!(
        big_endian.to_string().contains("big-endian"),
        "{big_endian}"
    );
    // JPEG 2000 has no pure-Rust decoder here: refused by name
    let j2k = mosaic(&file_bytes("1.2.840.10008.1.2.4.90", true, &[])).expect_err("jpeg 2000");
    assert!(
        matches!(j2k, DicomError::Unsupported { .. })
            && j2k.to_string().contains("1.2.840.10008.1.2.4.90")
            && j2k.to_string().contains("export the series uncompressed"),
        "{j2k}"
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

#[test]
fn sequences_are_kept_as_items_and_hostile_nesting_is_refused() {
    // item -> (0008,0100) and a nested sequence holding one item -> (0008,0104)
    let mut inner_item = Vec::new();
    write_element(
        &mut inner_item,
        true,
        tag(0x0008, 0x0104),
        b"LO",
        &ds_text("INNER"),
    );
    let mut inner = Vec::new();
    inner.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    inner.extend_from_slice(&(inner_item.len() as u32).to_le_bytes()); // an item of defined length
    inner.extend_from_slice(&inner_item);
    inner.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let mut item = Vec::new();
    write_element(
        &mut item,
        true,
        tag(0x0008, 0x0100),
        b"SH",
        &ds_text("CODE"),
    );
    write_element(&mut item, true, tag(0x0040, 0xA730), b"SQ", &inner);
    let mut outer = vec![0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF];
    outer.extend_from_slice(&item);
    outer.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    outer.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let bytes = file_bytes(
        "1.2.840.10008.1.2.1",
        true,
        &[(tag(0x0040, 0x0260), b"SQ", outer)],
    );
    let ds = DataSet::parse(Path::new("nested.dcm"), &bytes).expect("nested");
    let item = ds.item(tag(0x0040, 0x0260)).expect("the outer item");
    assert_eq!(item.text(tag(0x0008, 0x0100)).as_deref(), Some("CODE"));
    let inner = item.item(tag(0x0040, 0xA730)).expect("the inner item");
    assert_eq!(inner.text(tag(0x0008, 0x0104)).as_deref(), Some("INNER"));

    // 10,000 sequences each opening an item inside the last: refused at the depth limit, not a stack overflow
    let mut deep = Vec::new();
    for _ in 0..10_000 {
        write_element(&mut deep, true, tag(0x0040, 0x0260), b"SQ", &[]);
        deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    let mut bytes = file_bytes("1.2.840.10008.1.2.1", true, &[]);
    bytes.extend_from_slice(&deep);
    let err = DataSet::parse(Path::new("deep.dcm"), &bytes).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
}
