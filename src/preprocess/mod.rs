//! Real-time preprocessing, one volume at a time and identical live and offline: realign to the reference
//! ([`realign`]), reslice, mask, detrend and z-score ([`normalise`]), then trial patterns ([`trials`]).
//!
//! Bad input: non-finite voxels are replaced by the reference's value there and counted; a volume whose
//! dimensions or affine differ from the reference is an error the caller counts before going on to the next;
//! a diverging registration keeps the previous transform and flags the volume.

pub mod normalise;
pub mod realign;
pub mod trials;

use std::time::Instant;

use crate::spatial::Rigid;
use crate::volume::{Affine, Volume};
use normalise::{Detrend, Detrender, ZScore, ZScorer};
use realign::{Alignment, RealignSettings, Reference};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("volume {index}: dimensions {got:?} differ from the reference's {want:?}")]
    Dimensions {
        index: usize,
        got: [usize; 3],
        want: [usize; 3],
    },
    #[error(
        "volume {index}: its affine differs from the reference's (a different slice prescription?)"
    )]
    Affine { index: usize },
    #[error("the reference volume has no structure to register to (empty or constant)")]
    EmptyReference,
    #[error("mask: {0}")]
    Mask(String),
}

/// Settings of the whole chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessSettings {
    pub realign: RealignSettings,
    pub detrend: Detrend,
    pub zscore: ZScore,
    /// Radius of the sphere on which rotations become displacement (Power et al.: 50 mm).
    pub fd_radius_mm: f64,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        PreprocessSettings {
            realign: RealignSettings::default(),
            detrend: Detrend::default(),
            zscore: ZScore::Running {
                baseline_volumes: 10,
            },
            fd_radius_mm: 50.0,
        }
    }
}

/// One preprocessed volume.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    pub index: usize,
    pub alignment: Alignment,
    /// Framewise displacement from the previous volume, mm.
    pub fd_mm: f64,
    /// Masked, detrended, z-scored values (in mask order).
    pub values: Vec<f32>,
    /// Still inside the running z-score's baseline.
    pub baseline: bool,
    pub non_finite_replaced: usize,
    /// Milliseconds spent: realign (estimate), reslice, normalise (mask + detrend + z-score).
    pub timing_ms: [f64; 3],
}

/// One volume realigned and resliced into the reference grid, before masking and normalisation.
#[derive(Debug, Clone)]
pub struct Realigned {
    /// The whole volume on the reference grid, x fastest.
    pub resliced: Vec<f32>,
    pub alignment: Alignment,
    /// Framewise displacement from the previous volume, mm.
    pub fd_mm: f64,
    pub non_finite_replaced: usize,
    /// Milliseconds spent: realign (estimate), reslice.
    pub timing_ms: [f64; 2],
}

/// Counters of a run, for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PreprocessCounts {
    pub processed: usize,
    pub non_finite_voxels_replaced: usize,
    pub volumes_with_non_finite: usize,
    pub diverged: usize,
    pub rejected_geometry: usize,
}

/// The chain for one run (or session).
pub struct Preprocessor {
    reference: Reference,
    mask: Vec<usize>,
    detrender: Detrender,
    zscorer: ZScorer,
    settings: PreprocessSettings,
    previous: Option<Rigid>,
    pub counts: PreprocessCounts,
}

/// Affines equal to within 1e-4 mm (values pass through float32 in NIfTI files).
fn same_affine(a: &Affine, b: &Affine) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + x.abs()))
}

