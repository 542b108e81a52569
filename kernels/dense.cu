// Kernel (1): latent pixel norm + the 4x4 dense layer. Bias, leaky ReLU and the pixel norm over channels follow in
// conv_finish_f32 (conv_finish.cu), which the host launches on this kernel's output as on a convolution's partial sums.
#include "common.cuh"

// grid (ceil(16*c4 / blockDim.x), N); one thread per dense output column j = c*16 + y*4 + x.
// z: [N, latent]; w: [latent, 16*c4] (wscale applied); out: [N, 4, 4, c4] (channels last), before bias.
// Dynamic shared memory: latent floats.
extern "C" __global__ void dense_f32(const float* __restrict__ z, const float* __restrict__ w,
                                     float* __restrict__ out, int latent, int c4) {
    DYNAMIC_SHARED_FLOATS(zn);
    __shared__ float scratch[32];
    const int n = blockIdx.y;
    const float* zi = z + (size_t)n * latent;
    float s = 0.0f;
    for (int i = threadIdx.x; i < latent; i += blockDim.x) s += zi[i] * zi[i];
    const float inv = 1.0f / sqrtf(block_sum(s, scratch) / (float)latent + PIXEL_NORM_EPS);
    for (int i = threadIdx.x; i < latent; i += blockDim.x) zn[i] = zi[i] * inv;
    __syncthreads();
    const int cols = 16 * c4;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float acc = 0.0f;
    for (int i = 0; i < latent; ++i) acc += zn[i] * w[(size_t)i * cols + j];
    const int c = j / 16, pixel = j - c * 16;
    out[((size_t)n * 16 + pixel) * c4 + c] = acc;
}
