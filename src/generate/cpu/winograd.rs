//! Winograd minimal-filtering convolution F(m x m, 3 x 3) for the CPU generator (Lavin & Gray, 2016).
//!
//! A 3 x 3 convolution producing an m x m output tile needs (m + 2)^2 multiplications per input/output channel
//! pair instead of 9 m^2: 2.25 times fewer for F(2, 3), 4 times fewer for F(4, 3). Per layer:
//! 1. weights are transformed once at load time, `U = G g G^T`, stored `[(m+2)^2][Cin][Cout]`;
//! 2. each tile of the (optionally x2 nearest-upsampled, zero-padded) input is transformed, `V = B^T d B`, stored
//!    `[(m+2)^2][tiles][Cin]` (channels innermost, so every step is a SIMD loop over channels);
//! 3. one GEMM per transform position: `M_xi = V_xi U_xi`, `[tiles, Cout]`;
//! 4. the output transform `Y = A^T M A` writes the m x m tile; bias, leaky ReLU and pixel norm follow while the
//!    band is in cache.
//!
//! Bands of tile rows run in parallel. On x86-64 CPUs with AVX2 and FMA, layers whose channel counts are multiples
//! of 8 run the F(4, 3) kernels of `winograd_avx2.rs`; layers with at most `NARROW_COUT` output channels (the
//! 256 to 1024 px layers) then go through blocks of `NARROW_BLOCK_TILES` tiles that stay in L2, with a
//! register-blocked micro-kernel for step 3 instead of the packed GEMM. The last layer can write the image
//! directly through the 1 x 1 ToRGB layer ([`conv3x3_to_rgb`]). Other CPUs and channel counts run portable code.
//!
//! Accuracy in float32 (measured against the float64 reference): F(2, 3) adds about 1e-6 relative error per
//! layer, F(4, 3) about 5e-6; see `docs/benchmarks.md` for the whole network.

use gemm::Parallelism;
use rayon::prelude::*;

use super::ops::{bias_lrelu_pixel_norm, matmul, reuse_buffer};
use super::tiles::{tile_sources, BandSink, WinogradSpec, NARROW_COUT, NARROW_ROW_MULTIPLE};
#[cfg(target_arch = "x86_64")]
use super::winograd_avx2;
use crate::generate::model::ConvLayer;

/// Whether the AVX2 + FMA kernels can run a layer with these channels on this CPU.
fn avx2_supported(cin: usize, cout: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cin.is_multiple_of(8)
            && cout.is_multiple_of(8)
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cin, cout);
        false
    }
}

/// A convolution layer prepared for Winograd: transformed weights `[a*a][cin][cout]`.
#[derive(Debug, Clone)]
pub struct WinogradLayer {
    pub spec: &'static WinogradSpec,
    pub cin: usize,
    pub cout: usize,
    pub upsample: bool,
    pub u: Vec<f32>,
    pub bias: Vec<f32>,
    /// Whether the AVX2 + FMA kernels run this layer (the CPU has them, F(4, 3), channels multiples of 8).
    /// Private: the `unsafe` calls into those kernels rely on it, so only [`WinogradLayer::new`] sets it.
    avx2: bool,
}

