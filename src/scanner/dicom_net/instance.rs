//! A received SOP instance as a DICOM file: the data set of a C-STORE comes in its presentation context's
//! transfer syntax without a file meta group; it is given one (PS3.10), so that the same readers as for an export
//! folder read it, and so that a kept copy (`--dicom-store`) opens in any DICOM tool (dcm2niix, dcmtk, pydicom).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::uids;

/// The SOP classes stored here, with their names: fMRI volumes come as one of these.
pub const READABLE_SOP_CLASSES: [(&str, &str); 2] = [
    (uids::MR_IMAGE_STORAGE, "MR Image Storage"),
    (uids::ENHANCED_MR_IMAGE_STORAGE, "Enhanced MR Image Storage"),
];

/// This implementation's class UID in the meta group (a UUID-derived UID, PS3.5 B.2).
const IMPLEMENTATION_CLASS_UID: &str = "2.25.183061915402786472151330950412407785011";
const IMPLEMENTATION_VERSION_NAME: &str = "HYPER-RT";

/// The name of a SOP class read here, `None` for any other.
pub fn readable_sop_class(uid: &str) -> Option<&'static str> {
    READABLE_SOP_CLASSES
        .iter()
        .find(|(u, _)| *u == uid)
        .map(|(_, name)| *name)
}

/// Who sent an instance and what it is.
#[derive(Debug, Clone)]
pub struct InstanceOrigin {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// The calling AE title.
    pub calling_ae: String,
}

/// The Part-10 file of a received data set: preamble, `DICM`, the file meta group, the data set.
pub fn part10_file(origin: &InstanceOrigin, data_set: &[u8]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(256);
    put_element(&mut meta, 0x0001, b"OB", &[0, 1]);
    put_element(&mut meta, 0x0002, b"UI", origin.sop_class_uid.as_bytes());
    put_element(&mut meta, 0x0003, b"UI", origin.sop_instance_uid.as_bytes());
    put_element(
        &mut meta,
        0x0010,
        b"UI",
        origin.transfer_syntax_uid.as_bytes(),
    );
    put_element(
        &mut meta,
        0x0012,
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
    );
    put_element(
        &mut meta,
        0x0013,
        b"SH",
        IMPLEMENTATION_VERSION_NAME.as_bytes(),
    );
    put_element(&mut meta, 0x0016, b"AE", origin.calling_ae.as_bytes());
    let mut file = Vec::with_capacity(128 + 4 + 12 + meta.len() + data_set.len());
    file.extend_from_slice(&[0u8; 128]);
    file.extend_from_slice(b"DICM");
    put_element(&mut file, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
    file.extend_from_slice(&meta);
    file.extend_from_slice(data_set);
    file
}

/// One explicit-VR little-endian element of group 0002, its value padded to an even length (UIDs with NUL,
/// text with a space).
fn put_element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2;
    let length = value.len() + pad;
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(length as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(length as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if pad == 1 {
        out.push(if vr == b"UI" { 0 } else { b' ' });
    }
}

/// Writes a received file into `dir` as `<SOPInstanceUID>.dcm` (written under a temporary name, then renamed,
/// so a folder watcher never reads half a file). Returns its path.
pub fn keep(dir: &Path, sop_instance_uid: &str, file: &[u8]) -> std::io::Result<PathBuf> {
    let name: String = sop_instance_uid
        .chars()
        .map(|c| {
            if c.is_ascii_digit() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() {
        "no-instance-uid".to_string()
    } else {
        name
    };
    let path = dir.join(format!("{name}.dcm"));
    let partial = dir.join(format!(".{name}.dcm.partial"));
    std::fs::write(&partial, file)
        .and_then(|()| std::fs::rename(&partial, &path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })?;
    Ok(path)
}
