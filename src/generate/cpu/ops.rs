//! The CPU generator's building blocks in float32, channels last: the dense block, the direct 3 x 3 convolution
//! (patches gathered by bands of output rows, the nearest-neighbour upsample folded into the gather, a packed SIMD
//! GEMM), its epilogue (bias, leaky ReLU, pixel norm), the 1 x 1 ToRGB layer, and the GEMM and buffer helpers the
//! Winograd path shares.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::generate::model::{ConvLayer, PgganModel};

/// Bytes of one band's patch matrix: small enough to stay in the cache, large enough for an efficient GEMM.
const BAND_PATCH_BYTES: usize = 1 << 20;

/// A layer whose whole patch matrix is at most this big is one band with the GEMM split across the threads:
/// the small, wide layers (4 x 4 to 16 x 16, 512 channels), where bands of a few rows would each stream the whole
/// 9 MiB weight matrix again.
const SINGLE_BAND_PATCH_BYTES: usize = 8 << 20;

/// `pixel_norm(z)`, the dense layer, bias, leaky ReLU, pixel norm: `[4, 4, C4]` into `act`.
pub(super) fn dense_block(m: &PgganModel, z: &[f32], act: &mut Vec<f32>) {
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
pub(super) fn matmul(
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
pub(super) fn reuse_buffer(buffer: &mut Vec<f32>, len: usize) {
    if buffer.capacity() < len {
        *buffer = vec![0.0; len];
    }
    buffer.resize(len, 0.0);
}

/// Adds the bias, then leaky ReLU and pixel norm: the epilogue of every convolution.
pub(super) fn bias_lrelu_pixel_norm(pixel: &mut [f32], bias: &[f32]) {
    for (v, b) in pixel.iter_mut().zip(bias) {
        *v += b;
    }
    lrelu_pixel_norm(pixel);
}

/// One convolution layer on a `[side, side, cin]` input; writes `[side', side', cout]` into `out` (every element
/// is overwritten) and returns `side'`.
pub(super) fn conv3x3(
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
pub(super) fn to_rgb(act: &[f32], side: usize, m: &PgganModel) -> Vec<f32> {
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
