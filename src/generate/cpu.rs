//! The generator on the CPU: the exact forward pass of `PGGAN.md` in float32, channels-last.
//!
//! Activations are stored `[H, W, C]` (channels last). Each 3 x 3 convolution processes bands of output rows:
//! the band's patches are gathered into a `[pixels, 9 * Cin]` matrix (the nearest-neighbour upsample is folded
//! into this gather, so the upsampled tensor is never stored), multiplied by the `[9 * Cin, Cout]` weights with a
//! packed SIMD GEMM (`gemm` crate), and bias, leaky ReLU and pixel norm are applied to the band while it is still in
//! cache. Bands run in parallel on the rayon pool; layers too small to split run the GEMM itself in parallel.

use gemm::Parallelism;
use rayon::prelude::*;

use super::model::{ConvLayer, PgganModel};
use super::GenerateError;

/// Bytes of one band's patch matrix: small enough to stay in the cache, large enough for an efficient GEMM.
const BAND_PATCH_BYTES: usize = 1 << 20;

/// Runs a [`PgganModel`] on the CPU.
pub struct CpuGenerator {
    model: std::sync::Arc<PgganModel>,
}

impl CpuGenerator {
    pub fn new(model: std::sync::Arc<PgganModel>) -> CpuGenerator {
        CpuGenerator { model }
    }

    pub fn model(&self) -> &PgganModel {
        &self.model
    }

    /// Generates `latents.len() / latent_size` images; returns float32 NCHW `[N, 3, H, W]`.
    pub fn generate(&self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || latents.len() % latent != 0 {
            return Err(GenerateError::Latent { expected: latent, actual: latents.len() });
        }
        let res = self.model.resolution;
        let mut out = Vec::with_capacity(latents.len() / latent * 3 * res * res);
        for z in latents.chunks_exact(latent) {
            out.extend_from_slice(&self.forward_one(z));
        }
        Ok(out)
    }

    fn forward_one(&self, z: &[f32]) -> Vec<f32> {
        let m = &*self.model;
        let mut act = dense_block(m, z);
        let mut side = 4usize;
        for layer in &m.convs {
            let (next, next_side) = conv3x3(&act, side, layer);
            act = next;
            side = next_side;
        }
        to_rgb(&act, side, m)
    }
}

/// `pixel_norm(z)`, the dense layer, bias, leaky ReLU, pixel norm: `[4, 4, C4]`.
fn dense_block(m: &PgganModel, z: &[f32]) -> Vec<f32> {
    let c4 = m.c4;
    let mean_sq = z.iter().map(|v| v * v).sum::<f32>() / z.len() as f32;
    let inv = 1.0 / (mean_sq + 1e-8).sqrt();
    let mut dense = vec![0.0f32; 16 * c4];
    for (i, &zi) in z.iter().enumerate() {
        let x = zi * inv;
        let row = &m.dense_weight[i * 16 * c4..(i + 1) * 16 * c4];
        for (d, w) in dense.iter_mut().zip(row) {
            *d += x * w;
        }
    }
    let mut act = vec![0.0f32; 16 * c4];
    for p in 0..16 {
        for c in 0..c4 {
            act[p * c4 + c] = dense[c * 16 + p] + m.dense_bias[c];
        }
    }
    for pixel in act.chunks_exact_mut(c4) {
        lrelu_pixel_norm(pixel);
    }
    act
}

/// Leaky ReLU (0.2), then `x / sqrt(mean(x^2) + 1e-8)` over the channels of one pixel.
#[inline]
fn lrelu_pixel_norm(pixel: &mut [f32]) {
    let mut sum_sq = 0.0f32;
    for v in pixel.iter_mut() {
        *v = v.max(0.2 * *v);
        sum_sq += *v * *v;
    }
    let inv = 1.0 / (sum_sq / pixel.len() as f32 + 1e-8).sqrt();
    for v in pixel.iter_mut() {
        *v *= inv;
    }
}

