// Kernels (2) and (3): the 3x3 convolution as an implicit GEMM, with the nearest-neighbour x2 upsample folded
// into its input indexing (or phased, below), and the pixel-norm epilogue. Three families: conv3x3_body (below, the
// measured default), conv3x3_pipe_body (2b) and conv3x3_spatial_body (2c); src/generate/cuda.rs (ConvPlan) picks
// one per layer.
//
// GEMM view: rows m = output pixels (n, y, x) of all images, columns = output channels, K = 9 * Cin with
// k = (dy * 3 + dx) * Cin + ci (the weights' [9*Cin, Cout] row order). A block computes a BM x BN tile over a
// range of K (split-K when the layer has too few tiles to fill the GPU), staging BK-deep slices of the gathered
// input and of the weights in shared memory; the next slice is fetched into registers while the current one is
// multiplied. Two inner products: float32 FMAs (the exact path) or TF32 tensor cores (mma.sync m16n8k8).
//
// Epilogue: the tile goes through shared memory; if the block holds every output channel of its pixels and all of
// K (fused), it adds the bias, applies leaky ReLU and pixel norm and writes the activations; otherwise it writes
// raw partial sums and conv_finish_f32 reduces the splits and applies bias, leaky ReLU and pixel norm.
//
// Phased layers (ConvShape::phased, the gather and pipelined kernels): an upsample followed by a 3x3 convolution is
// four 2x2 convolutions over the input grid, one per output phase (a, b) = (y % 2, x % 2): the three taps of a
// kernel row land on two input rows, so output (2i + a, 2j + b) reads input rows i + a - 1 + t and columns
// j + b - 1 + u (t, u in 0, 1), with the taps that land on the same input pixel summed into one weight (the host's
// phase weights, [4 phases][4 * Cin][Cout], k = (t * 2 + u) * Cin + ci). That is 4 multiply-adds per output and
// input channel instead of 9. Rows m are then input pixels, K = 4 * Cin, blockIdx.z = split * 4 + phase, and the
// epilogue writes each row to its output pixel; zero padding at the input grid's edge is the upsampled image's.
#include "common.cuh"

#define BK 16
#define THREADS 256

// A layer as the kernels see it. For a phased layer side, log2_side and m_total describe the input grid (the GEMM's
// rows), up is 0 and k_total is 4 * Cin; the output is 2 side x 2 side.
struct ConvShape {
    int n_images, side_in, cin, cout, up, side, log2_side, m_total, k_total, k_per_split, fused, phased;
};

// The block's output phase (0 unless phased) and K split, from blockIdx.z = split * 4 + phase when phased.
__device__ __forceinline__ int block_phase(const ConvShape& s) { return s.phased ? blockIdx.z & 3 : 0; }
__device__ __forceinline__ int block_split(const ConvShape& s) { return s.phased ? blockIdx.z >> 2 : blockIdx.z; }

// The input offset (oy, ox) that tap `tap` reads, relative to the GEMM row's pixel: dy - 1, dx - 1 of the 3x3 kernel
// (before the upsample's halving), or, phased, the 2x2 kernel of output phase (a, b) = (phase >> 1, phase & 1).
__device__ __forceinline__ void tap_offset(const ConvShape& s, int phase, int tap, int& oy, int& ox) {
    if (s.phased) {
        oy = (phase >> 1) - 1 + (tap >> 1);
        ox = (phase & 1) - 1 + (tap & 1);
    } else {
        oy = tap / 3 - 1;
        ox = tap - (tap / 3) * 3 - 1;
    }
}

// The output pixel of GEMM row p: p itself, or, phased, input pixel p's pixel of the block's phase in the upsampled
// output.
__device__ __forceinline__ size_t output_pixel(const ConvShape& s, int p, int phase) {
    if (!s.phased) return (size_t)p;
    const int img = p >> (2 * s.log2_side), y = (p >> s.log2_side) & (s.side - 1), x = p & (s.side - 1);
    const size_t side_out = 2 * (size_t)s.side;
    return ((size_t)img * side_out + 2 * y + (phase >> 1)) * side_out + 2 * x + (phase & 1);
}

// One pixel's fused epilogue, by one warp: bias, leaky ReLU and pixel norm over its Cout <= 64 channels (`row`),
// written to `o`.
__device__ __forceinline__ void finish_pixel(const float* row, const float* __restrict__ bias, float* __restrict__ o,
                                             int cout, int lane) {
    float v0 = 0.0f, v1 = 0.0f;
    const int c0 = lane, c1 = lane + 32;
    if (c0 < cout) v0 = lrelu(row[c0] + bias[c0]);
    if (c1 < cout) v1 = lrelu(row[c1] + bias[c1]);
    const float inv = 1.0f / sqrtf(warp_sum(v0 * v0 + v1 * v1) / (float)cout + PIXEL_NORM_EPS);
    if (c0 < cout) o[c0] = v0 * inv;
    if (c1 < cout) o[c1] = v1 * inv;
}

