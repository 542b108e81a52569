//! A PAR/REC pair read into volumes: the PAR and REC paths that belong together, and the header's complete
//! dynamics read from the REC file as float64 displayed values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::error::ParRecError;
use super::geometry::*;
use super::header::*;
use crate::volume::Affine;

/// Whether `path` names a PAR header (extension `.par` in any case).
pub fn is_par_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("par"))
}

/// Whether `path` names a REC pixel file (extension `.rec` in any case): read through its PAR file.
pub fn is_rec_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("rec"))
}

/// The REC file of a PAR header: the same name with `.REC` (or `.rec`), preferring the PAR's own case.
pub fn rec_path_for(par_path: &Path) -> Result<PathBuf, ParRecError> {
    let upper = par_path
        .extension()
        .is_some_and(|e| e.to_string_lossy().chars().all(|c| c.is_ascii_uppercase()));
    let (first, second) = if upper {
        ("REC", "rec")
    } else {
        ("rec", "REC")
    };
    let candidates = [
        par_path.with_extension(first),
        par_path.with_extension(second),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ParRecError::NoRec {
            path: par_path.to_path_buf(),
            expected: candidates[0]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
}

/// One dynamic of a PAR/REC run.
#[derive(Debug, Clone)]
pub struct ParRecVolume {
    /// The PAR's dynamic scan number (1-based).
    pub dynamic: usize,
    /// Displayed values, x fastest: `offset = i + nx * (j + ny * k)`, slices in slice-number order.
    pub values: Vec<f64>,
}

/// A PAR/REC pair read whole.
#[derive(Debug, Clone)]
pub struct ParRecRun {
    pub par_path: PathBuf,
    /// `V4`, `V4.1`, `V4.2` (from the "image export tool" line), empty if the file does not say.
    pub version: String,
    pub protocol_name: String,
    /// "Acquisition nr": the scan's number in the examination; in the real-time export, the volume's.
    pub acquisition_number: i64,
    /// "Repetition time [ms]" in seconds (the first value where several are given).
    pub tr_secs: Option<f64>,
    /// `[x, y, slices]`.
    pub dims: [usize; 3],
    /// Voxel -> millimetre, RAS+.
    pub mm_from_voxel: Affine,
    /// The complete dynamics, ascending.
    pub volumes: Vec<ParRecVolume>,
    /// What was left out: other image types, echoes, phases; incomplete dynamics.
    pub notes: Vec<String>,
}

impl ParRecRun {
    /// Reads a PAR header and its REC file.
    pub fn read(par_path: &Path) -> Result<ParRecRun, ParRecError> {
        let bytes = std::fs::read(par_path).map_err(|source| ParRecError::Io {
            path: par_path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let header = parse_header(par_path, &text)?;
        let invalid = |reason: String| ParRecError::Invalid {
            path: par_path.to_path_buf(),
            reason,
        };
        let reader = ColumnReader {
            path: par_path,
            columns: &header.columns,
        };
        let (lines, mut notes) = keep_one_kind(reader.image_lines(&header.images)?);

        // Properties every kept image must share.
        let first = &lines[0];
        for line in &lines {
            let differs = [
                (line.recon != first.recon, "recon resolution"),
                (line.bits != first.bits, "image pixel size"),
                (line.spacing_mm != first.spacing_mm, "pixel spacing"),
                (line.thickness_mm != first.thickness_mm, "slice thickness"),
                (line.gap_mm != first.gap_mm, "slice gap"),
                (line.orientation != first.orientation, "slice orientation"),
            ];
            if let Some((_, what)) = differs.iter().find(|(d, _)| *d) {
                return Err(ParRecError::Header {
                    path: par_path.to_path_buf(),
                    line: line.line,
                    reason: format!(
                        "{what} differs from the first image's (line {}): not supported",
                        first.line
                    ),
                });
            }
        }
        let bytes_per_pixel = match first.bits {
            8 => 1,
            16 => 2,
            bits => {
                return Err(invalid(format!(
                    "{bits}-bit images: only 8 and 16 bits are read"
                )))
            }
        };
        let [nx, ny] = first.recon;
        if nx == 0 || ny == 0 {
            return Err(invalid(format!("recon resolution {nx} x {ny}")));
        }
        let slice_numbers: BTreeSet<i64> = lines.iter().map(|l| l.slice).collect();
        let max_slices = header
            .general
            .numbers(par_path, "max. number of slices/locations")?
            .and_then(|n| n.first().copied())
            .map(|n| n as i64);
        let n_slices = match max_slices {
            Some(n) if n >= 1 => n,
            _ => slice_numbers.len() as i64,
        };
        if let Some(&outside) = slice_numbers.iter().find(|&&s| s < 1 || s > n_slices) {
            return Err(invalid(format!(
                "slice number {outside} outside 1 to {n_slices}"
            )));
        }

        // Dynamic -> slice -> image line; a repeated (dynamic, slice) is an error.
        let mut by_dynamic: BTreeMap<i64, BTreeMap<i64, &ImageLine>> = BTreeMap::new();
        for line in &lines {
            if by_dynamic
                .entry(line.dynamic)
                .or_default()
                .insert(line.slice, line)
                .is_some()
            {
                return Err(ParRecError::Header {
                    path: par_path.to_path_buf(),
                    line: line.line,
                    reason: format!(
                        "a second image for dynamic {} slice {}",
                        line.dynamic, line.slice
                    ),
                });
            }
        }
        let incomplete: Vec<i64> = by_dynamic
            .iter()
            .filter(|(_, s)| s.len() as i64 != n_slices)
            .map(|(&d, _)| d)
            .collect();
        if !incomplete.is_empty() {
            notes.push(format!(
                "dynamics {incomplete:?} lack slices (a recording stopped early?): left out"
            ));
            by_dynamic.retain(|d, _| !incomplete.contains(d));
        }
        if by_dynamic.is_empty() {
            return Err(invalid(format!("no dynamic has all {n_slices} slices")));
        }
        // A whole-run file holding fewer dynamics than its header announces was cut short (the real-time
        // export announces the run's count in each one-dynamic pair, so that case says nothing).
        let announced = header
            .general
            .numbers(par_path, "max. number of dynamics")?
            .and_then(|n| n.first().copied())
            .unwrap_or(0.0) as usize;
        if by_dynamic.len() > 1 && announced > by_dynamic.len() {
            notes.push(format!("the header announces {announced} dynamics, the file holds {} complete ones (a recording stopped early?)", by_dynamic.len()));
        }
        if let Some(&d) = by_dynamic.keys().find(|&&d| d < 1) {
            return Err(invalid(format!("dynamic scan number {d}: they start at 1")));
        }

        let rec_path = rec_path_for(par_path)?;
        let rec = std::fs::read(&rec_path).map_err(|source| ParRecError::Io {
            path: rec_path.clone(),
            source,
        })?;
        // checked: a header's recon resolution and REC indices may claim sizes beyond any memory
        let too_large = || {
            invalid(format!(
                "recon resolution {nx} x {ny} and the REC indices claim more bytes than can be addressed"
            ))
        };
        let image_bytes = nx
            .checked_mul(ny)
            .and_then(|n| n.checked_mul(bytes_per_pixel))
            .ok_or_else(too_large)?;
        let needed = by_dynamic
            .values()
            .flat_map(|s| s.values())
            .map(|l| {
                l.rec_index
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(image_bytes))
            })
            .try_fold(0usize, |most, n| n.map(|n| most.max(n)))
            .ok_or_else(too_large)?;
        if rec.len() < needed {
            return Err(ParRecError::RecTooShort {
                path: rec_path,
                size: rec.len() as u64,
                needed: needed as u64,
            });
        }

        let n_slices = n_slices as usize;
        let volumes = by_dynamic
            .iter()
            .map(|(&dynamic, slices)| {
                let mut values = Vec::with_capacity(nx * ny * n_slices);
                for line in slices.values() {
                    let image =
                        &rec[line.rec_index * image_bytes..(line.rec_index + 1) * image_bytes];
                    let (slope, intercept) = (line.rescale_slope, line.rescale_intercept);
                    if bytes_per_pixel == 1 {
                        values.extend(image.iter().map(|&pv| f64::from(pv) * slope + intercept));
                    } else {
                        values.extend(image.chunks_exact(2).map(|b| {
                            f64::from(u16::from_le_bytes([b[0], b[1]])) * slope + intercept
                        }));
                    }
                }
                ParRecVolume {
                    dynamic: dynamic as usize,
                    values,
                }
            })
            .collect();

        let dims = [nx, ny, n_slices];
        let voxel_mm = [
            first.spacing_mm[0],
            first.spacing_mm[1],
            first.thickness_mm + first.gap_mm,
        ];
        let angulation = header.general.triple(par_path, "angulation midslice")?;
        let off_centre = header.general.triple(par_path, "off centre midslice")?;
        let mm_from_voxel =
            philips_affine(dims, voxel_mm, first.orientation, angulation, off_centre).ok_or_else(
                || {
                    invalid(format!(
                        "slice orientation {} (known: 1 transverse, 2 sagittal, 3 coronal)",
                        first.orientation
                    ))
                },
            )?;
        let tr_secs = header
            .general
            .numbers(par_path, "repetition time")?
            .and_then(|n| n.first().copied())
            .filter(|&ms| ms > 0.0)
            .map(|ms| ms / 1000.0);
        let acquisition_number = match header.general.numbers(par_path, "acquisition nr")? {
            Some(n) if n.len() == 1 && n[0].fract() == 0.0 => n[0] as i64,
            Some(_) => return Err(invalid("\"Acquisition nr\" is not one whole number".into())),
            None => {
                return Err(invalid(
                    "no \"Acquisition nr\" line in the general information".into(),
                ))
            }
        };
        let protocol_name = header
            .general
            .find("protocol name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(ParRecRun {
            par_path: par_path.to_path_buf(),
            version: header.version,
            protocol_name,
            acquisition_number,
            tr_secs,
            dims,
            mm_from_voxel,
            volumes,
            notes,
        })
    }
}
