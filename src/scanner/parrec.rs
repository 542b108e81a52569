//! Philips PAR/REC reading: a `.PAR` text header and its `.REC` pixel file become 3-D volumes with their
//! voxel -> millimetre affine.
//!
//! Philips scanners export images as a pair of files: the PAR header (general information, then one line
//! per 2-D image: slice, echo, dynamic, cardiac phase, image type, its place in the REC file, scaling,
//! geometry) and the REC file (the images one after another, 8- or 16-bit unsigned little endian, x
//! fastest). A whole fMRI run exported offline is one pair holding every dynamic; the real-time export
//! (XTC), which Pyneal Scanner reads, writes one pair per volume into the series folder.
//!
//! What this module reads, and how:
//! - PAR versions 4, 4.1 and 4.2: the columns of the image lines are taken from the file's own "IMAGE
//!   INFORMATION DEFINITION" block, so every version's layout is read the same way;
//! - one image type, echo, cardiac phase, label type and diffusion setting is kept (the first image's type,
//!   the lowest of the others) and what was left out is said; each dynamic is one volume, its slices in
//!   slice-number order; a dynamic missing slices (a recording stopped early) is left out and said;
//! - values are the console's "displayed values", `DV = PV * RS + RI` with each image's own rescale slope
//!   and intercept, as float64 (nibabel's default scaling);
//! - the affine follows the Philips geometry as nibabel reads it: voxel indices centred on the field of
//!   view, scaled by the pixel spacing and slice thickness plus gap, permuted from the slice orientation
//!   (transverse, sagittal, coronal) into Philips' PSL axes, rotated by the mid-slice angulation
//!   (rl, then ap, then fh, applied right to left as `Rz(rl) Rx(ap) Ry(fh)`), shifted by the mid-slice
//!   off-centre and turned from PSL into RAS+.
//!
//! Everything a file lacks or gets wrong is an error that names the file and, for a header line, its line
//! number.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::volume::Affine;

#[derive(Debug, thiserror::Error)]
pub enum ParRecError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Header {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: no REC file beside it ({expected} or its lower/upper-case twin)")]
    NoRec { path: PathBuf, expected: String },
    #[error("{path}: {size} bytes, but its PAR file places images up to byte {needed} (still being written, or truncated)")]
    RecTooShort {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
}

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

/// The general information (`.  key : value` lines), keys lower-cased with single spaces.
struct GeneralInfo {
    values: HashMap<String, (usize, String)>,
}

impl GeneralInfo {
    fn find(&self, key_start: &str) -> Option<&(usize, String)> {
        self.values
            .iter()
            .find(|(k, _)| k.starts_with(key_start))
            .map(|(_, v)| v)
    }

    fn numbers(&self, path: &Path, key_start: &str) -> Result<Option<Vec<f64>>, ParRecError> {
        let Some((line, text)) = self.find(key_start) else {
            return Ok(None);
        };
        let numbers: Result<Vec<f64>, _> = text.split_whitespace().map(str::parse::<f64>).collect();
        match numbers {
            Ok(n) if !n.is_empty() && n.iter().all(|v| v.is_finite()) => Ok(Some(n)),
            _ => Err(ParRecError::Header {
                path: path.to_path_buf(),
                line: *line,
                reason: format!("\"{key_start}\" is not a list of numbers: {text:?}"),
            }),
        }
    }

    fn triple(&self, path: &Path, key_start: &str) -> Result<[f64; 3], ParRecError> {
        match self.numbers(path, key_start)? {
            Some(n) if n.len() == 3 => Ok([n[0], n[1], n[2]]),
            Some(n) => Err(ParRecError::Invalid {
                path: path.to_path_buf(),
                reason: format!("\"{key_start}\" has {} values, not 3", n.len()),
            }),
            None => Err(ParRecError::Invalid {
                path: path.to_path_buf(),
                reason: format!("no \"{key_start}\" line in the general information"),
            }),
        }
    }
}

/// Column `name` of the image lines: where it starts and how many numbers it spans.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    start: usize,
    width: usize,
}

