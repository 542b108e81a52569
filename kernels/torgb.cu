// Kernel (4): ToRGB (1x1 convolution to 3 channels, no activation), writing both the float image and the packed
// 0x00RRGGBB display buffer with the official 8-bit rounding.
#include "common.cuh"

// act: [N, side, side, C]; w: [C, 3] (wscale applied); b: [3]; img: [N, 3, side, side]; packed: [N, side, side].
extern "C" __global__ void torgb_f32(const float* __restrict__ act, const float* __restrict__ w,
                                     const float* __restrict__ b, float* __restrict__ img,
                                     unsigned int* __restrict__ packed, int n_images, int side, int c) {
    const size_t plane = (size_t)side * side;
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= plane * n_images) return;
    const size_t n = p / plane, q = p - n * plane;
    const float* x = act + p * c;
    float r = b[0], g = b[1], bl = b[2];
    for (int ci = 0; ci < c; ++ci) {
        const float v = x[ci];
        r += v * w[ci * 3];
        g += v * w[ci * 3 + 1];
        bl += v * w[ci * 3 + 2];
    }
    float* o = img + n * 3 * plane;
    o[q] = r;
    o[plane + q] = g;
    o[2 * plane + q] = bl;
    packed[p] = (to_u8(r) << 16) | (to_u8(g) << 8) | to_u8(bl);
}
