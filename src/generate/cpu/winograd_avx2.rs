//! AVX2 + FMA kernels of the Winograd F(4x4, 3x3) convolution (`winograd.rs`), chosen at run time.
//!
//! The portable transforms in `winograd.rs` loop over the 36 transform coefficients with a generic `y += a x`;
//! compiled for the x86-64 baseline they run on 128-bit SSE2. Here the same three steps are written with 256-bit
//! vectors of 8 channels and the F(4, 3) matrices spelled out as adds and fused multiply-adds:
//! - [`input_tile`]: `V = B^T d B` for one 6 x 6 input tile, 8 channels at a time;
//! - [`gemm_narrow`]: `M_xi = V_xi U_xi` for layers with few output channels (`NARROW_COUT`), where a packed
//!   GEMM's set-up costs more than the product (K = Cin and N = Cout are 16 to 128); a register-blocked
//!   micro-kernel of 12 rows x 8 columns (or 6 x 16, 3 x 32) that streams `U_xi` from L1;
//! - [`output_tile`]: `Y = A^T M A`, then bias, leaky ReLU and pixel norm on the 16 pixels while they are in
//!   L1, written straight into the output (or, for the last layer, through the 1 x 1 ToRGB layer into the image).
//!
//! Every function needs AVX2 and FMA and channel counts that are multiples of 8 (`winograd.rs` checks both
//! once per layer). The arithmetic is the same as the portable path's up to the order of float32
//! additions (tested against the float64 reference and against the portable path).

use std::arch::x86_64::*;

/// Lanes of a 256-bit vector of float32.
const LANES: usize = 8;

use super::tiles::{BandSink, TileSources, NARROW_ROW_MULTIPLE};

/// `V[(i * 6 + j)][tile][c] = (B^T d B)[i][j][c]` for one tile: `v` points at the tile's row of position 0 and
/// position `xi` lies `xi * stride` floats further. `sources` are the tile's 36 pixels (see [`TileSources`]);
/// `zeros` (at least `cin` zeros) stands in for the padding.
///
/// # Safety
/// AVX2 and FMA must be available (sources, shapes and `cin`, a multiple of 8, are checked).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn input_tile(
    input: &[f32],
    sources: &TileSources,
    zeros: &[f32],
    cin: usize,
    v: &mut [f32],
    stride: usize,
) {
    assert!(
        cin.is_multiple_of(LANES) && v.len() >= 35 * stride + cin && zeros.len() >= cin,
        "input_tile: {cin} channels or buffers too small"
    );
    let pixels: [*const f32; 36] = sources.map(|source| match source {
        Some(offset) => input[offset..offset + cin].as_ptr(),
        None => zeros.as_ptr(),
    });
    let dst = v.as_mut_ptr();
    for c0 in (0..cin).step_by(LANES) {
        let mut tmp = [_mm256_setzero_ps(); 36];
        for col in 0..6 {
            let d = [
                _mm256_loadu_ps(pixels[col].add(c0)),
                _mm256_loadu_ps(pixels[6 + col].add(c0)),
                _mm256_loadu_ps(pixels[12 + col].add(c0)),
                _mm256_loadu_ps(pixels[18 + col].add(c0)),
                _mm256_loadu_ps(pixels[24 + col].add(c0)),
                _mm256_loadu_ps(pixels[30 + col].add(c0)),
            ];
            for (i, r) in bt_rows(&d).into_iter().enumerate() {
                tmp[i * 6 + col] = r;
            }
        }
        for i in 0..6 {
            let d = [
                tmp[i * 6],
                tmp[i * 6 + 1],
                tmp[i * 6 + 2],
                tmp[i * 6 + 3],
                tmp[i * 6 + 4],
                tmp[i * 6 + 5],
            ];
            for (j, r) in bt_rows(&d).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((i * 6 + j) * stride + c0), r);
            }
        }
    }
}

/// The six rows of `B^T d` for F(4, 3).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bt_rows(d: &[__m256; 6]) -> [__m256; 6] {
    let two = _mm256_set1_ps(2.0);
    let four = _mm256_set1_ps(4.0);
    let five = _mm256_set1_ps(5.0);
    let d4_minus_d2 = _mm256_sub_ps(d[4], d[2]);
    [
        // 4 d0 - 5 d2 + d4
        _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4])),
        // -4 (d1 + d2) + d3 + d4
        _mm256_fnmadd_ps(four, _mm256_add_ps(d[1], d[2]), _mm256_add_ps(d[3], d[4])),
        // 4 (d1 - d2) - d3 + d4
        _mm256_fmadd_ps(four, _mm256_sub_ps(d[1], d[2]), _mm256_sub_ps(d[4], d[3])),
        // 2 (d3 - d1) + d4 - d2
        _mm256_fmadd_ps(two, _mm256_sub_ps(d[3], d[1]), d4_minus_d2),
        // 2 (d1 - d3) + d4 - d2
        _mm256_fmadd_ps(two, _mm256_sub_ps(d[1], d[3]), d4_minus_d2),
        // 4 d1 - 5 d3 + d5
        _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5])),
    ]
}

