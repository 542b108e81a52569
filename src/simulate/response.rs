//! The simulated brain's response: HYPER's premise that voxel responses depend linearly on the stimulus latent.
//!
//! A trial's amplitude in responsive voxel v is `signal_percent * w_v . z + visual_v` (percent of baseline), where
//! the encoding weights `w_v` (unit norm) vary smoothly across neighbouring voxels: each cluster has a few anchor
//! points with random latent directions, and a voxel mixes them with Gaussian weights of its distance. The
//! amplitude drives the canonical double-gamma HRF convolved with the stimulus boxcar, sampled at each volume's
//! acquisition time (the start of the TR; slice timing is not simulated).

use crate::rng::Rng;
use crate::volume::Affine;

/// SPM's canonical HRF at `t` seconds: gamma(6, 1) - gamma(16, 1) / 6, unnormalised.
pub fn canonical_hrf(t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let gamma_pdf = |k: f64, gamma_k: f64| t.powf(k - 1.0) * (-t).exp() / gamma_k;
    gamma_pdf(6.0, 120.0) - gamma_pdf(16.0, 1_307_674_368_000.0) / 6.0
}

/// The response to a `duration` s stimulus, tabulated every `step_secs` from onset for `len` steps and scaled
/// so that its peak is 1: a trial's amplitude is the height of its response.
pub fn block_response_table(duration: f64, step_secs: f64, len: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..len)
        .map(|i| raw_block_response(i as f64 * step_secs, duration))
        .collect();
    let peak = raw.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
    raw.iter().map(|v| v / peak).collect()
}

/// The HRF convolved with a boxcar of `duration` s (unit area HRF).
fn raw_block_response(t: f64, duration: f64) -> f64 {
    const DT: f64 = 0.02;
    const AREA: f64 = 1.0 - 1.0 / 6.0; // integral of the unnormalised HRF
    if t <= 0.0 {
        return 0.0;
    }
    let steps = (duration.min(t) / DT).ceil() as usize;
    let mut acc = 0.0;
    for s in 0..steps {
        let u = (s as f64 + 0.5) * DT;
        if u <= duration {
            acc += canonical_hrf(t - u) * DT;
        }
    }
    acc / AREA
}

/// Rough radius (mm) of a cluster of `count / clusters` voxels of about 3 mm, for placing anchors.
fn centres_radius(count: usize, clusters: usize) -> f64 {
    let per_cluster = (count as f64 / clusters.max(1) as f64).max(1.0);
    (per_cluster * 27.0 * 3.0 / (4.0 * std::f64::consts::PI)).cbrt()
}

/// The responsive voxels, their encoding weights and visual weights.
pub struct Encoding {
    /// x-fastest voxel indices of the responsive voxels.
    pub voxels: Vec<usize>,
    /// `[R, latent]` unit-norm rows.
    pub weights: Vec<f32>,
    /// Shared visual response amplitude per responsive voxel, percent.
    pub visual_percent: Vec<f32>,
    pub latent_size: usize,
}

