//! The decoder bundle: everything live decoding needs, in one safetensors file with JSON metadata — the session
//! reference volume and its affine, the selected voxels, the pattern normalisation, the ridge weights and
//! intercept, the cross-validation curve, the preprocessing and trial-window settings, and a fingerprint of the
//! training data. Loading checks every shape and names what is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;

use crate::preprocess::trials::TrialWindow;
use crate::preprocess::PreprocessSettings;
use crate::volume::Affine;

pub const FORMAT: &str = "hyper-rt decoder 1";

/// A trained decoder.
#[derive(Debug, Clone)]
pub struct DecoderBundle {
    pub dims: [usize; 3],
    /// Reference volume, x fastest.
    pub reference: Vec<f32>,
    pub mm_from_voxel: Affine,
    pub tr_secs: f64,
    /// Selected voxels, x-fastest indices into the reference grid, ascending.
    pub voxels: Vec<usize>,
    /// Training-pattern mean and standard deviation per selected voxel.
    pub pattern_mean: Vec<f32>,
    pub pattern_std: Vec<f32>,
    /// `[voxels, latent]`.
    pub weights: Vec<f32>,
    pub intercept: Vec<f32>,
    pub penalty: f64,
    pub cv_curve: Vec<(f64, f64)>,
    pub window: TrialWindow,
    pub preprocess: PreprocessSettings,
    pub info: BundleInfo,
}