/// The header split into its parts.
struct ParHeader {
    version: String,
    general: GeneralInfo,
    columns: Vec<Column>,
    /// (line number, tokens) of each image line.
    images: Vec<(usize, Vec<String>)>,
}

fn parse_header(path: &Path, text: &str) -> Result<ParHeader, ParRecError> {
    let header_error = |line: usize, reason: String| ParRecError::Header {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut version = String::new();
    let mut general = HashMap::new();
    let mut columns: Vec<Column> = Vec::new();
    let mut images: Vec<(usize, Vec<String>)> = Vec::new();
    let mut in_definitions = false;
    for (n, raw) in text.lines().enumerate() {
        let line_number = n + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.to_ascii_lowercase().contains("image export tool") {
                version = comment
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_string();
            }
            if comment.starts_with("===") {
                in_definitions = comment.contains("IMAGE INFORMATION DEFINITION");
            } else if in_definitions {
                if let Some(column) =
                    definition_column(comment, columns.last().map_or(0, |c| c.start + c.width))
                {
                    columns.push(column);
                }
            }
            continue;
        }
        if let Some(entry) = line.strip_prefix('.') {
            let Some((key, value)) = entry.split_once(':') else {
                return Err(header_error(
                    line_number,
                    format!("general information line without ':': {line:?}"),
                ));
            };
            let key = key
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_lowercase();
            general.insert(key, (line_number, value.trim().to_string()));
            continue;
        }
        images.push((
            line_number,
            line.split_whitespace().map(str::to_string).collect(),
        ));
    }
    if columns.is_empty() {
        return Err(ParRecError::Invalid {
            path: path.to_path_buf(),
            reason: "no IMAGE INFORMATION DEFINITION block: not a PAR file of version 4 or later"
                .into(),
        });
    }
    let expected_tokens = columns.last().map_or(0, |c| c.start + c.width);
    for (line_number, tokens) in &images {
        if tokens.len() != expected_tokens {
            return Err(header_error(*line_number, format!("{} values on an image line, but the definition block describes {expected_tokens}", tokens.len())));
        }
    }
    if images.is_empty() {
        return Err(ParRecError::Invalid {
            path: path.to_path_buf(),
            reason: "no image lines".into(),
        });
    }
    Ok(ParHeader {
        version,
        general: GeneralInfo { values: general },
        columns,
        images,
    })
}

/// `name  (N*type)` from the definition block, starting at token `start`.
fn definition_column(comment: &str, start: usize) -> Option<Column> {
    let open = comment.rfind('(')?;
    let kind = comment[open + 1..].strip_suffix(')')?.trim();
    let (width, base) = match kind.split_once('*') {
        Some((count, base)) => (count.trim().parse::<usize>().ok()?, base.trim()),
        None => (1, kind),
    };
    if !matches!(base, "integer" | "float" | "string") || width == 0 {
        return None;
    }
    Some(Column {
        name: comment[..open].trim().to_ascii_lowercase(),
        start,
        width,
    })
}

/// The values of one image line the reader uses.
#[derive(Debug, Clone, PartialEq)]
struct ImageLine {
    line: usize,
    slice: i64,
    echo: i64,
    dynamic: i64,
    phase: i64,
    image_type: i64,
    label: i64,
    b_value: i64,
    gradient: i64,
    rec_index: usize,
    bits: usize,
    recon: [usize; 2],
    rescale_intercept: f64,
    rescale_slope: f64,
    thickness_mm: f64,
    gap_mm: f64,
    orientation: i64,
    spacing_mm: [f64; 2],
}

struct ColumnReader<'a> {
    path: &'a Path,
    columns: &'a [Column],
}

