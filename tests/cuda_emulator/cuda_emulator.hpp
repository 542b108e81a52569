// A CPU emulation of the few CUDA features our kernels use, so that the kernels in kernels/*.cu can be compiled
// with g++ and run on a machine without a GPU (CI). It checks the kernels' logic: indexing, tiling, split-K, the
// tensor-core fragment layouts, the shared-memory pipeline's slots and waits, the epilogues. It cannot check
// timing, or anything the hardware does differently from the PTX ISA's description.
//
// Each thread of a block is an OS thread; blocks run one after another (built with ThreadSanitizer, the tests
// check that every shared-memory access is ordered by the barriers below). __syncthreads is a barrier over the block;
// warp shuffles and mma.sync are warp-wide exchanges through per-warp slots between two warp barriers. Threads
// that return early drop out of both barriers, as exited threads do on the GPU. Asynchronous copies land when
// waited for (see cp_async_16). `__shared__` becomes `static`: one copy per kernel instantiation, shared by the
// threads of the block that is running.
//
// The fragment layouts of mma.sync.m16n8k8 (TF32) follow the PTX ISA; the tests run the kernels that passed the
// parity tests on a real H100 through this emulation first, which checks the layouts against the hardware.
#pragma once
#define HYPER_RT_CPU_EMULATION 1

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct EmuDim3 {
    unsigned int x = 1, y = 1, z = 1;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
using std::max;
using std::min;

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}

namespace emu {

struct Warp {
    std::unique_ptr<std::barrier<>> bar;
    float f[32];
    unsigned int u[32][8];
};

struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<Warp> warps;
    std::vector<float> dynamic_shared;
};

inline Block* current_block = nullptr;

// This thread's asynchronous copies: issued since the last commit, and committed groups not yet waited for.
struct PendingCopy {
    void* dst;
    const void* src;
    int bytes;
};
inline thread_local std::vector<PendingCopy> open_group;
inline thread_local std::vector<std::vector<PendingCopy>> committed_groups;

inline Warp& my_warp() { return current_block->warps[threadIdx.x / 32]; }
inline unsigned int lane() { return threadIdx.x & 31; }

// Runs `kernel(args...)` over the grid, one block at a time, one OS thread per CUDA thread.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), EmuDim3 grid, unsigned int threads, size_t dynamic_shared_bytes,
            Args... args) {
    gridDim = grid;
    blockDim = EmuDim3{threads, 1, 1};
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                Block block;
                block.bar = std::make_unique<std::barrier<>>(threads);
                const unsigned int n_warps = (threads + 31) / 32;
                block.warps.resize(n_warps);
                for (unsigned int w = 0; w < n_warps; ++w)
                    block.warps[w].bar = std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w));
                // garbage, not zeros: a kernel must not rely on shared memory it did not write
                block.dynamic_shared.assign(dynamic_shared_bytes / 4, std::nanf(""));
                current_block = &block;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned int t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        threadIdx = EmuDim3{t, 0, 0};
                        blockIdx = EmuDim3{bx, by, bz};
                        emu::open_group.clear();
                        emu::committed_groups.clear();
                        kernel(args...);
                        block.warps[t / 32].bar->arrive_and_drop();
                        block.bar->arrive_and_drop();
                    });
                for (auto& th : pool) th.join();
                current_block = nullptr;
            }
}

// Bits of a float the tensor cores read as TF32 (the low 13 mantissa bits are ignored).
inline float tf32_truncate(unsigned int bits) { return __uint_as_float(bits & 0xffffe000u); }

}  // namespace emu

inline void __syncthreads() { emu::current_block->bar->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    emu::Warp& w = emu::my_warp();
    w.f[emu::lane()] = v;
    w.bar->arrive_and_wait();
    const float r = w.f[emu::lane() ^ lane_mask];
    w.bar->arrive_and_wait();
    return r;
}

