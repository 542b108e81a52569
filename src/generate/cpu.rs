//! The generator on the CPU: the exact forward pass of `PGGAN.md` in float32, channels-last.
//!
//! Activations are stored `[H, W, C]` (channels last). Each 3 x 3 convolution processes bands of output rows:
//! the band's patches are gathered into a `[pixels, 9 * Cin]` matrix (the nearest-neighbour upsample is folded
//! into this gather, so the upsampled tensor is never stored), multiplied by the `[9 * Cin, Cout]` weights with a
//! packed SIMD GEMM (`gemm` crate), and bias, leaky ReLU and pixel norm are applied to the band while it is still in
//! cache. Bands run in parallel on the rayon pool; layers too small to split run the GEMM itself in parallel.
//! That is the `direct` algorithm, and the default `winograd` one's path for layers below 32 x 32; larger layers run
//! Winograd F(4x4, 3x3) (`winograd.rs`, with AVX2 kernels in `winograd_avx2.rs`), the last one with the 1 x 1 ToRGB
//! layer fused in. A forward pass alternates between two activation buffers kept across calls.

use gemm::Parallelism;
use rayon::prelude::*;

use super::model::{ConvLayer, PgganModel};
use super::winograd::{self, WinogradLayer};
use super::GenerateError;

/// Bytes of one band's patch matrix: small enough to stay in the cache, large enough for an efficient GEMM.
const BAND_PATCH_BYTES: usize = 1 << 20;

/// A layer whose whole patch matrix is at most this big is one band with the GEMM split across the threads:
/// the small, wide layers (4 x 4 to 16 x 16, 512 channels), where bands of a few rows would each stream the whole
/// 9 MiB weight matrix again.
const SINGLE_BAND_PATCH_BYTES: usize = 8 << 20;

/// How the CPU computes 3 x 3 convolutions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CpuAlgorithm {
    /// Gathered patches times the weights: the plain float32 sum, closest to the float64 reference.
    Direct,
    /// Winograd F(4x4, 3x3) (4 times fewer multiplications) for layers from 32 x 32 up, direct for the smaller
    /// ones.
    Winograd,
}

/// Layers this wide use Winograd. Smaller ones have too few tiles to repay the 4-times-larger transformed
/// weights (measured: docs/benchmarks.md).
const WINOGRAD_SIDES: std::ops::RangeInclusive<usize> = 32..=1024;

enum Plan {
    Direct,
    Winograd(WinogradLayer),
}

/// Runs a [`PgganModel`] on the CPU.
pub struct CpuGenerator {
    model: std::sync::Arc<PgganModel>,
    plans: Vec<Plan>,
    algorithm: CpuAlgorithm,
    /// The two activation buffers a forward pass alternates between, kept across calls: the 1024 x 1024
    /// layers' 64 MiB buffers would otherwise be mapped and page-faulted afresh for every image.
    activations: std::sync::Mutex<(Vec<f32>, Vec<f32>)>,
}

impl CpuGenerator {
    /// Prepares the layers (Winograd weight transforms happen here, once).
    pub fn new(model: std::sync::Arc<PgganModel>, algorithm: CpuAlgorithm) -> CpuGenerator {
        let plans = model
            .convs
            .iter()
            .zip(model.layer_sides())
            .map(|(layer, side)| {
                if algorithm == CpuAlgorithm::Winograd && WINOGRAD_SIDES.contains(&side) {
                    Plan::Winograd(WinogradLayer::new(layer, &winograd::F4))
                } else {
                    Plan::Direct
                }
            })
            .collect();
        CpuGenerator {
            model,
            plans,
            algorithm,
            activations: std::sync::Mutex::new((Vec::new(), Vec::new())),
        }
    }

    pub fn algorithm(&self) -> CpuAlgorithm {
        self.algorithm
    }

    pub fn model(&self) -> &PgganModel {
        &self.model
    }

    /// The model, shared (for another generator on the same network).
    pub fn shared_model(&self) -> std::sync::Arc<PgganModel> {
        self.model.clone()
    }

    /// Generates `latents.len() / latent_size` images; returns float32 NCHW `[N, 3, H, W]`.
    pub fn generate(&self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || !latents.len().is_multiple_of(latent) {
            return Err(GenerateError::Latent {
                expected: latent,
                actual: latents.len(),
            });
        }
        let res = self.model.resolution;
        let mut out = Vec::with_capacity(latents.len() / latent * 3 * res * res);
        for z in latents.chunks_exact(latent) {
            out.extend_from_slice(&self.forward_one(z));
        }
        Ok(out)
    }

    /// Seconds spent in each layer for one latent (dense, each convolution by name, ToRGB), for profiling.
    pub fn layer_times(&self, z: &[f32]) -> Result<Vec<(String, f64)>, GenerateError> {
        if z.len() != self.model.latent_size {
            return Err(GenerateError::Latent {
                expected: self.model.latent_size,
                actual: z.len(),
            });
        }
        let mut times = Vec::new();
        self.forward(z, &mut |name, secs| times.push((name.to_string(), secs)));
        Ok(times)
    }

