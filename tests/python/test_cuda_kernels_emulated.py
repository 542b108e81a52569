"""The CUDA kernels' logic, checked without a GPU: kernels/*.cu are compiled with g++ against a CPU emulation of
the CUDA features they use (tests/cuda_emulator), run on small layers, and compared with NumPy written from the
layouts in kernels/*.cu and docs/pggan.md.

This covers indexing, tiling, split-K, the upsample folded into the gather or run as four phased 2 x 2
convolutions, the mma fragment layouts, the
pipelined kernel's shared-memory slots and zero-filled padding, the alignment of every asynchronous copy, and every
epilogue; under ThreadSanitizer, that no two threads of a block touch the same shared-memory word without a barrier
between them; and, by replaying the launch sequence the host plans (`hyper-rt launch-plan`), the host's side of
every launch: kernel choice, grids, shared memory, argument order, split-K, buffer chaining, the fused last layer
and the buffer sizes. It does not cover timing, or the hardware's memory ordering beyond what barriers order;
scripts/gpu_check.sh runs the parity tests on a real GPU. The kernels that passed those parity tests on an H100 run
here too, so an emulation that disagreed with the hardware would fail them.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, binary

sys.path.insert(0, str(ROOT / "scripts"))
from pggan_reference import forward, load_safetensors, lrelu, pixel_norm, to_uint8  # noqa: E402

THREADS = 256


# ThreadSanitizer reports a data race in the emulation (exit status 66 at the first one): two threads of a block
# touching the same shared-memory word, one of them writing, with no barrier between them; deterministic, unlike
# a race that only shows when the schedule happens to expose it.
TSAN_OPTIONS = "halt_on_error=1:exitcode=66"


def build_runner(tmp_path_factory, sanitizer, source_root=ROOT):
    """Builds tests/cuda_emulator/run_kernel.cpp of `source_root` with `sanitizer` ("address" adds
    UndefinedBehaviorSanitizer; "thread"), returns run(kernel, grid, ints, buffers, shared=0, threads=THREADS),
    which launches `kernel` over `grid` with the integer arguments `ints` and the pointer arguments `buffers` (NumPy
    arrays of 4-byte words) and returns the buffers as they are after the run."""
    exe = tmp_path_factory.mktemp(f"emulator_{sanitizer}") / "run_kernel"
    # AddressSanitizer: a read or write outside a buffer, the shared memory or a static array fails the run
    flags = {"address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
             "thread": ["-fsanitize=thread"]}[sanitizer]
    build = subprocess.run(["c++", "-O1", "-g", "-std=c++20", "-pthread", *flags, "-Wall", "-Wno-unknown-pragmas",
                            "-Werror", "-o", str(exe), str(source_root / "tests" / "cuda_emulator" / "run_kernel.cpp")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    env = dict(os.environ, TSAN_OPTIONS=TSAN_OPTIONS)
    count = iter(range(1_000_000))

    def run(kernel, grid, ints, buffers, shared=0, threads=THREADS):
        d = tmp_path_factory.mktemp(f"launch{next(count)}")
        lines = [f"kernel {kernel}", "grid {} {} {}".format(*grid), f"threads {threads}", f"shared {shared}",
                 "ints " + " ".join(str(int(i)) for i in ints), f"buffers {len(buffers)}"]
        (d / "launch.txt").write_text("\n".join(lines) + "\n")
        for i, b in enumerate(buffers):
            assert b.dtype.itemsize == 4
            np.ascontiguousarray(b).tofile(d / f"arg{i}.bin")
        r = subprocess.run([str(exe), str(d)], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, f"{kernel} (exit status {r.returncode}):\n{r.stderr[:6000]}"
        return [np.fromfile(d / f"arg{i}.out", dtype=b.dtype).reshape(b.shape) for i, b in enumerate(buffers)]

    return run


@pytest.fixture(scope="module")
def run_kernel(tmp_path_factory):
    return build_runner(tmp_path_factory, "address")


@pytest.fixture(scope="module")
def run_kernel_racecheck(tmp_path_factory):
    return build_runner(tmp_path_factory, "thread")


def conv_reference(x, w, b, up):
    """x: [N, S, S, Cin] float64 channels last; w: [9 * Cin, Cout] with rows (dy * 3 + dx) * Cin + ci; nearest x2
    upsample first when `up`; zero padding 1. Returns the pre-activation [N, S', S', Cout] and the layer output."""
    if up:
        x = x.repeat(2, axis=1).repeat(2, axis=2)
    n, s, _, cin = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    pre = np.zeros((n, s, s, w.shape[1]))
    for dy in range(3):
        for dx in range(3):
            tap = w[(dy * 3 + dx) * cin:(dy * 3 + dx + 1) * cin]
            pre += padded[:, dy:dy + s, dx:dx + s, :] @ tap
    pre += b
    return pre, pixel_norm(lrelu(pre), axis=-1)


def phase_weights(w, cin):
    """The phased kernels' weights, from the layer's [9 * Cin, Cout]: output pixel (2i + a, 2j + b) of the upsampled
    convolution reads upsampled rows 2i + a + dy - 1, which are input rows floor((a + dy - 1) / 2) + i, i.e. input row
    i + a - 1 + t for t = floor((a + dy - 1) / 2) - a + 1 in {0, 1} (columns alike); the taps landing on the same input
    pixel are summed. Returns [4 phases a * 2 + b][4 taps t * 2 + u][Cin] x Cout as [16 * Cin, Cout]."""
    cout = w.shape[1]
    w9 = w.reshape(3, 3, cin, cout)
    out = np.zeros((2, 2, 2, 2, cin, cout), w.dtype)
    for a in range(2):
        for b in range(2):
            for dy in range(3):
                for dx in range(3):
                    t, u = (a + dy - 1) // 2 - a + 1, (b + dx - 1) // 2 - b + 1
                    out[a, b, t, u] += w9[dy, dx]
    return out.reshape(16 * cin, cout)


def ceil_div(a, b):
    return -(-a // b)


def rel_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def conv_kernels():
    """name: (BM, BN, BK, dynamic shared bytes). The default kernels' tiles are BM x BN = 4096 with BK 16; the
    pipelined ones are read from kernels/conv_pipelined.cu's PIPE_ENTRY lines (shared memory: per stage a [BM][32 + 4] input
    slice and a [32][BN + 8] weight slice)."""
    kernels = {f"{p}_n{bn}": (4096 // bn, bn, 16, 0) for p in ("f32", "tf32") for bn in (16, 32, 64)}
    source = "".join(p.read_text() for p in sorted((ROOT / "kernels").glob("conv_*")))
    for name, bm, bn, _wm, _wn, stages in re.findall(
            r"^PIPE_ENTRY\(conv3x3_(\w+), (\d+), (\d+), (\d+), (\d+), (\d+)\)", source, re.M):
        bm, bn, stages = int(bm), int(bn), int(stages)
        kernels[name] = (bm, bn, 32, 4 * stages * (bm * 36 + 32 * (bn + 8)))
    assert {"tf32p_n16", "tf32p_n32", "tf32p_n64"} <= kernels.keys()
    return kernels


def spatial_kernels():
    """name: (BN, output rows per block TH, bytes of one pipeline stage), from kernels/conv_spatial.cu's SPATIAL_ENTRY lines:
    8 warps as TH rows x BN / WN slices; a stage is the (TH + 2) x 34 x (16 + 4) input patch and the chunk's
    9 x 16 x (BN + 8) weights; for the phased variants (SPATIAL_PHASED_ENTRY) the (TH / 2 + 2) x 18 x (16 + 4) patch
    and 16 x 16 x (BN + 8) phase weights."""
    source = "".join(p.read_text() for p in sorted((ROOT / "kernels").glob("conv_*")))
    kernels = {}
    for entry, name, bn, wn in re.findall(r"^(SPATIAL_ENTRY|SPATIAL_PHASED_ENTRY)\(conv3x3_(\w+), (\d+), (\d+)\)",
                                          source, re.M):
        bn, wn = int(bn), int(wn)
        th = 8 // (bn // wn)
        if entry == "SPATIAL_ENTRY":
            kernels[name] = (bn, th, 4 * ((th + 2) * 34 * 20 + 9 * 16 * (bn + 8)))
        else:
            kernels[name] = (bn, th, 4 * ((th // 2 + 2) * 18 * 20 + 16 * 16 * (bn + 8)))
    assert {"tf32s_n16", "tf32s_n32", "tf32sp_n16", "tf32sp_n32"} <= kernels.keys()
    return kernels


CONV_KERNELS = conv_kernels()
SPATIAL_KERNELS = spatial_kernels()


def run_conv(run_kernel, kernel, x, w, b, up, splits, phased=False):
    """Launches conv3x3_<kernel> (+ conv_finish_f32 when not fused) as src/generate/cuda.rs does, with `splits`
    K splits, an upsampling layer as four phased 2 x 2 convolutions with `phased`; returns the layer output
    [N, S', S', Cout]."""
    n, side_in, _, cin = x.shape
    cout = w.shape[1]
    side = side_in * (2 if up else 1)
    m_total, k_total = n * side * side, 9 * cin
    assert up or not phased
    if kernel in SPATIAL_KERNELS:
        bn, th, stage_bytes = SPATIAL_KERNELS[kernel]
        assert cout == bn and cin % 16 == 0 and side % 32 == 0 and splits == 1
        assert phased == kernel.startswith("tf32sp"), "the phased layers have spatial kernels of their own"
        if phased:  # the input grid, as for the other phased kernels; the grid below is over the output
            shape = [n, side_in, cin, cout, 0, side_in, side_in.bit_length() - 1, n * side_in * side_in, 4 * cin,
                     4 * cin, 1, 1]
            weights = phase_weights(w.astype(np.float32), cin)
        else:
            shape = [n, side_in, cin, cout, int(up), side, side.bit_length() - 1, m_total, k_total, k_total, 1, 0]
            weights = w.astype(np.float32)
        out = np.full((m_total, cout), np.nan, np.float32)
        args = [x.astype(np.float32), weights, b.astype(np.float32), out]
        grid = (side // 32 * (side // th), n, 1)
        result = run_kernel(f"conv3x3_{kernel}", grid, shape, args, shared=min(2, cin // 16) * stage_bytes)[3]
        return result.reshape(n, side, side, cout)
    bm, bn, bk, shared = CONV_KERNELS[kernel.removesuffix("_v")]
    # the GEMM's rows: output pixels, or, phased, input pixels (each block one of the four phases)
    rows, taps, phases, grid_side = (n * side_in * side_in, 4, 4, side_in) if phased else (m_total, 9, 1, side)
    k_gemm = taps * cin
    k_per_split = ceil_div(ceil_div(k_gemm, bk), splits) * bk
    splits = ceil_div(k_gemm, k_per_split)
    fused = splits == 1 and cout <= bn
    shape = [n, side_in, cin, cout, int(up and not phased), grid_side, grid_side.bit_length() - 1, rows, k_gemm,
             k_per_split, int(fused), int(phased)]
    out = np.full((splits if not fused else 1, m_total, cout), np.nan, np.float32)
    grid = (ceil_div(rows, bm), ceil_div(cout, bn), phases * splits)
    weights = phase_weights(w.astype(np.float32), cin) if phased else w.astype(np.float32)
    args = [x.astype(np.float32), weights, b.astype(np.float32), out]
    result = run_kernel(f"conv3x3_{kernel}", grid, shape, args, shared=shared)[3]
    if fused:
        return result.reshape(n, side, side, cout)
    act = np.full((m_total, cout), np.nan, np.float32)
    final = run_kernel("conv_finish_f32", (ceil_div(m_total, 8), 1, 1), [m_total, cout, splits],
                       [result, b.astype(np.float32), act])[2]
    return final.reshape(n, side, side, cout)


# (kernel, n, side_in, cin, cout, upsample, splits): fused and split tiles, partial M and N tiles, scalar and
# vector gathers, the upsample, K that ends inside a slice
CASES = [
    ("f32_n64", 2, 4, 3, 64, False, 1),       # scalar gather (Cin not a multiple of 16), fused
    ("f32_n32", 1, 8, 20, 24, True, 2),      # partial N tile, split-K, upsample
    ("f32_n16_v", 1, 8, 16, 16, True, 1),     # fused, one 256-pixel tile
    ("f32_n64_v", 2, 8, 32, 128, False, 3),   # two N tiles, three splits
    ("tf32_n64_v", 2, 4, 32, 128, True, 2),
    ("tf32_n16", 3, 4, 8, 12, True, 1),      # M not a multiple of BM
    ("tf32_n32_v", 1, 8, 16, 32, True, 1),
    ("tf32p_n64", 2, 8, 32, 128, False, 2),
    ("tf32p_n64", 1, 4, 64, 64, True, 1),     # fused wide tile
    ("tf32p_n32", 1, 8, 16, 32, True, 1),     # K = 144: the last slice is half empty
    ("tf32p_n32", 3, 4, 12, 20, True, 2),     # Cin 12: slices span taps; partial N tile; M not a multiple of BM
    ("tf32p_n16", 1, 16, 32, 16, True, 1),    # the 1024 px layer's shape, smaller
    ("tf32p_n16", 2, 8, 16, 16, False, 3),
    ("tf32s_n16", 1, 16, 32, 16, True, 1),    # the 1024 px Conv0 shape, smaller: two channel chunks, upsample
    ("tf32s_n16", 2, 32, 16, 16, False, 1),   # Conv1: one chunk, two images
    ("tf32s_n32", 1, 32, 64, 32, True, 1),    # the 512 px Conv0 shape, smaller: four chunks, 2 x 8 tiles
    ("tf32s_n32", 1, 32, 32, 32, False, 1),
]


def check_convolution(run_kernel, kernel, n, side_in, cin, cout, up, splits, phased=False):
    """Runs one layer of random data through conv3x3_<kernel> (an upsampling layer phased with `phased`) and compares
    it with the float64 reference."""
    rng = np.random.default_rng(n * 1000 + side_in * 100 + cin * 10 + cout)
    x = rng.standard_normal((n, side_in, side_in, cin))
    w = rng.standard_normal((9 * cin, cout)) / np.sqrt(9 * cin)
    b = rng.standard_normal(cout) * 0.1
    _, want = conv_reference(x.astype(np.float32).astype(np.float64), w.astype(np.float32), b.astype(np.float32), up)
    got = run_conv(run_kernel, kernel, x, w, b, up, splits, phased)
    assert np.isfinite(got).all(), "some outputs were never written"
    err = rel_l2(got, want)
    bound = 1e-5 if kernel.startswith("f32") else 1e-2
    assert err <= bound, f"{kernel}: relative L2 error {err:.2e} > {bound:g}"
    if not kernel.startswith("f32"):
        # the TF32 path must round like the tensor cores, not be exact by accident
        assert err > 1e-6, f"{kernel}: error {err:.1e} is too small for 10-bit inputs"


@pytest.mark.parametrize("kernel,n,side_in,cin,cout,up,splits", CASES)
def test_convolution_kernels_match_numpy(run_kernel, kernel, n, side_in, cin, cout, up, splits):
    check_convolution(run_kernel, kernel, n, side_in, cin, cout, up, splits)


# (kernel, n, side_in, cin, cout, splits) of upsampling layers run phased: every gather and pipelined tile width,
# scalar and vector gathers, split-K (the finish kernel then reads the output's pixels), partial tiles, K slices
# that span taps (Cin 12: 4 * Cin = 48)
PHASED_CASES = [
    ("f32_n64", 2, 4, 3, 64, 1),
    ("f32_n32", 1, 8, 20, 24, 2),
    ("f32_n16_v", 1, 8, 16, 16, 1),
    ("tf32_n64_v", 2, 4, 32, 128, 2),
    ("tf32_n16", 3, 4, 8, 12, 1),
    ("tf32_n32_v", 1, 16, 64, 32, 1),      # the 512 px Conv0 shape, smaller
    ("tf32p_n64", 1, 4, 64, 64, 1),
    ("tf32p_n32", 3, 4, 12, 20, 2),
    ("tf32p_n16", 1, 16, 32, 16, 1),       # the 1024 px Conv0 shape, smaller
    ("tf32p_n16", 2, 8, 16, 16, 3),
    ("tf32sp_n16", 1, 16, 32, 16, 1),      # the 1024 px Conv0 shape, smaller: two channel chunks, 32 x 32 output
    ("tf32sp_n16", 2, 32, 16, 16, 1),      # one chunk, two images, 64 x 64 output (2 x 8 tiles)
    ("tf32sp_n32", 1, 16, 64, 32, 1),      # the 512 px Conv0 shape, smaller: four chunks
]


@pytest.mark.parametrize("kernel,n,side_in,cin,cout,splits", PHASED_CASES)
def test_phased_upsampling_convolutions_match_numpy(run_kernel, kernel, n, side_in, cin, cout, splits):
    """The upsample + 3 x 3 convolution as four 2 x 2 convolutions (one per output phase, on the summed phase
    weights) gives the upsampled layer of the reference, every output pixel written."""
    check_convolution(run_kernel, kernel, n, side_in, cin, cout, True, splits, phased=True)


# Every kernel family once, in shapes that exercise its shared-memory reuse: split-K and the finish kernel, several
# K slices through the pipeline's slots, several channel chunks through the spatial kernel's two slots.
RACE_CASES = [
    ("f32_n32", 1, 8, 20, 24, True, 2),
    ("tf32_n64_v", 2, 4, 32, 128, True, 2),
    ("tf32p_n64", 2, 8, 32, 128, False, 2),
    ("tf32p_n16", 2, 8, 16, 16, False, 3),
    ("tf32s_n16", 1, 16, 32, 16, True, 1),
    ("tf32s_n32", 1, 32, 32, 32, False, 1),
]
PHASED_RACE_CASES = [("tf32_n64_v", 2, 4, 32, 128, True, 2), ("tf32p_n16", 2, 8, 16, 16, True, 3),
                     ("tf32sp_n32", 1, 16, 64, 32, True, 1)]


@pytest.mark.parametrize("kernel,n,side_in,cin,cout,up,splits,phased",
                         [(*c, False) for c in RACE_CASES] + [(*c, True) for c in PHASED_RACE_CASES])
def test_convolution_kernels_have_no_data_races(run_kernel_racecheck, kernel, n, side_in, cin, cout, up, splits, phased):
    """Under ThreadSanitizer: no two threads touch the same shared-memory word (or output element) without a barrier
    between them, one of them writing (a missing __syncthreads, a pipeline slot refilled while another warp still
    reads it, the epilogue tile written over slots in use)."""
    check_convolution(run_kernel_racecheck, kernel, n, side_in, cin, cout, up, splits, phased)


def mutant_runner(tmp_path_factory, sanitizer, original, replacement):
    """A runner built from a copy of the sources in which the convolution kernels' `original` (found exactly once in
    kernels/conv_*) is replaced by `replacement`: for the tests that show a check can fail."""
    mutant = tmp_path_factory.mktemp("mutant")
    shutil.copytree(ROOT / "kernels", mutant / "kernels")
    shutil.copytree(ROOT / "tests" / "cuda_emulator", mutant / "tests" / "cuda_emulator")
    holding = [p for p in sorted((mutant / "kernels").glob("conv_*")) if original in p.read_text()]
    assert len(holding) == 1 and holding[0].read_text().count(original) == 1, original
    holding[0].write_text(holding[0].read_text().replace(original, replacement))
    return build_runner(tmp_path_factory, sanitizer, source_root=mutant)


def test_a_missing_barrier_is_caught(tmp_path_factory):
    """The race check can fail: with the barrier before the pipelined kernel's epilogue tile taken out (warps would
    overwrite pipeline slots other warps still read), ThreadSanitizer reports a data race."""
    barrier = "    __syncthreads();  // every warp is done with the pipeline's slots before the tile overwrites them\n"
    run = mutant_runner(tmp_path_factory, "thread", barrier, "")
    with pytest.raises(AssertionError, match="ThreadSanitizer: data race"):
        check_convolution(run, "tf32p_n16", 2, 8, 16, 16, False, 3)


def test_a_wrong_phase_offset_is_caught(tmp_path_factory):
    """The phased comparison can fail: a kernel that takes the row offset of a phase from its column bit (phases
    (0, 1) and (1, 0) read the wrong input rows) draws a different layer."""
    run = mutant_runner(tmp_path_factory, "address", "oy = (phase >> 1) - 1 + (tap >> 1);", "oy = (phase & 1) - 1 + (tap >> 1);")
    with pytest.raises(AssertionError, match="relative L2 error"):
        check_convolution(run, "f32_n16_v", 1, 8, 16, 16, True, 1, phased=True)


def test_a_misaligned_asynchronous_copy_is_caught(tmp_path_factory):
    """cp.async needs 16-byte aligned addresses (the GPU stops the kernel otherwise): a pipelined tile whose input
    rows are padded by 5 floats instead of 4 is stopped in the emulation, although its values would be right."""
    run = mutant_runner(tmp_path_factory, "address", "A_STRIDE = PIPE_BK + 4,", "A_STRIDE = PIPE_BK + 5,")
    with pytest.raises(AssertionError, match="cp.async with a misaligned address"):
        check_convolution(run, "tf32p_n16", 2, 8, 16, 16, False, 3)


def official_packed(img):
    """[N, 3, H, W] float -> [N, H, W] 0x00RRGGBB with the official 8-bit rounding."""
    u8 = to_uint8(img).astype(np.uint32)
    return (u8[..., 0] << 16) | (u8[..., 1] << 8) | u8[..., 2]


def runner(request, sanitizer):
    return request.getfixturevalue({"address": "run_kernel", "thread": "run_kernel_racecheck"}[sanitizer])


# (kernel, images, input side, Cin, upsample, sanitizer): the spatial kernel, and the vector-gather kernels of both
# precisions (Cin 16, 32, 48), one with a partial tile (64 pixels of 256 rows), one upsampling (folded)
@pytest.mark.parametrize("kernel,n,side_in,cin,up,sanitizer",
                         [("tf32s_n16_rgb", 1, 16, 32, True, "address"), ("tf32s_n16_rgb", 2, 32, 16, False, "address"),
                          ("tf32s_n16_rgb", 1, 16, 32, True, "thread"),
                          ("tf32_n16_v_rgb", 2, 16, 32, False, "address"), ("f32_n16_v_rgb", 1, 8, 16, False, "address"),
                          ("tf32_n16_v_rgb", 1, 8, 16, True, "address"), ("f32_n16_v_rgb", 2, 16, 48, False, "address"),
                          ("tf32_n16_v_rgb", 1, 16, 16, False, "thread")])
def test_last_layer_with_torgb_fused_writes_the_image_and_the_display_buffer(request, kernel, n, side_in, cin, up,
                                                                               sanitizer):
    run_kernel = runner(request, sanitizer)
    rng = np.random.default_rng(side_in + cin)
    x = rng.standard_normal((n, side_in, side_in, cin)).astype(np.float32)
    w = (rng.standard_normal((9 * cin, 16)) / np.sqrt(9 * cin)).astype(np.float32)
    b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    rgb_w = (rng.standard_normal((16, 3)) / 4).astype(np.float32)
    rgb_b = np.array([0.1, -0.2, 0.05], np.float32)
    side = side_in * (2 if up else 1)
    _, act = conv_reference(x.astype(np.float64), w, b, up)
    want = (act @ rgb_w + rgb_b).transpose(0, 3, 1, 2)
    shape = [n, side_in, cin, 16, int(up), side, side.bit_length() - 1, n * side * side, 9 * cin, 9 * cin, 1, 0]
    if kernel.startswith("tf32s"):
        _, th, stage_bytes = SPATIAL_KERNELS["tf32s_n16"]
        grid, shared = (side // 32 * (side // th), n, 1), min(2, cin // 16) * stage_bytes
    else:  # gather: 256 pixels per block, one split
        grid, shared = (ceil_div(n * side * side, 256), 1, 1), 0
    img = np.full((n, 3, side, side), np.nan, np.float32)
    packed = np.zeros((n, side, side), np.uint32)
    out = run_kernel(f"conv3x3_{kernel}", grid, shape, [x, w, b, rgb_w, rgb_b, img, packed], shared=shared)
    img, packed = out[5], out[6]
    assert np.isfinite(img).all(), "some pixels were never written"
    assert rel_l2(img, want) <= (1e-5 if kernel.startswith("f32") else 1e-2)
    assert np.array_equal(packed, official_packed(img))


def test_an_error_in_the_layout_is_caught(run_kernel):
    """The comparison above can fail: weights passed transposed per tap give a different layer."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 8, 16))
    w = rng.standard_normal((9 * 16, 16)) / 12
    b = np.zeros(16)
    swapped = w.reshape(9, 16, 16).transpose(0, 2, 1).reshape(144, 16)
    _, want = conv_reference(x.astype(np.float32).astype(np.float64), w.astype(np.float32), b, False)
    got = run_conv(run_kernel, "tf32p_n16", x, swapped, b, False, 1)
    assert rel_l2(got, want) > 0.1


