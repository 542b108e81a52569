// Kernel (3): sums the split-K partials [splits, M, Cout], adds the bias, applies leaky ReLU and pixel norm.
// One warp per pixel; out: [M, Cout].
#include "conv_common.cuh"
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