impl ColumnReader<'_> {
    fn find(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.starts_with(name))
    }

    fn required(&self, name: &str) -> Result<&Column, ParRecError> {
        self.find(name).ok_or_else(|| ParRecError::Invalid {
            path: self.path.to_path_buf(),
            reason: format!("the image definition block has no \"{name}\" column"),
        })
    }

    fn number(
        &self,
        line: usize,
        tokens: &[String],
        column: &Column,
        k: usize,
    ) -> Result<f64, ParRecError> {
        let token = &tokens[column.start + k];
        token
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| ParRecError::Header {
                path: self.path.to_path_buf(),
                line,
                reason: format!("{} is {token:?}, not a number", column.name),
            })
    }

    fn integer(
        &self,
        line: usize,
        tokens: &[String],
        column: &Column,
        k: usize,
    ) -> Result<i64, ParRecError> {
        let value = self.number(line, tokens, column, k)?;
        if value.fract() != 0.0 {
            return Err(ParRecError::Header {
                path: self.path.to_path_buf(),
                line,
                reason: format!("{} is {value}, not a whole number", column.name),
            });
        }
        Ok(value as i64)
    }

    fn count(
        &self,
        line: usize,
        tokens: &[String],
        column: &Column,
        k: usize,
    ) -> Result<usize, ParRecError> {
        let value = self.integer(line, tokens, column, k)?;
        usize::try_from(value).map_err(|_| ParRecError::Header {
            path: self.path.to_path_buf(),
            line,
            reason: format!("{} is {value}, below zero", column.name),
        })
    }

    fn optional_integer(
        &self,
        line: usize,
        tokens: &[String],
        name: &str,
    ) -> Result<i64, ParRecError> {
        match self.find(name) {
            Some(column) => self.integer(line, tokens, column, 0),
            None => Ok(0),
        }
    }

    fn image_lines(&self, images: &[(usize, Vec<String>)]) -> Result<Vec<ImageLine>, ParRecError> {
        let slice = self.required("slice number")?;
        let echo = self.required("echo number")?;
        let dynamic = self.required("dynamic scan number")?;
        let phase = self.required("cardiac phase number")?;
        let image_type = self.required("image_type_mr")?;
        let rec_index = self.required("index in rec file")?;
        let bits = self.required("image pixel size")?;
        let recon = self.required("recon resolution")?;
        let intercept = self.required("rescale intercept")?;
        let slope = self.required("rescale slope")?;
        let thickness = self.required("slice thickness")?;
        let gap = self.required("slice gap")?;
        let orientation = self.required("slice orientation")?;
        let spacing = self.required("pixel spacing")?;
        images
            .iter()
            .map(|(line, t)| {
                let line = *line;
                Ok(ImageLine {
                    line,
                    slice: self.integer(line, t, slice, 0)?,
                    echo: self.integer(line, t, echo, 0)?,
                    dynamic: self.integer(line, t, dynamic, 0)?,
                    phase: self.integer(line, t, phase, 0)?,
                    image_type: self.integer(line, t, image_type, 0)?,
                    label: self.optional_integer(line, t, "label type")?,
                    b_value: self.optional_integer(line, t, "diffusion b value number")?,
                    gradient: self.optional_integer(line, t, "gradient orientation number")?,
                    rec_index: self.count(line, t, rec_index, 0)?,
                    bits: self.count(line, t, bits, 0)?,
                    recon: [
                        self.count(line, t, recon, 0)?,
                        self.count(line, t, recon, 1)?,
                    ],
                    rescale_intercept: self.number(line, t, intercept, 0)?,
                    rescale_slope: self.number(line, t, slope, 0)?,
                    thickness_mm: self.number(line, t, thickness, 0)?,
                    gap_mm: self.number(line, t, gap, 0)?,
                    orientation: self.integer(line, t, orientation, 0)?,
                    spacing_mm: [
                        self.number(line, t, spacing, 0)?,
                        self.number(line, t, spacing, 1)?,
                    ],
                })
            })
            .collect()
    }
}

