//! HYPER's evaluation measures, as `docs/hyper.md` defines them: latent similarity `1 / (1 + MSE)` (and cosine),
//! attribute scores along InterFaceGAN boundaries, identification, pixel Pearson r of luminance and SSIM at
//! 224 x 224, and permutation tests against random latents.

/// `1 / (1 + mean((a - b)^2))`.
pub fn latent_similarity(pred: &[f32], truth: &[f32]) -> f64 {
    let mse = pred
        .iter()
        .zip(truth)
        .map(|(a, b)| ((*a - *b) as f64).powi(2))
        .sum::<f64>()
        / pred.len().max(1) as f64;
    1.0 / (1.0 + mse)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Pearson correlation.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// The attribute score of a latent: `z_hat . n` with `z_hat = z / |z| * sqrt(dim)`.
pub fn attribute_score(z: &[f32], boundary: &[f64]) -> f64 {
    let norm = z
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let scale = (z.len() as f64).sqrt() / norm;
    z.iter()
        .zip(boundary)
        .map(|(x, n)| *x as f64 * scale * n)
        .sum()
}

/// Identification among the test items: pairwise accuracy (how often an item's prediction correlates better
/// with its own truth than with another stimulus's) and N-way accuracy (own truth ranks first). Items that show
/// the same stimulus (repetitions) are not competitors.
pub fn identification(preds: &[Vec<f32>], truths: &[Vec<f32>]) -> (f64, f64) {
    let n = preds.len();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let to64 = |v: &Vec<f32>| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    let (p64, t64): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (
        preds.iter().map(to64).collect(),
        truths.iter().map(to64).collect(),
    );
    let (mut pair_hits, mut pairs, mut top) = (0usize, 0usize, 0usize);
    for i in 0..n {
        let own = pearson(&p64[i], &t64[i]);
        let mut best = true;
        for j in 0..n {
            if i == j || truths[j] == truths[i] {
                continue;
            }
            let other = pearson(&p64[i], &t64[j]);
            pairs += 1;
            if own > other {
                pair_hits += 1;
            } else {
                best = false;
            }
        }
        if best {
            top += 1;
        }
    }
    (
        pair_hits as f64 / pairs.max(1) as f64,
        top as f64 / n as f64,
    )
}

/// Luminance (ITU-R BT.601) of interleaved RGB bytes.
pub fn luminance(rgb: &[u8]) -> Vec<f64> {
    rgb.chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect()
}

/// Mean SSIM of two RGB images of `side` x `side`, exactly as `skimage.metrics.structural_similarity` with its
/// defaults for uint8 colour images (`channel_axis=-1`): 7 x 7 uniform window, K1 0.01, K2 0.03, data range 255,
/// sample covariance, the mean over pixels whose window lies inside the image, averaged over channels.
/// Window sums come from summed-area tables.
pub fn ssim_rgb(a: &[u8], b: &[u8], side: usize) -> f64 {
    const WIN: usize = 7;
    let pad = (WIN - 1) / 2;
    if side < WIN {
        return f64::NAN;
    }
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let stride = side + 1;
    let mut total = 0.0;
    for ch in 0..3 {
        // integral images of x, y, x^2, y^2, xy with a zero first row and column
        let mut tables = vec![[0.0f64; 5]; stride * stride];
        for r in 0..side {
            let mut row = [0.0f64; 5];
            for c in 0..side {
                let (x, y) = (
                    a[(r * side + c) * 3 + ch] as f64,
                    b[(r * side + c) * 3 + ch] as f64,
                );
                let v = [x, y, x * x, y * y, x * y];
                for k in 0..5 {
                    row[k] += v[k];
                    tables[(r + 1) * stride + c + 1][k] = tables[r * stride + c + 1][k] + row[k];
                }
            }
        }
        let window = |r0: usize, c0: usize, k: usize| {
            let (r1, c1) = (r0 + WIN, c0 + WIN);
            tables[r1 * stride + c1][k] - tables[r0 * stride + c1][k] - tables[r1 * stride + c0][k]
                + tables[r0 * stride + c0][k]
        };
        let (mut sum, mut count) = (0.0, 0usize);
        for r in pad..side - pad {
            for c in pad..side - pad {
                let (r0, c0) = (r - pad, c - pad);
                let (ux, uy) = (window(r0, c0, 0) / np, window(r0, c0, 1) / np);
                let vx = cov_norm * (window(r0, c0, 2) / np - ux * ux);
                let vy = cov_norm * (window(r0, c0, 3) / np - uy * uy);
                let vxy = cov_norm * (window(r0, c0, 4) / np - ux * uy);
                sum += ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                count += 1;
            }
        }
        total += sum / count.max(1) as f64;
    }
    total / 3.0
}

/// Resizes interleaved RGB bytes to `to` x `to` (bilinear, as image's triangle filter).
pub fn resize_rgb(rgb: &[u8], side: usize, to: usize) -> Vec<u8> {
    if side == to {
        return rgb.to_vec();
    }
    match image::RgbImage::from_raw(side as u32, side as u32, rgb.to_vec()) {
        Some(img) => image::imageops::resize(
            &img,
            to as u32,
            to as u32,
            image::imageops::FilterType::Triangle,
        )
        .into_raw(),
        None => vec![0; to * to * 3],
    }
}

/// One-sided permutation p-value: the fraction of null values at least as large as `observed` (with the +1
/// correction, so it is never 0).
pub fn p_value(observed: f64, null: &[f64]) -> f64 {
    (1 + null.iter().filter(|v| **v >= observed).count()) as f64 / (1 + null.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_floors_and_identification() {
        let z = vec![1.0f32, -1.0, 0.5, 2.0];
        assert_eq!(latent_similarity(&z, &z), 1.0);
        assert!((latent_similarity(&[0.0; 4], &z) - 1.0 / (1.0 + 6.25 / 4.0)).abs() < 1e-12);
        assert!((cosine(&z, &z.iter().map(|v| v * 3.0).collect::<Vec<_>>()) - 1.0).abs() < 1e-12);
        let truths = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let (pair, top) = identification(&truths, &truths);
        assert_eq!((pair, top), (1.0, 1.0));
        assert!((ssim_rgb(&[7u8; 3 * 16 * 16], &[7u8; 3 * 16 * 16], 16) - 1.0).abs() < 1e-12);
        assert!(p_value(5.0, &[1.0, 2.0, 6.0]) == 0.5);
    }
}
