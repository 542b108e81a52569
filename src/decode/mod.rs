//! Decoding voxel patterns into latents: the BIDS dataset ([`Dataset`]), decoder training (reference, voxel
//! selection, ridge with cross-validated penalty: [`train`]), the bundle ([`bundle`]), and HYPER's metrics
//! ([`metrics`]). Trial patterns come from [`crate::preprocess`], the same code the live pipeline runs.

pub mod attributes;
pub mod bundle;
pub mod metrics;
pub mod ridge;

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView1};
use sha2::{Digest, Sha256};

use crate::nifti::NiftiImage;
use crate::preprocess::trials::{read_events, ScheduledTrial, TrialPattern, TrialWindow};
use crate::preprocess::{nifti_volume, run_patterns, PreprocessSettings, Preprocessor};
use bundle::{BundleInfo, DecoderBundle};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Nifti(#[from] crate::nifti::NiftiError),
    #[error(transparent)]
    Events(#[from] crate::preprocess::trials::EventsError),
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error(transparent)]
    Ridge(#[from] ridge::RidgeError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
}

/// One run of a BIDS dataset.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub number: usize,
    pub bold: PathBuf,
    pub events: PathBuf,
}

/// A BIDS dataset with face stimuli: `sub-<s>/func/sub-<s>_task-<t>_run-<r>_bold.nii.gz` with `_events.tsv`
/// (onset, duration, trial_type, stim_id), and `stimuli/latents.npy` `[N, latent]`.
pub struct Dataset {
    pub root: PathBuf,
    pub subject: String,
    pub runs: Vec<RunFiles>,
    /// `[N, latent]`.
    pub latents: Vec<f32>,
    pub latent_size: usize,
}

impl Dataset {
    /// Finds the subject's runs (the only subject when `subject` is `None`) and the latents.
    pub fn open(root: &Path, subject: Option<&str>) -> Result<Dataset, DecodeError> {
        let data_err = |path: &Path, message: String| DecodeError::Data {
            path: path.to_path_buf(),
            message,
        };
        let subject = match subject {
            Some(s) => s.trim_start_matches("sub-").to_string(),
            None => {
                let subs: Vec<String> = std::fs::read_dir(root)
                    .map_err(|e| data_err(root, e.to_string()))?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("sub-"))
                            .map(str::to_string)
                    })
                    .collect();
                match subs.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(data_err(root, "no sub-* folder".into())),
                    many => {
                        return Err(data_err(
                            root,
                            format!("several subjects {many:?}: choose one with --subject"),
                        ))
                    }
                }
            }
        };
        let func = root.join(format!("sub-{subject}")).join("func");
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(&func)
            .map_err(|e| data_err(&func, e.to_string()))?
            .filter_map(|e| e.ok())
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stem) = name
                .strip_suffix("_bold.nii.gz")
                .or_else(|| name.strip_suffix("_bold.nii"))
            {
                let number = stem
                    .split('_')
                    .find_map(|part| part.strip_prefix("run-"))
                    .and_then(|r| r.parse::<usize>().ok())
                    .ok_or_else(|| {
                        data_err(&entry.path(), "file name has no run-<number>".into())
                    })?;
                let events = func.join(format!("{stem}_events.tsv"));
                if !events.is_file() {
                    return Err(data_err(&events, "events file missing for this run".into()));
                }
                runs.push(RunFiles {
                    number,
                    bold: entry.path(),
                    events,
                });
            }
        }
        runs.sort_by_key(|r| r.number);
        if runs.is_empty() {
            return Err(data_err(&func, "no *_bold.nii.gz runs".into()));
        }
        let latents_path = root.join("stimuli").join("latents.npy");
        let latents = crate::npy::read_f32(&latents_path)?;
        let latent_size = match latents.shape.as_slice() {
            [_, l] if *l > 0 => *l,
            other => {
                return Err(data_err(
                    &latents_path,
                    format!("latents must be [N, latent_size], got shape {other:?}"),
                ))
            }
        };
        Ok(Dataset {
            root: root.to_path_buf(),
            subject,
            runs,
            latents: latents.data,
            latent_size,
        })
    }

    pub fn stimuli(&self) -> usize {
        self.latents.len() / self.latent_size
    }

    pub fn latent(&self, stim: usize) -> &[f32] {
        &self.latents[stim * self.latent_size..(stim + 1) * self.latent_size]
    }

    /// A run's image and its events, checked: every stim_id names a latent, onsets lie within the run.
    pub fn load_run(
        &self,
        run: &RunFiles,
    ) -> Result<(NiftiImage, Vec<ScheduledTrial>), DecodeError> {
        let img = NiftiImage::read(&run.bold)?;
        let tr = img.tr_secs.ok_or_else(|| DecodeError::Data {
            path: run.bold.clone(),
            message: "no TR in the header".into(),
        })?;
        let trials = read_events(&run.events, Some(img.volumes as f64 * tr))?;
        for t in &trials {
            if let Some(s) = t.stim_id {
                if s >= self.stimuli() {
                    return Err(DecodeError::Data {
                        path: run.events.clone(),
                        message: format!(
                            "line {}: stim_id {s} but stimuli/latents.npy holds {} latents",
                            t.index + 2,
                            self.stimuli()
                        ),
                    });
                }
            }
        }
        Ok((img, trials))
    }
}