/// The images of one kind: the first image's type; the lowest echo, cardiac phase, label type and
/// diffusion setting. Returns them with a note per dimension that had more than one value.
fn keep_one_kind(lines: Vec<ImageLine>) -> (Vec<ImageLine>, Vec<String>) {
    let first_type = lines[0].image_type;
    let mut notes = Vec::new();
    type Key = fn(&ImageLine) -> i64;
    let dimensions: [(&str, Key, Option<i64>); 6] = [
        ("image types", |l| l.image_type, Some(first_type)),
        ("echoes", |l| l.echo, None),
        ("cardiac phases", |l| l.phase, None),
        ("label types", |l| l.label, None),
        ("diffusion b values", |l| l.b_value, None),
        ("gradient orientations", |l| l.gradient, None),
    ];
    let mut kept = lines;
    for (what, key, wanted) in dimensions {
        let values: BTreeSet<i64> = kept.iter().map(key).collect();
        if values.len() > 1 {
            let keep = wanted.unwrap_or_else(|| *values.iter().next().unwrap_or(&0));
            notes.push(format!(
                "the file holds {} {what} ({values:?}): only {keep} is read",
                values.len()
            ));
            kept.retain(|l| key(l) == keep);
        }
    }
    (kept, notes)
}

/// Rotation about x, y, z (right-handed, angle in degrees) as a 3 x 3 matrix.
fn rotation(axis: usize, degrees: f64) -> [[f64; 3]; 3] {
    let (s, c) = degrees.to_radians().sin_cos();
    match axis {
        0 => [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]],
        1 => [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
        _ => [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
    }
}

fn mat3_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

/// The voxel -> RAS+ millimetre affine of a PAR/REC volume (see the module paragraph).
///
/// `angulation_deg` and `off_centre_mm` are the header's mid-slice values in (ap, fh, rl) order;
/// `orientation` is the slice orientation code (1 transverse, 2 sagittal, 3 coronal).
pub fn philips_affine(
    dims: [usize; 3],
    voxel_mm: [f64; 3],
    orientation: i64,
    angulation_deg: [f64; 3],
    off_centre_mm: [f64; 3],
) -> Option<Affine> {
    // Voxel axis (x, y, slice) -> PSL axis and sign, per slice orientation.
    let to_psl: [[f64; 3]; 3] = match orientation {
        1 => [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        2 => [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
        3 => [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]],
        _ => return None,
    };
    let [ap, fh, rl] = angulation_deg;
    let rotate = mat3_mul(
        &mat3_mul(&rotation(2, rl), &rotation(0, ap)),
        &rotation(1, fh),
    );
    let psl_from_scaled = mat3_mul(&rotate, &to_psl);
    // PSL -> RAS: R = -L, A = -P, S = S.
    let ras_from_psl = [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let ras_from_scaled = mat3_mul(&ras_from_psl, &psl_from_scaled);
    let centre: [f64; 3] = std::array::from_fn(|a| (dims[a] as f64 - 1.0) / 2.0 * voxel_mm[a]);
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            affine[r][c] = ras_from_scaled[r][c] * voxel_mm[c];
        }
    }
    // The centre of the field of view lies at the off-centre (ap, fh, rl, i.e. PSL order); then into RAS.
    let psl_translation: [f64; 3] = std::array::from_fn(|r| {
        (0..3)
            .map(|c| -psl_from_scaled[r][c] * centre[c])
            .sum::<f64>()
            + off_centre_mm[r]
    });
    for r in 0..3 {
        affine[r][3] = (0..3)
            .map(|k| ras_from_psl[r][k] * psl_translation[k])
            .sum();
    }
    affine[3][3] = 1.0;
    Some(affine)
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
        let image_bytes = nx * ny * bytes_per_pixel;
        let needed = by_dynamic
            .values()
            .flat_map(|s| s.values())
            .map(|l| (l.rec_index + 1) * image_bytes)
            .max()
            .unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hyper-rt-parrec-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A small V4.2-style PAR: `dynamics` x `slices` images of 4 x 3 pixels, 16 bits.
    fn write_pair(
        dir: &Path,
        name: &str,
        dynamics: usize,
        slices: usize,
        lines_to_drop: usize,
    ) -> PathBuf {
        let mut par = String::from(
            "# CLINICAL TRYOUT             Research image export tool     V4.2\n\
             .    Protocol name                      :   test EPI\n\
             .    Acquisition nr                     :   3\n\
             .    Max. number of slices/locations    :   SLICES\n\
             .    Repetition time [ms]               :   2000.0\n\
             .    Angulation midslice(ap,fh,rl)[degr]:   10.0  0.0  0.0\n\
             .    Off Centre midslice(ap,fh,rl) [mm] :   1.0  2.0  3.0\n\
             # === IMAGE INFORMATION DEFINITION =====\n\
             #  slice number                             (integer)\n\
             #  echo number                              (integer)\n\
             #  dynamic scan number                      (integer)\n\
             #  cardiac phase number                     (integer)\n\
             #  image_type_mr                            (integer)\n\
             #  index in REC file (in images)            (integer)\n\
             #  image pixel size (in bits)               (integer)\n\
             #  recon resolution (x y)                   (2*integer)\n\
             #  rescale intercept                        (float)\n\
             #  rescale slope                            (float)\n\
             #  slice thickness (in mm )                 (float)\n\
             #  slice gap (in mm )                       (float)\n\
             #  slice orientation ( TRA/SAG/COR )        (integer)\n\
             #  pixel spacing (x,y) (in mm)              (2*float)\n\
             # === IMAGE INFORMATION =====\n",
        )
        .replace("SLICES", &slices.to_string());
        let mut index = 0;
        for d in 1..=dynamics {
            for s in 1..=slices {
                par.push_str(&format!(
                    "{s} 1 {d} 1 0 {index} 16 4 3 {} 2.0 3.0 1.0 1 2.5 2.5\n",
                    d as f64
                ));
                index += 1;
            }
        }
        let keep = par.lines().count() - lines_to_drop;
        let par: String = par.lines().take(keep).map(|l| format!("{l}\n")).collect();
        let par_path = dir.join(format!("{name}.PAR"));
        std::fs::write(&par_path, par).unwrap();
        let rec: Vec<u8> = (0..index * 12)
            .flat_map(|v| (v as u16).to_le_bytes())
            .collect();
        std::fs::write(dir.join(format!("{name}.REC")), rec).unwrap();
        par_path
    }

    #[test]
    fn reads_dynamics_as_volumes_with_displayed_values() {
        let dir = scratch("run");
        let run = ParRecRun::read(&write_pair(&dir, "run", 2, 3, 0)).unwrap();
        assert_eq!(run.dims, [4, 3, 3]);
        assert_eq!(run.volumes.len(), 2);
        assert_eq!(run.acquisition_number, 3);
        assert_eq!(run.tr_secs, Some(2.0));
        // dynamic 2, first pixel of its first slice: stored value 36, slope 2, intercept 2.
        assert_eq!(run.volumes[1].dynamic, 2);
        assert_eq!(run.volumes[1].values[0], 36.0 * 2.0 + 2.0);
        assert_eq!(run.volumes[0].values[35], 35.0 * 2.0 + 1.0);
    }

    #[test]
    fn leaves_out_a_dynamic_missing_slices_and_says_so() {
        let dir = scratch("cut");
        let run = ParRecRun::read(&write_pair(&dir, "cut", 3, 3, 1)).unwrap();
        assert_eq!(
            run.volumes.iter().map(|v| v.dynamic).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(
            run.notes.iter().any(|n| n.contains("[3]")),
            "{:?}",
            run.notes
        );
    }

    #[test]
    fn a_short_rec_file_is_an_error_naming_the_sizes() {
        let dir = scratch("short");
        let par = write_pair(&dir, "short", 2, 3, 0);
        std::fs::write(dir.join("short.REC"), vec![0u8; 100]).unwrap();
        let message = ParRecRun::read(&par).unwrap_err().to_string();
        assert!(
            message.contains("100 bytes") && message.contains("144"),
            "{message}"
        );
    }

    #[test]
    fn a_damaged_image_line_is_named_by_its_line_number() {
        let dir = scratch("bad");
        let par = write_pair(&dir, "bad", 1, 2, 0);
        let text = std::fs::read_to_string(&par)
            .unwrap()
            .replace("2 1 1 1 0 1 16", "2 1 x 1 0 1 16");
        std::fs::write(&par, text).unwrap();
        let message = ParRecRun::read(&par).unwrap_err().to_string();
        assert!(
            message.contains("line 25") && message.contains("dynamic scan number"),
            "{message}"
        );
    }

    #[test]
    fn angulated_headers_get_the_affine_nibabel_computes() {
        // nibabel 5.4.2's PARRECHeader.get_affine() for two of the real headers it ships: name, dims, voxel
        // size, slice orientation, angulation, off-centre, the affine's first three rows.
        type Case = (
            &'static str,
            [usize; 3],
            [f64; 3],
            i64,
            [f64; 3],
            [f64; 3],
            [[f64; 4]; 3],
        );
        let cases: [Case; 2] = [
            (
                "ASL_3D_Multiecho.PAR (transverse, angulated about all three axes)",
                [80, 80, 8],
                [2.8, 2.8, 3.0],
                1,
                [5.0, 15.0, 30.0],
                [-4.81, 3.5, -3.607],
                [
                    [
                        -2.694300523317363,
                        0.7219356493896386,
                        -0.2614672282429745,
                        82.43054781899552,
                    ],
                    [
                        -0.7454632064787544,
                        -2.3106650579074524,
                        1.4942920471376182,
                        120.2970442782735,
                    ],
                    [
                        0.15820650377970497,
                        1.4069953476489927,
                        2.588189746988463,
                        -67.38413724589317,
                    ],
                ],
            ),
            (
                "Phantom_EPI_3mm_cor_20APtrans_15RLrot_SENSE_15_1.PAR (coronal)",
                [80, 80, 40],
                [3.0, 3.0, 3.3],
                3,
                [0.0, 0.0, 15.0],
                [20.0, 0.0, 0.0],
                [
                    [-3.0, 0.0, 0.0, 118.5],
                    [
                        0.0,
                        -0.7764571353075622,
                        -3.187555226753925,
                        72.82738376635025,
                    ],
                    [
                        0.0,
                        -2.897777478867205,
                        0.8541028488383184,
                        97.80720486290738,
                    ],
                ],
            ),
        ];
        for (name, dims, voxel_mm, orientation, angulation, off_centre, expected) in cases {
            let a = philips_affine(dims, voxel_mm, orientation, angulation, off_centre).unwrap();
            for r in 0..3 {
                for c in 0..4 {
                    assert!(
                        (a[r][c] - expected[r][c]).abs() < 1e-9,
                        "{name}: [{r}][{c}] {} vs {}",
                        a[r][c],
                        expected[r][c]
                    );
                }
            }
        }
    }

    #[test]
    fn transverse_without_angulation_maps_x_to_left_and_y_to_posterior() {
        // Transverse voxel axes are (L, P, S) in PSL terms: x -> -R, y -> -A, slices -> +S.
        let a = philips_affine([4, 4, 3], [2.0, 2.0, 3.0], 1, [0.0; 3], [0.0; 3]).unwrap();
        assert_eq!([a[0][0], a[1][1], a[2][2]], [-2.0, -2.0, 3.0]);
        // The centre voxel sits at the off-centre (zero here).
        let centre = [1.5, 1.5, 1.0];
        for (r, row) in a.iter().take(3).enumerate() {
            let mm: f64 = (0..3).map(|c| row[c] * centre[c]).sum::<f64>() + row[3];
            assert!(mm.abs() < 1e-12, "axis {r}: {mm}");
        }
    }
}