impl Encoding {
    /// Chooses `count` brain voxels nearest to `clusters` random centres (in the back half of the brain, where
    /// visual cortex is) and gives them smooth latent weights.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        brain: &[bool],
        dims: [usize; 3],
        mm_from_voxel: &Affine,
        count: usize,
        clusters: usize,
        latent_size: usize,
        visual_percent: f64,
        seed: u64,
    ) -> Encoding {
        let mut rng = Rng::new(seed ^ 0xE7C0);
        let position = |index: usize| {
            let (i, j, k) = (
                index % dims[0],
                (index / dims[0]) % dims[1],
                index / (dims[0] * dims[1]),
            );
            crate::spatial::apply(mm_from_voxel, [i as f64, j as f64, k as f64])
        };
        let brain_voxels: Vec<usize> = (0..brain.len()).filter(|&i| brain[i]).collect();
        let posterior: Vec<usize> = brain_voxels
            .iter()
            .copied()
            .filter(|&v| position(v)[1] < 0.0)
            .collect();
        let pool = if posterior.len() >= clusters {
            &posterior
        } else {
            &brain_voxels
        };
        let centres: Vec<[f64; 3]> = (0..clusters)
            .map(|_| position(pool[(rng.uniform() * pool.len() as f64) as usize % pool.len()]))
            .collect();
        let dist2 = |a: [f64; 3], b: [f64; 3]| (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>();
        let mut ranked: Vec<(f64, usize)> = brain_voxels
            .iter()
            .map(|&v| {
                let p = position(v);
                (
                    centres
                        .iter()
                        .map(|&c| dist2(p, c))
                        .fold(f64::INFINITY, f64::min),
                    v,
                )
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut voxels: Vec<usize> = ranked
            .iter()
            .take(count.min(ranked.len()))
            .map(|&(_, v)| v)
            .collect();
        voxels.sort_unstable();

        // anchors: random latent directions at points around each cluster centre; enough of them (1.5 x the latent
        // size in all) that the voxels' weights span the whole latent space, as a decoder of every latent
        // direction needs, while a voxel's weight varies smoothly with its position
        let per_cluster = (3 * latent_size).div_ceil(2 * clusters).max(8);
        let radius = centres_radius(count, clusters);
        let anchors: Vec<([f64; 3], Vec<f64>)> = centres
            .iter()
            .flat_map(|&c| {
                (0..per_cluster)
                    .map(|_| {
                        let p = [
                            c[0] + radius * rng.normal(),
                            c[1] + radius * rng.normal(),
                            c[2] + radius * rng.normal(),
                        ];
                        (
                            p,
                            (0..latent_size).map(|_| rng.normal()).collect::<Vec<f64>>(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let sigma2 = 2.0 * (radius / 2.0).powi(2);
        let mut weights = Vec::with_capacity(voxels.len() * latent_size);
        let mut visual = Vec::with_capacity(voxels.len());
        for &v in &voxels {
            let p = position(v);
            let mut w = vec![0.0f64; latent_size];
            for (a, u) in &anchors {
                let g = (-dist2(p, *a) / sigma2).exp();
                if g > 1e-6 {
                    for (wi, ui) in w.iter_mut().zip(u) {
                        *wi += g * ui;
                    }
                }
            }
            // an equal voxel-specific part: neighbouring voxels stay correlated (about 0.5) while the weights span
            // the whole latent space, which a decoder of every latent direction needs (calibration:
            // docs/simulation.md)
            let scale = (w.iter().map(|x| x * x).sum::<f64>() / latent_size as f64)
                .sqrt()
                .max(1e-9);
            for wi in w.iter_mut() {
                *wi += scale * rng.normal();
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            weights.extend(w.iter().map(|x| (x / norm) as f32));
            visual.push((visual_percent * (0.5 + rng.uniform())) as f32);
        }
        Encoding {
            voxels,
            weights,
            visual_percent: visual,
            latent_size,
        }
    }

    /// Trial amplitudes `[R, trials]` in percent: `signal_percent * w_v . z_trial + visual_v`.
    pub fn amplitudes(
        &self,
        latents: &[f32],
        trial_stims: &[usize],
        signal_percent: f64,
    ) -> Vec<f32> {
        let l = self.latent_size;
        let mut out = vec![0.0f32; self.voxels.len() * trial_stims.len()];
        for (r, w) in self.weights.chunks_exact(l).enumerate() {
            for (t, &stim) in trial_stims.iter().enumerate() {
                let z = &latents[stim * l..(stim + 1) * l];
                let dot: f32 = w.iter().zip(z).map(|(a, b)| a * b).sum();
                out[r * trial_stims.len() + t] =
                    (signal_percent as f32) * dot + self.visual_percent[r];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrf_peaks_near_five_seconds_and_undershoots() {
        let peak = (1..300)
            .map(|i| i as f64 * 0.1)
            .max_by(|a, b| canonical_hrf(*a).total_cmp(&canonical_hrf(*b)))
            .unwrap();
        assert!((peak - 5.0).abs() < 0.15, "peak at {peak}");
        assert!(canonical_hrf(15.0) < 0.0);
        // the response to a 1.5 s stimulus peaks at 1, about 5 to 6 s after onset, and starts at 0
        let table = block_response_table(1.5, 0.05, 800);
        let peak = (0..table.len())
            .max_by(|a, b| table[*a].total_cmp(&table[*b]))
            .unwrap();
        assert!(
            (table[peak] - 1.0).abs() < 1e-12 && (4.5..7.0).contains(&(peak as f64 * 0.05)),
            "{peak}"
        );
        assert_eq!(table[0], 0.0);
    }
}
