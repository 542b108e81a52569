//! The Philips geometry as nibabel reads it: voxel indices centred on the field of view, scaled, permuted from the
//! slice orientation into Philips' PSL axes, rotated by the angulation, shifted by the off-centre, turned into RAS+.

use crate::volume::Affine;

/// Rotation about x, y, z (right-handed, angle in degrees) as a 3 x 3 matrix.
pub(super) fn rotation(axis: usize, degrees: f64) -> [[f64; 3]; 3] {
    let (s, c) = degrees.to_radians().sin_cos();
    match axis {
        0 => [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]],
        1 => [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
        _ => [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
    }
}

pub(super) fn mat3_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
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
