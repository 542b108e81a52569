//! How closely a GPU's image must agree with the CPU's: the bound for each precision and the measure itself. Used
//! by the start-up check of every command that draws on a GPU, `hyper-rt gpu-info --check`, the kernel tuning and
//! the parity tests.

use crate::generate::settings::Precision;

/// The largest relative L2 difference a GPU image may have from the CPU's (direct path) at `precision`: the parity
/// bounds used by tests/cuda_parity.rs, `hyper-rt gpu-info --check` and the start-up check of every command.
pub fn gpu_parity_bound(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Tf32 => 1e-2,
    }
}

/// Relative L2 difference of `a` from `reference` (NaN anywhere makes it NaN): the measure of the GPU's agreement
/// with the CPU.
pub fn relative_l2(a: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(reference) {
        num += (f64::from(*x) - f64::from(*y)).powi(2);
        den += f64::from(*y).powi(2);
    }
    (num / den).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2_is_nan_when_an_output_is() {
        assert_eq!(relative_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_l2(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert!(relative_l2(&[f32::NAN, 4.0], &[3.0, 4.0]).is_nan());
    }
}
