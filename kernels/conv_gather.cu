// Kernel (2): the gather family, conv3x3_body: every layer, float32 or TF32 (see conv_common.cuh for the GEMM
// view, phased layers and the epilogue).
#include "conv_common.cuh"


// Tile shapes: BM x BN with BM * BN = 4096, so that 256 threads each own a 4 x 4 float32 micro-tile, or 8 warps
// each own a 32 x 16 tensor-core tile. BN follows the layer's output channels (16, 32 or 64) so that the wide,
// thin high-resolution layers do not waste three quarters of every tile.
// VEC: Cin is a multiple of BK, so a K slice lies within one tap and the gather loads four consecutive channels
// of a pixel at once (float4), with the pixel's index arithmetic done once per four values.
// TO_RGB: the last layer with ToRGB fused (see conv_epilogue; BN 16, fused, not phased).
template <int BM, int BN, bool TF32, bool VEC, bool TO_RGB = false>
__device__ __forceinline__ void conv3x3_body(const float* __restrict__ in, const float* __restrict__ w,
                                             const float* __restrict__ bias, float* __restrict__ out,
                                             const ConvShape s, const RgbOutput rgb = RgbOutput{}) {
    constexpr int A_LOADS = BM * BK / THREADS;
    constexpr int B_LOADS = BK * BN / THREADS;
    static_assert(BM * BN == 16 * THREADS && B_LOADS >= 1, "tile must give each thread 4 x 4 outputs");
    constexpr int WARPS_N = BN / 16;
    constexpr int TX = BN / 4;  // float32 micro-tiles along N
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    __shared__ float Cs[BM][BN + 1];
    const int t = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int phase = block_phase(s);
    const int k_begin = block_split(s) * s.k_per_split;
    const int k_end = min(s.k_total, k_begin + s.k_per_split);
    const float* __restrict__ const w_phase = w + (size_t)phase * s.k_total * s.cout;  // phased: this phase's weights

    // this thread's A rows (pixels) are m = t / BK + i * (THREADS / BK); its A column is kk = t % BK. Sides are
    // powers of two, so a pixel's image, row and column are shifts and masks, recomputed rather than kept in
    // registers.
    const int a_kk = t % BK;
    const int side_mask = s.side - 1;
    const int b_n = t % BN;
    float a_next[A_LOADS], b_next[B_LOADS];
    constexpr int QUADS = BK / 4;                 // float4 groups per K slice
    constexpr int V_ROWS = THREADS / QUADS;       // rows loaded per pass
    constexpr int V_LOADS = BM / V_ROWS;          // passes
    static_assert(!VEC || V_LOADS * 4 == A_LOADS, "vector and scalar loads must cover the same tile");
    float4 v_next[VEC ? V_LOADS : 1];

    auto fetch_vec = [&](int k0) {
        const int tap = k0 / s.cin, ci = k0 - tap * s.cin + (t % QUADS) * 4;
        int oy, ox;
        tap_offset(s, phase, tap, oy, ox);
#pragma unroll
        for (int i = 0; i < V_LOADS; ++i) {
            const int p = m0 + t / QUADS + i * V_ROWS;
            const int img = p >> (2 * s.log2_side);
            const int sy = ((p >> s.log2_side) & side_mask) + oy, sx = (p & side_mask) + ox;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (p < s.m_total && sy >= 0 && sx >= 0 && sy < s.side && sx < s.side) {
                v = *reinterpret_cast<const float4*>(
                    &in[(((size_t)img * s.side_in + (sy >> s.up)) * s.side_in + (sx >> s.up)) * s.cin + ci]);
            }
            v_next[i] = v;
        }
    };

    auto fetch_scalar = [&](int k0) {
        const int k = k0 + a_kk;
        const bool k_ok = k < k_end;
        const int tap = k_ok ? k / s.cin : 0, ci = k_ok ? k - tap * s.cin : 0;
        int oy, ox;
        tap_offset(s, phase, tap, oy, ox);
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            float v = 0.0f;
            const int p = m0 + t / BK + i * (THREADS / BK);
            const int img = p >> (2 * s.log2_side);
            const int sy = ((p >> s.log2_side) & side_mask) + oy, sx = (p & side_mask) + ox;
            if (k_ok && p < s.m_total && sy >= 0 && sx >= 0 && sy < s.side && sx < s.side) {
                v = in[(((size_t)img * s.side_in + (sy >> s.up)) * s.side_in + (sx >> s.up)) * s.cin + ci];
            }
            a_next[i] = v;
        }
    };
    auto fetch = [&](int k0) {
        if constexpr (VEC) {
            fetch_vec(k0);
        } else {
            fetch_scalar(k0);
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int kk = t / BN + i * (THREADS / BN);
            const int kb = k0 + kk, n = n0 + b_n;
            b_next[i] = (kb < k_end && n < s.cout) ? w_phase[(size_t)kb * s.cout + n] : 0.0f;
        }
    };
    // tensor-core inputs are rounded to TF32 once, when staged
    auto round = [](float v) { return TF32 ? __uint_as_float(to_tf32(v)) : v; };
    auto stage = [&]() {
        if constexpr (VEC) {
            const int q = (t % QUADS) * 4;
#pragma unroll
            for (int i = 0; i < V_LOADS; ++i) {
                const int r = t / QUADS + i * V_ROWS;
                As[q][r] = round(v_next[i].x);
                As[q + 1][r] = round(v_next[i].y);
                As[q + 2][r] = round(v_next[i].z);
                As[q + 3][r] = round(v_next[i].w);
            }
        } else {
#pragma unroll
            for (int i = 0; i < A_LOADS; ++i) As[a_kk][t / BK + i * (THREADS / BK)] = round(a_next[i]);
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            Bs[t / BN + i * (THREADS / BN)][b_n] = round(b_next[i]);
        }
    };

    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.0f;
    const int lane = t & 31, warp = t >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int warp_m = (warp / WARPS_N) * 32, warp_n = (warp % WARPS_N) * 16;
    const int tx = t % TX, ty = t / TX;

    fetch(k_begin);
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        stage();
        __syncthreads();
        if (k0 + BK < k_end) fetch(k0 + BK);  // global loads overlap the math below
        if (TF32) {
#pragma unroll
            for (int ks = 0; ks < BK; ks += 8) {
                unsigned int a[2][4], b[2][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const int r = warp_m + mi * 16 + g;
                    a[mi][0] = __float_as_uint(As[ks + tig][r]);
                    a[mi][1] = __float_as_uint(As[ks + tig][r + 8]);
                    a[mi][2] = __float_as_uint(As[ks + tig + 4][r]);
                    a[mi][3] = __float_as_uint(As[ks + tig + 4][r + 8]);
                }
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) {
                    const int c = warp_n + ni * 8 + g;
                    b[ni][0] = __float_as_uint(Bs[ks + tig][c]);
                    b[ni][1] = __float_as_uint(Bs[ks + tig + 4][c]);
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 2; ++ni) mma_tf32_16x8x8(&acc[(mi * 2 + ni) * 4], a[mi], b[ni]);
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float av[4], bv[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
                for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i * 4 + j] = fmaf(av[i], bv[j], acc[i * 4 + j]);
            }
        }
        __syncthreads();
    }

    // tile -> shared memory
    if (TF32) {
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int row = warp_m + mi * 16 + g + ((r >> 1) << 3);
                    const int col = warp_n + ni * 8 + tig * 2 + (r & 1);
                    Cs[row][col] = acc[(mi * 2 + ni) * 4 + r];
                }
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) Cs[ty * 4 + i][tx * 4 + j] = acc[i * 4 + j];
    }
    __syncthreads();

    conv_epilogue<BM, BN, TO_RGB>(&Cs[0][0], BN + 1, bias, out, s, rgb);
}

