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
#include "conv_common.cuh"
#define PIPE_BK 32

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