/// How voxels are chosen (always from training trials only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Selection {
    /// HYPER's rule: the highest mean response over training trials. It needs a visual response that stands out
    /// from the run's baseline (rest periods); in a continuous design under a causal high-pass it has none.
    MeanResponse,
    /// An encoding criterion: the sum over latent dimensions of the squared correlation between the voxel's
    /// trial responses and that latent dimension (how much of the voxel the latent explains, one dimension at a
    /// time); null expectation latent_size / trials.
    Encoding,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Voxels to keep (HYPER: 4096).
    pub voxels: usize,
    pub selection: Selection,
    pub folds: usize,
    pub penalties: Vec<f64>,
    pub window: TrialWindow,
    pub preprocess: PreprocessSettings,
    /// Runs to use (all with training trials when empty).
    pub runs: Vec<usize>,
    /// Average repeated presentations of a stimulus before fitting.
    pub average_repeats: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            voxels: 4096,
            selection: Selection::Encoding,
            folds: 5,
            penalties: ridge::log_grid(1e0, 1e6, 20),
            window: TrialWindow::default(),
            preprocess: PreprocessSettings::default(),
            runs: Vec::new(),
            average_repeats: false,
        }
    }
}

/// Progress events of training, for bars.
pub enum TrainProgress {
    Run { done: usize, total: usize },
    Fold { done: usize, total: usize },
}

/// The session reference: the mean of the first run after realignment to its first volume.
pub fn session_reference(
    img: &NiftiImage,
    tr_secs: f64,
    settings: &PreprocessSettings,
) -> Result<Vec<f32>, DecodeError> {
    let first: Vec<f32> = nifti_volume(img, 0, tr_secs).to_f32();
    let all: Vec<usize> = (0..img.voxels_per_volume()).collect();
    let mut pre = Preprocessor::new(
        &first,
        img.dims,
        img.mm_from_voxel,
        all,
        tr_secs,
        settings.clone(),
    )?;
    let mut acc = vec![0.0f64; img.voxels_per_volume()];
    for t in 0..img.volumes {
        let resliced = pre.realign_only(&nifti_volume(img, t, tr_secs))?.resliced;
        for (a, v) in acc.iter_mut().zip(resliced) {
            *a += v as f64;
        }
    }
    Ok(acc
        .iter()
        .map(|a| (a / img.volumes as f64) as f32)
        .collect())
}

/// Candidate voxels: the reference's bright voxels (above 20 % of its 99th percentile).
pub fn candidate_voxels(reference: &[f32]) -> Vec<usize> {
    let mut sorted: Vec<f32> = reference
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    sorted.sort_by(f32::total_cmp);
    let high = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0.0);
    (0..reference.len())
        .filter(|&i| reference[i] > 0.2 * high)
        .collect()
}