/// The four rows of `A^T m` for F(4, 3).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn at_rows(m: &[__m256; 6]) -> [__m256; 4] {
    let two = _mm256_set1_ps(2.0);
    let four = _mm256_set1_ps(4.0);
    let eight = _mm256_set1_ps(8.0);
    let sum12 = _mm256_add_ps(m[1], m[2]);
    let diff12 = _mm256_sub_ps(m[1], m[2]);
    let sum34 = _mm256_add_ps(m[3], m[4]);
    let diff34 = _mm256_sub_ps(m[3], m[4]);
    [
        _mm256_add_ps(_mm256_add_ps(m[0], sum12), sum34),
        _mm256_fmadd_ps(two, diff34, diff12),
        _mm256_fmadd_ps(four, sum34, sum12),
        _mm256_add_ps(_mm256_fmadd_ps(eight, diff34, diff12), m[5]),
    ]
}

/// `M_xi[rows][cout] = V_xi[rows][cin] U_xi[cin][cout]`, all row major; `rows` a multiple of [`NARROW_ROW_MULTIPLE`].
///
/// # Safety
/// AVX2 and FMA must be available (the shapes are checked).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_narrow(
    m: &mut [f32],
    v: &[f32],
    u: &[f32],
    rows: usize,
    cin: usize,
    cout: usize,
) {
    assert!(
        rows.is_multiple_of(NARROW_ROW_MULTIPLE) && cout.is_multiple_of(LANES),
        "gemm_narrow: {rows} rows, {cout} columns"
    );
    assert!(
        m.len() >= rows * cout && v.len() >= rows * cin && u.len() >= cin * cout,
        "gemm_narrow: buffers too small"
    );
    let mut col = 0;
    while cout - col >= 32 {
        panel::<3, 4>(m, v, u, rows, cin, cout, col);
        col += 32;
    }
    if cout - col >= 16 {
        panel::<6, 2>(m, v, u, rows, cin, cout, col);
        col += 16;
    }
    if cout - col >= 8 {
        panel::<12, 1>(m, v, u, rows, cin, cout, col);
    }
}

