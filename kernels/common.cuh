// Shared helpers of the PGGAN kernels. Compiled with NVRTC at start-up (see src/generate/cuda.rs); the sources
// are concatenated in the order common.cuh, dense.cu, conv.cu, torgb.cu, so no #include is needed at run time.
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

// float -> tf32 (round to nearest, ties away), as the tensor cores take it.
__device__ __forceinline__ unsigned int to_tf32(float x) {
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// D = A * B + D for one m16n8k8 TF32 tile (A row major 16x8, B column major 8x8, D 16x8 float).
__device__ __forceinline__ void mma_tf32_16x8x8(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