impl WinogradLayer {
    /// Transforms the layer's effective weights (`[9 * cin, cout]`, row `(dy * 3 + dx) * cin + ci`) in f64.
    pub fn new(layer: &ConvLayer, spec: &'static WinogradSpec) -> WinogradLayer {
        let (a, cin, cout) = (spec.a, layer.cin, layer.cout);
        let mut u = vec![0.0f32; a * a * cin * cout];
        let mut gg = vec![0.0f64; a * 3];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |dy: usize, dx: usize| {
                    layer.weight[((dy * 3 + dx) * cin + ci) * cout + co] as f64
                };
                // gg = G g  (a x 3)
                for i in 0..a {
                    for dx in 0..3 {
                        gg[i * 3 + dx] = (0..3).map(|dy| spec.g[i * 3 + dy] * g(dy, dx)).sum();
                    }
                }
                // U = gg G^T  (a x a)
                for i in 0..a {
                    for j in 0..a {
                        let v: f64 = (0..3).map(|dx| gg[i * 3 + dx] * spec.g[j * 3 + dx]).sum();
                        u[((i * a + j) * cin + ci) * cout + co] = v as f32;
                    }
                }
            }
        }
        let avx2 = spec.m == 4 && avx2_supported(cin, cout);
        WinogradLayer {
            spec,
            cin,
            cout,
            upsample: layer.upsample,
            u,
            bias: layer.bias.clone(),
            avx2,
        }
    }

    /// The same layer on the portable kernels only (for comparing the two paths).
    #[cfg(test)]
    fn portable(mut self) -> WinogradLayer {
        self.avx2 = false;
        self
    }

    /// Narrow layers (few output channels) run in small blocks with the AVX2 micro-kernel instead of the
    /// packed GEMM.
    fn narrow(&self) -> bool {
        self.avx2 && self.cout <= NARROW_COUT
    }
}

/// Upper bound of a band's transformed-input buffer; a whole layer below [`SINGLE_BAND_BYTES`] is one band.
const BAND_BYTES: usize = 2 << 20;
const SINGLE_BAND_BYTES: usize = 24 << 20;

/// Tiles per block on the narrow path: the block's transformed input and products (36 x tiles x channels)
/// stay in the core's L2 cache between the three steps.
const NARROW_BLOCK_TILES: usize = 24;

/// Layers with at most this many tiles are one band: their transforms are cheap, and their products (wide
/// channels, few rows) run best split by transform position across the threads.
const SMALL_LAYER_TILES: usize = 64;

/// Runs the layer on `[side_in, side_in, cin]`; writes `[side, side, cout]` with bias, leaky ReLU and pixel
/// norm applied into `out` (every element is overwritten) and returns `side`.
pub fn conv3x3(input: &[f32], side_in: usize, layer: &WinogradLayer, out: &mut Vec<f32>) -> usize {
    let side = side_in << usize::from(layer.upsample);
    let band_rows = band_tile_rows(layer, side);
    reuse_buffer(out, side * side * layer.cout);
    let sinks = out
        .chunks_mut(band_rows * layer.spec.m * side * layer.cout)
        .map(BandSink::Activations)
        .collect();
    run_bands(input, side_in, side, layer, band_rows, sinks);
    side
}

/// The last layer with the 1 x 1 ToRGB layer fused into its epilogue: each finished pixel goes straight to
/// planar RGB (`rgb_weight` `[C, 3]`, no activation), so the widest activation is never stored. Writes
/// `[3, side, side]` into `rgb` and returns `side`, or `None` (nothing done) where the layer does not run on the
/// AVX2 kernels, which alone implement the fusion.
pub fn conv3x3_to_rgb(
    input: &[f32],
    side_in: usize,
    layer: &WinogradLayer,
    rgb_weight: &[f32],
    rgb_bias: &[f32],
    rgb: &mut Vec<f32>,
) -> Option<usize> {
    if !layer.avx2 || rgb_weight.len() != 3 * layer.cout || rgb_bias.len() != 3 {
        return None;
    }
    let side = side_in << usize::from(layer.upsample);
    let band_rows = band_tile_rows(layer, side);
    let rows = band_rows * layer.spec.m;
    // planar weights: all red weights, then green, then blue
    let weight: Vec<f32> = (0..3)
        .flat_map(|colour| rgb_weight.iter().skip(colour).step_by(3).copied())
        .collect();
    let bias = [rgb_bias[0], rgb_bias[1], rgb_bias[2]];
    reuse_buffer(rgb, 3 * side * side);
    let (red, rest) = rgb.split_at_mut(side * side);
    let (green, blue) = rest.split_at_mut(side * side);
    let sinks = red
        .chunks_mut(rows * side)
        .zip(green.chunks_mut(rows * side))
        .zip(blue.chunks_mut(rows * side))
        .map(|((r, g), b)| BandSink::Rgb {
            planes: [r, g, b],
            weight: &weight,
            bias,
        })
        .collect();
    run_bands(input, side_in, side, layer, band_rows, sinks);
    Some(side)
}