/// Free-form provenance stored in the metadata.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BundleInfo {
    pub subject: String,
    pub runs: Vec<usize>,
    pub trials: usize,
    pub selection: String,
    /// SHA-256 over the training files' bytes, in run order.
    pub fingerprint: String,
    pub created_unix_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes_f64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl DecoderBundle {
    pub fn latent_size(&self) -> usize {
        self.intercept.len()
    }

    /// Normalises a pattern with the training statistics and applies the ridge map.
    pub fn decode(&self, pattern: &[f32]) -> Vec<f32> {
        let normalised: Vec<f32> = pattern
            .iter()
            .zip(&self.pattern_mean)
            .zip(&self.pattern_std)
            .map(|((x, m), s)| (x - m) / s.max(1e-6))
            .collect();
        super::ridge::predict(&normalised, &self.weights, &self.intercept)
    }

    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        let invalid = |message: String| BundleError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let [nx, ny, nz] = self.dims;
        let k = self.voxels.len();
        let q = self.latent_size();
        let reference = bytes_f32(&self.reference);
        let affine = bytes_f64(
            &self
                .mm_from_voxel
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
        );
        let voxels: Vec<u8> = self
            .voxels
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        let (mean, std, weights, intercept) = (
            bytes_f32(&self.pattern_mean),
            bytes_f32(&self.pattern_std),
            bytes_f32(&self.weights),
            bytes_f32(&self.intercept),
        );
        let penalties = bytes_f64(&self.cv_curve.iter().map(|c| c.0).collect::<Vec<_>>());
        let errors = bytes_f64(&self.cv_curve.iter().map(|c| c.1).collect::<Vec<_>>());
        let m = self.cv_curve.len();
        fn view(dtype: StDtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
            TensorView::new(dtype, shape, data).map_err(|e| e.to_string())
        }
        let tensors = vec![
            (
                "reference",
                view(StDtype::F32, vec![nz, ny, nx], &reference).map_err(invalid)?,
            ),
            (
                "reference_affine",
                view(StDtype::F64, vec![4, 4], &affine).map_err(invalid)?,
            ),
            (
                "voxel_indices",
                view(StDtype::I64, vec![k], &voxels).map_err(invalid)?,
            ),
            (
                "pattern_mean",
                view(StDtype::F32, vec![k], &mean).map_err(invalid)?,
            ),
            (
                "pattern_std",
                view(StDtype::F32, vec![k], &std).map_err(invalid)?,
            ),
            (
                "weights",
                view(StDtype::F32, vec![k, q], &weights).map_err(invalid)?,
            ),
            (
                "intercept",
                view(StDtype::F32, vec![q], &intercept).map_err(invalid)?,
            ),
            (
                "cv_penalties",
                view(StDtype::F64, vec![m], &penalties).map_err(invalid)?,
            ),
            (
                "cv_errors",
                view(StDtype::F64, vec![m], &errors).map_err(invalid)?,
            ),
        ];
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert(
            "dims".into(),
            serde_json::to_string(&self.dims).unwrap_or_default(),
        );
        meta.insert("tr_secs".into(), self.tr_secs.to_string());
        meta.insert("penalty".into(), self.penalty.to_string());
        meta.insert(
            "window".into(),
            serde_json::to_string(&self.window).unwrap_or_default(),
        );
        meta.insert(
            "preprocess".into(),
            serde_json::to_string(&self.preprocess).unwrap_or_default(),
        );
        meta.insert(
            "info".into(),
            serde_json::to_string(&self.info).unwrap_or_default(),
        );
        safetensors::serialize_to_file(tensors, Some(meta), path)
            .map_err(|e| invalid(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<DecoderBundle, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| BundleError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!(
                "metadata format is {:?}, expected {FORMAT:?} (is this a decoder bundle?)",
                meta.get("format")
            )));
        }
        let get_meta = |key: &str| {
            meta.get(key)
                .ok_or_else(|| invalid(format!("metadata lacks {key}")))
        };
        let parse = |key: &str| -> Result<serde_json::Value, BundleError> {
            serde_json::from_str(get_meta(key)?)
                .map_err(|e| invalid(format!("metadata {key}: {e}")))
        };
        let dims: [usize; 3] = serde_json::from_value(parse("dims")?)
            .map_err(|e| invalid(format!("metadata dims: {e}")))?;
        let tr_secs: f64 = get_meta("tr_secs")?
            .parse()
            .map_err(|_| invalid("metadata tr_secs is not a number".into()))?;
        let penalty: f64 = get_meta("penalty")?
            .parse()
            .map_err(|_| invalid("metadata penalty is not a number".into()))?;
        let window: TrialWindow = serde_json::from_value(parse("window")?)
            .map_err(|e| invalid(format!("metadata window: {e}")))?;
        let preprocess: PreprocessSettings = serde_json::from_value(parse("preprocess")?)
            .map_err(|e| invalid(format!("metadata preprocess: {e}")))?;
        let info: BundleInfo = serde_json::from_value(parse("info")?)
            .map_err(|e| invalid(format!("metadata info: {e}")))?;

        let tensor =
            |name: &str, dtype: StDtype, shape: Option<&[usize]>| -> Result<Vec<u8>, BundleError> {
                let t = st
                    .tensor(name)
                    .map_err(|_| invalid(format!("tensor {name} is missing")))?;
                if t.dtype() != dtype {
                    return Err(invalid(format!(
                        "tensor {name} is {:?}, expected {dtype:?}",
                        t.dtype()
                    )));
                }
                if let Some(shape) = shape {
                    if t.shape() != shape {
                        return Err(invalid(format!(
                            "tensor {name} has shape {:?}, expected {shape:?}",
                            t.shape()
                        )));
                    }
                }
                Ok(t.data().to_vec())
            };
        let f32s = |b: Vec<u8>| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>()
        };
        let f64s = |b: Vec<u8>| {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect::<Vec<f64>>()
        };
        let reference = f32s(tensor(
            "reference",
            StDtype::F32,
            Some(&[dims[2], dims[1], dims[0]]),
        )?);
        let affine = f64s(tensor("reference_affine", StDtype::F64, Some(&[4, 4]))?);
        let voxels_raw = tensor("voxel_indices", StDtype::I64, None)?;
        let k = voxels_raw.len() / 8;
        let n = dims.iter().product::<usize>();
        let mut voxels = Vec::with_capacity(k);
        for c in voxels_raw.chunks_exact(8) {
            let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if v < 0 || v as usize >= n {
                return Err(invalid(format!(
                    "voxel index {v} is outside the {dims:?} grid"
                )));
            }
            voxels.push(v as usize);
        }
        if k == 0 {
            return Err(invalid("the decoder selects no voxel".into()));
        }
        let pattern_mean = f32s(tensor("pattern_mean", StDtype::F32, Some(&[k]))?);
        let pattern_std = f32s(tensor("pattern_std", StDtype::F32, Some(&[k]))?);
        let intercept = f32s(tensor("intercept", StDtype::F32, None)?);
        let q = intercept.len();
        let weights = f32s(tensor("weights", StDtype::F32, Some(&[k, q]))?);
        let penalties = f64s(tensor("cv_penalties", StDtype::F64, None)?);
        let errors = f64s(tensor("cv_errors", StDtype::F64, Some(&[penalties.len()]))?);
        if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "tensor weights holds a non-finite value at flat index {i}"
            )));
        }
        let mut mm_from_voxel = [[0.0; 4]; 4];
        for (i, v) in affine.iter().enumerate() {
            mm_from_voxel[i / 4][i % 4] = *v;
        }
        Ok(DecoderBundle {
            dims,
            reference,
            mm_from_voxel,
            tr_secs,
            voxels,
            pattern_mean,
            pattern_std,
            weights,
            intercept,
            penalty,
            cv_curve: penalties.into_iter().zip(errors).collect(),
            window,
            preprocess,
            info,
        })
    }
}
