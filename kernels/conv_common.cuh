// What the convolution kernels share. Kernels (2) and (3) compute the 3x3 convolution as an implicit GEMM, with the
// nearest-neighbour x2 upsample folded into its input indexing (or phased, below), and the pixel-norm epilogue. Three families, one file each: conv3x3_body
// (conv_gather.cu, the measured default), conv3x3_pipe_body (conv_pipelined.cu) and conv3x3_spatial_body
// (conv_spatial.cu); src/generate/cuda/plan.rs (ConvPlan) picks one per layer; conv_finish.cu reduces split-K.
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
#pragma once
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