/// Tile rows per band: one on the narrow path (which blocks further inside the band), else bands of about
/// [`BAND_BYTES`] of transformed input, at least one per thread (so that the transforms run in parallel too),
/// or the whole layer where it is small.
fn band_tile_rows(layer: &WinogradLayer, side: usize) -> usize {
    let tiles_per_row = side.div_ceil(layer.spec.m);
    if layer.narrow() {
        return 1;
    }
    let per_tile_row = layer.spec.a * layer.spec.a * tiles_per_row * layer.cin * 4;
    if tiles_per_row * tiles_per_row <= SMALL_LAYER_TILES {
        return tiles_per_row;
    }
    let rows = if per_tile_row * tiles_per_row <= SINGLE_BAND_BYTES {
        tiles_per_row
    } else {
        (BAND_BYTES / per_tile_row).clamp(1, tiles_per_row)
    };
    rows.min(tiles_per_row.div_ceil(rayon::current_num_threads()))
}

/// Runs the bands of `band_rows` tile rows each, in parallel where there are enough of them, else one after the
/// other with the products split across the threads.
fn run_bands(
    input: &[f32],
    side_in: usize,
    side: usize,
    layer: &WinogradLayer,
    band_rows: usize,
    sinks: Vec<BandSink>,
) {
    if sinks.len() >= rayon::current_num_threads() {
        sinks.into_par_iter().enumerate().for_each_init(
            Buffers::default,
            |buffers, (band, mut sink)| {
                run_band(
                    input,
                    side_in,
                    side,
                    layer,
                    band * band_rows,
                    &mut sink,
                    buffers,
                    false,
                )
            },
        );
    } else {
        let mut buffers = Buffers::default();
        for (band, mut sink) in sinks.into_iter().enumerate() {
            run_band(
                input,
                side_in,
                side,
                layer,
                band * band_rows,
                &mut sink,
                &mut buffers,
                true,
            );
        }
    }
}

#[derive(Default)]
struct Buffers {
    v: Vec<f32>,
    m: Vec<f32>,
    tmp: Vec<f32>,
    zeros: Vec<f32>,
}

