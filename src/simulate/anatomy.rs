//! A head-like phantom on the simulation grid: scalp, skull, CSF, grey and white matter and ventricles with smooth
//! (partial-volume) boundaries and a smooth texture, so that realignment has structure to lock onto, plus the
//! brain mask. Intensities are EPI-like (CSF bright, white matter darker than grey).

use crate::rng::Rng;
use crate::volume::Affine;

/// The static anatomy: baseline intensity and brain mask, x fastest.
pub struct Anatomy {
    pub dims: [usize; 3],
    pub mm_from_voxel: Affine,
    pub baseline: Vec<f32>,
    pub brain: Vec<bool>,
}

/// Smooth step from 0 (inside, r < 1) to 1 (outside) over about `width` in units of r.
fn edge(r: f64, width: f64) -> f64 {
    1.0 / (1.0 + (-(r - 1.0) / width).exp())
}

/// The grid: voxel_mm isotropic, centred on the origin, RAS+.
pub fn grid_affine(dims: [usize; 3], voxel_mm: f64) -> Affine {
    let c = |d: usize| -(d as f64 - 1.0) / 2.0 * voxel_mm;
    [
        [voxel_mm, 0.0, 0.0, c(dims[0])],
        [0.0, voxel_mm, 0.0, c(dims[1])],
        [0.0, 0.0, voxel_mm, c(dims[2])],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

impl Anatomy {
    /// Builds the phantom; its size follows the field of view (the head fills about 80 % of it).
    pub fn new(dims: [usize; 3], voxel_mm: f64, seed: u64) -> Anatomy {
        let mm_from_voxel = grid_affine(dims, voxel_mm);
        let fov = dims.map(|d| d as f64 * voxel_mm);
        let head = [fov[0] * 0.40, fov[1] * 0.44, fov[2] * 0.44];
        let brain = [head[0] * 0.86, head[1] * 0.88, head[2] * 0.84];
        let wm = [brain[0] * 0.62, brain[1] * 0.66, brain[2] * 0.60];
        // smooth texture: a few random plane waves of 15 to 45 mm wavelength
        let mut rng = Rng::new(seed ^ 0xA11A);
        let waves: Vec<([f64; 3], f64)> = (0..24)
            .map(|_| {
                let dir = [rng.normal(), rng.normal(), rng.normal()];
                let norm = (dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2])
                    .sqrt()
                    .max(1e-9);
                let k = std::f64::consts::TAU / (15.0 + 30.0 * rng.uniform());
                (
                    [dir[0] / norm * k, dir[1] / norm * k, dir[2] / norm * k],
                    std::f64::consts::TAU * rng.uniform(),
                )
            })
            .collect();
        let n = dims.iter().product();
        let mut baseline = Vec::with_capacity(n);
        let mut brain_mask = Vec::with_capacity(n);
        let soft = voxel_mm / 2.0;
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let p = crate::spatial::apply(&mm_from_voxel, [i as f64, j as f64, k as f64]);
                    let r = |radii: [f64; 3]| {
                        ((p[0] / radii[0]).powi(2)
                            + (p[1] / radii[1]).powi(2)
                            + (p[2] / radii[2]).powi(2))
                        .sqrt()
                    };
                    let (r_head, r_brain, r_wm) = (r(head), r(brain), r(wm));
                    // ventricles: two small ellipsoids either side of the midline
                    let vent = |sx: f64| {
                        (((p[0] - sx) / (brain[0] * 0.12)).powi(2)
                            + (p[1] / (brain[1] * 0.30)).powi(2)
                            + ((p[2] - brain[2] * 0.1) / (brain[2] * 0.18)).powi(2))
                        .sqrt()
                    };
                    let r_vent = vent(brain[0] * 0.15).min(vent(-brain[0] * 0.15));
                    let texture: f64 = waves
                        .iter()
                        .map(|(kv, ph)| (kv[0] * p[0] + kv[1] * p[1] + kv[2] * p[2] + ph).cos())
                        .sum::<f64>()
                        / (waves.len() as f64).sqrt();
                    let w_head = 1.0 - edge(r_head, soft / head[0]);
                    let w_brain = 1.0 - edge(r_brain, soft / brain[0]);
                    let w_wm = 1.0 - edge(r_wm, soft / wm[0]);
                    let w_vent = 1.0 - edge(r_vent, 0.08);
                    // CSF rim just inside the brain surface
                    let csf = (-((r_brain - 0.96) / 0.03).powi(2)).exp();
                    let scalp = (-((r_head - 0.97) / 0.03).powi(2)).exp();
                    let tissue = 900.0 * (1.0 - w_wm) + 650.0 * w_wm;
                    let mut v = w_brain * tissue * (1.0 + 0.08 * texture);
                    v += w_brain * (1400.0 - v).max(0.0) * (0.7 * csf + w_vent);
                    v += (w_head - w_brain).max(0.0) * 250.0 + scalp * w_head * 900.0;
                    baseline.push(v as f32);
                    brain_mask.push(r_brain < 0.97);
                }
            }
        }
        Anatomy {
            dims,
            mm_from_voxel,
            baseline,
            brain: brain_mask,
        }
    }
}