impl Preprocessor {
    /// `reference` and `mask` (x-fastest voxel indices of the reference grid, ascending) define the space.
    pub fn new(
        reference_volume: &[f32],
        dims: [usize; 3],
        mm_from_voxel: Affine,
        mask: Vec<usize>,
        tr_secs: f64,
        settings: PreprocessSettings,
    ) -> Result<Preprocessor, PreprocessError> {
        let n = dims.iter().product::<usize>();
        if let Some(&bad) = mask.iter().find(|&&i| i >= n) {
            return Err(PreprocessError::Mask(format!(
                "voxel index {bad} is outside the {dims:?} grid"
            )));
        }
        if mask.is_empty() {
            return Err(PreprocessError::Mask("the mask selects no voxel".into()));
        }
        let reference = Reference::new(reference_volume, dims, mm_from_voxel, settings.realign)
            .ok_or(PreprocessError::EmptyReference)?;
        Ok(Preprocessor {
            detrender: Detrender::new(settings.detrend, mask.len(), tr_secs),
            zscorer: ZScorer::new(settings.zscore.clone(), mask.len()),
            reference,
            mask,
            settings,
            previous: None,
            counts: PreprocessCounts::default(),
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn mask(&self) -> &[usize] {
        &self.mask
    }

    /// Aligns and reslices one volume into the reference grid (no masking or normalisation), replacing non-finite
    /// voxels first.
    pub fn realign_only(&mut self, volume: &Volume) -> Result<Realigned, PreprocessError> {
        let r = &self.reference;
        if volume.dims != r.dims {
            self.counts.rejected_geometry += 1;
            return Err(PreprocessError::Dimensions {
                index: volume.index,
                got: volume.dims,
                want: r.dims,
            });
        }
        if !same_affine(&volume.mm_from_voxel, &r.mm_from_voxel) {
            self.counts.rejected_geometry += 1;
            return Err(PreprocessError::Affine {
                index: volume.index,
            });
        }
        let mut values = volume.to_f32();
        let mut replaced = 0;
        for (v, reference) in values.iter_mut().zip(&r.volume) {
            if !v.is_finite() {
                *v = *reference;
                replaced += 1;
            }
        }
        if replaced > 0 {
            self.counts.non_finite_voxels_replaced += replaced;
            self.counts.volumes_with_non_finite += 1;
            tracing::warn!(
                "volume {}: {replaced} non-finite voxels replaced by the reference's values",
                volume.index
            );
        }
        let t0 = Instant::now();
        let start = self.previous.unwrap_or_default();
        let alignment = r.align(&values, start, self.previous.is_none());
        if alignment.diverged {
            self.counts.diverged += 1;
            tracing::warn!(
                "volume {}: registration diverged; the previous transform is kept",
                volume.index
            );
        }
        let t1 = Instant::now();
        let resliced = r.reslice(&values, &alignment.motion);
        let t2 = Instant::now();
        let fd_mm = self
            .previous
            .map(|p| {
                alignment
                    .motion
                    .framewise_displacement(&p, self.settings.fd_radius_mm)
            })
            .unwrap_or(0.0);
        self.previous = Some(alignment.motion);
        Ok(Realigned {
            resliced,
            alignment,
            fd_mm,
            non_finite_replaced: replaced,
            timing_ms: [(t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3],
        })
    }

    /// The full chain for one volume.
    pub fn process(&mut self, volume: &Volume) -> Result<Preprocessed, PreprocessError> {
        let Realigned {
            resliced,
            alignment,
            fd_mm,
            non_finite_replaced,
            timing_ms: [t_align, t_reslice],
        } = self.realign_only(volume)?;
        let t0 = Instant::now();
        let mut values: Vec<f32> = self.mask.iter().map(|&i| resliced[i]).collect();
        self.detrender.apply(&mut values);
        let ready = self.zscorer.apply(&mut values);
        self.counts.processed += 1;
        Ok(Preprocessed {
            index: volume.index,
            alignment,
            fd_mm,
            values,
            baseline: !ready,
            non_finite_replaced,
            timing_ms: [t_align, t_reslice, t0.elapsed().as_secs_f64() * 1e3],
        })
    }
}

/// The x-fastest indices of a mask volume's non-zero voxels.
pub fn mask_indices(mask: &[f32]) -> Vec<usize> {
    (0..mask.len())
        .filter(|&i| mask[i] != 0.0 && mask[i].is_finite())
        .collect()
}

/// Reads volume `t` of a NIfTI image as a [`Volume`] with the values a Pyneal sender would send (scaling applied,
/// float64), so that offline processing of a recorded run sees exactly what the live pipeline saw.
pub fn nifti_volume(img: &crate::nifti::NiftiImage, t: usize, tr_secs: f64) -> Volume {
    let values = img.volume_values(t);
    let bytes: Vec<u8> = if img.scaling.is_some() {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        img.volume_bytes(t).to_vec()
    };
    Volume {
        index: t,
        dims: img.dims,
        mm_from_voxel: img.mm_from_voxel,
        tr_secs,
        dtype: if img.scaling.is_some() {
            crate::volume::Dtype::Float64
        } else {
            img.dtype
        },
        voxel_bytes: bytes,
        arrived_at: Instant::now(),
    }
}

/// The mean of all volumes of an image (x fastest), e.g. as a realignment reference.
pub fn mean_volume(img: &crate::nifti::NiftiImage) -> Vec<f32> {
    let n = img.voxels_per_volume();
    let mut acc = vec![0.0f64; n];
    for t in 0..img.volumes {
        for (a, v) in acc.iter_mut().zip(img.volume_values(t)) {
            *a += v;
        }
    }
    acc.iter()
        .map(|a| (a / img.volumes as f64) as f32)
        .collect()
}

/// Processes a recorded run volume by volume, exactly as the live pipeline does, and returns its trial
/// patterns and the per-volume results (decoder training uses this, so live and offline patterns are the same).
pub fn run_patterns(
    img: &crate::nifti::NiftiImage,
    tr_secs: f64,
    preprocessor: &mut Preprocessor,
    trials: &[trials::ScheduledTrial],
    window: trials::TrialWindow,
) -> Result<(Vec<trials::TrialPattern>, Vec<Preprocessed>), PreprocessError> {
    let mut averager = trials::TrialAverager::new(window, tr_secs);
    for trial in trials {
        averager.add_trial(trial.clone());
    }
    let mut patterns = Vec::new();
    let mut volumes = Vec::with_capacity(img.volumes);
    for t in 0..img.volumes {
        let p = preprocessor.process(&nifti_volume(img, t, tr_secs))?;
        patterns.extend(averager.push_volume(p.index, &p.values));
        volumes.push(p);
    }
    patterns.extend(averager.finish());
    patterns.sort_by_key(|p| p.trial.index);
    Ok((patterns, volumes))
}
