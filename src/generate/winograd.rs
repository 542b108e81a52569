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
//! Accuracy in float32 (measured against the float64 reference): F(2, 3) adds about 1e-6 relative error per
//! layer, F(4, 3) about 5e-6; see `docs/benchmarks.md` for the whole network.

use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::matmul;
use super::model::ConvLayer;

/// The transform matrices of one F(m, 3) variant.
#[derive(Debug)]
pub struct WinogradSpec {
    /// Output tile side.
    pub m: usize,
    /// Input tile side, m + 2.
    pub a: usize,
    /// `B^T`, a x a, row major.
    bt: &'static [f32],
    /// `G`, a x 3, row major (exact rationals, applied in f64).
    g: &'static [f64],
    /// `A^T`, m x a, row major.
    at: &'static [f32],
}

pub static F2: WinogradSpec = WinogradSpec {
    m: 2,
    a: 4,
    bt: &[1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0],
    g: &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0],
    at: &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
};

pub static F4: WinogradSpec = WinogradSpec {
    m: 4,
    a: 6,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        0.25, 0.0, 0.0, //
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, //
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, //
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, //
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, //
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// A convolution layer prepared for Winograd: transformed weights `[a*a][cin][cout]`.
#[derive(Debug, Clone)]
pub struct WinogradLayer {
    pub spec: &'static WinogradSpec,
    pub cin: usize,
    pub cout: usize,
    pub upsample: bool,
    pub u: Vec<f32>,
    pub bias: Vec<f32>,
}

impl WinogradLayer {
    /// Transforms the layer's effective weights (`[9 * cin, cout]`, row `(dy * 3 + dx) * cin + ci`) in f64.
    pub fn new(layer: &ConvLayer, spec: &'static WinogradSpec) -> WinogradLayer {
        let (a, cin, cout) = (spec.a, layer.cin, layer.cout);
        let mut u = vec![0.0f32; a * a * cin * cout];
        let mut gg = vec![0.0f64; a * 3];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |dy: usize, dx: usize| layer.weight[((dy * 3 + dx) * cin + ci) * cout + co] as f64;
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
        WinogradLayer { spec, cin, cout, upsample: layer.upsample, u, bias: layer.bias.clone() }
    }
}

/// Upper bound of a band's transformed-input buffer; a whole layer below [`SINGLE_BAND_BYTES`] is one band.
const BAND_BYTES: usize = 2 << 20;
const SINGLE_BAND_BYTES: usize = 24 << 20;

/// Runs the layer on `[side_in, side_in, cin]`; returns `[side, side, cout]` with bias, leaky ReLU and pixel
/// norm applied, and `side`.
pub fn conv3x3(input: &[f32], side_in: usize, layer: &WinogradLayer, epilogue: fn(&mut [f32], &[f32])) -> (Vec<f32>, usize) {
    let spec = layer.spec;
    let up = usize::from(layer.upsample);
    let side = side_in << up;
    let tiles_per_row = side.div_ceil(spec.m);
    let a2 = spec.a * spec.a;
    let per_tile_row = a2 * tiles_per_row * layer.cin * 4;
    let band_tile_rows = if per_tile_row * tiles_per_row <= SINGLE_BAND_BYTES {
        tiles_per_row
    } else {
        (BAND_BYTES / per_tile_row).clamp(1, tiles_per_row)
    };
    let bands = tiles_per_row.div_ceil(band_tile_rows);
    let threads = rayon::current_num_threads();
    let mut out = vec![0.0f32; side * side * layer.cout];
    let band_out = band_tile_rows * spec.m * side * layer.cout;
    if bands >= 2 * threads {
        out.par_chunks_mut(band_out).enumerate().for_each_init(Buffers::default, |buffers, (band, out_band)| {
            run_band(input, side_in, side, layer, band * band_tile_rows, out_band, buffers, false, epilogue)
        });
    } else {
        let mut buffers = Buffers::default();
        for (band, out_band) in out.chunks_mut(band_out).enumerate() {
            run_band(input, side_in, side, layer, band * band_tile_rows, out_band, &mut buffers, true, epilogue);
        }
    }
    (out, side)
}

#[derive(Default)]
struct Buffers {
    v: Vec<f32>,
    m: Vec<f32>,
    tmp: Vec<f32>,
    zeros: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run_band(
    input: &[f32],
    side_in: usize,
    side: usize,
    layer: &WinogradLayer,
    tile_row0: usize,
    out_band: &mut [f32],
    buf: &mut Buffers,
    parallel_gemm: bool,
    epilogue: fn(&mut [f32], &[f32]),
) {
    let spec = layer.spec;
    let (m, a, cin, cout) = (spec.m, spec.a, layer.cin, layer.cout);
    let a2 = a * a;
    let up = usize::from(layer.upsample);
    let tiles_per_row = side.div_ceil(m);
    let out_rows = out_band.len() / (side * cout);
    let tile_rows = out_rows.div_ceil(m);
    let tiles = tile_rows * tiles_per_row;
    buf.v.resize(a2 * tiles * cin, 0.0);
    buf.m.resize(a2 * tiles * cout, 0.0);
    buf.tmp.resize(a * a * cin.max(cout), 0.0);
    buf.zeros.resize(cin, 0.0);

    // 1. input transform
    for tr in 0..tile_rows {
        for tc in 0..tiles_per_row {
            let t = tr * tiles_per_row + tc;
            let oy = ((tile_row0 + tr) * m) as isize - 1;
            let ox = (tc * m) as isize - 1;
            let pixel = |r: usize, c: usize| -> &[f32] {
                let (y, x) = (oy + r as isize, ox + c as isize);
                if y < 0 || x < 0 || y >= side as isize || x >= side as isize {
                    &buf.zeros
                } else {
                    let src = (((y as usize) >> up) * side_in + ((x as usize) >> up)) * cin;
                    &input[src..src + cin]
                }
            };
            // tmp[i][c] = sum_r BT[i][r] d[r][c]
            let tmp = &mut buf.tmp[..a * a * cin];
            tmp.fill(0.0);
            for i in 0..a {
                for r in 0..a {
                    let coef = spec.bt[i * a + r];
                    if coef == 0.0 {
                        continue;
                    }
                    for c in 0..a {
                        axpy(&mut tmp[(i * a + c) * cin..(i * a + c + 1) * cin], coef, pixel(r, c));
                    }
                }
            }
            // V[i][j] = sum_c BT[j][c] tmp[i][c]
            for i in 0..a {
                for j in 0..a {
                    let dst = &mut buf.v[((i * a + j) * tiles + t) * cin..((i * a + j) * tiles + t + 1) * cin];
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
    }

    // 2. one GEMM per transform position
    let gemm_one = |xi: usize, m_xi: &mut [f32]| {
        matmul(m_xi, &buf.v[xi * tiles * cin..(xi + 1) * tiles * cin], &layer.u[xi * cin * cout..(xi + 1) * cin * cout], tiles, cin, cout, Parallelism::None);
    };
    if parallel_gemm {
        buf.m.par_chunks_mut(tiles * cout).enumerate().for_each(|(xi, m_xi)| gemm_one(xi, m_xi));
    } else {
        for (xi, m_xi) in buf.m.chunks_mut(tiles * cout).enumerate() {
            gemm_one(xi, m_xi);
        }
    }

    // 3. output transform
    for tr in 0..tile_rows {
        for tc in 0..tiles_per_row {
            let t = tr * tiles_per_row + tc;
            let mrow = |r: usize, c: usize| &buf.m[((r * a + c) * tiles + t) * cout..((r * a + c) * tiles + t + 1) * cout];
            // tmp[i][c] = sum_r AT[i][r] M[r][c]
            let tmp = &mut buf.tmp[..m * a * cout];
            tmp.fill(0.0);
            for i in 0..m {
                for r in 0..a {
                    let coef = spec.at[i * a + r];
                    if coef == 0.0 {
                        continue;
                    }
                    for c in 0..a {
                        axpy(&mut tmp[(i * a + c) * cout..(i * a + c + 1) * cout], coef, mrow(r, c));
                    }
                }
            }
            for i in 0..m {
                let y = tr * m + i;
                if y >= out_rows {
                    break;
                }
                for j in 0..m {
                    let x = tc * m + j;
                    if x >= side {
                        break;
                    }
                    let dst = &mut out_band[(y * side + x) * cout..(y * side + x + 1) * cout];
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
    }
    for pixel in out_band.chunks_exact_mut(cout) {
        epilogue(pixel, &layer.bias);
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
