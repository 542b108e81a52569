//! Rigid-body geometry shared by the simulator (which moves heads) and realignment (which undoes it).
//!
//! Convention: six parameters, translations in millimetres along the scanner x, y, z axes and rotations in
//! degrees about those axes, applied about the volume centre `c` (in millimetres):
//! `p_scanner = R (p_head - c) + c + t` with `R = Rz(gamma) Ry(beta) Rx(alpha)`. A volume moved by these
//! parameters is resampled as `moved(p) = reference(R^T (p - c - t) + c)`.

use crate::volume::Affine;

/// Six rigid-body parameters (mm, degrees).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rigid {
    pub trans_mm: [f64; 3],
    pub rot_deg: [f64; 3],
}

pub type Mat3 = [[f64; 3]; 3];

fn mul3(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

impl Rigid {
    /// `R = Rz Ry Rx`.
    pub fn rotation(&self) -> Mat3 {
        let [a, b, g] = self.rot_deg.map(f64::to_radians);
        let rx = [
            [1.0, 0.0, 0.0],
            [0.0, a.cos(), -a.sin()],
            [0.0, a.sin(), a.cos()],
        ];
        let ry = [
            [b.cos(), 0.0, b.sin()],
            [0.0, 1.0, 0.0],
            [-b.sin(), 0.0, b.cos()],
        ];
        let rz = [
            [g.cos(), -g.sin(), 0.0],
            [g.sin(), g.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        mul3(&rz, &mul3(&ry, &rx))
    }

    /// Framewise displacement between two parameter sets (Power et al. 2012: sum of absolute differences, rotations
    /// as arc length on a sphere of `radius_mm`).
    pub fn framewise_displacement(&self, previous: &Rigid, radius_mm: f64) -> f64 {
        let t: f64 = (0..3)
            .map(|i| (self.trans_mm[i] - previous.trans_mm[i]).abs())
            .sum();
        let r: f64 = (0..3)
            .map(|i| (self.rot_deg[i] - previous.rot_deg[i]).to_radians().abs() * radius_mm)
            .sum();
        t + r
    }
}

/// Maps each output voxel to the input voxel coordinates it samples, for a volume moved by `motion`.
/// Both volumes share the grid `mm_from_voxel`; `centre_mm` is the rotation centre.
pub struct MotionSampler {
    /// voxel_in = A * voxel_out + b
    a: Mat3,
    b: [f64; 3],
}

/// The inverse of a 3 x 3 matrix, `None` when it is singular.
pub fn invert_3x3(a: &Mat3) -> Option<Mat3> {
    let inverse = nalgebra::Matrix3::from_fn(|i, j| a[i][j]).try_inverse()?;
    Some(std::array::from_fn(|i| {
        std::array::from_fn(|j| inverse[(i, j)])
    }))
}

/// Why an affine cannot place voxels in scanner space.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AffineError {
    #[error("its entry [{row}][{column}] is {value}")]
    NotFinite {
        row: usize,
        column: usize,
        value: f64,
    },
    #[error("its 3 x 3 part is singular (determinant {determinant:e}, voxel sizes {:.3} x {:.3} x {:.3} mm): voxels have no distinct positions in scanner space", voxel_sizes_mm[0], voxel_sizes_mm[1], voxel_sizes_mm[2])]
    Singular {
        determinant: f64,
        voxel_sizes_mm: [f64; 3],
    },
    #[error("its last row is {row:?}, not [0, 0, 0, 1]: it is not an affine map")]
    LastRow { row: [f64; 4] },
}

/// Why `mm_from_voxel` cannot place voxels in scanner space (a non-finite entry, or a singular 3 x 3 part, as a
/// header with zero voxel sizes gives), or `Ok` when it can. Realignment needs the inverse.
pub fn check_affine(mm_from_voxel: &Affine) -> Result<(), AffineError> {
    if let Some((row, column)) = (0..4)
        .flat_map(|r| (0..4).map(move |c| (r, c)))
        .find(|&(r, c)| !mm_from_voxel[r][c].is_finite())
    {
        return Err(AffineError::NotFinite {
            row,
            column,
            value: mm_from_voxel[row][column],
        });
    }
    let last = mm_from_voxel[3];
    if last
        .iter()
        .zip([0.0, 0.0, 0.0, 1.0])
        .any(|(&have, want)| (have - want).abs() > 1e-6)
    {
        return Err(AffineError::LastRow { row: last });
    }
    let det = nalgebra::Matrix3::from_fn(|i, j| mm_from_voxel[i][j]).determinant();
    let voxel_sizes_mm: [f64; 3] = std::array::from_fn(|j| {
        (0..3)
            .map(|i| mm_from_voxel[i][j].powi(2))
            .sum::<f64>()
            .sqrt()
    });
    // relative to the voxel sizes (the columns' lengths), so that small voxels are not taken for a singular affine
    if det.abs() <= 1e-9 * voxel_sizes_mm.iter().product::<f64>() {
        return Err(AffineError::Singular {
            determinant: det,
            voxel_sizes_mm,
        });
    }
    Ok(())
}

/// Inverse of the 3 x 3 part and translation of an affine. The affine must have passed [`check_affine`]; a
/// singular one gives NaN.
pub fn affine_inverse(m: &Affine) -> Affine {
    let a: Mat3 = std::array::from_fn(|i| std::array::from_fn(|j| m[i][j]));
    let inv = invert_3x3(&a).unwrap_or([[f64::NAN; 3]; 3]);
    let t = [m[0][3], m[1][3], m[2][3]];
    let mut out = [[0.0; 4]; 4];
    for i in 0..3 {
        out[i][..3].copy_from_slice(&inv[i]);
        out[i][3] = -(0..3).map(|k| inv[i][k] * t[k]).sum::<f64>();
    }
    out[3][3] = 1.0;
    out
}

/// The centre of a grid in millimetres.
pub fn grid_centre_mm(dims: [usize; 3], mm_from_voxel: &Affine) -> [f64; 3] {
    let c = [
        (dims[0] as f64 - 1.0) / 2.0,
        (dims[1] as f64 - 1.0) / 2.0,
        (dims[2] as f64 - 1.0) / 2.0,
    ];
    apply(mm_from_voxel, c)
}

/// `M * [p, 1]`.
pub fn apply(m: &Affine, p: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * p[0] + m[i][1] * p[1] + m[i][2] * p[2] + m[i][3])
}

impl MotionSampler {
    pub fn new(motion: &Rigid, mm_from_voxel: &Affine, centre_mm: [f64; 3]) -> MotionSampler {
        let voxel_from_mm = affine_inverse(mm_from_voxel);
        let r = motion.rotation();
        // p_in_mm = R^T (p_out_mm - c - t) + c
        let rt = [
            [r[0][0], r[1][0], r[2][0]],
            [r[0][1], r[1][1], r[2][1]],
            [r[0][2], r[1][2], r[2][2]],
        ];
        let m3 = |m: &Affine| {
            [
                [m[0][0], m[0][1], m[0][2]],
                [m[1][0], m[1][1], m[1][2]],
                [m[2][0], m[2][1], m[2][2]],
            ]
        };
        let (vm, mv) = (m3(&voxel_from_mm), m3(mm_from_voxel));
        let a = mul3(&vm, &mul3(&rt, &mv));
        // constant part: vm * (R^T (mv_t - c - t) + c) + vm_t
        let shift = [0, 1, 2].map(|i| mm_from_voxel[i][3] - centre_mm[i] - motion.trans_mm[i]);
        let rotated =
            [0, 1, 2].map(|i| (0..3).map(|k| rt[i][k] * shift[k]).sum::<f64>() + centre_mm[i]);
        let b = [0, 1, 2]
            .map(|i| (0..3).map(|k| vm[i][k] * rotated[k]).sum::<f64>() + voxel_from_mm[i][3]);
        MotionSampler { a, b }
    }

    /// Input voxel coordinates sampled by output voxel `(i, j, k)`.
    #[inline]
    pub fn source(&self, i: usize, j: usize, k: usize) -> [f64; 3] {
        let (x, y, z) = (i as f64, j as f64, k as f64);
        [0, 1, 2].map(|r| self.a[r][0] * x + self.a[r][1] * y + self.a[r][2] * z + self.b[r])
    }
}

/// Trilinear interpolation of an x-fastest volume at voxel coordinates `p`; `outside` beyond the edges.
#[inline]
pub fn trilinear(volume: &[f32], dims: [usize; 3], p: [f64; 3], outside: f32) -> f32 {
    let [nx, ny, nz] = dims;
    let (x, y, z) = (p[0], p[1], p[2]);
    if !(x > -1.0 && y > -1.0 && z > -1.0 && x < nx as f64 && y < ny as f64 && z < nz as f64) {
        return outside;
    }
    let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
    let (fx, fy, fz) = ((x - x0) as f32, (y - y0) as f32, (z - z0) as f32);
    let (x0, y0, z0) = (x0 as isize, y0 as isize, z0 as isize);
    if x0 >= 0
        && y0 >= 0
        && z0 >= 0
        && x0 + 1 < nx as isize
        && y0 + 1 < ny as isize
        && z0 + 1 < nz as isize
    {
        // interior: all 8 neighbours exist
        let base = x0 as usize + nx * (y0 as usize + ny * z0 as usize);
        let (sy, sz) = (nx, nx * ny);
        let v = |o: usize| volume[base + o];
        let c00 = v(0) * (1.0 - fx) + v(1) * fx;
        let c10 = v(sy) * (1.0 - fx) + v(sy + 1) * fx;
        let c01 = v(sz) * (1.0 - fx) + v(sz + 1) * fx;
        let c11 = v(sy + sz) * (1.0 - fx) + v(sy + sz + 1) * fx;
        return (c00 * (1.0 - fy) + c10 * fy) * (1.0 - fz) + (c01 * (1.0 - fy) + c11 * fy) * fz;
    }
    let at = |xi: isize, yi: isize, zi: isize| -> f32 {
        if xi < 0 || yi < 0 || zi < 0 || xi >= nx as isize || yi >= ny as isize || zi >= nz as isize
        {
            outside
        } else {
            volume[xi as usize + nx * (yi as usize + ny * zi as usize)]
        }
    };
    let c00 = at(x0, y0, z0) * (1.0 - fx) + at(x0 + 1, y0, z0) * fx;
    let c10 = at(x0, y0 + 1, z0) * (1.0 - fx) + at(x0 + 1, y0 + 1, z0) * fx;
    let c01 = at(x0, y0, z0 + 1) * (1.0 - fx) + at(x0 + 1, y0, z0 + 1) * fx;
    let c11 = at(x0, y0 + 1, z0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1, z0 + 1) * fx;
    let c0 = c00 * (1.0 - fy) + c10 * fy;
    let c1 = c01 * (1.0 - fy) + c11 * fy;
    c0 * (1.0 - fz) + c1 * fz
}

/// Catmull-Rom tricubic interpolation, zero outside.
pub fn tricubic(volume: &[f32], dims: [usize; 3], p: [f64; 3]) -> f32 {
    let [nx, ny, nz] = dims;
    if !(p[0] > -1.0
        && p[1] > -1.0
        && p[2] > -1.0
        && p[0] < nx as f64
        && p[1] < ny as f64
        && p[2] < nz as f64)
    {
        return 0.0;
    }
    let weights = |t: f64| {
        let (t2, t3) = (t * t, t * t * t);
        [
            (-t3 + 2.0 * t2 - t) / 2.0,
            (3.0 * t3 - 5.0 * t2 + 2.0) / 2.0,
            (-3.0 * t3 + 4.0 * t2 + t) / 2.0,
            (t3 - t2) / 2.0,
        ]
    };
    let base = p.map(|v| v.floor());
    let (wx, wy, wz) = (
        weights(p[0] - base[0]),
        weights(p[1] - base[1]),
        weights(p[2] - base[2]),
    );
    let (bx, by, bz) = (
        base[0] as isize - 1,
        base[1] as isize - 1,
        base[2] as isize - 1,
    );
    if bx >= 0
        && by >= 0
        && bz >= 0
        && bx + 3 < nx as isize
        && by + 3 < ny as isize
        && bz + 3 < nz as isize
    {
        // interior: all 64 neighbours exist
        let (bx, by, bz) = (bx as usize, by as usize, bz as usize);
        let mut acc = 0.0f64;
        for (c, wzc) in wz.iter().enumerate() {
            let mut plane = 0.0f64;
            for (b, wyb) in wy.iter().enumerate() {
                let row = &volume[bx + nx * (by + b + ny * (bz + c))..][..4];
                let r = wx[0] * row[0] as f64
                    + wx[1] * row[1] as f64
                    + wx[2] * row[2] as f64
                    + wx[3] * row[3] as f64;
                plane += wyb * r;
            }
            acc += wzc * plane;
        }
        return acc as f32;
    }
    let mut acc = 0.0f64;
    for (c, wzc) in wz.iter().enumerate() {
        let z = base[2] as isize - 1 + c as isize;
        if z < 0 || z >= nz as isize {
            continue;
        }
        for (b, wyb) in wy.iter().enumerate() {
            let y = base[1] as isize - 1 + b as isize;
            if y < 0 || y >= ny as isize {
                continue;
            }
            for (a, wxa) in wx.iter().enumerate() {
                let x = base[0] as isize - 1 + a as isize;
                if x < 0 || x >= nx as isize {
                    continue;
                }
                acc += wxa
                    * wyb
                    * wzc
                    * volume[x as usize + nx * (y as usize + ny * z as usize)] as f64;
            }
        }
    }
    acc as f32
}

/// Resamples `volume` as moved by `motion` (same grid), tricubic (Catmull-Rom: little blur, as a real head
/// movement has none), zero outside.
pub fn move_volume(
    volume: &[f32],
    dims: [usize; 3],
    mm_from_voxel: &Affine,
    motion: &Rigid,
) -> Vec<f32> {
    let sampler = MotionSampler::new(motion, mm_from_voxel, grid_centre_mm(dims, mm_from_voxel));
    let [nx, ny, nz] = dims;
    let mut out = Vec::with_capacity(volume.len());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                out.push(tricubic(volume, dims, sampler.source(i, j, k)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_motion_samples_each_voxel_itself() {
        let affine = [
            [3.0, 0.0, 0.0, -90.0],
            [0.0, 3.0, 0.0, -90.0],
            [0.0, 0.0, 3.0, -50.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let s = MotionSampler::new(
            &Rigid::default(),
            &affine,
            grid_centre_mm([8, 8, 8], &affine),
        );
        let p = s.source(3, 4, 5);
        assert!(
            (p[0] - 3.0).abs() < 1e-12 && (p[1] - 4.0).abs() < 1e-12 && (p[2] - 5.0).abs() < 1e-12
        );
    }

    #[test]
    fn a_translation_moves_content_by_that_many_millimetres() {
        let affine = [
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let motion = Rigid {
            trans_mm: [4.0, 0.0, -2.0],
            rot_deg: [0.0; 3],
        };
        let s = MotionSampler::new(&motion, &affine, [0.0; 3]);
        // output voxel (5, 5, 5) shows what was at mm (10 - 4, 10, 10 + 2) = voxel (3, 5, 6)
        let p = s.source(5, 5, 5);
        assert!(
            (p[0] - 3.0).abs() < 1e-12 && (p[1] - 5.0).abs() < 1e-12 && (p[2] - 6.0).abs() < 1e-12
        );
    }

    #[test]
    fn rotation_is_orthonormal_and_fd_follows_power() {
        let m = Rigid {
            trans_mm: [0.0; 3],
            rot_deg: [10.0, -20.0, 30.0],
        };
        let r = m.rotation();
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| r[k][i] * r[k][j]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        let a = Rigid {
            trans_mm: [1.0, 0.0, 0.0],
            rot_deg: [0.0, 0.0, 1.0],
        };
        let fd = a.framewise_displacement(&Rigid::default(), 50.0);
        assert!((fd - (1.0 + 50.0 * 1f64.to_radians())).abs() < 1e-12);
    }

    #[test]
    fn an_affine_is_refused_only_when_it_places_no_voxel() {
        let diag = |x: f64, y: f64, z: f64| {
            [
                [x, 0.0, 0.0, 1.0],
                [0.0, y, 0.0, 2.0],
                [0.0, 0.0, z, 3.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        };
        assert_eq!(check_affine(&diag(-3.0, 3.0, 3.5)), Ok(()));
        // small voxels are voxels: the test is relative to their size
        assert_eq!(check_affine(&diag(1e-4, 1e-4, 1e-4)), Ok(()));
        let zero = check_affine(&diag(3.0, 0.0, 3.0)).unwrap_err().to_string();
        assert!(
            zero.contains("singular") && zero.contains("3.000 x 0.000 x 3.000 mm"),
            "{zero}"
        );
        let mut parallel = diag(2.0, 2.0, 2.0);
        (parallel[0][2], parallel[2][2]) = (2.0, 1e-12);
        assert!(matches!(
            check_affine(&parallel),
            Err(AffineError::Singular { .. })
        ));
        let mut nan = diag(2.0, 2.0, 2.0);
        nan[1][3] = f64::NAN;
        let e = check_affine(&nan).unwrap_err();
        assert_eq!(e.to_string(), "its entry [1][3] is NaN");
    }

    #[test]
    fn affine_inverse_inverts() {
        let m = [
            [2.0, 0.1, 0.0, 5.0],
            [0.0, 3.0, 0.2, -4.0],
            [0.3, 0.0, 2.5, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let inv = affine_inverse(&m);
        let p = apply(&inv, apply(&m, [1.0, 2.0, 3.0]));
        assert!(
            (p[0] - 1.0).abs() < 1e-12 && (p[1] - 2.0).abs() < 1e-12 && (p[2] - 3.0).abs() < 1e-12
        );
        assert_eq!(
            invert_3x3(&[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]]),
            None
        );
    }
}
