#!/usr/bin/env python3
"""Calibrates the simulator's SNR knob: for each SNR, simulates the default (HYPER-sized) dataset without head
motion, forms trial patterns (mean of the volumes 3 to 7.5 s after onset, z-scored per run), selects the 4096 voxels
with the highest mean training response, fits ridge regression to the latents (penalty by 5-fold CV), averages
the repetitions of each test face, and reports HYPER's attribute correlations (InterFaceGAN boundaries) and latent
similarities. A stand-in for `hyper-rt train` / `eval` while those are built; see docs/simulation.md.

    .venv/bin/python scripts/calibrate_simulation.py --snr 0.25,0.5,1.0
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATTRS = ["gender", "age", "pose", "eyeglasses", "smile"]


def boundaries(data_dir):
    return {a: np.load(data_dir / "interfacegan" / f"pggan_celebahq_{a}_boundary.npy").reshape(-1) for a in ATTRS}


def patterns(root, runs):
    X, ids = [], []
    for run in runs:
        img = nib.load(str(root / "sub-01" / "func" / f"sub-01_task-faces_run-{run}_bold.nii.gz"))
        d = np.asarray(img.dataobj, dtype=np.float32).reshape(-1, img.shape[3], order="F")
        m, s = d.mean(1, keepdims=True), d.std(1, keepdims=True) + 1e-6
        d = (d - m) / s
        rows = (root / "sub-01" / "func" / f"sub-01_task-faces_run-{run}_events.tsv").read_text().splitlines()[1:]
        for r in rows:
            onset, stim = float(r.split("\t")[0]), int(r.split("\t")[3])
            a, b = int(np.ceil((onset + 3) / 1.5)), int(np.floor((onset + 7.5) / 1.5))
            X.append(d[:, a:b + 1].mean(1))
            ids.append(stim)
    return np.array(X, dtype=np.float32), np.array(ids)


def ridge_cv(X, Y, lams, folds=5):
    n = len(X)
    idx = np.arange(n) % folds
    errs = []
    for lam in lams:
        e = 0
        for f in range(folds):
            tr, te = idx != f, idx == f
            W = np.linalg.solve(X[tr].T @ X[tr] + lam * np.eye(X.shape[1]), X[tr].T @ Y[tr])
            e += ((X[te] @ W - Y[te]) ** 2).sum()
        errs.append(e)
    lam = lams[int(np.argmin(errs))]
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Y), lam


def evaluate(root, data_dir):
    latents = np.load(root / "stimuli" / "latents.npy")
    Xtr, ytr = patterns(root, range(1, 7))
    Xte, yte = patterns(root, range(7, 10))
    mean_resp = Xtr.mean(0)
    keep = np.argsort(mean_resp)[-4096:]
    Xtr, Xte = Xtr[:, keep], Xte[:, keep]
    W, lam = ridge_cv(Xtr, latents[ytr], [10.0 ** k for k in range(1, 6)])
    faces = np.unique(yte)
    pred = np.array([Xte[yte == f].mean(0) @ W for f in faces])
    true = latents[faces]
    out = {"lambda": lam}
    bnd = boundaries(data_dir)
    norm = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True) * np.sqrt(z.shape[1])
    for a in ATTRS:
        out[a] = np.corrcoef(norm(true) @ bnd[a], norm(pred) @ bnd[a])[0, 1]
    out["latent_similarity"] = np.mean(1 / (1 + ((pred - true) ** 2).mean(1)))
    out["cosine"] = np.mean((pred * true).sum(1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(true, axis=1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snr", default="0.25,0.5,1.0")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    print(f"{'snr':>5} {'gender':>7} {'age':>7} {'pose':>7} {'glasses':>8} {'smile':>7} {'lat.sim':>8} {'cosine':>7}")
    for snr in [float(s) for s in a.snr.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([str(ROOT / "target" / "release" / "hyper-rt"), "simulate", "--out", tmp, "--no-motion",
                            "--snr", str(snr), "--seed", str(a.seed)], check=True, capture_output=True)
            r = evaluate(pathlib.Path(tmp), pathlib.Path(a.data))
        print(f"{snr:>5} {r['gender']:>7.2f} {r['age']:>7.2f} {r['pose']:>7.2f} {r['eyeglasses']:>8.2f} {r['smile']:>7.2f} "
              f"{r['latent_similarity']:>8.3f} {r['cosine']:>7.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
