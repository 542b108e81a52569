#!/usr/bin/env python3
"""Times the PGGAN generator of hyper-rt beside the same network in PyTorch on the CPU, in one run, from the same
safetensors file (a random checkpoint with the exact CelebA-HQ 1024 shapes by default).

    .venv-bench/bin/python scripts/bench_generator.py            # needs torch (see docs/benchmarks.md)

PyTorch variants: eager (NCHW), eager channels_last, and torch.compile (inductor). Each variant runs in its own
process so that its peak memory (ru_maxrss) is its own. Prints a table and one JSON line.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def build_torch(weights_path, channels_last=False, device="cpu"):
    import torch
    import torch.nn.functional as F
    from pggan_reference import load_safetensors

    t, _ = load_safetensors(weights_path)
    T = {k: torch.from_numpy(np.array(v)).to(device) for k, v in t.items()}

    def ws(w, gain, fan_in=None):
        fan_in = int(np.prod(w.shape[:-1])) if fan_in is None else fan_in
        return float(np.float32(gain / np.sqrt(fan_in)))

    dense = T["4x4/Dense/weight"] * ws(T["4x4/Dense/weight"], np.sqrt(2) / 4)
    layers = []
    conv = lambda name: (T[f"{name}/weight"] * ws(T[f"{name}/weight"], np.sqrt(2))).permute(3, 2, 0, 1).contiguous()
    layers.append((False, conv("4x4/Conv"), T["4x4/Conv/bias"]))
    res = 8
    while f"{res}x{res}/Conv1/weight" in T:
        p = f"{res}x{res}"
        layers.append((True, conv(f"{p}/Conv0"), T[f"{p}/Conv0/bias"]))
        layers.append((False, conv(f"{p}/Conv1"), T[f"{p}/Conv1/bias"]))
        res *= 2
    rgb_w = (T["ToRGB_lod0/weight"] * ws(T["ToRGB_lod0/weight"], 1.0)).permute(3, 2, 0, 1).contiguous()
    rgb_b = T["ToRGB_lod0/bias"]
    c4 = T["4x4/Dense/bias"].shape[0]

    def pn(x):
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)

    class G(torch.nn.Module):
        def forward(self, z):
            x = pn(z) @ dense
            x = x.view(-1, c4, 4, 4) + T["4x4/Dense/bias"].view(1, -1, 1, 1)
            x = pn(F.leaky_relu(x, 0.2))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for up, w, b in layers:
                if up:
                    x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = pn(F.leaky_relu(F.conv2d(x, w, b, padding=1), 0.2))
            return F.conv2d(x, rgb_w, rgb_b)

    return torch, G()


def run_variant(variant, weights, batch, repeats, device="cpu"):
    base = variant.removesuffix("-tf32")
    torch, model = build_torch(weights, channels_last=(base == "channels_last"), device=device)
    torch.set_num_threads(os.cpu_count())
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)).to(device)
    fn = torch.compile(model) if base == "compile" else model
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # on the GPU, time several back-to-back passes per repetition, as hyper-rt's GPU benchmark does
    passes = 20 if device == "cuda" else 1
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = variant.endswith("tf32")
        torch.backends.cudnn.allow_tf32 = variant.endswith("tf32")
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(z)  # warm-up (and compilation)
        fn(z)
        sync()
        warm = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(passes):
                fn(z)
            sync()
            times.append((time.perf_counter() - t0) / batch / passes)
    times.sort()
    return {"variant": f"pytorch {device} {variant}", "batch": batch, "best_s_per_image": times[0],
            "median_s_per_image": times[len(times) // 2], "warmup_s": warm,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "torch": torch.__version__}


TORCH_VARIANTS = {"cpu": ("eager", "channels_last", "compile"), "cuda": ("eager", "compile", "eager-tf32", "compile-tf32")}


def gflop_per_image(weights_path):
    """Multiply-adds x 2 of one image as the direct convolution counts them (85.35 for the CelebA-HQ 1024 shapes):
    the dense layer, every 3 x 3 convolution at its output side, ToRGB."""
    from pggan_reference import load_safetensors

    t, _ = load_safetensors(weights_path)
    flop = 2 * t["4x4/Dense/weight"].size + 2 * 16 * t["4x4/Conv/weight"].size
    res = 8
    while f"{res}x{res}/Conv1/weight" in t:
        flop += 2 * res * res * (t[f"{res}x{res}/Conv0/weight"].size + t[f"{res}x{res}/Conv1/weight"].size)
        res *= 2
    return (flop + 2 * (res // 2) ** 2 * t["ToRGB_lod0/weight"].size) / 1e9


HEADER = f"{'variant':<34} {'batch':>5} {'best ms/img':>12} {'median':>9} {'GFLOP/s':>9} {'peak MiB':>9}"


def row_line(r, gflop):
    return (f"{r['variant']:<34} {r['batch']:>5} {r['best_s_per_image'] * 1e3:>12.3f} {r['median_s_per_image'] * 1e3:>9.3f} "
            f"{gflop / r['best_s_per_image']:>9.1f} {r['peak_rss_mib']:>9.0f}")


def hyper_rt_variants(device):
    if device == "cpu":
        return [("cpu winograd", ["--device", "cpu", "--algorithm", "winograd"]),
                ("cpu direct", ["--device", "cpu", "--algorithm", "direct"])]
    # most telling first (rows print as measured; a run cut short keeps them): the default (a CUDA graph), the same
    # kernels queued one by one, the configuration timed before the phased upsampling layers and the graphs, the
    # per-layer tuning, the staged kernels, the float32 path
    return [("cuda tf32", ["--device", "cuda", "--precision", "tf32"]),
            ("cuda tf32 stream", ["--device", "cuda", "--precision", "tf32", "--launch", "stream"]),
            ("cuda tf32 folded stream", ["--device", "cuda", "--precision", "tf32", "--upsample", "folded", "--launch", "stream"]),
            ("cuda tf32 tuned", ["--device", "cuda", "--precision", "tf32", "--kernels", "tuned"]),
            ("cuda tf32 staged", ["--device", "cuda", "--precision", "tf32", "--kernels", "staged"]),
            ("cuda f32", ["--device", "cuda", "--precision", "f32"])]


def run_measured(label, cmd, timeout_s):
    """Runs one variant's process; its last stdout line is its JSON result. None (and a line on stderr) when it
    fails or runs past `timeout_s`."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"{label}: no result within {timeout_s:.0f} s", file=sys.stderr, flush=True)
        return None
    if out.returncode != 0:
        print(f"{label} failed: {out.stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="safetensors checkpoint (default: random with the CelebA-HQ 1024 shapes)")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", help="PyTorch variants, comma-separated; default (and the known ones): "
                    "eager,channels_last,compile (cpu); eager,compile,eager-tf32,compile-tf32 (cuda)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "hyper-rt"))
    ap.add_argument("--variant-timeout", type=float, default=600.0,
                    help="seconds one variant (one process) may take, compilation included, before it is skipped")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.weights, batches[0], a.repeats, a.device)))
        return
    variants = a.variants.split(",") if a.variants else list(TORCH_VARIANTS[a.device])
    unknown = [v for v in variants if v not in TORCH_VARIANTS[a.device]]
    if unknown:
        ap.error(f"unknown PyTorch variant(s) {', '.join(unknown)} for --device {a.device}; "
                 f"known: {', '.join(TORCH_VARIANTS[a.device])}")
    weights = a.weights
    if weights is None:
        weights = str(ROOT / "target" / "bench-pggan-1024.safetensors")
        if not os.path.exists(weights):
            import convert_pggan
            convert_pggan.main(["--random", "--resolution", "1024", "--seed", "1", "-o", weights])
    # Rows are printed as they are measured, hyper-rt's first (seconds each; torch.compile takes minutes), so that
    # a run cut short still shows what it measured.
    gflop = gflop_per_image(weights)
    print(HEADER, flush=True)
    rows = []
    for batch in batches:
        for label, flags in hyper_rt_variants(a.device):
            res = run_measured(f"hyper-rt {label}", [a.binary, "bench-generator", "--weights", weights, "--batch",
                                                     str(batch), "--repeats", str(a.repeats), *flags], a.variant_timeout)
            if res is None:
                continue
            r = res["results"][0]
            if res.get("graph_failure"):  # the forward pass fell back to kernel-by-kernel queueing
                print(f"hyper-rt {label}: no CUDA graph: {res['graph_failure']}", file=sys.stderr, flush=True)
                label += " (as stream)"
            rows.append({"variant": f"hyper-rt {label}", "batch": batch, "best_s_per_image": r["best_s_per_image"],
                         "median_s_per_image": r["median_s_per_image"], "peak_rss_mib": res["peak_rss_mib"]})
            print(row_line(rows[-1], gflop), flush=True)
    for batch in batches:
        for variant in variants:
            res = run_measured(f"pytorch {variant}", [sys.executable, __file__, "--variant", variant, "--weights", weights,
                                                      "--batch", str(batch), "--repeats", str(a.repeats), "--device",
                                                      a.device], a.variant_timeout)
            if res is not None:
                rows.append(res)
                print(row_line(res, gflop), flush=True)
    for batch in batches:
        torch_best = min((r["best_s_per_image"] for r in rows if r["batch"] == batch and r["variant"].startswith("pytorch")), default=None)
        ours = min((r for r in rows if r["batch"] == batch and r["variant"].startswith("hyper-rt")),
                   key=lambda r: r["best_s_per_image"], default=None)
        if torch_best and ours:
            ms = ours["best_s_per_image"]
            print(f"batch {batch}: hyper-rt is {torch_best / ms:.2f}x PyTorch's best ({torch_best * 1e3:.3f} ms vs {ms * 1e3:.3f} ms "
                  f"per image, {ours['variant']})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