/// One convolution layer on a `[side, side, cin]` input; returns `[side', side', cout]` and `side'`.
fn conv3x3(input: &[f32], side_in: usize, layer: &ConvLayer) -> (Vec<f32>, usize) {
    let up = usize::from(layer.upsample);
    let side = side_in << up;
    let k = 9 * layer.cin;
    let cout = layer.cout;
    let rows_per_band = (BAND_PATCH_BYTES / (side * k * 4)).clamp(1, side);
    let bands = side.div_ceil(rows_per_band);
    let threads = rayon::current_num_threads();
    let mut out = vec![0.0f32; side * side * cout];
    let run_band = |patches: &mut Vec<f32>, band: usize, out_band: &mut [f32], parallelism: Parallelism| {
        let rows = out_band.len() / (side * cout);
        let pixels = rows * side;
        patches.resize(pixels * k, 0.0);
        gather_patches(input, side_in, layer.cin, up, band * rows_per_band, rows, side, patches);
        // SAFETY: out_band is [pixels, cout] row-major, patches [pixels, k] row-major, weight [k, cout] row-major,
        // all with the lengths the strides describe.
        unsafe {
            gemm::gemm(
                pixels,
                cout,
                k,
                out_band.as_mut_ptr(),
                1,
                cout as isize,
                false,
                patches.as_ptr(),
                1,
                k as isize,
                layer.weight.as_ptr(),
                1,
                cout as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        for pixel in out_band.chunks_exact_mut(cout) {
            for (v, b) in pixel.iter_mut().zip(&layer.bias) {
                *v += b;
            }
            lrelu_pixel_norm(pixel);
        }
    };
    if bands >= 2 * threads {
        out.par_chunks_mut(rows_per_band * side * cout)
            .enumerate()
            .for_each_init(Vec::new, |patches, (band, out_band)| run_band(patches, band, out_band, Parallelism::None));
    } else {
        let mut patches = Vec::new();
        for (band, out_band) in out.chunks_mut(rows_per_band * side * cout).enumerate() {
            run_band(&mut patches, band, out_band, Parallelism::Rayon(threads));
        }
    }
    (out, side)
}

/// Gathers 3 x 3 patches of output rows `y0 .. y0 + rows` into `patches[pixel][(dy * 3 + dx) * cin + ci]`,
/// reading the (optionally x2 nearest-upsampled) input with zero padding.
#[allow(clippy::too_many_arguments)]
fn gather_patches(input: &[f32], side_in: usize, cin: usize, up: usize, y0: usize, rows: usize, side: usize, patches: &mut [f32]) {
    let k = 9 * cin;
    for r in 0..rows {
        let y = y0 + r;
        for x in 0..side {
            let dst_pixel = &mut patches[(r * side + x) * k..(r * side + x + 1) * k];
            for dy in 0..3 {
                let sy = y + dy;
                let row_ok = sy >= 1 && sy <= side;
                for dx in 0..3 {
                    let sx = x + dx;
                    let dst = &mut dst_pixel[(dy * 3 + dx) * cin..(dy * 3 + dx + 1) * cin];
                    if row_ok && sx >= 1 && sx <= side {
                        let src = (((sy - 1) >> up) * side_in + ((sx - 1) >> up)) * cin;
                        dst.copy_from_slice(&input[src..src + cin]);
                    } else {
                        dst.fill(0.0);
                    }
                }
            }
        }
    }
}

/// The 1 x 1 ToRGB layer: `[side, side, C]` -> planar `[3, side, side]`, no activation.
fn to_rgb(act: &[f32], side: usize, m: &PgganModel) -> Vec<f32> {
    let c = m.final_channels();
    let plane = side * side;
    let mut out = vec![0.0f32; 3 * plane];
    for (p, pixel) in act.chunks_exact(c).enumerate() {
        for k in 0..3 {
            let mut acc = m.to_rgb_bias[k];
            for (ci, v) in pixel.iter().enumerate() {
                acc += v * m.to_rgb_weight[ci * 3 + k];
            }
            out[k * plane + p] = acc;
        }
    }
    out
}
