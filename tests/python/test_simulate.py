"""The simulator against its own ground truth, read back with nibabel and NumPy."""

import hashlib
import json
import subprocess

import nibabel as nib
import numpy as np
import pytest

from conftest import binary, rotation, run_ok, simulate


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def events(root, run):
    rows = (root / "sub-01" / "func" / f"sub-01_task-faces_run-{run}_events.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["onset", "duration", "trial_type", "stim_id"]
    return [(float(r.split("\t")[0]), r.split("\t")[2], int(r.split("\t")[3])) for r in rows[1:]]


def bold(root, run):
    return nib.load(str(root / "sub-01" / "func" / f"sub-01_task-faces_run-{run}_bold.nii.gz"))


def test_same_seed_same_bytes_and_every_file_reads_back(tmp_path):
    a = simulate(tmp_path / "a", "--preset", "small", "--seed", "5")
    b = simulate(tmp_path / "b", "--preset", "small", "--seed", "5")
    c = simulate(tmp_path / "c", "--preset", "small", "--seed", "6")
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    latents = np.load(a / "stimuli" / "latents.npy")
    assert latents.dtype == np.float32 and latents.shape == (2 * 30 + 6, 512)
    assert abs(latents.mean()) < 0.05 and abs(latents.std() - 1) < 0.05
    desc = json.loads((a / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["Seed"] == 5
    for run in (1, 2, 3):
        img = bold(a, run)
        assert img.header.get_data_dtype() == np.int16 and img.dataobj.slope == pytest.approx(0.1)
        assert img.header.get_zooms()[3] == pytest.approx(1.5)
        ev = events(a, run)
        n_vols = img.shape[3]
        assert ev[-1][0] + 1.5 < n_vols * 1.5  # the last trial's response fits in the run
        kinds = {e[1] for e in ev}
        assert kinds == ({"train"} if run < 3 else {"test"})
        assert np.loadtxt(a / "truth" / f"motion_run-{run}.tsv", skiprows=1).shape == (n_vols, 6)
        assert np.load(a / "truth" / f"signal_run-{run}.npy").shape == (n_vols, 600)
    test_ids = [e[2] for e in events(a, 3)]
    assert sorted(set(test_ids)) == list(range(60, 66)) and len(test_ids) == 24  # 6 faces x 4 repeats
    assert nib.load(str(a / "truth" / "responsive_mask.nii.gz")).get_fdata().sum() == 600


def detrend(x, n):
    """Removes a constant and the simulator's drift basis (cosines k = 1..3 over the run)."""
    t = np.arange(n)
    basis = np.stack([np.ones(n)] + [np.cos(np.pi * k * t / n) for k in (1, 2, 3)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return x - basis @ coef


def test_responsive_voxels_carry_w_z_through_the_hrf_at_the_configured_snr(tmp_path):
    root = simulate(tmp_path / "s", "--preset", "small", "--no-motion", "--snr", "0.8")
    img = bold(root, 1)
    data = img.get_fdata().reshape(-1, img.shape[3], order="F")  # voxels x-fastest
    idx = np.load(root / "truth" / "responsive_indices.npy").astype(int)
    signal = np.load(root / "truth" / "signal_run-1.npy")  # [T, R] percent
    base = data[idx].mean(axis=1, keepdims=True)
    observed = 100 * (data[idx] / base - 1)  # percent
    n = img.shape[3]
    noise_percent = 1.0 / 0.8
    corrs, expected = [], []
    for r in range(len(idx)):
        o, s = detrend(observed[r], n), detrend(signal[:, r], n)
        corrs.append(np.corrcoef(o, s)[0, 1])
        expected.append(s.std() / np.sqrt(s.std() ** 2 + noise_percent ** 2))
    assert abs(np.mean(corrs) - np.mean(expected)) < 0.08, (np.mean(corrs), np.mean(expected))
    # the truth signal itself is W z through the HRF: its trial amplitudes follow the encoding weights
    w = np.load(root / "truth" / "encoding_weights.npy")
    assert np.allclose(np.linalg.norm(w, axis=1), 1, atol=1e-5)


def trial_patterns(root, runs, voxels):
    """Mean of the volumes 3 to 7.5 s after each onset, per trial, z-scored per run."""
    X, ids = [], []
    for run in runs:
        img = bold(root, run)
        d = img.get_fdata().reshape(-1, img.shape[3], order="F")[voxels]
        d = (d - d.mean(1, keepdims=True)) / d.std(1, keepdims=True)
        for onset, _, stim in events(root, run):
            a, b = int(np.ceil((onset + 3) / 1.5)), int(np.floor((onset + 7.5) / 1.5))
            X.append(d[:, a:b + 1].mean(1))
            ids.append(stim)
    return np.array(X), np.array(ids)


def test_only_responsive_voxels_carry_stimulus_information(tmp_path):
    cfg = tmp_path / "sim.toml"
    cfg.write_text("[simulate]\ndims = [32, 32, 20]\nvoxel_mm = 4.0\ntrain_runs = 3\ntrain_trials_per_run = 120\n"
                   "test_runs = 1\ntest_faces = 20\ntest_repeats = 3\nresponsive_voxels = 600\nclusters = 6\nsnr = 2.0\n")
    out = tmp_path / "d"
    run_ok("--config", str(cfg), "simulate", "--out", str(out), "--no-motion")
    latents = np.load(out / "stimuli" / "latents.npy")
    responsive = np.load(out / "truth" / "responsive_indices.npy").astype(int)
    brain = nib.load(str(out / "truth" / "brain_mask.nii.gz")).get_fdata().reshape(-1, order="F") > 0
    others = np.setdiff1d(np.flatnonzero(brain), responsive)
    others = np.random.default_rng(0).choice(others, size=len(responsive), replace=False)

    def decode(voxels):
        Xtr, ytr = trial_patterns(out, [1, 2, 3], voxels)
        Xte, yte = trial_patterns(out, [4], voxels)
        Ztr, Zte = latents[ytr], latents[yte]
        lam = 10.0 * Xtr.shape[0]
        W = np.linalg.solve(Xtr.T @ Xtr + lam * np.eye(Xtr.shape[1]), Xtr.T @ Ztr)
        pred = Xte @ W
        # correlation of predicted and true latents, per test trial (mean)
        return np.mean([np.corrcoef(p, z)[0, 1] for p, z in zip(pred, Zte)])

    r_resp, r_other = decode(responsive), decode(others)
    assert r_resp > 0.15, r_resp
    assert abs(r_other) < 0.05, r_other


def centre_of_mass_mm(vol, affine, threshold):
    mask = vol > threshold
    ijk = np.argwhere(mask)
    w = vol[mask]
    c = (ijk * w[:, None]).sum(0) / w.sum()
    return affine[:3, :3] @ c + affine[:3, 3]


def test_motion_truth_matches_the_image_displacement(tmp_path):
    root = simulate(tmp_path / "m", "--preset", "small", "--snr", "5")
    anat = nib.load(str(root / "truth" / "anatomy.nii.gz"))
    affine = anat.affine
    dims = np.array(anat.shape[:3])
    centre = affine[:3, :3] @ ((dims - 1) / 2) + affine[:3, 3]
    c0 = centre_of_mass_mm(anat.get_fdata().reshape(anat.shape[:3]), affine, 100)
    for run in (1, 3):  # 3 is the test session, offset from the training one
        img = bold(root, run)
        motion = np.loadtxt(root / "truth" / f"motion_run-{run}.tsv", skiprows=1)
        data = img.get_fdata()
        errors = []
        for t in range(0, img.shape[3], 7):
            predicted = rotation(motion[t, 3:]) @ (c0 - centre) + centre + motion[t, :3]
            errors.append(np.linalg.norm(centre_of_mass_mm(data[..., t], affine, 100) - predicted))
        assert max(errors) < 0.35, (run, max(errors))
    # the test session sits elsewhere: its mean position differs from the training session's
    m1 = np.loadtxt(root / "truth" / "motion_run-1.tsv", skiprows=1).mean(0)
    m3 = np.loadtxt(root / "truth" / "motion_run-3.tsv", skiprows=1).mean(0)
    assert np.abs(m3 - m1).max() > 0.5


@pytest.mark.parametrize("setting,key", [("tr_secs = -1.5", "simulate.tr_secs"), ("snr = nan", "simulate.snr"),
                                         ("test_runs = 1\ntest_repeats = 20000", "simulate.test_repeats")])
def test_bad_configuration_is_a_clear_error(tmp_path, setting, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[simulate]\n{setting}\n")
    r = subprocess.run([binary(), "--config", str(cfg), "simulate", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and key in r.stderr and str(cfg) in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