namespace emu {
// Lets another thread run now and then, at random, inside the phases between barriers: threads then drift apart
// as warps do on a GPU, so that a missing barrier shows up as wrong results rather than passing by luck.
inline void perturb_schedule() {
    thread_local unsigned int state = 0x9e3779b9u ^ (threadIdx.x * 2654435761u) ^ (blockIdx.x * 40503u);
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    if ((state & 15u) == 0) std::this_thread::yield();
}
}  // namespace emu

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero.
inline unsigned int to_tf32(float x) {
    emu::perturb_schedule();
    const unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, nan
    return (u + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32. Lane l = 4 * g + t holds
//   A (16 x 8): a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4];
//   B (8 x 8):  b0 = B[t][g], b1 = B[t + 4][g];
//   C, D (16 x 8): d0 = D[g][2t], d1 = D[g][2t + 1], d2 = D[g + 8][2t], d3 = D[g + 8][2t + 1].
inline void mma_tf32_16x8x8(float* d, const unsigned int* a, const unsigned int* b) {
    emu::Warp& w = emu::my_warp();
    const unsigned int l = emu::lane();
    for (int i = 0; i < 4; ++i) w.u[l][i] = a[i];
    w.u[l][4] = b[0];
    w.u[l][5] = b[1];
    w.bar->arrive_and_wait();
    const unsigned int g = l >> 2, t = l & 3;
    float sums[4];
    for (int r = 0; r < 4; ++r) {
        const unsigned int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
        double s = 0.0;
        for (unsigned int k = 0; k < 8; ++k) {
            const float av = emu::tf32_truncate(w.u[(row & 7) * 4 + (k & 3)][(row >> 3) + 2 * (k >> 2)]);
            const float bv = emu::tf32_truncate(w.u[col * 4 + (k & 3)][4 + (k >> 2)]);
            s += (double)av * (double)bv;
        }
        sums[r] = (float)s;
    }
    w.bar->arrive_and_wait();
    for (int r = 0; r < 4; ++r) d[r] += sums[r];
}

// cp.async.cg.shared.global with zero fill, modelled as asynchronous: the destination reads as NaN from the
// moment the copy is issued until a cp.async.wait_group covering its group, which is when the data lands. A
// kernel that reads a slot before waiting for it, or refills a slot another warp still reads, sees NaN.
// Both addresses must be 16-byte aligned, as the hardware requires (a misaligned cp.async is a fatal launch error
// there); the emulation stops with a message instead.
inline void cp_async_16(void* shared_dst, const void* global_src, int src_bytes) {
    if (reinterpret_cast<std::uintptr_t>(shared_dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(global_src) % 16 != 0) {
        std::fprintf(stderr, "cp.async with a misaligned address: shared %p, global %p (thread %u of block %u)\n",
                     shared_dst, global_src, threadIdx.x, blockIdx.x);
        std::abort();
    }
    if (src_bytes < 0 || src_bytes > 16) {
        std::fprintf(stderr, "cp.async with src-size %d (0 to 16)\n", src_bytes);
        std::abort();
    }
    float* d = static_cast<float*>(shared_dst);
    for (int i = 0; i < 4; ++i) d[i] = std::nanf("");
    emu::open_group.push_back(emu::PendingCopy{shared_dst, global_src, src_bytes});
}
inline void cp_async_commit() {
    emu::committed_groups.push_back(std::move(emu::open_group));
    emu::open_group.clear();
}
template <int N>
inline void cp_async_wait() {
    while (emu::committed_groups.size() > (size_t)N) {
        for (const emu::PendingCopy& c : emu::committed_groups.front()) {
            std::memcpy(c.dst, c.src, (size_t)c.bytes);
            std::memset(static_cast<char*>(c.dst) + c.bytes, 0, (size_t)(16 - c.bytes));
        }
        emu::committed_groups.erase(emu::committed_groups.begin());
    }
}

#define DYNAMIC_SHARED_FLOATS(name) float* name = emu::current_block->dynamic_shared.data()
