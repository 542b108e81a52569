#!/usr/bin/env python3
"""What a linear decoder could reach on a simulated dataset if the scanner added no noise and the head never moved.

Reads a `hyper-rt simulate` dataset's noise-free signal of the responsive voxels (truth/signal_run-*.npy), forms
each trial's pattern as the pipeline does (sum of the volumes acquired 4.5 to 9 s after onset), optionally adds
white noise of a given std (percent) to every pattern, fits ridge regressions (patterns -> latents) on the training
trials for a range of penalties, and reports, on the repetition-averaged test faces, the mean cosine between
decoded and true latents and the mean and spread of the correlation along random latent directions (the
attribute correlations are such directions). Separates what the paradigm and the decoder allow (overlapping
responses, 1050 trials for 512 dimensions) from what noise, motion and preprocessing take away.

    .venv/bin/python scripts/simulation_ceiling.py DATASET [--noise-percent 0.43]
"""

import argparse
import csv
import glob
import json
import pathlib

import numpy as np

WINDOW_SECS = (4.5, 9.0)


def trial_patterns(root, run, tr_secs):
    signal = np.load(root / "truth" / f"signal_run-{run}.npy").astype(np.float64)
    events_path = glob.glob(str(root / "sub-*" / "func" / f"*_run-{run}_events.tsv"))[0]
    times = np.arange(signal.shape[0]) * tr_secs
    patterns, stims, kinds = [], [], []
    with open(events_path) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            onset = float(row["onset"])
            window = (times >= onset + WINDOW_SECS[0]) & (times < onset + WINDOW_SECS[1])
            patterns.append(signal[window].sum(axis=0))
            stims.append(int(row["stim_id"]))
            kinds.append(row["trial_type"])
    return np.array(patterns), np.array(stims), kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=pathlib.Path)
    ap.add_argument("--noise-percent", type=float, default=0.0, help="std of white noise added to each pattern")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = args.dataset
    sim = json.loads((root / "truth" / "simulation.json").read_text())
    latents = np.load(root / "stimuli" / "latents.npy").astype(np.float64)
    runs = sim["train_runs"] + sim["test_runs"]
    train_x, train_s, test_x, test_s = [], [], [], []
    for run in range(1, runs + 1):
        x, s, kinds = trial_patterns(root, run, sim["tr_secs"])
        for pattern, stim, kind in zip(x, s, kinds):
            (train_x if kind == "train" else test_x).append(pattern)
            (train_s if kind == "train" else test_s).append(stim)
    rng = np.random.default_rng(args.seed)
    train_x = np.array(train_x) + args.noise_percent * rng.standard_normal((len(train_x), len(train_x[0])))
    test_x = np.array(test_x) + args.noise_percent * rng.standard_normal((len(test_x), len(test_x[0])))
    train_s, test_s = np.array(train_s), np.array(test_s)
    faces = np.unique(test_s)
    test_mean = np.array([test_x[test_s == f].mean(axis=0) for f in faces])
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    a, b, y, truth = (train_x - mu) / sd, (test_mean - mu) / sd, latents[train_s], latents[faces]
    u, sing, vt = np.linalg.svd(a, full_matrices=False)
    directions = rng.standard_normal((200, latents.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    print(f"{len(train_s)} training trials, {len(faces)} test faces, {a.shape[1]} responsive voxels, "
          f"noise {args.noise_percent} % per pattern")
    print(f"{'penalty / trials':>16} {'cosine':>8} {'direction r':>12} {'sd':>6}")
    for per_trial in [1e-2, 1e-1, 1, 10, 100]:
        weights = vt.T @ np.diag(sing / (sing ** 2 + per_trial * len(a))) @ u.T @ y
        decoded = b @ weights
        cosine = np.mean(np.sum(decoded * truth, 1) / np.linalg.norm(decoded, axis=1) / np.linalg.norm(truth, axis=1))
        r = [np.corrcoef(decoded @ d, truth @ d)[0, 1] for d in directions]
        print(f"{per_trial:>16g} {cosine:>8.3f} {np.mean(r):>12.3f} {np.std(r):>6.3f}")


if __name__ == "__main__":
    main()