/// Computes the output rows of one band (tile rows from `tile_row0`) block by block: input transform, one
/// product per transform position, output transform with the epilogue.
#[allow(clippy::too_many_arguments)]
fn run_band(
    input: &[f32],
    side_in: usize,
    side: usize,
    layer: &WinogradLayer,
    tile_row0: usize,
    sink: &mut BandSink,
    buf: &mut Buffers,
    parallel_gemm: bool,
) {
    let spec = layer.spec;
    let (m, a, cin, cout) = (spec.m, spec.a, layer.cin, layer.cout);
    let a2 = a * a;
    let up = usize::from(layer.upsample);
    let tiles_per_row = side.div_ceil(m);
    let out_rows = sink.rows(side, cout);
    let tiles = out_rows.div_ceil(m) * tiles_per_row;
    let narrow = layer.narrow();
    let block = if narrow {
        NARROW_BLOCK_TILES.min(tiles)
    } else {
        tiles
    };
    // rows of each transform position's matrices; the narrow micro-kernels take whole groups of rows
    let stride_tiles = if narrow {
        block.next_multiple_of(NARROW_ROW_MULTIPLE)
    } else {
        block
    };
    buf.v.resize(a2 * stride_tiles * cin, 0.0);
    buf.m.resize(a2 * stride_tiles * cout, 0.0);
    buf.tmp.resize(a * a * cin.max(cout), 0.0);
    buf.zeros.resize(cin, 0.0);
    let tile_origin = |t: usize| ((t / tiles_per_row) * m, (t % tiles_per_row) * m);

    for first in (0..tiles).step_by(block) {
        let count = block.min(tiles - first);
        // 1. input transform
        for t in 0..count {
            let (y0, x0) = tile_origin(first + t);
            let sources = tile_sources(
                spec,
                side_in,
                side,
                up,
                cin,
                (tile_row0 * m + y0) as isize - 1,
                x0 as isize - 1,
            );
            if layer.avx2 {
                // SAFETY: `avx2` is set only where the CPU has AVX2 and FMA and the channels are multiples of 8;
                // `input_tile` slices `input` at every source (bounds-checked) and checks the sizes of `v` and
                // `zeros`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    winograd_avx2::input_tile(
                        input,
                        &sources,
                        &buf.zeros,
                        cin,
                        &mut buf.v[t * cin..],
                        stride_tiles * cin,
                    )
                };
            } else {
                input_tile_portable(
                    spec,
                    input,
                    &sources,
                    cin,
                    &mut buf.tmp,
                    &buf.zeros,
                    &mut buf.v[t * cin..],
                    stride_tiles * cin,
                );
            }
        }

        // 2. one product per transform position
        let gemm_one = |xi: usize, m_xi: &mut [f32]| {
            let v_xi = &buf.v[xi * stride_tiles * cin..(xi + 1) * stride_tiles * cin];
            let u_xi = &layer.u[xi * cin * cout..(xi + 1) * cin * cout];
            if narrow {
                // SAFETY: the narrow path is taken only with `avx2` set (see `narrow`); the buffers hold
                // `stride_tiles` rows, a multiple of NARROW_ROW_MULTIPLE.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    winograd_avx2::gemm_narrow(m_xi, v_xi, u_xi, stride_tiles, cin, cout)
                };
            } else {
                matmul(m_xi, v_xi, u_xi, count, cin, cout, Parallelism::None);
            }
        };
        if parallel_gemm && !narrow {
            buf.m
                .par_chunks_mut(stride_tiles * cout)
                .enumerate()
                .for_each(|(xi, m_xi)| gemm_one(xi, m_xi));
        } else {
            for (xi, m_xi) in buf.m.chunks_mut(stride_tiles * cout).enumerate() {
                gemm_one(xi, m_xi);
            }
        }

        // 3. output transform (and, on the AVX2 path, the epilogue)
        for t in 0..count {
            let (y0, x0) = tile_origin(first + t);
            let m_t = &buf.m[t * cout..];
            if layer.avx2 {
                // SAFETY: as for the input transform.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    winograd_avx2::output_tile(
                        m_t,
                        stride_tiles * cout,
                        cout,
                        &layer.bias,
                        &mut buf.tmp,
                        sink,
                        out_rows,
                        side,
                        y0,
                        x0,
                    )
                };
            } else if let BandSink::Activations(out_band) = sink {
                output_tile_portable(
                    spec,
                    m_t,
                    stride_tiles * cout,
                    cout,
                    &mut buf.tmp,
                    out_band,
                    out_rows,
                    side,
                    y0,
                    x0,
                );
            }
        }
    }
    if let (false, BandSink::Activations(out_band)) = (layer.avx2, sink) {
        for pixel in out_band.chunks_exact_mut(cout) {
            bias_lrelu_pixel_norm(pixel, &layer.bias);
        }
    }
}