@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_dense_kernel_and_finish_match_numpy(request, sanitizer):
    run_kernel = runner(request, sanitizer)
    rng = np.random.default_rng(5)
    n, latent, c4 = 2, 64, 32
    z = rng.standard_normal((n, latent)).astype(np.float32)
    w = (rng.standard_normal((latent, 16 * c4)) / 8).astype(np.float32)
    b = (rng.standard_normal(c4) * 0.1).astype(np.float32)
    raw = np.full((n * 16, c4), np.nan, np.float32)
    raw = run_kernel("dense_f32", (ceil_div(16 * c4, THREADS), n, 1), [latent, c4], [z, w, raw], shared=latent * 4)[2]
    act = run_kernel("conv_finish_f32", (n * 16 // 8, 1, 1), [n * 16, c4, 1],
                     [raw, b, np.full((n * 16, c4), np.nan, np.float32)])[2]
    zn = pixel_norm(z.astype(np.float64), axis=-1)
    # dense output column j = c * 16 + pixel, stored channels last [N, 4, 4, c4]
    pre = (zn @ w).reshape(n, c4, 16).transpose(0, 2, 1) + b
    want = pixel_norm(lrelu(pre), axis=-1).reshape(n * 16, c4)
    assert rel_l2(act, want) <= 1e-5


@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_torgb_kernel_writes_the_image_and_the_display_buffer(request, sanitizer):
    run_kernel = runner(request, sanitizer)
    rng = np.random.default_rng(7)
    n, side, c = 2, 8, 16
    act = rng.standard_normal((n, side, side, c)).astype(np.float32)
    w = (rng.standard_normal((c, 3)) / 4).astype(np.float32)
    b = np.array([0.1, -0.2, 0.05], np.float32)
    img = np.full((n, 3, side, side), np.nan, np.float32)
    packed = np.zeros((n, side, side), np.uint32)
    _, _, _, img, packed = run_kernel("torgb_f32", (ceil_div(n * side * side, 256), 1, 1), [n, side, c],
                                      [act, w, b, img, packed])
    want = (act.astype(np.float64) @ w + b).transpose(0, 3, 1, 2)
    assert rel_l2(img, want) <= 1e-6
    assert np.array_equal(packed, official_packed(img))


# (TF32 kernels, batch, multiprocessors): the more multiprocessors, the more split-K; on 4 the gather tiles are
# fused. The float32 path's plans are the TF32 gather plans with other kernel names (the kernels themselves are
# checked above), so it is left out: its replay takes minutes in the emulation.
@pytest.mark.parametrize("kernels,batch,sm_count,upsample",
                         [("gather", 2, 4, "phased"), ("gather", 2, 4, "folded"), ("staged", 1, 132, "phased"),
                          ("staged", 1, 132, "folded")])
def test_the_host_launch_sequence_draws_the_reference_image(run_kernel, tmp_path, kernels, batch, sm_count, upsample):
    """The GPU forward pass exactly as the host plans it (`hyper-rt launch-plan`: every kernel, grid, shared memory
    size, argument, split-K, the buffer each layer reads and writes, the fused last layer), replayed launch by launch
    in the emulation with buffers of exactly the planned sizes (AddressSanitizer fails an overrun), draws the image
    of the float64 reference (scripts/pggan_reference.py) for a random 64 px checkpoint whose layers take every
    kernel family: 128, 128, 64, 32, 16 channels from 4 to 64 px, its upsampling layers phased or folded."""
    ck = tmp_path / "checkpoint.safetensors"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_pggan.py"), "--random", "--resolution", "64",
                    "--fmap-base", "512", "--fmap-max", "128", "--seed", "5", "-o", str(ck)], check=True, capture_output=True)
    out = tmp_path / "plan"
    subprocess.run([binary(), "launch-plan", "--weights", str(ck), "--batch", str(batch), "--precision", "tf32",
                    "--kernels", kernels, "--upsample", upsample, "--sm-count", str(sm_count), "--out", str(out)], check=True, capture_output=True)
    plan = json.loads((out / "launches.json").read_text())
    z = np.random.default_rng(batch).standard_normal((batch, plan["latent_size"])).astype(np.float32)
    buffers = {}
    for name, size in plan["buffer_sizes"].items():
        if (out / f"{name}.bin").exists():
            buffers[name] = np.fromfile(out / f"{name}.bin", dtype="<f4")
        elif name == "z":
            buffers[name] = z.ravel().copy()
        elif name == "packed":
            buffers[name] = np.zeros(size, np.uint32)
        else:  # activations and the image start as NaN: a value never written shows
            buffers[name] = np.full(size, np.nan, np.float32)
        assert buffers[name].size == size, name
    used, phased_layers = [], 0
    for layer in plan["layers"]:
        for launch in layer["launches"]:
            phased_layers += launch["kernel"].startswith("conv3x3") and launch["ints"][11] == 1
            results = run_kernel(launch["kernel"], launch["grid"], launch["ints"], [buffers[b] for b in launch["buffers"]],
                                 shared=launch["shared_bytes"], threads=launch["threads"])
            for name, result in zip(launch["buffers"], results):
                if name in launch["writes"]:
                    buffers[name] = result
            used.append(launch["kernel"])
    side = plan["resolution"]
    image = buffers["image"].reshape(batch, 3, side, side)
    assert np.isfinite(image).all(), "some pixels were never written"
    want = forward(load_safetensors(ck)[0], z)
    err = rel_l2(image, want)
    assert err <= 1e-2, f"{kernels}: relative L2 error {err:.2e} > 1e-2 after {used}"
    assert np.array_equal(buffers["packed"].reshape(batch, side, side), official_packed(image))
    expected = {"gather": {"conv3x3_tf32_n64_v", "conv3x3_tf32_n32_v", "conv3x3_tf32_n16_v_rgb"},
                "staged": {"conv3x3_tf32p_n64", "conv3x3_tf32s_n32", "conv3x3_tf32s_n16_rgb", "conv_finish_f32"}}[kernels]
    if kernels == "staged" and upsample == "phased":  # the 32 and 64 px upsampling layers (Cout 32, 16)
        expected |= {"conv3x3_tf32sp_n32", "conv3x3_tf32sp_n16"}
    assert expected <= set(used), f"{expected - set(used)} not used: {used}"
    # the 8 to 64 px stages each have one upsampling layer
    assert phased_layers == (4 if upsample == "phased" else 0)