/// Columns `col .. col + 8 NV` of the product, `R` rows at a time with `R x NV` accumulators in registers.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn panel<const R: usize, const NV: usize>(
    m: &mut [f32],
    v: &[f32],
    u: &[f32],
    rows: usize,
    cin: usize,
    cout: usize,
    col: usize,
) {
    let (mp, vp, up) = (m.as_mut_ptr(), v.as_ptr(), u.as_ptr());
    for r0 in (0..rows).step_by(R) {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        for k in 0..cin {
            // keep R x NV accumulators plus the operands within the 16 vector registers: hold the NV columns
            // of U and broadcast one row at a time, or (when that does not fit) hold the R broadcast rows and
            // load one column at a time
            if R * NV + NV < 16 {
                let mut b = [_mm256_setzero_ps(); NV];
                for (j, bj) in b.iter_mut().enumerate() {
                    *bj = _mm256_loadu_ps(up.add(k * cout + col + j * LANES));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*vp.add((r0 + r) * cin + k));
                    for (acc_rj, bj) in acc_r.iter_mut().zip(&b) {
                        *acc_rj = _mm256_fmadd_ps(a, *bj, *acc_rj);
                    }
                }
            } else {
                let mut a = [_mm256_setzero_ps(); R];
                for (r, ar) in a.iter_mut().enumerate() {
                    *ar = _mm256_broadcast_ss(&*vp.add((r0 + r) * cin + k));
                }
                for j in 0..NV {
                    let b = _mm256_loadu_ps(up.add(k * cout + col + j * LANES));
                    for (acc_r, ar) in acc.iter_mut().zip(&a) {
                        acc_r[j] = _mm256_fmadd_ps(*ar, b, acc_r[j]);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, acc_rj) in acc_r.iter().enumerate() {
                _mm256_storeu_ps(mp.add((r0 + r) * cout + col + j * LANES), *acc_rj);
            }
        }
    }
}

/// The output transform of one tile (`m` points at the tile's row of position 0, position `xi` lies
/// `xi * stride` floats further), then bias, leaky ReLU (0.2) and pixel norm, and the finished pixels into the
/// band's `sink` at output pixel `(y0, x0)` (rows counted from the band's first), clipped to `out_rows x side`.
/// `tile` is scratch space for the tile's 16 pixels.
///
/// # Safety
/// AVX2 and FMA must be available (shapes and `cout`, a multiple of 8, are checked).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn output_tile(
    m: &[f32],
    stride: usize,
    cout: usize,
    bias: &[f32],
    tile: &mut [f32],
    sink: &mut BandSink,
    out_rows: usize,
    side: usize,
    y0: usize,
    x0: usize,
) {
    assert!(
        cout.is_multiple_of(LANES)
            && m.len() >= 35 * stride + cout
            && bias.len() >= cout
            && tile.len() >= 16 * cout,
        "output_tile: {cout} channels or buffers too small"
    );
    let src = m.as_ptr();
    for c0 in (0..cout).step_by(LANES) {
        let mut tmp = [_mm256_setzero_ps(); 24];
        for col in 0..6 {
            let mut d = [_mm256_setzero_ps(); 6];
            for (row, value) in d.iter_mut().enumerate() {
                *value = _mm256_loadu_ps(src.add((row * 6 + col) * stride + c0));
            }
            for (i, r) in at_rows(&d).into_iter().enumerate() {
                tmp[i * 6 + col] = r;
            }
        }
        for i in 0..4 {
            let d = [
                tmp[i * 6],
                tmp[i * 6 + 1],
                tmp[i * 6 + 2],
                tmp[i * 6 + 3],
                tmp[i * 6 + 4],
                tmp[i * 6 + 5],
            ];
            for (j, r) in at_rows(&d).into_iter().enumerate() {
                _mm256_storeu_ps(tile.as_mut_ptr().add((i * 4 + j) * cout + c0), r);
            }
        }
    }
    for i in 0..4.min(out_rows.saturating_sub(y0)) {
        for j in 0..4.min(side.saturating_sub(x0)) {
            let pixel = &mut tile[(i * 4 + j) * cout..][..cout];
            let at = (y0 + i) * side + x0 + j;
            match sink {
                BandSink::Activations(out) => {
                    let dst = &mut out[at * cout..][..cout];
                    bias_lrelu_pixel_norm(
                        pixel.as_mut_ptr(),
                        bias.as_ptr(),
                        dst.as_mut_ptr(),
                        cout,
                    );
                }
                BandSink::Rgb {
                    planes,
                    weight,
                    bias: rgb_bias,
                } => {
                    bias_lrelu_pixel_norm(
                        pixel.as_mut_ptr(),
                        bias.as_ptr(),
                        pixel.as_mut_ptr(),
                        cout,
                    );
                    for (colour, plane) in planes.iter_mut().enumerate() {
                        plane[at] = rgb_bias[colour] + dot(pixel, &weight[colour * cout..][..cout]);
                    }
                }
            }
        }
    }
}

/// `dst = pixel_norm(leaky_relu(src + bias))` over `len` channels (a multiple of 8); `src` keeps the activated
/// values before the norm. `dst` may equal `src` (each value is read before it is written).
///
/// # Safety
/// AVX2 and FMA must be available; `src`, `bias` and `dst` must be valid for `len` floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bias_lrelu_pixel_norm(src: *mut f32, bias: *const f32, dst: *mut f32, len: usize) {
    let slope = _mm256_set1_ps(0.2);
    let mut sum_sq = _mm256_setzero_ps();
    for c0 in (0..len).step_by(LANES) {
        let x = _mm256_add_ps(_mm256_loadu_ps(src.add(c0)), _mm256_loadu_ps(bias.add(c0)));
        let x = _mm256_max_ps(x, _mm256_mul_ps(slope, x));
        sum_sq = _mm256_fmadd_ps(x, x, sum_sq);
        _mm256_storeu_ps(src.add(c0), x);
    }
    let inv = _mm256_set1_ps(1.0 / (horizontal_sum(sum_sq) / len as f32 + 1e-8).sqrt());
    for c0 in (0..len).step_by(LANES) {
        _mm256_storeu_ps(
            dst.add(c0),
            _mm256_mul_ps(_mm256_loadu_ps(src.add(c0)), inv),
        );
    }
}

/// `sum_c a[c] b[c]` over a multiple of 8 values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for c0 in (0..a.len()).step_by(LANES) {
        acc = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(c0)),
            _mm256_loadu_ps(b.as_ptr().add(c0)),
            acc,
        );
    }
    horizontal_sum(acc)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}