    /// Convolution layer `index` alone on `input` (`[batch, side_in, side_in, Cin]` channels last), on the direct
    /// path: the reference of the GPU's per-layer parity test. Returns `[batch, side, side, Cout]`.
    pub fn run_layer(
        &self,
        index: usize,
        input: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>, GenerateError> {
        let layer = self
            .model
            .convs
            .get(index)
            .ok_or_else(|| GenerateError::Architecture {
                source_name: self.model.label.clone(),
                message: format!("no convolution layer {index}"),
            })?;
        let side_in = self.model.layer_sides()[index] >> usize::from(layer.upsample);
        let per_image = side_in * side_in * layer.cin;
        if batch == 0 || per_image * batch != input.len() {
            return Err(GenerateError::Architecture {
                source_name: self.model.label.clone(),
                message: format!(
                    "layer {}: {} values are not {batch} images of {side_in} x {side_in} x {}",
                    layer.name,
                    input.len(),
                    layer.cin
                ),
            });
        }
        let mut out = Vec::new();
        let mut one = Vec::new();
        for image in input.chunks_exact(per_image) {
            conv3x3(image, side_in, layer, &mut one);
            out.extend_from_slice(&one);
        }
        Ok(out)
    }

    fn forward_one(&self, z: &[f32]) -> Vec<f32> {
        self.forward(z, &mut |_, _| {})
    }

    fn forward(&self, z: &[f32], on_layer: &mut dyn FnMut(&str, f64)) -> Vec<f32> {
        let m = &*self.model;
        // a second caller at the same time gets buffers of its own rather than waiting
        let mut own = (Vec::new(), Vec::new());
        let mut shared = self.activations.try_lock().ok();
        let (act, next) = match shared.as_deref_mut() {
            Some((a, b)) => (a, b),
            None => (&mut own.0, &mut own.1),
        };
        let t = std::time::Instant::now();
        dense_block(m, z, act);
        on_layer("4x4/Dense", t.elapsed().as_secs_f64());
        let mut side = 4usize;
        let last = m.convs.len().saturating_sub(1);
        for (index, (layer, plan)) in m.convs.iter().zip(&self.plans).enumerate() {
            let t = std::time::Instant::now();
            if let (true, Plan::Winograd(w)) = (index == last, plan) {
                let mut rgb = Vec::new();
                if winograd::conv3x3_to_rgb(
                    act,
                    side,
                    w,
                    &m.to_rgb_weight,
                    &m.to_rgb_bias,
                    &mut rgb,
                )
                .is_some()
                {
                    on_layer(&layer.name, t.elapsed().as_secs_f64());
                    on_layer("ToRGB_lod0 (fused into the last convolution)", 0.0);
                    return rgb;
                }
            }
            side = match plan {
                Plan::Direct => conv3x3(act, side, layer, next),
                Plan::Winograd(w) => winograd::conv3x3(act, side, w, next),
            };
            on_layer(&layer.name, t.elapsed().as_secs_f64());
            std::mem::swap(act, next);
        }
        let t = std::time::Instant::now();
        let rgb = to_rgb(act, side, m);
        on_layer("ToRGB_lod0", t.elapsed().as_secs_f64());
        rgb
    }
}

/// `pixel_norm(z)`, the dense layer, bias, leaky ReLU, pixel norm: `[4, 4, C4]` into `act`.
fn dense_block(m: &PgganModel, z: &[f32], act: &mut Vec<f32>) {
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
    reuse_buffer(act, 16 * c4);
    for p in 0..16 {
        for c in 0..c4 {
            act[p * c4 + c] = dense[c * 16 + p] + m.dense_bias[c];
        }
    }
    for pixel in act.chunks_exact_mut(c4) {
        lrelu_pixel_norm(pixel);
    }
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

/// `dst[m, n] = lhs[m, k] * rhs[k, n]`, all row major (a packed SIMD GEMM from the `gemm` crate).
pub(crate) fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    parallelism: Parallelism,
) {
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "matmul: buffers smaller than their shapes"
    );
    // SAFETY: the three buffers hold at least the m x n, m x k and k x n row-major matrices the strides describe
    // (checked above), and dst does not alias the inputs (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Makes `buffer` hold exactly `len` floats, keeping its allocation where it is large enough; the contents are
/// unspecified (every caller overwrites all of them). A new allocation comes as zeroed pages from the allocator
/// rather than being written with zeros first.
pub(crate) fn reuse_buffer(buffer: &mut Vec<f32>, len: usize) {
    if buffer.capacity() < len {
        *buffer = vec![0.0; len];
    }
    buffer.resize(len, 0.0);
}

/// Adds the bias, then leaky ReLU and pixel norm: the epilogue of every convolution.
pub(crate) fn bias_lrelu_pixel_norm(pixel: &mut [f32], bias: &[f32]) {
    for (v, b) in pixel.iter_mut().zip(bias) {
        *v += b;
    }
    lrelu_pixel_norm(pixel);
}

/// One convolution layer on a `[side, side, cin]` input; writes `[side', side', cout]` into `out` (every element
/// is overwritten) and returns `side'`.
pub(crate) fn conv3x3(
    input: &[f32],
    side_in: usize,
    layer: &ConvLayer,
    out: &mut Vec<f32>,
) -> usize {
    let up = usize::from(layer.upsample);
    let side = side_in << up;
    let k = 9 * layer.cin;
    let cout = layer.cout;
    let rows_per_band = if side * side * k * 4 <= SINGLE_BAND_PATCH_BYTES {
        side
    } else {
        (BAND_PATCH_BYTES / (side * k * 4)).clamp(1, side)
    };
    let bands = side.div_ceil(rows_per_band);
    let threads = rayon::current_num_threads();
    reuse_buffer(out, side * side * cout);
    let run_band =
        |patches: &mut Vec<f32>, band: usize, out_band: &mut [f32], parallelism: Parallelism| {
            let rows = out_band.len() / (side * cout);
            let pixels = rows * side;
            patches.resize(pixels * k, 0.0);
            gather_patches(
                input,
                side_in,
                layer.cin,
                up,
                band * rows_per_band,
                rows,
                side,
                patches,
            );
            matmul(
                out_band,
                patches,
                &layer.weight,
                pixels,
                k,
                cout,
                parallelism,
            );
            for pixel in out_band.chunks_exact_mut(cout) {
                bias_lrelu_pixel_norm(pixel, &layer.bias);
            }
        };
    if bands >= 2 * threads {
        out.par_chunks_mut(rows_per_band * side * cout)
            .enumerate()
            .for_each_init(Vec::new, |patches, (band, out_band)| {
                run_band(patches, band, out_band, Parallelism::None)
            });
    } else {
        let mut patches = Vec::new();
        for (band, out_band) in out.chunks_mut(rows_per_band * side * cout).enumerate() {
            run_band(&mut patches, band, out_band, Parallelism::Rayon(threads));
        }
    }
    side
}

/// Gathers 3 x 3 patches of output rows `y0 .. y0 + rows` into `patches[pixel][(dy * 3 + dx) * cin + ci]`,
/// reading the (optionally x2 nearest-upsampled) input with zero padding.
#[allow(clippy::too_many_arguments)]
fn gather_patches(
    input: &[f32],
    side_in: usize,
    cin: usize,
    up: usize,
    y0: usize,
    rows: usize,
    side: usize,
    patches: &mut [f32],
) {
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

/// The 1 x 1 ToRGB layer: `[side, side, C]` -> planar `[3, side, side]`, no activation. Rows run in parallel.
fn to_rgb(act: &[f32], side: usize, m: &PgganModel) -> Vec<f32> {
    let c = m.final_channels();
    let plane = side * side;
    let (w, b) = (&m.to_rgb_weight, &m.to_rgb_bias);
    let mut out = vec![0.0f32; 3 * plane];
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    red.par_chunks_mut(side)
        .zip(green.par_chunks_mut(side))
        .zip(blue.par_chunks_mut(side))
        .zip(act.par_chunks(side * c))
        .for_each(|(((r, g), bl), row)| {
            for (x, pixel) in row.chunks_exact(c).enumerate() {
                let (mut acc_r, mut acc_g, mut acc_b) = (b[0], b[1], b[2]);
                for (ci, v) in pixel.iter().enumerate() {
                    acc_r += v * w[ci * 3];
                    acc_g += v * w[ci * 3 + 1];
                    acc_b += v * w[ci * 3 + 2];
                }
                r[x] = acc_r;
                g[x] = acc_g;
                bl[x] = acc_b;
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::model::random_checkpoint;

    /// One layer run alone: a batch equals its images run one by one, the layer's output has the next layer's
    /// input shape, and inputs of the wrong size are refused with the layer's name.
    #[test]
    fn a_layer_runs_alone_on_a_batch() {
        let model = std::sync::Arc::new(
            PgganModel::from_checkpoint(&random_checkpoint(16, 256, 32, 32, 3))
                .expect("a valid checkpoint"),
        );
        let g = CpuGenerator::new(model.clone(), CpuAlgorithm::Direct);
        let layer = model
            .convs
            .iter()
            .position(|c| c.upsample)
            .expect("an upsampling layer");
        let (cin, cout) = (model.convs[layer].cin, model.convs[layer].cout);
        let side_in = 4 << model.convs[..layer].iter().filter(|c| c.upsample).count();
        let per_image = side_in * side_in * cin;
        let input: Vec<f32> = (0..2 * per_image)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let both = g.run_layer(layer, &input, 2).expect("runs");
        assert_eq!(both.len(), 2 * 4 * side_in * side_in * cout);
        let first = g.run_layer(layer, &input[..per_image], 1).expect("runs");
        let second = g.run_layer(layer, &input[per_image..], 1).expect("runs");
        assert_eq!(both, [first, second].concat());
        let err = g
            .run_layer(layer, &input[..per_image - 1], 1)
            .expect_err("a short input")
            .to_string();
        assert!(err.contains(&model.convs[layer].name), "{err}");
        assert!(g.run_layer(model.convs.len(), &input, 2).is_err());
    }
}
