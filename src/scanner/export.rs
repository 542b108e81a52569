//! One scanner file as volumes: whatever the format (a Siemens mosaic, one DICOM slice, a PAR/REC pair), the
//! volumes it holds with their series, index, geometry and voxel type, or an error naming the file and what is wrong.

use std::path::{Path, PathBuf};

use crate::scanner::dicom::{
    enhanced_volumes, is_enhanced_mr, is_mosaic, looks_like_dicom, mosaic_from_data_set,
    slice_from_data_set, stack_slices, DicomError, DicomSlice,
};
use crate::scanner::parrec::{is_par_path, is_rec_path, ParRecError, ParRecRun};
use crate::volume::{Dtype, ExportedVolume};

/// Philips numbering, for the volume type the readers share.
impl ExportedVolume {
    fn from_parrec(run: ParRecRun) -> Result<Vec<ExportedVolume>, ExportError> {
        let realtime_pair = run.volumes.len() == 1;
        let folder_number = || {
            run.par_path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i64>().ok())
        };
        let series_number = if realtime_pair {
            folder_number().unwrap_or(0)
        } else {
            run.acquisition_number
        };
        let geometry = format!(
            "Philips PAR {} angulation and off-centre",
            if run.version.is_empty() {
                "(version not given)"
            } else {
                &run.version
            }
        );
        run.volumes
            .into_iter()
            .map(|v| {
                let index = if realtime_pair {
                    run.acquisition_number - 1
                } else {
                    v.dynamic as i64 - 1
                };
                let index = usize::try_from(index).map_err(|_| {
                    ExportError::ParRec(ParRecError::Invalid {
                        path: run.par_path.clone(),
                        reason: format!(
                            "\"Acquisition nr\" {}: it counts from 1",
                            run.acquisition_number
                        ),
                    })
                })?;
                Ok(ExportedVolume {
                    path: run.par_path.clone(),
                    series_number,
                    series_description: run.protocol_name.clone(),
                    index,
                    dims: run.dims,
                    mm_from_voxel: run.mm_from_voxel,
                    tr_secs: run.tr_secs,
                    dtype: Dtype::Float64,
                    voxel_bytes: v.values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    geometry: geometry.clone(),
                    slice_timing_secs: None,
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: neither DICOM nor a Philips PAR header", path.display())]
    NotScannerFile { path: PathBuf },
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(transparent)]
    ParRec(#[from] ParRecError),
    /// A file that read before and no longer does as it did (the scanner or someone else changed it).
    #[error("{}: {what}", path.display())]
    Changed { path: PathBuf, what: String },
}

/// What one file of an export holds.
#[derive(Debug, Default)]
pub struct ExportFile {
    /// Its volumes: one for a mosaic file, one per temporal position of an Enhanced MR Image (one for a Siemens
    /// XA file), one per complete dynamic for a PAR/REC pair, none for a REC file
    /// (read through its PAR header) or a single-slice file.
    pub volumes: Vec<ExportedVolume>,
    /// A single-slice file's slice, to be stacked with the rest of its volume.
    pub slice: Option<DicomSlice>,
    /// What the reader left out of the file (other echoes, incomplete dynamics), to be said once.
    pub notes: Vec<String>,
}

/// Reads one exported file: a PAR header by its extension, anything else that starts like DICOM Part 10.
pub fn read_export_file(path: &Path) -> Result<ExportFile, ExportError> {
    if is_rec_path(path) {
        return Ok(ExportFile::default());
    }
    if is_par_path(path) {
        let mut run = ParRecRun::read(path)?;
        let notes = std::mem::take(&mut run.notes)
            .into_iter()
            .map(|n| format!("{}: {n}", path.display()))
            .collect();
        return Ok(ExportFile {
            volumes: ExportedVolume::from_parrec(run)?,
            slice: None,
            notes,
        });
    }
    let bytes = std::fs::read(path).map_err(|source| DicomError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !looks_like_dicom(&bytes) {
        return Err(ExportError::NotScannerFile {
            path: path.to_path_buf(),
        });
    }
    read_dicom_bytes(path, &bytes)
}

/// Reads a DICOM Part-10 file already in memory (`path` names it in errors): an enhanced file's volumes, a
/// mosaic's volume, or a single slice.
pub fn read_dicom_bytes(path: &Path, bytes: &[u8]) -> Result<ExportFile, ExportError> {
    let ds = crate::scanner::dicom::DataSet::parse(path, bytes)?;
    if is_enhanced_mr(&ds) {
        return Ok(ExportFile {
            volumes: enhanced_volumes(&ds)?,
            ..ExportFile::default()
        });
    }
    if is_mosaic(&ds) {
        return Ok(ExportFile {
            volumes: vec![mosaic_from_data_set(&ds)?],
            ..ExportFile::default()
        });
    }
    Ok(ExportFile {
        slice: Some(slice_from_data_set(&ds)?),
        ..ExportFile::default()
    })
}

/// Reads the volume `index` made of `files`: one file (a mosaic, or a PAR/REC pair holding it), or the
/// single-slice files of one volume, stacked.
pub fn read_volume(files: &[PathBuf], index: usize) -> Result<ExportedVolume, ExportError> {
    VolumeReader::default().read(files, index)
}

/// Reads volumes one after another, keeping the volumes of the last single file read, so that a PAR/REC pair
/// holding a whole run is read once however many of its volumes are asked for.
#[derive(Default)]
pub struct VolumeReader {
    last_file: Option<(PathBuf, Vec<ExportedVolume>)>,
}

impl VolumeReader {
    /// As [`read_volume`].
    pub fn read(&mut self, files: &[PathBuf], index: usize) -> Result<ExportedVolume, ExportError> {
        if let [one] = files {
            if self.last_file.as_ref().is_none_or(|(path, _)| path != one) {
                self.last_file = None;
                let file = read_export_file(one)?;
                if let Some(slice) = file.slice {
                    return Ok(stack_slices(vec![slice])?);
                }
                self.last_file = Some((one.clone(), file.volumes));
            }
            let volumes = self
                .last_file
                .as_ref()
                .map_or(&[][..], |(_, v)| v.as_slice());
            return volumes
                .iter()
                .find(|v| v.index == index)
                .cloned()
                .ok_or_else(|| ExportError::Changed {
                    path: one.clone(),
                    what: format!("volume {index} is no longer in it"),
                });
        }
        let mut slices = Vec::with_capacity(files.len());
        for path in files {
            match read_export_file(path)?.slice {
                Some(slice) => slices.push(slice),
                None => {
                    return Err(ExportError::Changed {
                        path: path.clone(),
                        what: "no longer a single-slice image".into(),
                    })
                }
            }
        }
        Ok(stack_slices(slices)?)
    }
}

/// Whether `path` is something [`read_export_file`] or a folder scan reads: a folder, a PAR header, a REC
/// file, or a file that starts like DICOM.
pub fn is_scanner_export(path: &Path) -> std::io::Result<bool> {
    Ok(path.is_dir()
        || is_par_path(path)
        || is_rec_path(path)
        || crate::scanner::dicom::file_looks_like_dicom(path)?)
}