/// The first half of a tile transform: `tmp[i][c] = sum_r mat[i][r] x(r, c)` for `rows` x `a` coefficients `mat`
/// (row major) and an `a` x `a` tile `x` of `width`-channel vectors; zero coefficients are skipped.
fn left_multiply<'x>(
    tmp: &mut [f32],
    mat: &[f32],
    rows: usize,
    a: usize,
    width: usize,
    x: impl Fn(usize, usize) -> &'x [f32],
) {
    tmp.fill(0.0);
    for i in 0..rows {
        for r in 0..a {
            let coef = mat[i * a + r];
            if coef == 0.0 {
                continue;
            }
            for c in 0..a {
                axpy(
                    &mut tmp[(i * a + c) * width..(i * a + c + 1) * width],
                    coef,
                    x(r, c),
                );
            }
        }
    }
}

/// `V = B^T d B` for one tile, any channel count: `v` points at the tile's row of position 0.
#[allow(clippy::too_many_arguments)]
fn input_tile_portable(
    spec: &WinogradSpec,
    input: &[f32],
    sources: &[Option<usize>],
    cin: usize,
    tmp: &mut [f32],
    zeros: &[f32],
    v: &mut [f32],
    stride: usize,
) {
    let a = spec.a;
    let pixel = |r: usize, c: usize| -> &[f32] {
        match sources[r * a + c] {
            Some(src) => &input[src..src + cin],
            None => zeros,
        }
    };
    // tmp[i][c] = sum_r BT[i][r] d[r][c]
    let tmp = &mut tmp[..a * a * cin];
    left_multiply(tmp, spec.bt, a, a, cin, pixel);
    // V[i][j] = sum_c BT[j][c] tmp[i][c]
    for i in 0..a {
        for j in 0..a {
            let dst = &mut v[(i * a + j) * stride..(i * a + j) * stride + cin];
            dst.fill(0.0);
            for c in 0..a {
                let coef = spec.bt[j * a + c];
                if coef != 0.0 {
                    axpy(dst, coef, &tmp[(i * a + c) * cin..(i * a + c + 1) * cin]);
                }
            }
        }
    }
}

/// `Y = A^T M A` for one tile, any channel count, written into `out` at `(y0, x0)` (clipped), no epilogue.
#[allow(clippy::too_many_arguments)]
fn output_tile_portable(
    spec: &WinogradSpec,
    m_t: &[f32],
    stride: usize,
    cout: usize,
    tmp: &mut [f32],
    out: &mut [f32],
    out_rows: usize,
    side: usize,
    y0: usize,
    x0: usize,
) {
    let (m, a) = (spec.m, spec.a);
    let mrow = |r: usize, c: usize| &m_t[(r * a + c) * stride..(r * a + c) * stride + cout];
    // tmp[i][c] = sum_r AT[i][r] M[r][c]
    let tmp = &mut tmp[..m * a * cout];
    left_multiply(tmp, spec.at, m, a, cout, mrow);
    for i in 0..m.min(out_rows.saturating_sub(y0)) {
        for j in 0..m.min(side.saturating_sub(x0)) {
            let (y, x) = (y0 + i, x0 + j);
            let dst = &mut out[(y * side + x) * cout..(y * side + x + 1) * cout];
            dst.fill(0.0);
            for c in 0..a {
                let coef = spec.at[j * a + c];
                if coef != 0.0 {
                    axpy(dst, coef, &tmp[(i * a + c) * cout..(i * a + c + 1) * cout]);
                }
            }
        }
    }
}