// The ToRGB layer fused into the last convolution's epilogue (16 channels): w [16, 3] and b [3] (wscale applied),
// the float image [N, 3, side, side] and the packed 0x00RRGGBB display buffer [N, side, side], as torgb_f32 writes
// them; the last activations are never stored.
struct RgbOutput {
    const float* __restrict__ w;
    const float* __restrict__ b;
    float* __restrict__ img;
    unsigned int* __restrict__ packed;
};

// Pixel norm over 16 channels held by a half warp (lane c & 15 holds channel c's value); all 32 lanes take part.
__device__ __forceinline__ float half_warp_pixel_norm16(float v) {
    float sq = v * v;
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, offset);
    return v / sqrtf(sq / 16.0f + PIXEL_NORM_EPS);
}

// The last layer's epilogue for one pixel, by a half warp: lane c of the half holds channel c's value v after the
// bias and leaky ReLU. Pixel norm, then ToRGB (1x1 convolution to 3 channels): every lane of the half gets the
// pixel's R, G, B in sums. All 32 lanes take part.
__device__ __forceinline__ void rgb_half_warp(float v, int c, const RgbOutput& rgb, float (&sums)[3]) {
    const float normed = half_warp_pixel_norm16(v);
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        float t = normed * rgb.w[c * 3 + j];
#pragma unroll
        for (int offset = 8; offset > 0; offset >>= 1) t += __shfl_xor_sync(0xffffffffu, t, offset);
        sums[j] = t + rgb.b[j];
    }
}

// A pixel's R, G, B as the packed 0x00RRGGBB display pixel (the official 8-bit rounding).
__device__ __forceinline__ unsigned int pack_0rgb(const float (&sums)[3]) {
    return (to_u8(sums[0]) << 16) | (to_u8(sums[1]) << 8) | to_u8(sums[2]);
}

// Lane c's share of a pixel's output: R, G, B for lanes 0, 1, 2 (no dynamic register index).
__device__ __forceinline__ float rgb_channel(int c, const float (&sums)[3]) {
    return c == 0 ? sums[0] : (c == 1 ? sums[1] : sums[2]);
}

// Epilogue of the GEMM-tiled kernels (conv3x3_body, conv3x3_pipe_body), after the block's BM x BN tile is in
// shared memory (cs, row stride cs_stride): one warp per pixel row of the tile, lanes over channels (coalesced
// stores). Fused: bias, leaky ReLU and pixel norm over the pixel's channels (BN holds them all), written as
// activations [M, Cout]. Otherwise raw partial sums into [splits, M, Cout] for conv_finish_f32.
// TO_RGB (the last layer: 16 channels, fused, not phased): ToRGB too, writing the image and the display buffer
// (rgb) instead of the activations. A half warp per pixel computes it and leaves R, G, B and the packed pixel in
// the first four columns of the pixel's own tile row (each lane overwrites only the value it read); then a thread
// per pixel writes them out, so that consecutive threads write consecutive pixels of each plane.
template <int BM, int BN, bool TO_RGB = false>
__device__ __forceinline__ void conv_epilogue(float* cs, int cs_stride, const float* __restrict__ bias,
                                              float* __restrict__ out, const ConvShape& s,
                                              const RgbOutput rgb = RgbOutput{}) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    if constexpr (TO_RGB) {
        static_assert(BN == 16 && BM % (2 * (THREADS / 32)) == 0, "a half warp per pixel, every lane in every round");
        const int half = lane >> 4, c = lane & 15;
#pragma unroll 1
        for (int r = 2 * warp + half; r < BM; r += 2 * (THREADS / 32)) {
            float* row = cs + r * cs_stride;
            const float v = m0 + r < s.m_total ? lrelu(row[c] + bias[c]) : 0.0f;
            float sums[3];
            rgb_half_warp(v, c, rgb, sums);
            if (c < 3) row[c] = rgb_channel(c, sums);
            if (c == 3) row[3] = __uint_as_float(pack_0rgb(sums));
        }
        __syncthreads();
        const size_t plane = (size_t)s.side * s.side;
        for (int r = threadIdx.x; r < BM; r += THREADS) {
            const int p = m0 + r;
            if (p >= s.m_total) continue;
            const int img = p >> (2 * s.log2_side);
            const size_t q = (size_t)p - (size_t)img * plane;
            const float* row = cs + r * cs_stride;
#pragma unroll
            for (int j = 0; j < 3; ++j) rgb.img[((size_t)img * 3 + j) * plane + q] = row[j];
            rgb.packed[p] = __float_as_uint(row[3]);
        }
        return;
    }
    const int phase = block_phase(s);
    const size_t out_pixels = (size_t)s.m_total * (s.phased ? 4 : 1);
    for (int r = warp; r < BM; r += THREADS / 32) {
        const int p = m0 + r;
        if (p >= s.m_total) continue;
        const size_t q = output_pixel(s, p, phase);
        const float* row = cs + r * cs_stride;
        if (s.fused) {
            finish_pixel(row, bias, out + q * s.cout, s.cout, lane);
        } else {
            float* o = out + ((size_t)block_split(s) * out_pixels + q) * s.cout;
            for (int c = lane; c < BN; c += 32)
                if (n0 + c < s.cout) o[n0 + c] = row[c];
        }
    }
}

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