#define CONV_ENTRY(NAME, BM_, BN_, TF32_, VEC_) CONV_KERNEL(NAME, conv3x3_body<BM_, BN_, TF32_, VEC_>)

// Entry points: conv3x3_<precision>_n<BN>[_v], tile BM x BN with BM = 4096 / BN; _v when Cin % 16 == 0.
CONV_ENTRY(conv3x3_f32_n64, 64, 64, false, false)
CONV_ENTRY(conv3x3_f32_n32, 128, 32, false, false)
CONV_ENTRY(conv3x3_f32_n16, 256, 16, false, false)
CONV_ENTRY(conv3x3_tf32_n64, 64, 64, true, false)
CONV_ENTRY(conv3x3_tf32_n32, 128, 32, true, false)
CONV_ENTRY(conv3x3_tf32_n16, 256, 16, true, false)
CONV_ENTRY(conv3x3_f32_n64_v, 64, 64, false, true)
CONV_ENTRY(conv3x3_f32_n32_v, 128, 32, false, true)
CONV_ENTRY(conv3x3_f32_n16_v, 256, 16, false, true)
CONV_ENTRY(conv3x3_tf32_n64_v, 64, 64, true, true)
CONV_ENTRY(conv3x3_tf32_n32_v, 128, 32, true, true)
CONV_ENTRY(conv3x3_tf32_n16_v, 256, 16, true, true)

// The last layer (16 channels, one split, Cin a multiple of 16 as in every PGGAN) with ToRGB fused:
// conv3x3_<precision>_n16_v_rgb.
CONV_RGB_KERNEL(conv3x3_f32_n16_v_rgb, conv3x3_body<256, 16, false, true, true>)
CONV_RGB_KERNEL(conv3x3_tf32_n16_v_rgb, conv3x3_body<256, 16, true, true, true>)
