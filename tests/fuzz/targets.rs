//! The fuzz targets: one function per parser that takes hostile bytes from outside (the scanner's wire
//! header, NIfTI, DICOM, PAR/REC, the configuration file). Each must return (an error is fine) and never panic,
//! hang or allocate what the input merely claims. Two drivers share them: `tests/fuzz.rs` (stable Rust, in the
//! suite: mutations of the real seed files for a bounded time) and the cargo-fuzz crate beside this file
//! (`scripts/fuzz.sh`: libFuzzer, coverage-guided, for as long as one likes; it needs nightly Rust).

use std::path::{Path, PathBuf};

use hyper_rt::config::Config;
use hyper_rt::ingest::protocol::{self, Limits, Message};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::scanner::dicom::{self, DataSet};
use hyper_rt::scanner::parrec::ParRecRun;
use hyper_rt::volume::c_order_to_x_fastest;

/// The receiver's default limits (config/default.toml).
const LIMITS: Limits = Limits {
    max_volume_bytes: 256 << 20,
    max_dim: 4096,
    max_volume_index: 9999,
};

/// A wire message: the first two bytes are the header frame's length (little endian), then the header
/// frame, then the data frame. A message of one frame (a handshake) when the length covers everything.
pub fn protocol_message(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let frames = if split == rest.len() {
        vec![rest.to_vec()]
    } else {
        vec![rest[..split].to_vec(), rest[split..].to_vec()]
    };
    if let Message::Volume { header, data } = protocol::classify(&frames) {
        if let Ok(header) = protocol::parse_header(header, LIMITS) {
            if protocol::check_buffer(&header, data).is_ok() {
                let x_fastest = c_order_to_x_fastest(data, header.dims, header.dtype.itemsize());
                assert_eq!(x_fastest.len(), data.len());
            }
        }
    }
}

/// A `.nii` or `.nii.gz` file's bytes.
pub fn nifti(data: &[u8]) {
    if let Ok(image) = NiftiImage::from_bytes(Path::new("fuzz.nii"), data.to_vec()) {
        for t in 0..image.volumes.min(2) {
            assert_eq!(image.volume_values(t).len(), image.voxels_per_volume());
        }
    }
}

/// A DICOM Part-10 file's bytes, read as the export watcher reads one: an Enhanced MR Image (Siemens XA), a
/// Siemens mosaic, else one slice.
pub fn dicom(data: &[u8]) {
    let path = Path::new("fuzz.dcm");
    if !dicom::looks_like_dicom(data) {
        return;
    }
    if let Ok(ds) = DataSet::parse(path, data) {
        if dicom::is_enhanced_mr(&ds) {
            let _ = dicom::enhanced_volumes(&ds);
        } else if dicom::is_mosaic(&ds) {
            let _ = dicom::mosaic_from_data_set(&ds);
        } else if let Ok(slice) = dicom::slice_from_data_set(&ds) {
            let _ = dicom::stack_slices(vec![slice]);
        }
    }
}

/// A PAR/REC pair: the first four bytes are the `.PAR` text's length (little endian), then the text, then the
/// `.REC` bytes. Written to a scratch folder, as the reader takes paths.
pub fn parrec(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let split = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let dir = scratch_dir();
    let par = dir.join("fuzz.PAR");
    if std::fs::write(&par, &rest[..split]).is_ok()
        && std::fs::write(dir.join("fuzz.REC"), &rest[split..]).is_ok()
    {
        let _ = ParRecRun::read(&par);
    }
}

/// A configuration file's text.
pub fn config(data: &[u8]) {
    let origin = Path::new("fuzz.toml");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, origin) {
            let _ = config.validate(origin);
        }
    }
}

/// A folder of this process and thread (the stable driver runs targets on several threads).
fn scratch_dir() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let name: String = thread.chars().filter(char::is_ascii_digit).collect();
    let dir = std::env::temp_dir().join(format!("hyper-rt-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Joins a header frame and a data frame as [`protocol_message`] reads them (for seeds; the libFuzzer build
/// reads its corpus from files instead).
pub fn wire_input(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len().min(u16::MAX as usize) as u16)
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Joins PAR text and REC bytes as [`parrec`] reads them (for seeds).
pub fn parrec_input(par: &[u8], rec: &[u8]) -> Vec<u8> {
    let mut out = (par.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(par);
    out.extend_from_slice(rec);
    out
}
