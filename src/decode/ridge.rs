//! Ridge regression from voxel patterns to latents with the penalty chosen by k-fold cross-validation.
//!
//! With n trials and p voxels (n < p, as here: about 1000 trials, 4096 voxels), the kernel form is cheaper:
//! `W = X^T (X X^T + lambda I)^-1 Y`. One eigendecomposition `X X^T = Q diag(e) Q^T` per fold gives every
//! penalty's solution, `W = X^T Q diag(1 / (e + lambda)) Q^T Y`, so the penalty grid costs no refits.
//! X and Y are centred with the training means; the intercept restores them.

use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::ArrayView2;

/// The fitted decoder.
#[derive(Debug, Clone)]
pub struct RidgeFit {
    /// `[p, q]`, row major.
    pub weights: Vec<f32>,
    /// `[q]`.
    pub intercept: Vec<f32>,
    pub penalty: f64,
    /// (penalty, mean squared validation error per latent value) for every penalty tried.
    pub cv_curve: Vec<(f64, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RidgeError {
    #[error(
        "{trials} trials cannot be split into {folds} folds (need at least 2 trials per fold)"
    )]
    TooFewTrials { trials: usize, folds: usize },
    #[error("{patterns} patterns but {latents} latents: one latent per pattern is needed")]
    RowsDiffer { patterns: usize, latents: usize },
    #[error("no penalties to try")]
    NoPenalties,
}

/// A log-spaced grid of `count` penalties from `low` to `high`.
pub fn log_grid(low: f64, high: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| (low.ln() + (high.ln() - low.ln()) * i as f64 / (count.max(2) - 1) as f64).exp())
        .collect()
}

fn to_matrix(data: ArrayView2<f32>) -> DMatrix<f64> {
    DMatrix::from_fn(data.nrows(), data.ncols(), |r, c| f64::from(data[(r, c)]))
}

fn centre(m: &mut DMatrix<f64>) -> Vec<f64> {
    let means: Vec<f64> = (0..m.ncols()).map(|c| m.column(c).mean()).collect();
    for (c, mean) in means.iter().enumerate() {
        m.column_mut(c).add_scalar_mut(-mean);
    }
    means
}

/// Fits `Y ~ X W + b` with the penalty from `penalties` that minimises the `folds`-fold CV error.
/// `x`: the patterns `[n, p]`, `y`: their latents `[n, q]`. `progress(done, total)` is called per fold.
pub fn fit_ridge_cv(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    penalties: &[f64],
    folds: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<RidgeFit, RidgeError> {
    let ((n, p), q) = (x.dim(), y.ncols());
    if y.nrows() != n {
        return Err(RidgeError::RowsDiffer {
            patterns: n,
            latents: y.nrows(),
        });
    }
    if penalties.is_empty() {
        return Err(RidgeError::NoPenalties);
    }
    if folds < 2 || n < 2 * folds {
        return Err(RidgeError::TooFewTrials { trials: n, folds });
    }
    let xm = to_matrix(x);
    let ym = to_matrix(y);
    let mut errors = vec![0.0f64; penalties.len()];
    for fold in 0..folds {
        let train: Vec<usize> = (0..n).filter(|i| i % folds != fold).collect();
        let val: Vec<usize> = (0..n).filter(|i| i % folds == fold).collect();
        let mut xt = xm.select_rows(&train);
        let mut yt = ym.select_rows(&train);
        let xmean = centre(&mut xt);
        let ymean = centre(&mut yt);
        let mut xv = xm.select_rows(&val);
        for (c, mean) in xmean.iter().enumerate() {
            xv.column_mut(c).add_scalar_mut(-mean);
        }
        let yv = ym.select_rows(&val);
        let gram = &xt * xt.transpose();
        let eig = SymmetricEigen::new(gram);
        let a = &xv * xt.transpose() * &eig.eigenvectors; // [n_val, n_train]
        let b = eig.eigenvectors.transpose() * &yt; // [n_train, q]
        for (pi, &lambda) in penalties.iter().enumerate() {
            let mut scaled = b.clone();
            for (r, e) in eig.eigenvalues.iter().enumerate() {
                scaled.row_mut(r).scale_mut(1.0 / (e.max(0.0) + lambda));
            }
            let mut pred = &a * scaled;
            for (c, mean) in ymean.iter().enumerate() {
                pred.column_mut(c).add_scalar_mut(*mean);
            }
            errors[pi] += (pred - &yv).norm_squared();
        }
        progress(fold + 1, folds + 1);
    }
    let cv_curve: Vec<(f64, f64)> = penalties
        .iter()
        .zip(&errors)
        .map(|(&l, &e)| (l, e / (n * q) as f64))
        .collect();
    let best = cv_curve
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|c| c.0)
        .unwrap_or(penalties[0]);

    // final fit on all trials
    let mut xa = xm;
    let mut ya = ym;
    let xmean = centre(&mut xa);
    let ymean = centre(&mut ya);
    let eig = SymmetricEigen::new(&xa * xa.transpose());
    let mut b = eig.eigenvectors.transpose() * &ya;
    for (r, e) in eig.eigenvalues.iter().enumerate() {
        b.row_mut(r).scale_mut(1.0 / (e.max(0.0) + best));
    }
    let w = xa.transpose() * (&eig.eigenvectors * b); // [p, q]
    let intercept: Vec<f32> = (0..q)
        .map(|c| (ymean[c] - (0..p).map(|r| xmean[r] * w[(r, c)]).sum::<f64>()) as f32)
        .collect();
    let mut weights = Vec::with_capacity(p * q);
    for r in 0..p {
        for c in 0..q {
            weights.push(w[(r, c)] as f32);
        }
    }
    progress(folds + 1, folds + 1);
    Ok(RidgeFit {
        weights,
        intercept,
        penalty: best,
        cv_curve,
    })
}

