//! The PAR header's text: the general information (`.  key : value` lines) and the image lines, whose columns are
//! read from the file's own "IMAGE INFORMATION DEFINITION" block so that versions 4, 4.1 and 4.2 read alike; one
//! kind of image is kept and what was left out is said.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::error::ParRecError;

/// The general information (`.  key : value` lines), keys lower-cased with single spaces.
pub(super) struct GeneralInfo {
    pub(super) values: HashMap<String, (usize, String)>,
}

impl GeneralInfo {
    pub(super) fn find(&self, key_start: &str) -> Option<&(usize, String)> {
        self.values
            .iter()
            .find(|(k, _)| k.starts_with(key_start))
            .map(|(_, v)| v)
    }

    pub(super) fn numbers(
        &self,
        path: &Path,
        key_start: &str,
    ) -> Result<Option<Vec<f64>>, ParRecError> {
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

    pub(super) fn triple(&self, path: &Path, key_start: &str) -> Result<[f64; 3], ParRecError> {
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
pub(super) struct Column {
    pub(super) name: String,
    pub(super) start: usize,
    pub(super) width: usize,
}

/// The header split into its parts.
pub(super) struct ParHeader {
    pub(super) version: String,
    pub(super) general: GeneralInfo,
    pub(super) columns: Vec<Column>,
    /// (line number, tokens) of each image line.
    pub(super) images: Vec<(usize, Vec<String>)>,
}

pub(super) fn parse_header(path: &Path, text: &str) -> Result<ParHeader, ParRecError> {
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
pub(super) fn definition_column(comment: &str, start: usize) -> Option<Column> {
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
pub(super) struct ImageLine {
    pub(super) line: usize,
    pub(super) slice: i64,
    pub(super) echo: i64,
    pub(super) dynamic: i64,
    pub(super) phase: i64,
    pub(super) image_type: i64,
    pub(super) label: i64,
    pub(super) b_value: i64,
    pub(super) gradient: i64,
    pub(super) rec_index: usize,
    pub(super) bits: usize,
    pub(super) recon: [usize; 2],
    pub(super) rescale_intercept: f64,
    pub(super) rescale_slope: f64,
    pub(super) thickness_mm: f64,
    pub(super) gap_mm: f64,
    pub(super) orientation: i64,
    pub(super) spacing_mm: [f64; 2],
}

pub(super) struct ColumnReader<'a> {
    pub(super) path: &'a Path,
    pub(super) columns: &'a [Column],
}

impl ColumnReader<'_> {
    pub(super) fn find(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.starts_with(name))
    }

    pub(super) fn required(&self, name: &str) -> Result<&Column, ParRecError> {
        self.find(name).ok_or_else(|| ParRecError::Invalid {
            path: self.path.to_path_buf(),
            reason: format!("the image definition block has no \"{name}\" column"),
        })
    }

    pub(super) fn number(
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

    pub(super) fn integer(
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

    pub(super) fn count(
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

    pub(super) fn optional_integer(
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

    pub(super) fn image_lines(
        &self,
        images: &[(usize, Vec<String>)],
    ) -> Result<Vec<ImageLine>, ParRecError> {
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
pub(super) fn keep_one_kind(lines: Vec<ImageLine>) -> (Vec<ImageLine>, Vec<String>) {
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
