"""The PGGAN generator against the float64 NumPy reference written from docs/pggan.md, and the converter against a
pickle with the official structure."""

import json
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, binary, run_ok

sys.path.insert(0, str(ROOT / "scripts"))
import convert_pggan  # noqa: E402
import pggan_reference as ref  # noqa: E402

CONFIGS = [
    # resolution, fmap_base, fmap_max, fused_scale
    (16, 256, 64, False),
    (16, 512, 32, True),
    (64, 1024, 128, False),
    (64, 512, 48, True),
    (128, 2048, 64, False),
]


def run_generate(weights, latents, out):
    np.save(out / "z.npy", latents)
    run_ok("generate", "--weights", str(weights), "--latents", str(out / "z.npy"), "--out", str(out), "--raw")
    return np.load(out / "images.npy")


@pytest.mark.parametrize("res,base,fmax,fused", CONFIGS, ids=[f"{c[0]}px-base{c[1]}-max{c[2]}{'-fused' if c[3] else ''}" for c in CONFIGS])
def test_matches_the_float64_reference(tmp_path, res, base, fmax, fused):
    weights = tmp_path / "w.safetensors"
    args = ["--random", "--resolution", str(res), "--fmap-base", str(base), "--fmap-max", str(fmax), "--seed", str(res), "-o", str(weights)]
    convert_pggan.main(args + (["--fused-scale"] if fused else []))
    z = np.random.default_rng(res).standard_normal((3, 512)).astype(np.float32)
    ours = run_generate(weights, z, tmp_path)
    tensors, _ = ref.load_safetensors(weights)
    expected = ref.forward(tensors, z)
    assert ours.shape == expected.shape == (3, 3, res, res)
    assert np.abs(ours - expected).max() < 1e-4
    # the PNGs are the official 8-bit conversion of our float output
    for i in range(3):
        png = np.asarray(Image.open(tmp_path / f"image_{i:04d}.png"))
        np.testing.assert_array_equal(png, ref.to_uint8(ours[i:i + 1])[0])


def test_scaling_a_latent_does_not_change_the_image_and_a_batch_equals_its_items(tmp_path):
    weights = tmp_path / "w.safetensors"
    convert_pggan.main(["--random", "--resolution", "32", "--fmap-base", "256", "--fmap-max", "32", "-o", str(weights)])
    z = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    batch = run_generate(weights, z, tmp_path / "b" if (tmp_path / "b").mkdir() is None else None)
    scaled = run_generate(weights, z * 7.5, tmp_path / "s" if (tmp_path / "s").mkdir() is None else None)
    # pixel norm removes the scale; what is left is float32 rounding, far below one 8-bit level
    np.testing.assert_allclose(scaled, batch, atol=1e-4)
    assert (ref.to_uint8(scaled).astype(int) - ref.to_uint8(batch)).__abs__().max() <= 1
    for i in range(3):
        d = tmp_path / f"one{i}"
        d.mkdir()
        np.testing.assert_array_equal(run_generate(weights, z[i:i + 1], d)[0], batch[i])


def official_pickle(tensors, lod=0.0):
    """A pickle with the official structure: a tuple (G, D, Gs) of tfutil.Network objects."""
    tfutil = types.ModuleType("tfutil")

    class Network:
        def __init__(self, name, variables):
            self.state = {"version": 2, "name": name, "static_kwargs": {"resolution": 32},
                          "build_module_src": "raise RuntimeError('must never run')", "build_func_name": "G_paper",
                          "variables": variables}

        def __getstate__(self):
            return self.state

    Network.__module__ = "tfutil"
    Network.__qualname__ = "Network"
    tfutil.Network = Network
    sys.modules["tfutil"] = tfutil
    try:
        variables = [(k, v) for k, v in tensors.items() if k != "lod"] + [("lod", np.float32(lod))]
        nets = (Network("G", variables), Network("D", []), Network("Gs", variables))
        return pickle.dumps(nets, protocol=2)
    finally:
        del sys.modules["tfutil"]