/// `pattern @ W + b` for one pattern.
pub fn predict(pattern: &[f32], weights: &[f32], intercept: &[f32]) -> Vec<f32> {
    let q = intercept.len();
    let mut out = intercept.to_vec();
    for (x, row) in pattern.iter().zip(weights.chunks_exact(q)) {
        for (o, w) in out.iter_mut().zip(row) {
            *o += x * w;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn recovers_a_linear_map_and_prefers_the_right_penalty() {
        let (n, p, q) = (120, 60, 3);
        let mut rng = Rng::new(1);
        let w_true: Vec<f64> = (0..p * q).map(|_| rng.normal()).collect();
        let x: Vec<f32> = (0..n * p).map(|_| rng.normal() as f32).collect();
        let mut y = vec![0.0f32; n * q];
        for i in 0..n {
            for c in 0..q {
                let v: f64 = (0..p)
                    .map(|j| x[i * p + j] as f64 * w_true[j * q + c])
                    .sum();
                y[i * q + c] = (v + 2.0 + 0.1 * rng.normal()) as f32;
            }
        }
        let (xa, ya) = (
            ArrayView2::from_shape((n, p), &x).unwrap(),
            ArrayView2::from_shape((n, q), &y).unwrap(),
        );
        let fit = fit_ridge_cv(xa, ya, &log_grid(1e-3, 1e3, 13), 5, &|_, _| {}).unwrap();
        assert!(fit.penalty < 1.0, "penalty {}", fit.penalty);
        for (j, (&fitted, &truth)) in fit.weights.iter().zip(&w_true).enumerate() {
            assert!((fitted as f64 - truth).abs() < 0.1, "weight {j}");
        }
        let pred = predict(&x[..p], &fit.weights, &fit.intercept);
        assert!((pred[0] - y[0]).abs() < 0.5);
        assert!(matches!(
            fit_ridge_cv(
                xa.slice(ndarray::s![..8, ..]),
                ya.slice(ndarray::s![..8, ..]),
                &[1.0],
                5,
                &|_, _| {}
            ),
            Err(RidgeError::TooFewTrials { .. })
        ));
        assert!(matches!(
            fit_ridge_cv(xa, ya.slice(ndarray::s![..8, ..]), &[1.0], 5, &|_, _| {}),
            Err(RidgeError::RowsDiffer {
                patterns: 120,
                latents: 8
            })
        ));
    }
}