/// Trial patterns of `trial_type` trials from the given runs, preprocessed against `reference` with `mask`.
#[allow(clippy::too_many_arguments)]
pub fn dataset_patterns(
    data: &Dataset,
    runs: &[RunFiles],
    reference: &[f32],
    geometry: ([usize; 3], crate::volume::Affine),
    mask: &[usize],
    settings: &PreprocessSettings,
    window: TrialWindow,
    trial_type: &str,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<TrialPattern>, DecodeError> {
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let (img, trials) = data.load_run(run)?;
        if img.dims != geometry.0 {
            return Err(DecodeError::Data {
                path: run.bold.clone(),
                message: format!(
                    "dimensions {:?} differ from the reference's {:?}",
                    img.dims, geometry.0
                ),
            });
        }
        let tr = img.tr_secs.unwrap_or(1.0);
        let wanted: Vec<ScheduledTrial> = trials
            .into_iter()
            .filter(|t| t.trial_type == trial_type && t.stim_id.is_some())
            .collect();
        let mut pre = Preprocessor::new(
            reference,
            geometry.0,
            geometry.1,
            mask.to_vec(),
            tr,
            settings.clone(),
        )?;
        let (patterns, _) =
            run_patterns(&img, tr, &mut pre, &wanted, window).map_err(|e| DecodeError::Data {
                path: run.bold.clone(),
                message: e.to_string(),
            })?;
        out.extend(patterns.into_iter().filter(|p| p.complete));
        progress(i + 1, runs.len());
    }
    Ok(out)
}

