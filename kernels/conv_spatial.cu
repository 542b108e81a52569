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
#include "conv_common.cuh"
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
