// Shared helpers of the PGGAN kernels. Compiled with NVRTC at start-up (see src/generate/cuda/source.rs); the sources
// are concatenated in the order common.cuh, dense.cu, conv_common.cuh, conv_gather.cu, conv_pipelined.cu,
// conv_spatial.cu, conv_finish.cu, torgb.cu, so no #include is needed at run time.
#pragma once

#define LRELU_SLOPE 0.2f
#define PIXEL_NORM_EPS 1e-8f

__device__ __forceinline__ float lrelu(float x) { return fmaxf(x, LRELU_SLOPE * x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block; `scratch` holds one float per warp. Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    __syncthreads();
    return total;
}

// The official 8-bit conversion: clip(rint((x + 1) / 2 * 255), 0, 255), ties to even (rintf).
__device__ __forceinline__ unsigned int to_u8(float x) {
    return (unsigned int)fminf(fmaxf(rintf((x + 1.0f) / 2.0f * 255.0f), 0.0f), 255.0f);
}

#ifndef HYPER_RT_CPU_EMULATION
// The hardware-specific helpers below have CPU stand-ins in tests/cuda_emulator/cuda_emulator.hpp, which the
// kernel logic tests compile these sources with.

// float -> tf32 (round to nearest, ties away), as the tensor cores take it.
__device__ __forceinline__ unsigned int to_tf32(float x) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    return __float_as_uint(x);  // never used before sm_80 (see mma_tf32_16x8x8)
#endif
}

// D = A * B + D for one m16n8k8 TF32 tile (A row major 16x8, B column major 8x8, D 16x8 float).
// TF32 tensor cores need sm_80: on older GPUs the host never launches the TF32 kernels (it refuses
// --precision tf32 there), and this stands in only so that the module, with its float32 kernels, still builds.
__device__ __forceinline__ void mma_tf32_16x8x8(float* d, const unsigned int* a, const unsigned int* b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// Asynchronous 16-byte copy global -> shared (sm_80+), bypassing L1; the bytes past src_bytes are zero-filled
// (src_bytes = 0 writes 16 zero bytes, the padding of the convolution).
// Before sm_80 the copy is an ordinary load and store (callers pass src_bytes 0 or 16).
__device__ __forceinline__ void cp_async_16(void* shared_dst, const void* global_src, int src_bytes) {
#if __CUDA_ARCH__ >= 800
    const unsigned int dst = (unsigned int)__cvta_generic_to_shared(shared_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src), "r"(src_bytes));
#else
    *reinterpret_cast<float4*>(shared_dst) =
        src_bytes ? *reinterpret_cast<const float4*>(global_src) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// The block's dynamically sized shared memory (the launch's shared_mem_bytes), as floats.
#define DYNAMIC_SHARED_FLOATS(name) extern __shared__ __align__(16) float name[]
#endif