// The CPU emulation of the kernel tests (tests/cuda_emulator) defines this to find the entry points by name.
#ifndef REGISTER_CONV_ENTRY
#define REGISTER_CONV_ENTRY(NAME)
#endif

// A convolution entry point NAME(in, w, bias, out, shape) running the body given after its name (a template
// instance, hence variadic: its arguments hold commas).
#define CONV_KERNEL(NAME, ...)                                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                   \
        NAME(const float* __restrict__ in, const float* __restrict__ w, const float* __restrict__ bias,        \
             float* __restrict__ out, ConvShape s) {                                                           \
        __VA_ARGS__(in, w, bias, out, s);                                                                      \
    }                                                                                                          \
    REGISTER_CONV_ENTRY(NAME)

#ifndef REGISTER_RGB_ENTRY
#define REGISTER_RGB_ENTRY(NAME)
#endif

// An entry point of the last layer with ToRGB fused, NAME(in, w, bias, rgb_w, rgb_b, img, packed, shape): the body
// given after its name writes the image and the display buffer (RgbOutput) instead of the activations.
#define CONV_RGB_KERNEL(NAME, ...)                                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                   \
        NAME(const float* __restrict__ in, const float* __restrict__ w, const float* __restrict__ bias,        \
             const float* __restrict__ rgb_w, const float* __restrict__ rgb_b, float* __restrict__ img,        \
             unsigned int* __restrict__ packed, ConvShape s) {                                                 \
        __VA_ARGS__(in, w, bias, nullptr, s, RgbOutput{rgb_w, rgb_b, img, packed});                            \
    }                                                                                                          \
    REGISTER_RGB_ENTRY(NAME)

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

// Kernel (2b): the TF32 convolution with a multi-stage asynchronous-copy pipeline (sm_80+), for layers with
// Cin and Cout multiples of 4. Same GEMM view, split-K and epilogue as conv3x3_body; what differs:
// - K slices are PIPE_BK = 32 deep, and STAGES of them are in flight: the gathered input rows and the weight rows
//   go global -> shared with cp.async (16 bytes = 4 channels of one tap; padding is a zero-filled copy), so the
//   loads of later slices overlap the tensor-core work on the current one without passing through registers;
// - A is stored pixel-major [BM][PIPE_BK + 4] and B [PIPE_BK][BN + 8]: both strides put the eight fragment rows
//   of a warp's loads on distinct banks;
// - each warp owns a WM x WN tile (32 x 32 for the wide layers: 8 mma per 16 fragment loads, against 4 per 12 in
//   conv3x3_body), so shared-memory traffic per mma drops;
// - inputs are rounded to TF32 when loaded as fragments (cvt.rna, as conv3x3_body does when staging).
// Shared memory is dynamic (over 48 KiB: the host raises the function's limit) and is reused for the epilogue tile.
#define PIPE_BK 32

// Warp-tile helpers of the pipelined and spatial kernels: MI x NI m16n8 accumulator fragments per warp.
template <int MI, int NI>
__device__ __forceinline__ void zero_fragments(float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
}