fn fingerprint(runs: &[RunFiles], latents: &Path) -> String {
    let mut h = Sha256::new();
    for path in runs
        .iter()
        .flat_map(|r| [&r.bold, &r.events])
        .chain(std::iter::once(&latents.to_path_buf()))
    {
        if let Ok(bytes) = std::fs::read(path) {
            h.update(&bytes);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Trains a decoder on the dataset's training trials.
pub fn train(
    data: &Dataset,
    settings: &TrainSettings,
    progress: &dyn Fn(TrainProgress),
) -> Result<DecoderBundle, DecodeError> {
    // runs with training trials
    let mut runs = Vec::new();
    for run in &data.runs {
        if !settings.runs.is_empty() && !settings.runs.contains(&run.number) {
            continue;
        }
        let (_, trials) = data.load_run(run)?;
        if trials.iter().any(|t| t.trial_type == "train") {
            runs.push(run.clone());
        }
    }
    let first = runs.first().ok_or_else(|| DecodeError::Data {
        path: data.root.clone(),
        message: "no run has trials of type `train`".into(),
    })?;
    let (img, _) = data.load_run(first)?;
    let tr = img.tr_secs.unwrap_or(1.0);
    let geometry = (img.dims, img.mm_from_voxel);
    let reference = session_reference(&img, tr, &settings.preprocess)?;
    let candidates = candidate_voxels(&reference);
    if candidates.is_empty() || settings.voxels == 0 {
        return Err(DecodeError::Data {
            path: first.bold.clone(),
            message:
                "the voxel selection is empty (no bright voxel in the reference, or --voxels 0)"
                    .into(),
        });
    }
    for run in &runs[1..] {
        let other = NiftiImage::read(&run.bold)?;
        if other.dims != img.dims {
            return Err(DecodeError::Data {
                path: run.bold.clone(),
                message: format!(
                    "run {} has dimensions {:?}, run {} {:?}",
                    run.number, other.dims, first.number, img.dims
                ),
            });
        }
    }
    let patterns = dataset_patterns(
        data,
        &runs,
        &reference,
        geometry,
        &candidates,
        &settings.preprocess,
        settings.window,
        "train",
        &|d, t| progress(TrainProgress::Run { done: d, total: t }),
    )?;

    // optional averaging of repeated stimuli
    let mut groups: Vec<(usize, Vec<&TrialPattern>)> = Vec::new();
    for p in &patterns {
        let stim = p.trial.stim_id.unwrap_or(0);
        match groups
            .iter_mut()
            .find(|g| settings.average_repeats && g.0 == stim)
        {
            Some(g) => g.1.push(p),
            None => groups.push((stim, vec![p])),
        }
    }
    let n = groups.len();
    let c = candidates.len();
    // voxel selection from training trials only
    let score = match settings.selection {
        Selection::MeanResponse => {
            let mut mean_response = vec![0.0f64; c];
            for p in &patterns {
                for (m, v) in mean_response.iter_mut().zip(&p.pattern) {
                    *m += *v as f64;
                }
            }
            mean_response
        }
        Selection::Encoding => encoding_scores(&patterns, data),
    };
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(settings.voxels.min(c)).collect();
    keep.sort_unstable();
    let k = keep.len();
    // trial patterns [n, k] (repetitions averaged) and their latents [n, latent]
    let mut x = Array2::<f32>::zeros((n, k));
    let mut y = Array2::<f32>::zeros((n, data.latent_size));
    for ((stim, members), (mut x_row, mut y_row)) in groups
        .iter()
        .zip(x.rows_mut().into_iter().zip(y.rows_mut()))
    {
        for (value, &ci) in x_row.iter_mut().zip(&keep) {
            *value = members.iter().map(|p| p.pattern[ci]).sum::<f32>() / members.len() as f32;
        }
        y_row.assign(&ArrayView1::from(data.latent(*stim)));
    }
    // normalisation statistics of the selected voxels over training patterns
    let mut mean = vec![0.0f32; k];
    let mut std = vec![0.0f32; k];
    for ((mut column, m_out), s_out) in x.columns_mut().into_iter().zip(&mut mean).zip(&mut std) {
        let m = column.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
        let v = column
            .iter()
            .map(|v| (f64::from(*v) - m).powi(2))
            .sum::<f64>()
            / (n.max(2) - 1) as f64;
        (*m_out, *s_out) = (m as f32, v.sqrt().max(1e-6) as f32);
        column.mapv_inplace(|value| (value - *m_out) / *s_out);
    }
    let fit = ridge::fit_ridge_cv(
        x.view(),
        y.view(),
        &settings.penalties,
        settings.folds,
        &|d, t| progress(TrainProgress::Fold { done: d, total: t }),
    )?;
    Ok(DecoderBundle {
        dims: img.dims,
        reference,
        mm_from_voxel: img.mm_from_voxel,
        tr_secs: tr,
        voxels: keep.iter().map(|&i| candidates[i]).collect(),
        pattern_mean: mean,
        pattern_std: std,
        weights: fit.weights,
        intercept: fit.intercept,
        penalty: fit.penalty,
        cv_curve: fit.cv_curve,
        window: settings.window,
        preprocess: settings.preprocess.clone(),
        info: BundleInfo {
            subject: data.subject.clone(),
            runs: runs.iter().map(|r| r.number).collect(),
            trials: n,
            selection: format!(
                "top {k} of {c} bright voxels by {}",
                match settings.selection {
                    Selection::MeanResponse => "mean training response",
                    Selection::Encoding =>
                        "encoding score (summed squared correlation with the latent dimensions)",
                }
            ),
            fingerprint: fingerprint(&runs, &data.root.join("stimuli").join("latents.npy")),
            created_unix_secs: crate::ingest::recorder::unix_secs_now(),
        },
    })
}

/// Per candidate voxel: the sum over latent dimensions of the squared correlation between the voxel's trial
/// responses and the latent dimension.
fn encoding_scores(patterns: &[TrialPattern], data: &Dataset) -> Vec<f64> {
    use nalgebra::DMatrix;
    let n = patterns.len();
    let c = patterns.first().map(|p| p.pattern.len()).unwrap_or(0);
    let q = data.latent_size;
    let standardise = |m: &mut DMatrix<f64>| {
        for mut col in m.column_iter_mut() {
            let mean = col.mean();
            col.add_scalar_mut(-mean);
            let norm = col.norm();
            if norm > 0.0 {
                col /= norm;
            }
        }
    };
    let mut x = DMatrix::from_fn(n, c, |r, col| patterns[r].pattern[col] as f64);
    let mut y = DMatrix::from_fn(n, q, |r, col| {
        data.latent(patterns[r].trial.stim_id.unwrap_or(0))[col] as f64
    });
    standardise(&mut x);
    standardise(&mut y);
    let corr = x.transpose() * y; // [c, q]
    corr.row_iter().map(|row| row.norm_squared()).collect()
}

/// Decoded test trials: single-trial predictions with their stimulus ids.
pub fn decode_trials(
    data: &Dataset,
    bundle: &DecoderBundle,
    trial_type: &str,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<(usize, Vec<f32>)>, DecodeError> {
    let mut runs = Vec::new();
    for run in &data.runs {
        let (_, trials) = data.load_run(run)?;
        if trials.iter().any(|t| t.trial_type == trial_type) {
            runs.push(run.clone());
        }
    }
    if runs.is_empty() {
        return Err(DecodeError::Data {
            path: data.root.clone(),
            message: format!("no run has trials of type `{trial_type}`"),
        });
    }
    let patterns = dataset_patterns(
        data,
        &runs,
        &bundle.reference,
        (bundle.dims, bundle.mm_from_voxel),
        &bundle.voxels,
        &bundle.preprocess,
        bundle.window,
        trial_type,
        progress,
    )?;
    Ok(patterns
        .iter()
        .map(|p| (p.trial.stim_id.unwrap_or(0), bundle.decode(&p.pattern)))
        .collect())
}
