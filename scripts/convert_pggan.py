#!/usr/bin/env python3
"""Convert the official PGGAN pickle to safetensors, or write a random checkpoint with the same naming.

    python scripts/convert_pggan.py karras2018iclr-celebahq-1024x1024.pkl -o pggan-celebahq-1024.safetensors
    python scripts/convert_pggan.py --random --resolution 256 --fmap-base 2048 --fmap-max 128 --seed 1 -o rand.safetensors

Needs only NumPy. The pickle is read with a restricted unpickler: `tfutil.Network` is mapped to a stub that only
stores its state dict, NumPy's array reconstructors are allowed, and every other class is refused, so no code
from the file runs (its `build_module_src` is never executed). The moving-average generator `Gs` (index 2 of the
tuple) is converted; `lod` must be 0. Tensor names and TensorFlow layouts are kept as they are in the pickle.
"""

import argparse
import hashlib
import json
import pathlib
import pickle
import sys

import numpy as np

ALLOWED_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store the arrays' bytes
}


class NetworkStub:
    """Stands in for tfutil.Network: keeps the pickled state dict, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tfutil", "Network"):
            return NetworkStub
        if (module, name) in ALLOWED_NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only tfutil.Network and NumPy arrays are allowed")


def wscale_gain(name):
    if name.startswith("4x4/Dense"):
        return np.sqrt(2) / 4
    if name.startswith("ToRGB"):
        return 1.0
    return np.sqrt(2)


def read_official(path):
    data = pathlib.Path(path).read_bytes()
    obj = RestrictedUnpickler(__import__("io").BytesIO(data)).load()
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, NetworkStub) for n in obj)):
        raise SystemExit(f"{path}: expected a tuple (G, D, Gs) of tfutil.Network objects")
    gs = obj[2].state
    variables = dict(gs["variables"])
    if "lod" in variables and float(variables["lod"]) != 0.0:
        raise SystemExit(f"{path}: lod = {float(variables['lod'])}, a finished model has lod 0")
    tensors = {}
    for name, value in variables.items():
        arr = np.asarray(value, dtype=np.float32)
        if name == "lod":
            arr = arr.reshape(())
        tensors[name] = np.ascontiguousarray(arr)
    meta = {
        "source_file": pathlib.Path(path).name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "network": "Gs",
        "network_name": str(gs.get("name", "")),
        "build_func_name": str(gs.get("build_func_name", "")),
        "static_kwargs": json.dumps(gs.get("static_kwargs", {}), default=str),
    }
    return tensors, meta


def nf(stage, fmap_base, fmap_max, fmap_decay=1.0):
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def random_checkpoint(resolution, fmap_base, fmap_max, seed, latent_size=512, fused_scale=False):
    """Random weights with the official naming: N(0, 1) weights (as with use_wscale) and small random biases."""
    log2 = int(np.log2(resolution))
    if 2 ** log2 != resolution or resolution < 4:
        raise SystemExit(f"--resolution {resolution} must be a power of two >= 4")
    rng = np.random.RandomState(seed)
    t = {}
    c4 = nf(1, fmap_base, fmap_max)
    t["lod"] = np.zeros((), np.float32)
    t["4x4/Dense/weight"] = rng.randn(latent_size, c4 * 16).astype(np.float32)
    t["4x4/Dense/bias"] = (0.1 * rng.randn(c4)).astype(np.float32)
    t["4x4/Conv/weight"] = rng.randn(3, 3, c4, c4).astype(np.float32)
    t["4x4/Conv/bias"] = (0.1 * rng.randn(c4)).astype(np.float32)
    cin = c4
    for r in range(3, log2 + 1):
        res = 2 ** r
        c = nf(r - 1, fmap_base, fmap_max)
        if fused_scale:
            t[f"{res}x{res}/Conv0_up/weight"] = rng.randn(3, 3, c, cin).astype(np.float32)
            t[f"{res}x{res}/Conv0_up/bias"] = (0.1 * rng.randn(c)).astype(np.float32)
        else:
            t[f"{res}x{res}/Conv0/weight"] = rng.randn(3, 3, cin, c).astype(np.float32)
            t[f"{res}x{res}/Conv0/bias"] = (0.1 * rng.randn(c)).astype(np.float32)
        t[f"{res}x{res}/Conv1/weight"] = rng.randn(3, 3, c, c).astype(np.float32)
        t[f"{res}x{res}/Conv1/bias"] = (0.1 * rng.randn(c)).astype(np.float32)
        cin = c
    for lod in range(log2 - 1):
        res = 2 ** (log2 - lod)
        c = nf(int(np.log2(res)) - 1, fmap_base, fmap_max)
        t[f"ToRGB_lod{lod}/weight"] = rng.randn(1, 1, c, 3).astype(np.float32)
        t[f"ToRGB_lod{lod}/bias"] = (0.1 * rng.randn(3)).astype(np.float32)
    meta = {"source_file": "random", "source_sha256": "", "network": "random",
            "random_seed": str(seed), "fmap_base": str(fmap_base), "fmap_max": str(fmap_max)}
    return t, meta


def write_safetensors(path, tensors, metadata):
    """Writes the safetensors format: u64 header length, JSON header, then the raw little-endian tensors."""
    header = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        blobs.append(arr.tobytes())
        offset += arr.nbytes
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def add_architecture_metadata(tensors, meta):
    resolutions = sorted({int(n.split("x")[0]) for n in tensors if "x" in n.split("/")[0] and n[0].isdigit()})
    meta["resolution"] = str(max(resolutions))
    channels = {}
    for r in resolutions:
        key = f"{r}x{r}/Conv1/weight" if r > 4 else "4x4/Conv/weight"
        channels[str(r)] = int(tensors[key].shape[-1])
    meta["channels"] = json.dumps(channels)
    meta["wscale_gains"] = json.dumps({"dense": "sqrt(2)/4", "conv3x3": "sqrt(2)", "torgb": "1"})
    meta["parameters"] = str(sum(int(np.prod(a.shape)) for k, a in tensors.items() if k != "lod"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pickle", nargs="?", help="official karras2018iclr-celebahq-1024x1024.pkl")
    p.add_argument("-o", "--out", required=True, help="output .safetensors")
    p.add_argument("--random", action="store_true", help="write a random checkpoint instead")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--fmap-base", type=int, default=8192)
    p.add_argument("--fmap-max", type=int, default=512)
    p.add_argument("--latent-size", type=int, default=512)
    p.add_argument("--fused-scale", action="store_true", help="random checkpoint with Conv0_up layers")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.random:
        tensors, meta = random_checkpoint(a.resolution, a.fmap_base, a.fmap_max, a.seed, a.latent_size, a.fused_scale)
    elif a.pickle:
        tensors, meta = read_official(a.pickle)
    else:
        p.error("give the official pickle, or --random")
    add_architecture_metadata(tensors, meta)
    write_safetensors(a.out, tensors, meta)
    print(f"wrote {a.out}: {len(tensors)} tensors, {meta['parameters']} parameters, resolution {meta['resolution']}")


if __name__ == "__main__":
    sys.exit(main())
