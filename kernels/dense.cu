// Kernel (1): latent pixel norm + the 4x4 dense layer + bias + leaky ReLU + pixel norm.
#include "common.cuh"

// One block per image. z: [N, latent]; w: [latent, 16*c4] (wscale applied), column c*16 + y*4 + x;
// bias: [c4]; out: [N, 4, 4, c4] (channels last). Dynamic shared memory: (latent + 16*c4) floats.
extern "C" __global__ void dense_f32(const float* __restrict__ z, const float* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ out, int latent, int c4) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    float* zn = smem;
    float* v = smem + latent;
    const float* zi = z + (size_t)blockIdx.x * latent;
    float s = 0.0f;
    for (int i = threadIdx.x; i < latent; i += blockDim.x) s += zi[i] * zi[i];
    const float inv = 1.0f / sqrtf(block_sum(s, scratch) / (float)latent + PIXEL_NORM_EPS);
    for (int i = threadIdx.x; i < latent; i += blockDim.x) zn[i] = zi[i] * inv;
    __syncthreads();
    const int cols = 16 * c4;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < latent; ++i) acc += zn[i] * w[(size_t)i * cols + j];
        v[j] = lrelu(acc + bias[j / 16]);
    }
    __syncthreads();
    // pixel norm over channels for each of the 16 pixels: one warp per pixel
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int p = warp; p < 16; p += warps) {
        float sq = 0.0f;
        for (int c = lane; c < c4; c += 32) sq += v[c * 16 + p] * v[c * 16 + p];
        const float pinv = 1.0f / sqrtf(warp_sum(sq) / (float)c4 + PIXEL_NORM_EPS);
        float* o = out + ((size_t)blockIdx.x * 16 + p) * c4;
        for (int c = lane; c < c4; c += 32) o[c] = v[c * 16 + p] * pinv;
    }
}
