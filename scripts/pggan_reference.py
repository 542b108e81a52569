#!/usr/bin/env python3
"""A float64 NumPy implementation of the PGGAN generator, written from docs/pggan.md, as the independent
reference the Rust and CUDA generators are tested against. Slow and plain on purpose.

    python scripts/pggan_reference.py WEIGHTS.safetensors LATENTS.npy OUT.npy   # writes float64 [N,3,H,W]

`Conv0_up` layers are computed literally as the official code does (the 3x3 kernel padded to 4x4, summed over
four shifts, then a stride-2 transposed convolution with SAME padding), not by the upsample-and-flip identity the
Rust code uses, so the test also checks that identity.
"""

import json
import sys

import numpy as np


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start:base + end], dtype="<f4").reshape(info["shape"])
    return tensors, meta


def pixel_norm(x, axis=1):
    return x / np.sqrt(np.mean(x * x, axis=axis, keepdims=True) + 1e-8)


def lrelu(x):
    return np.maximum(0.2 * x, x)


def wscale(weight, gain, fan_in=None):
    fan_in = int(np.prod(weight.shape[:-1])) if fan_in is None else fan_in
    return np.float32(gain / np.sqrt(fan_in))


def conv3x3(x, w):
    """x [N,Cin,H,W] float64, w [3,3,Cin,Cout]: cross-correlation, zero padding 1."""
    n, cin, h, wd = x.shape
    xp = np.zeros((n, cin, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[3], h, wd))
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, :, dy:dy + h, dx:dx + wd]
            out += np.einsum("nchw,cd->ndhw", patch, w[dy, dx])
    return out


def upscale2d(x):
    return x.repeat(2, axis=2).repeat(2, axis=3)


def upscale_conv_transposed(x, w3):
    """Official fused upscale: w3 [3,3,Cout,Cin]; 4x4 kernel = sum of four shifts; stride-2 transposed conv, SAME."""
    wp = np.pad(w3, [[1, 1], [1, 1], [0, 0], [0, 0]])
    w4 = wp[1:, 1:] + wp[:-1, 1:] + wp[1:, :-1] + wp[:-1, :-1]  # [4,4,Cout,Cin]
    n, cin, h, wd = x.shape
    cout = w4.shape[2]
    out = np.zeros((n, cout, 2 * h + 2, 2 * wd + 2))  # extra border for taps that fall outside, cropped below
    for ty in range(4):
        for tx in range(4):
            contrib = np.einsum("nchw,dc->ndhw", x, w4[ty, tx])
            # output position o = 2*i + t - 1, shifted by +1 into the bordered array
            out[:, :, ty:ty + 2 * h:2, tx:tx + 2 * wd:2] += contrib
    return out[:, :, 1:2 * h + 1, 1:2 * wd + 1]


def forward(t, z):
    """t: name -> float32 array; z [N, latent]. Returns float64 [N,3,H,W]."""
    f64 = lambda name: t[name].astype(np.float64)
    x = pixel_norm(z.astype(np.float64))
    dense = f64("4x4/Dense/weight") * wscale(t["4x4/Dense/weight"], np.sqrt(2) / 4)
    c4 = t["4x4/Dense/bias"].shape[0]
    x = (x @ dense).reshape(-1, c4, 4, 4)
    x = pixel_norm(lrelu(x + f64("4x4/Dense/bias")[None, :, None, None]))
    w = f64("4x4/Conv/weight") * wscale(t["4x4/Conv/weight"], np.sqrt(2))
    x = pixel_norm(lrelu(conv3x3(x, w) + f64("4x4/Conv/bias")[None, :, None, None]))
    res = 8
    while f"{res}x{res}/Conv1/weight" in t:
        p = f"{res}x{res}"
        if f"{p}/Conv0_up/weight" in t:
            w_up = t[f"{p}/Conv0_up/weight"]
            scale = wscale(w_up, np.sqrt(2), fan_in=9 * w_up.shape[3])
            x = upscale_conv_transposed(x, w_up.astype(np.float64) * scale) + f64(f"{p}/Conv0_up/bias")[None, :, None, None]
        else:
            w = f64(f"{p}/Conv0/weight") * wscale(t[f"{p}/Conv0/weight"], np.sqrt(2))
            x = conv3x3(upscale2d(x), w) + f64(f"{p}/Conv0/bias")[None, :, None, None]
        x = pixel_norm(lrelu(x))
        w = f64(f"{p}/Conv1/weight") * wscale(t[f"{p}/Conv1/weight"], np.sqrt(2))
        x = pixel_norm(lrelu(conv3x3(x, w) + f64(f"{p}/Conv1/bias")[None, :, None, None]))
        res *= 2
    w = f64("ToRGB_lod0/weight")[0, 0] * wscale(t["ToRGB_lod0/weight"], 1.0)
    return np.einsum("nchw,cd->ndhw", x, w) + f64("ToRGB_lod0/bias")[None, :, None, None]


def to_uint8(images):
    """The official conversion: clip(rint((img + 1) / 2 * 255), 0, 255), NCHW -> NHWC, in float32."""
    images = images.astype(np.float32)
    return np.clip(np.rint((images + 1.0) / 2.0 * 255.0), 0.0, 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


if __name__ == "__main__":
    tensors, _ = load_safetensors(sys.argv[1])
    latents = np.load(sys.argv[2])
    np.save(sys.argv[3], forward(tensors, latents))