def test_converter_reads_the_official_structure_end_to_end(tmp_path):
    tensors, _ = convert_pggan.random_checkpoint(32, 512, 64, seed=4)
    pkl = tmp_path / "karras.pkl"
    pkl.write_bytes(official_pickle(tensors))
    out = tmp_path / "conv.safetensors"
    convert_pggan.main([str(pkl), "-o", str(out)])
    loaded, meta = ref.load_safetensors(out)
    assert meta["source_file"] == "karras.pkl" and meta["network"] == "Gs" and meta["resolution"] == "32"
    assert len(meta["source_sha256"]) == 64
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr)
    z = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)
    ours = run_generate(out, z, tmp_path)
    assert np.abs(ours - ref.forward(loaded, z)).max() < 1e-4


def test_converter_refuses_code_and_unfinished_models(tmp_path):
    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "pwned")],))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_pggan.main([str(bad), "-o", str(tmp_path / "x.safetensors")])
    assert not (tmp_path / "pwned").exists()
    tensors, _ = convert_pggan.random_checkpoint(8, 256, 32, seed=1)
    half = tmp_path / "lod.pkl"
    half.write_bytes(official_pickle(tensors, lod=1.0))
    with pytest.raises(SystemExit, match="lod"):
        convert_pggan.main([str(half), "-o", str(tmp_path / "y.safetensors")])