template <int MI, int NI>
__device__ __forceinline__ void mma_fragments(float (&acc)[MI][NI][4], const unsigned int (&a)[MI][4],
                                              const unsigned int (&b)[NI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_tf32_16x8x8(acc[mi][ni], a[mi], b[ni]);
}

// Writes the warp's accumulators to the tile cs (row stride cs_stride): fragment (mi, ni) covers rows
// row0 + mi * 16 .. + 15 and columns col0 + ni * 8 .. + 7 (the m16n8 C layout: lane 4g + t holds rows g and g + 8,
// columns 2t and 2t + 1).
template <int MI, int NI>
__device__ __forceinline__ void store_fragments(float* cs, int cs_stride, int row0, int col0,
                                                const float (&acc)[MI][NI][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = row0 + mi * 16 + g + ((r >> 1) << 3);
                const int col = col0 + ni * 8 + tig * 2 + (r & 1);
                cs[row * cs_stride + col] = acc[mi][ni][r];
            }
}

template <int BM, int BN, int WM, int WN, int STAGES>
struct PipeTile {
    static constexpr int A_STRIDE = PIPE_BK + 4, B_STRIDE = BN + 8;
    static constexpr int A_STAGE = BM * A_STRIDE, B_STAGE = PIPE_BK * B_STRIDE;
    static constexpr int SHARED_FLOATS = STAGES * (A_STAGE + B_STAGE);
    static_assert((BM / WM) * (BN / WN) == THREADS / 32, "one warp tile per warp");
    static_assert(WM % 16 == 0 && WN % 8 == 0 && STAGES >= 2, "warp tiles are whole m16n8 fragments");
    static_assert(BM * (BN + 1) <= SHARED_FLOATS, "the epilogue tile reuses the pipeline's shared memory");
};

template <int BM, int BN, int WM, int WN, int STAGES>
__device__ __forceinline__ void conv3x3_pipe_body(const float* __restrict__ in, const float* __restrict__ w,
                                                  const float* __restrict__ bias, float* __restrict__ out,
                                                  const ConvShape s) {
    using Tile = PipeTile<BM, BN, WM, WN, STAGES>;
    constexpr int A_STRIDE = Tile::A_STRIDE, B_STRIDE = Tile::B_STRIDE;
    constexpr int CHUNKS_K = PIPE_BK / 4;               // 16-byte chunks per A row
    constexpr int A_ROWS_PER_PASS = THREADS / CHUNKS_K;  // A rows one pass of the block copies
    constexpr int A_PASSES = BM / A_ROWS_PER_PASS;
    constexpr int B_CHUNKS_N = BN / 4;                   // 16-byte chunks per B row
    constexpr int B_CHUNKS = PIPE_BK * B_CHUNKS_N;
    constexpr int B_PASSES = (B_CHUNKS + THREADS - 1) / THREADS;
    constexpr int WARPS_N = BN / WN, MI = WM / 16, NI = WN / 8;
    static_assert(A_PASSES * A_ROWS_PER_PASS == BM, "A rows split evenly over the passes");
    DYNAMIC_SHARED_FLOATS(smem);
    float* const As = smem;
    float* const Bs = smem + STAGES * Tile::A_STAGE;

    const int t = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int phase = block_phase(s);
    const int k_begin = block_split(s) * s.k_per_split;
    const int k_end = min(s.k_total, k_begin + s.k_per_split);
    const int side_mask = s.side - 1;
    const float* __restrict__ const w_phase = w + (size_t)phase * s.k_total * s.cout;  // phased: this phase's weights

    // This thread copies chunk a_chunk (channels 4 * a_chunk.. of the slice) of A rows t / CHUNKS_K + i * 32: the
    // same pixels for every slice, so their input row base and output coordinates are computed once. Rows past
    // the last pixel get a y that fails every bounds test.
    const int a_chunk = t % CHUNKS_K;
    int a_row_base[A_PASSES], a_y[A_PASSES], a_x[A_PASSES];
#pragma unroll
    for (int i = 0; i < A_PASSES; ++i) {
        const int p = m0 + t / CHUNKS_K + i * A_ROWS_PER_PASS;
        a_row_base[i] = (p >> (2 * s.log2_side)) * s.side_in;
        a_y[i] = p < s.m_total ? (p >> s.log2_side) & side_mask : -4;
        a_x[i] = p & side_mask;
    }

    auto load_slice = [&](int slot, int k0) {
        float* as = As + slot * Tile::A_STAGE;
        float* bs = Bs + slot * Tile::B_STAGE;
        const int k = k0 + a_chunk * 4;
        const bool k_ok = k < k_end;
        const int tap = k_ok ? k / s.cin : 0;
        const int ci = k - tap * s.cin;
        int oy, ox;
        tap_offset(s, phase, tap, oy, ox);
#pragma unroll
        for (int i = 0; i < A_PASSES; ++i) {
            const int sy = a_y[i] + oy, sx = a_x[i] + ox;
            const bool ok = k_ok && sy >= 0 && sx >= 0 && sy < s.side && sx < s.side;
            const float* src =
                ok ? in + ((size_t)(a_row_base[i] + (sy >> s.up)) * s.side_in + (sx >> s.up)) * s.cin + ci : in;
            cp_async_16(as + (t / CHUNKS_K + i * A_ROWS_PER_PASS) * A_STRIDE + a_chunk * 4, src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < B_PASSES; ++i) {
            const int c = t + i * THREADS;
            if (B_CHUNKS % THREADS == 0 || c < B_CHUNKS) {
                const int kk = c / B_CHUNKS_N, nc = (c % B_CHUNKS_N) * 4;
                const bool ok = k0 + kk < k_end && n0 + nc < s.cout;
                const float* src = ok ? w_phase + (size_t)(k0 + kk) * s.cout + n0 + nc : w;
                cp_async_16(bs + kk * B_STRIDE + nc, src, ok ? 16 : 0);
            }
        }
    };

    float acc[MI][NI][4];
    zero_fragments(acc);
    const int lane = t & 31, warp = t >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int warp_m = (warp / WARPS_N) * WM, warp_n = (warp % WARPS_N) * WN;

    // Slice `it` is in slot it % STAGES. Every iteration commits one copy group (empty past the end), so waiting
    // until STAGES - 2 groups are pending means slice `it` has landed; the barrier after the wait also tells every
    // thread that the slot refilled next (computed in the previous iteration) is free.
    const int n_slices = (k_end - k_begin + PIPE_BK - 1) / PIPE_BK;
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < n_slices) load_slice(st, k_begin + st * PIPE_BK);
        cp_async_commit();
    }
    for (int it = 0; it < n_slices; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int ahead = it + STAGES - 1;
        if (ahead < n_slices) load_slice(ahead % STAGES, k_begin + ahead * PIPE_BK);
        cp_async_commit();
        const float* as = As + (it % STAGES) * Tile::A_STAGE;
        const float* bs = Bs + (it % STAGES) * Tile::B_STAGE;
#pragma unroll
        for (int ks = 0; ks < PIPE_BK; ks += 8) {
            unsigned int a[MI][4], b[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                const float* r0 = as + (warp_m + mi * 16 + g) * A_STRIDE + ks + tig;
                const float* r8 = r0 + 8 * A_STRIDE;
                a[mi][0] = to_tf32(r0[0]);
                a[mi][1] = to_tf32(r8[0]);
                a[mi][2] = to_tf32(r0[4]);
                a[mi][3] = to_tf32(r8[4]);
            }
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const float* c0 = bs + (ks + tig) * B_STRIDE + warp_n + ni * 8 + g;
                b[ni][0] = to_tf32(c0[0]);
                b[ni][1] = to_tf32(c0[4 * B_STRIDE]);
            }
            mma_fragments(acc, a, b);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the pipeline's slots before the tile overwrites them

    float* const Cs = smem;
    store_fragments(Cs, BN + 1, warp_m, warp_n, acc);
    __syncthreads();
    conv_epilogue<BM, BN>(Cs, BN + 1, bias, out, s);
}

#define PIPE_ENTRY(NAME, BM_, BN_, WM_, WN_, STAGES_) \
    CONV_KERNEL(NAME, conv3x3_pipe_body<BM_, BN_, WM_, WN_, STAGES_>)

// Entry points conv3x3_tf32p_n<BN>: BM x BN tiles 128 x 64 (3 stages, 83 KB), 256 x 32 and 256 x 16 (2 stages,
// 84 and 80 KB); two blocks per SM on sm_80 and sm_90. Host side: src/generate/cuda.rs (PIPE_TILES).
PIPE_ENTRY(conv3x3_tf32p_n64, 128, 64, 32, 32, 3)
PIPE_ENTRY(conv3x3_tf32p_n32, 256, 32, 32, 32, 2)
PIPE_ENTRY(conv3x3_tf32p_n16, 256, 16, 32, 16, 2)

// Kernel (2c): the TF32 convolution of the high-resolution, narrow layers (Cout 16 or 32, sides >= 32), on spatial
// tiles. conv3x3_body and conv3x3_pipe_body gather every input value once per tap (nine times), which is what
// bounds them on these layers: a few channels per pixel leave little tensor-core work per gathered value. Here a
// block computes a TH x 32 patch of output pixels x all Cout channels and stages the input patch they read (with
// its one-pixel halo, at input resolution: the nearest-neighbour upsample is folded into the fragment indexing)
// once per 16-channel chunk, with the chunk's weights; the nine taps then read their A fragments from the patch.
// Chunks are double-buffered with cp.async. Needs Cin % 16 == 0, Cout == BN, side % 32 == 0; no split-K, always
// the fused epilogue.
// Phased (conv3x3_tf32sp_*, an upsampling layer with ConvShape::phased: side is the input grid's): the same patch
// (at input resolution) and the four phases' 2x2 kernels instead of the nine taps. A warp row is one output row, so
// one row phase a; its two m16 fragments are the even and the odd output columns (phase b = 0, 1), 16 each, whose
// input columns are 16 consecutive patch columns; each (t, u) tap then takes one mma per fragment and weight slice
// with that fragment's phase weights: 4 instead of 9 taps per output.
#define SPATIAL_TW 32  // output columns per block: two m16 fragments per warp row
#define SPATIAL_CC 16  // input channels per chunk

template <int BN, int WN, bool PHASED = false>
struct SpatialTile {
    static constexpr int WARPS_N = BN / WN;
    static constexpr int TH = (THREADS / 32) / WARPS_N;  // output rows per block, one per warp row
    static constexpr int CS = SPATIAL_CC + 4;             // patch pixel stride in floats: conflict-free fragments
    static constexpr int WS = BN + 8;                     // weight row stride
    // the patch's size in the larger (no upsample) case; phased layers always upsample, so theirs is the smaller
    static constexpr int PATCH_ROWS = PHASED ? TH / 2 + 2 : TH + 2;
    static constexpr int PATCH_COLS = PHASED ? SPATIAL_TW / 2 + 2 : SPATIAL_TW + 2;
    static constexpr int PATCH_FLOATS = PATCH_ROWS * PATCH_COLS * CS;
    static constexpr int TAPS = PHASED ? 16 : 9;          // weight groups: 9 taps, or 4 phases x 4 taps
    static constexpr int STAGE_FLOATS = PATCH_FLOATS + TAPS * SPATIAL_CC * WS;
    static_assert(!PHASED || (TH % 2 == 0 && SPATIAL_TW == 32), "phased tiles: whole row pairs, 16 columns per phase");
    static_assert(WARPS_N * TH == THREADS / 32 && WN % 8 == 0, "one warp per output row and N slice");
    static_assert(TH * SPATIAL_TW * (BN + 1) <= STAGE_FLOATS, "the epilogue tile fits in one stage");
};

template <int BN, int WN, bool TO_RGB = false, bool PHASED = false>
__device__ __forceinline__ void conv3x3_spatial_body(const float* __restrict__ in, const float* __restrict__ w,
                                                     const float* __restrict__ bias, float* __restrict__ out,
                                                     const ConvShape s, const RgbOutput rgb = RgbOutput{}) {
    static_assert(!TO_RGB || BN == 16, "ToRGB is fused into the 16-channel variant only");
    static_assert(!(TO_RGB && PHASED), "the last layer does not upsample");
    using Tile = SpatialTile<BN, WN, PHASED>;
    constexpr int TH = Tile::TH, TW = SPATIAL_TW, CC = SPATIAL_CC, CS = Tile::CS, WS = Tile::WS;
    constexpr int PATCH_COLS = Tile::PATCH_COLS;
    constexpr int MI = TW / 16, NI = WN / 8;
    DYNAMIC_SHARED_FLOATS(smem);

    const int t = threadIdx.x;
    const int up = PHASED ? 1 : s.up;
    const int out_side = PHASED ? 2 * s.side : s.side;
    const int tiles_x = out_side / TW;
    const int x0 = (blockIdx.x % tiles_x) * TW, y0 = (blockIdx.x / tiles_x) * TH;
    const int img = blockIdx.y;
    // the patch's first input row and column (may be -1: the zero padding), its size at input resolution
    const int iy0 = (y0 - 1) >> up, ix0 = (x0 - 1) >> up;
    const int patch_rows = up ? TH / 2 + 2 : TH + 2, patch_cols = up ? TW / 2 + 2 : TW + 2;
    const int n_chunks = s.cin / CC;

    auto load_chunk = [&](int slot, int chunk) {
        float* patch = smem + slot * Tile::STAGE_FLOATS;
        float* ws = patch + Tile::PATCH_FLOATS;
        const int c0 = chunk * CC;
        constexpr int QC = CC / 4;  // 16-byte copies per pixel
        for (int i = t; i < patch_rows * patch_cols * QC; i += THREADS) {
            const int q = i % QC, pixel = i / QC;
            const int r = pixel / patch_cols, c = pixel - r * patch_cols;
            const int iy = iy0 + r, ix = ix0 + c;
            const bool ok = iy >= 0 && ix >= 0 && iy < s.side_in && ix < s.side_in;
            const float* src = ok ? in + (((size_t)img * s.side_in + iy) * s.side_in + ix) * s.cin + c0 + q * 4 : in;
            cp_async_16(patch + (r * PATCH_COLS + c) * CS + q * 4, src, ok ? 16 : 0);
        }
        // weight rows tap * Cin + c0 + c for the nine taps (phased: the 16 phase * 4 + tap groups) and the chunk's
        // channels, stored [tap * CC + c][BN]
        constexpr int QN = BN / 4;
        for (int i = t; i < Tile::TAPS * CC * QN; i += THREADS) {
            const int q = i % QN, row = i / QN;
            const int tap = row / CC, c = row - tap * CC;
            cp_async_16(ws + row * WS + q * 4, w + ((size_t)tap * s.cin + c0 + c) * s.cout + q * 4, 16);
        }
    };

    const int lane = t & 31, warp = t >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int ty = warp / Tile::WARPS_N, warp_n = (warp % Tile::WARPS_N) * WN;
    float acc[MI][NI][4];
    zero_fragments(acc);

    // Chunk ch is in slot ch & 1. Waiting for every committed copy, then the barrier, makes chunk ch visible to all
    // threads and tells them the other slot (computed in the previous iteration) may be refilled.
    load_chunk(0, 0);
    cp_async_commit();
    for (int ch = 0; ch < n_chunks; ++ch) {
        cp_async_wait<0>();
        __syncthreads();
        if (ch + 1 < n_chunks) load_chunk((ch + 1) & 1, ch + 1);
        cp_async_commit();
        const float* patch = smem + (ch & 1) * Tile::STAGE_FLOATS;
        const float* ws = patch + Tile::PATCH_FLOATS;
        if constexpr (PHASED) {
            // output row y0 + ty (phase a = ty & 1, y0 is even) is input row ((y0 + ty) >> 1), patch row (ty >> 1) + 1;
            // fragment b holds output columns x0 + 2 * (g + 8 h) + b, input columns at patch column g + 8 h + 1
            const int a = ty & 1;
#pragma unroll
            for (int tap = 0; tap < 4; ++tap) {
                const int tr = tap >> 1, tc = tap & 1;
                const float* patch_row = patch + ((ty >> 1) + a + tr) * PATCH_COLS * CS;
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    const float* px0 = patch_row + (g + b + tc) * CS + tig;
                    const float* px8 = px0 + 8 * CS;
                    const float* w_tap = ws + ((a * 2 + b) * 4 + tap) * CC * WS + warp_n + g;
#pragma unroll
                    for (int kc = 0; kc < CC; kc += 8) {
                        unsigned int af[4], bf[NI][2];
                        af[0] = to_tf32(px0[kc]);
                        af[1] = to_tf32(px8[kc]);
                        af[2] = to_tf32(px0[kc + 4]);
                        af[3] = to_tf32(px8[kc + 4]);
#pragma unroll
                        for (int ni = 0; ni < NI; ++ni) {
                            bf[ni][0] = to_tf32(w_tap[(kc + tig) * WS + ni * 8]);
                            bf[ni][1] = to_tf32(w_tap[(kc + tig + 4) * WS + ni * 8]);
                        }
#pragma unroll
                        for (int ni = 0; ni < NI; ++ni) mma_tf32_16x8x8(acc[b][ni], af, bf[ni]);
                    }
                }
            }
            continue;
        }
#pragma unroll
        for (int dy = 0; dy < 3; ++dy) {
            // output row y0 + ty + dy - 1 of the upsampled image reads input row (y0 + ty + dy - 1) >> up
            const float* patch_row = patch + (((y0 + ty + dy - 1) >> up) - iy0) * PATCH_COLS * CS;
#pragma unroll
            for (int dx = 0; dx < 3; ++dx) {
                // this lane's A rows: output columns x0 + mi * 16 + g (+ 8)
                const float* px[MI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        px[mi][h] = patch_row + (((x0 + mi * 16 + g + 8 * h + dx - 1) >> up) - ix0) * CS + tig;
                const float* w_tap = ws + (dy * 3 + dx) * CC * WS + warp_n + g;
#pragma unroll
                for (int kc = 0; kc < CC; kc += 8) {
                    unsigned int a[MI][4], b[NI][2];
#pragma unroll
                    for (int mi = 0; mi < MI; ++mi) {
                        a[mi][0] = to_tf32(px[mi][0][kc]);
                        a[mi][1] = to_tf32(px[mi][1][kc]);
                        a[mi][2] = to_tf32(px[mi][0][kc + 4]);
                        a[mi][3] = to_tf32(px[mi][1][kc + 4]);
                    }
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) {
                        b[ni][0] = to_tf32(w_tap[(kc + tig) * WS + ni * 8]);
                        b[ni][1] = to_tf32(w_tap[(kc + tig + 4) * WS + ni * 8]);
                    }
                    mma_fragments(acc, a, b);
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the slots before the tile overwrites them

    // tile [TH * TW pixels][BN + 1] -> fused epilogue: one warp per pixel, or with 16 channels two pixels per warp
    // (a half warp each, so that no lane idles; the two pixels are neighbours, one 128-byte store)
    float* const Cs = smem;
    if constexpr (PHASED) {
        // fragment b's row g (+ 8) is output column 2 * g (+ 16) + b of the warp's row
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int col = 2 * (g + ((r >> 1) << 3)) + b;
                    Cs[(ty * TW + col) * (BN + 1) + warp_n + ni * 8 + tig * 2 + (r & 1)] = acc[b][ni][r];
                }
    } else {
        store_fragments(Cs, BN + 1, ty * TW, warp_n, acc);
    }
    __syncthreads();
    if constexpr (BN == 16) {
        const int half = lane >> 4, c = lane & 15;
        for (int r = 2 * warp + half; r < TH * TW; r += 2 * (THREADS / 32)) {
            const size_t p = ((size_t)img * out_side + y0 + r / TW) * out_side + x0 + r % TW;
            const float v = lrelu(Cs[r * (BN + 1) + c] + bias[c]);
            if constexpr (TO_RGB) {
                float sums[3];
                rgb_half_warp(v, c, rgb, sums);
                const size_t plane = (size_t)out_side * out_side, q = p - (size_t)img * plane;
                if (c < 3) rgb.img[((size_t)img * 3 + c) * plane + q] = rgb_channel(c, sums);
                if (c == 0) rgb.packed[p] = pack_0rgb(sums);
            } else {
                out[p * 16 + c] = half_warp_pixel_norm16(v);
            }
        }
    } else {
        for (int r = warp; r < TH * TW; r += THREADS / 32) {
            const size_t p = ((size_t)img * out_side + y0 + r / TW) * out_side + x0 + r % TW;
            finish_pixel(Cs + r * (BN + 1), bias, out + p * s.cout, s.cout, lane);
        }
    }
}

#define SPATIAL_ENTRY(NAME, BN_, WN_) CONV_KERNEL(NAME, conv3x3_spatial_body<BN_, WN_>)

// Entry points conv3x3_tf32s_n<BN>: 8 x 32 output pixels x BN channels per block, grid (side / 32 * side / 8,
// N); one or two stages of 41 KB (BN 16) or 50 KB (BN 32). Host side: src/generate/cuda.rs (ConvPlan).
SPATIAL_ENTRY(conv3x3_tf32s_n16, 16, 16)
SPATIAL_ENTRY(conv3x3_tf32s_n32, 32, 32)

#define SPATIAL_PHASED_ENTRY(NAME, BN_, WN_) CONV_KERNEL(NAME, conv3x3_spatial_body<BN_, WN_, false, true>)

// Entry points conv3x3_tf32sp_n<BN>: the phased upsampling layers (phase weights, ConvShape::phased), same tiles and
// grid as conv3x3_tf32s_n<BN> over the output; one or two stages of 33 KB (BN 16) or 50 KB (BN 32).
SPATIAL_PHASED_ENTRY(conv3x3_tf32sp_n16, 16, 16)
SPATIAL_PHASED_ENTRY(conv3x3_tf32sp_n32, 32, 32)

// The last layer with ToRGB fused (RgbOutput): the 16-channel spatial kernel writing the image and the display
// buffer instead of the activations.
CONV_RGB_KERNEL(conv3x3_tf32s_n16_rgb, conv3x3_spatial_body<16, 16, true>)

// Kernel (3): sums the split-K partials [splits, M, Cout], adds the bias, applies leaky ReLU and pixel norm.
// One warp per pixel; out: [M, Cout].
extern "C" __global__ void conv_finish_f32(const float* __restrict__ partial, const float* __restrict__ bias,
                                           float* __restrict__ out, int m_total, int cout, int splits) {
    const int lane = threadIdx.x & 31;
    const int p = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (p >= m_total) return;
    float* o = out + (size_t)p * cout;
    float sq = 0.0f;
    for (int c = lane; c < cout; c += 32) {
        float v = 0.0f;
        for (int k = 0; k < splits; ++k) v += partial[((size_t)k * m_total + p) * cout + c];
        v = lrelu(v + bias[c]);
        o[c] = v;
        sq += v * v;
    }
    const float inv = 1.0f / sqrtf(warp_sum(sq) / (float)cout + PIXEL_NORM_EPS);
    for (int c = lane; c < cout; c += 32) o[c] *= inv;
}