/// `y += alpha * x`, vectorised by the compiler.
#[inline]
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    if alpha == 1.0 {
        for (y, x) in y.iter_mut().zip(x) {
            *y += x;
        }
    } else if alpha == -1.0 {
        for (y, x) in y.iter_mut().zip(x) {
            *y -= x;
        }
    } else {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::cpu::tiles::{F2, F4};
    use crate::rng::Rng;

    fn random_layer(cin: usize, cout: usize, upsample: bool, seed: u64) -> ConvLayer {
        let mut rng = Rng::new(seed);
        let scale = (1.0 / (9.0 * cin as f64)).sqrt();
        ConvLayer {
            name: format!("{cin}x{cout}"),
            cin,
            cout,
            upsample,
            weight: (0..9 * cin * cout)
                .map(|_| (scale * rng.normal()) as f32)
                .collect(),
            bias: (0..cout).map(|_| (0.1 * rng.normal()) as f32).collect(),
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Every path (AVX2 narrow, AVX2 wide, portable; F(2, 3) and F(4, 3)) against the direct convolution, on
    /// sides that are and are not multiples of the tile and channel counts that are and are not multiples of 8.
    #[test]
    fn winograd_paths_match_the_direct_convolution() {
        let cases = [
            (8, 8, 16, false),
            (16, 16, 32, true),
            (32, 16, 20, false),
            (64, 72, 12, true),
            (24, 136, 8, false),
            (16, 24, 10, false),
            (8, 16, 7, true),
            (5, 7, 10, false),
        ];
        for (case, &(cin, cout, side_in, upsample)) in cases.iter().enumerate() {
            let layer = random_layer(cin, cout, upsample, case as u64 + 1);
            let mut rng = Rng::new(100 + case as u64);
            let input: Vec<f32> = (0..side_in * side_in * cin)
                .map(|_| rng.normal() as f32)
                .collect();
            let mut direct = Vec::new();
            let side = crate::generate::cpu::ops::conv3x3(&input, side_in, &layer, &mut direct);
            for spec in [&F2, &F4] {
                let fast = WinogradLayer::new(&layer, spec);
                // a reused buffer holding stale values: every element must be overwritten
                let mut ours = vec![f32::NAN; 3 * side * side * cout];
                let ours_side = conv3x3(&input, side_in, &fast, &mut ours);
                assert_eq!(ours_side, side);
                let err = max_abs_diff(&ours, &direct);
                assert!(
                    err < 2e-4,
                    "{} (F{}, avx2 {}): max abs {err}",
                    layer.name,
                    spec.m,
                    fast.avx2
                );
                let mut portable = Vec::new();
                conv3x3(&input, side_in, &fast.clone().portable(), &mut portable);
                let err = max_abs_diff(&portable, &direct);
                assert!(
                    err < 2e-4,
                    "{} (F{}, portable): max abs {err}",
                    layer.name,
                    spec.m
                );
            }
        }
    }

    /// The last layer with ToRGB fused into its epilogue equals the layer, then the 1 x 1 convolution.
    #[test]
    fn fused_to_rgb_matches_the_separate_layer() {
        let (cin, cout, side_in) = (32, 16, 24);
        let layer = random_layer(cin, cout, true, 9);
        let fast = WinogradLayer::new(&layer, &F4);
        let mut rng = Rng::new(10);
        let input: Vec<f32> = (0..side_in * side_in * cin)
            .map(|_| rng.normal() as f32)
            .collect();
        let rgb_weight: Vec<f32> = (0..3 * cout).map(|_| rng.normal() as f32 * 0.25).collect();
        let rgb_bias = [0.1f32, -0.2, 0.3];
        let mut rgb = vec![f32::NAN; 7];
        let Some(side) = conv3x3_to_rgb(&input, side_in, &fast, &rgb_weight, &rgb_bias, &mut rgb)
        else {
            assert!(!fast.avx2, "the AVX2 layer must run fused");
            return;
        };
        let mut act = Vec::new();
        crate::generate::cpu::ops::conv3x3(&input, side_in, &layer, &mut act);
        let plane = side * side;
        let mut expected = vec![0.0f32; 3 * plane];
        for (p, pixel) in act.chunks_exact(cout).enumerate() {
            for colour in 0..3 {
                expected[colour * plane + p] = rgb_bias[colour]
                    + pixel
                        .iter()
                        .enumerate()
                        .map(|(c, v)| v * rgb_weight[c * 3 + colour])
                        .sum::<f32>();
            }
        }
        let err = max_abs_diff(&rgb, &expected);
        assert!(err < 2e-4, "fused ToRGB: max abs {err}");
    }
}