def test_bad_checkpoints_and_latents_are_named(tmp_path):
    tensors, meta = convert_pggan.random_checkpoint(16, 256, 32, seed=1)
    z = np.zeros((1, 512), np.float32)
    np.save(tmp_path / "z.npy", z)

    def generate_error(t, latents=tmp_path / "z.npy"):
        w = tmp_path / "bad.safetensors"
        convert_pggan.write_safetensors(w, t, meta)
        r = subprocess.run([binary(), "generate", "--weights", str(w), "--latents", str(latents), "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        return r.stderr

    t = dict(tensors); del t["16x16/Conv1/weight"]
    # without Conv1 the 16x16 block is absent, and its Conv0 tensors are reported as a gap
    assert "16x16" in generate_error(t)
    t = dict(tensors); del t["ToRGB_lod0/bias"]
    assert "ToRGB_lod0/bias is missing" in generate_error(t)
    t = dict(tensors); t["8x8/Conv0/weight"] = t["8x8/Conv0/weight"][:, :, :, :-1].copy()
    assert "8x8/Conv0/weight" in generate_error(t)
    t = dict(tensors); t["4x4/Conv/weight"] = t["4x4/Conv/weight"].copy(); t["4x4/Conv/weight"][0, 0, 0, 0] = np.nan
    err = generate_error(t)
    assert "4x4/Conv/weight" in err and "not finite" in err
    np.save(tmp_path / "z500.npy", np.zeros((2, 500), np.float32))
    err = generate_error(tensors, tmp_path / "z500.npy")
    assert "[2, 500]" in err and "512" in err


def test_builtin_network_runs_without_files(tmp_path):
    r = run_ok("generate", "--seed", "3", "--count", "2", "--out", str(tmp_path), timeout=120)
    assert "abstract textures, not faces" in r.stdout
    img = np.asarray(Image.open(tmp_path / "image_0001.png"))
    assert img.shape == (256, 256, 3) and img.std() > 5  # a real picture, not a flat fill


NVRTC_PROBE = """
import ctypes, json, sys
try:
    lib = ctypes.CDLL("libnvrtc.so.13")
except OSError:
    print(json.dumps(None)); sys.exit()
major, minor, n = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
lib.nvrtcGetNumSupportedArchs(ctypes.byref(n))
archs = (ctypes.c_int * n.value)()
lib.nvrtcGetSupportedArchs(archs)
print(json.dumps({"version": f"{major.value}.{minor.value}", "archs": list(archs)}))
"""


def library_loads(name, env):
    probe = f"import ctypes\ntry:\n    ctypes.CDLL({name!r})\nexcept OSError:\n    raise SystemExit(1)"
    return subprocess.run([sys.executable, "-c", probe], env=env).returncode == 0


@pytest.mark.parametrize("library_path", ["as set", "without NVRTC"])
def test_gpu_info_reports_what_this_machine_has(library_path):
    """`hyper-rt gpu-info` against the libraries as Python's ctypes finds them with the same environment: NVRTC's
    version and architectures (asked of NVRTC directly), the driver, and what --device auto does without one."""
    env = dict(os.environ)
    if library_path == "without NVRTC":
        env["LD_LIBRARY_PATH"] = ":".join(p for p in env.get("LD_LIBRARY_PATH", "").split(":") if "nvidia" not in p)
    out = subprocess.run([binary(), "gpu-info", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    nvrtc = json.loads(subprocess.run([sys.executable, "-c", NVRTC_PROBE], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    if library_path == "as set" and os.environ.get("HYPER_RT_REQUIRE_NVRTC") == "1":
        assert nvrtc is not None, "scripts/test.sh puts NVRTC on LD_LIBRARY_PATH"
    assert report["nvrtc"]["ok"] == (nvrtc is not None), report["nvrtc"]
    if nvrtc is not None:
        listed = ", ".join(f"{a // 10}.{a % 10}" for a in nvrtc["archs"])
        assert report["nvrtc"]["detail"] == f"{nvrtc['version']}, compiles for compute capability {listed}"
    else:
        assert "libnvrtc" in report["nvrtc"]["detail"] and "LD_LIBRARY_PATH" in report["nvrtc"]["detail"]
    driver = library_loads("libcuda.so.1", env)
    assert report["driver"]["ok"] == driver, report["driver"]
    if not driver:
        assert report["devices"] == []
        assert report["auto_choice"] == "the CPU: the NVIDIA driver library (libcuda) was not found"
    # the table says the same
    table = subprocess.run([binary(), "gpu-info"], env=env, capture_output=True, text=True, timeout=300).stdout
    assert f"--device auto    uses {report['auto_choice']}" in table
    assert ("NVRTC            yes" in table) == report["nvrtc"]["ok"], table
    # --check draws on the GPU and compares with the CPU; without one it says so and fails
    checked = subprocess.run([binary(), "gpu-info", "--check"], env=env, capture_output=True, text=True, timeout=600)
    if report["devices"] and report["devices"][0]["float32"]["ok"]:
        assert checked.returncode == 0 and "draw F32         yes" in checked.stdout, checked.stdout + checked.stderr
    else:
        assert checked.returncode != 0 and "no GPU 0 to draw on" in checked.stderr, checked.stderr


def test_a_gpu_that_is_not_there_is_named_and_auto_draws_on_the_cpu(tmp_path):
    """--gpu INDEX past the GPUs CUDA sees (here: past any this machine has): gpu-info reports the CPU for
    --device auto with the reason, --check fails naming the GPU, auto falls back with one warning, cuda fails."""
    env = dict(os.environ)
    report = json.loads(subprocess.run([binary(), "gpu-info", "--json", "--gpu", "64"], env=env, capture_output=True,
                                       text=True, timeout=300, check=True).stdout)
    assert len(report["devices"]) < 64
    if report["driver"]["ok"] and report["nvrtc"]["ok"] and report["devices"]:
        assert report["auto_choice"].startswith("the CPU: GPU 64 was asked for, but CUDA sees"), report
    else:
        assert report["auto_choice"].startswith("the CPU: the N"), report  # the driver's or NVRTC's absence
    checked = subprocess.run([binary(), "gpu-info", "--check", "--gpu", "64"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode != 0 and "no GPU 64 to draw on" in checked.stderr, checked.stderr
    auto = run_ok("generate", "--seed", "3", "--count", "1", "--device", "auto", "--gpu", "64", "--out",
                  str(tmp_path / "auto"), timeout=120)
    assert auto.stderr.count("GPU not used, generating on the CPU") == 1, auto.stderr
    assert (tmp_path / "auto" / "image_0000.png").exists()
    cuda = subprocess.run([binary(), "generate", "--seed", "3", "--count", "1", "--device", "cuda", "--gpu", "64",
                           "--out", str(tmp_path / "cuda")], env=env, capture_output=True, text=True, timeout=120)
    assert cuda.returncode != 0 and "CUDA backend: " in cuda.stderr, cuda.stderr
    assert not (tmp_path / "cuda" / "image_0000.png").exists()
