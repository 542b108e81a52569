"""Realignment against known rigid transforms applied independently (SciPy), on the real Pyneal series and on
simulated runs whose motion truth is known."""

import struct
import subprocess

import nibabel as nib
import numpy as np
from scipy import ndimage

from conftest import binary, data_dir, rotation, run_ok


def move(vol, affine, trans, rot):
    """The documented convention: moved(p) = vol(R^T (p - c - t) + c), p in mm, c the grid centre."""
    A, b = affine[:3, :3], affine[:3, 3]
    c = A @ ((np.array(vol.shape) - 1) / 2) + b
    R = rotation(rot)
    Ainv = np.linalg.inv(A)
    # voxel_in = Ainv (R^T (A v + b - c - t) + c - b)
    matrix = Ainv @ R.T @ A
    offset = Ainv @ (R.T @ (b - c - np.asarray(trans)) + c - b)
    return ndimage.affine_transform(vol, matrix, offset=offset, order=3, mode="constant", cval=0.0)


def unmove(vol, affine, trans, rot, order=1):
    """Inverse of `move`: realigned(q) = vol(R (q - c) + c + t)."""
    A, b = affine[:3, :3], affine[:3, 3]
    c = A @ ((np.array(vol.shape) - 1) / 2) + b
    R = rotation(rot)
    Ainv = np.linalg.inv(A)
    return ndimage.affine_transform(vol, Ainv @ R @ A, offset=Ainv @ (R @ (b - c) + c + np.asarray(trans) - b), order=order)


def realign(tmp_path, series, affine, tr=1.0, extra=()):
    img = nib.Nifti1Image(series.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    path = tmp_path / "run.nii.gz"
    nib.save(img, str(path))
    out = tmp_path / "out"
    r = run_ok("realign", str(path), "--out", str(out), *extra)
    rows = [l.split("\t") for l in (out / "motion.tsv").read_text().splitlines()[1:]]
    motion = np.array([[float(x) for x in row[1:7]] for row in rows])
    return motion, nib.load(str(out / "realigned.nii.gz")), r.stdout


TRANSFORMS = [([0, 0, 0], [0, 0, 0]), ([0.5, -0.3, 0.2], [0.2, -0.4, 0.3]), ([1.5, 1.0, -1.2], [1.0, -1.5, 2.0]),
              ([-3.0, 2.5, 3.0], [3.0, 2.0, -3.0]), ([2.9, -2.9, -2.0], [-2.5, 3.0, 2.8])]


def test_real_series_moved_by_known_transforms_is_recovered(tmp_path):
    src = nib.load(str(data_dir() / "pyneal" / "testSeries.nii.gz"))
    ref = src.get_fdata()[..., 0]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])  # the file's affine is the identity; give it EPI-like 3 mm voxels
    series = np.stack([move(ref, affine, t, r) for t, r in TRANSFORMS], axis=-1)
    motion, resliced, _ = realign(tmp_path, series, affine)
    truth = np.array([t + r for t, r in TRANSFORMS], dtype=float)
    err = np.abs(motion - truth)
    assert err[:, :3].max() < 0.1 and err[:, 3:].max() < 0.1, np.round(err, 3)
    # after realignment the difference to the reference is down to the floor that trilinear reslicing with the
    # true transform reaches (this series has no noise: interpolation is the floor)
    mask = ref > 0.2 * np.percentile(ref, 99)
    inner = ndimage.binary_erosion(mask, iterations=3)
    for t in range(1, len(TRANSFORMS)):
        before = np.sqrt(np.mean((series[..., t] - ref)[inner] ** 2))
        after = np.sqrt(np.mean((resliced.get_fdata()[..., t] - ref)[inner] ** 2))
        floor = np.sqrt(np.mean((unmove(series[..., t], affine, *TRANSFORMS[t]) - ref)[inner] ** 2))
        assert after < 1.1 * floor + 1.0, (t, before, after, floor)
        if t >= 2:
            assert after < 0.5 * before, (t, before, after)


def test_simulated_run_motion_matches_the_truth(tmp_path):
    out = tmp_path / "sim"
    cfg = tmp_path / "sim.toml"
    cfg.write_text("[simulate]\ntrain_runs = 1\ntrain_trials_per_run = 20\ntest_runs = 0\nsnr = 2.0\n")  # default 64 x 64 x 36 grid
    run_ok("--config", str(cfg), "simulate", "--out", str(out), timeout=120)
    run = out / "sub-01" / "func" / "sub-01_task-faces_run-1_bold.nii.gz"
    res = subprocess.run([binary(), "realign", str(run), "--out", str(tmp_path / "r"), "--subsample", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    est = np.array([[float(x) for x in l.split("\t")[1:7]] for l in (tmp_path / "r" / "motion.tsv").read_text().splitlines()[1:]])
    truth = np.loadtxt(out / "truth" / "motion_run-1.tsv", skiprows=1)
    img = nib.load(str(run))
    A, b = img.affine[:3, :3], img.affine[:3, 3]
    c = A @ ((np.array(img.shape[:3]) - 1) / 2) + b

    def matrix(p):
        M = np.eye(4)
        R = rotation(p[3:])
        M[:3, :3] = R
        M[:3, 3] = -R @ c + c + p[:3]
        return M

    # the estimate maps volume 0's head position onto volume t's: the truth's relative transform, as parameters
    def params(M):
        R = M[:3, :3]
        beta = -np.arcsin(R[2, 0])
        alpha, gamma = np.arctan2(R[2, 1], R[2, 2]), np.arctan2(R[1, 0], R[0, 0])
        return np.r_[M[:3, :3] @ c + M[:3, 3] - c, np.degrees([alpha, beta, gamma])]

    rel = np.array([params(matrix(truth[t]) @ np.linalg.inv(matrix(truth[0]))) for t in range(len(truth))])
    err = np.abs(est - rel)
    assert err[:, :3].max() < 0.1 and err[:, 3:].max() < 0.1, (err[:, :3].max(), err[:, 3:].max())
    assert np.abs(rel).max() > 1.0  # the run really moved


def test_non_finite_voxels_are_replaced_and_counted(tmp_path):
    src = nib.load(str(data_dir() / "pyneal" / "testSeries.nii.gz")).get_fdata()
    series = src.copy()
    series[10, 10, 10, 1] = np.nan
    series[20, 30, 5, 2] = np.inf
    motion, resliced, stdout = realign(tmp_path, series, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert "2 non-finite voxels replaced" in stdout
    assert np.isfinite(resliced.get_fdata()).all()
    flags = [l.split("\t")[-1] for l in (tmp_path / "out" / "motion.tsv").read_text().splitlines()[1:]]
    assert flags == ["ok", "non_finite_replaced", "non_finite_replaced"]


def test_a_header_that_places_no_voxel_is_refused_by_name(tmp_path):
    """A NIfTI whose voxel sizes are zero (no sform, no qform) or whose sform is singular cannot be realigned: the
    reader says which file, where the affine came from and why, before any work starts."""
    series = data_dir() / "pyneal" / "testSeries.nii.gz"
    good = nib.load(str(series))
    img = nib.Nifti1Image(np.asanyarray(good.dataobj)[..., :3], np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "good.nii"))
    raw = (tmp_path / "good.nii").read_bytes()

    def patched(name, **fields):
        b = bytearray(raw)
        for offset, (fmt, value) in fields.items():
            struct.pack_into(fmt, b, int(offset[1:]), *value)
        path = tmp_path / name
        path.write_bytes(bytes(b))
        return path

    cases = {
        # no sform or qform: nibabel's fallback from pixdim, whose y size is zero
        "pixdim": patched("pixdim.nii", o252=("<hh", (0, 0)), o80=("<3f", (3.0, 0.0, 3.0))),
        # an sform whose third axis runs along the first: every slice at the same place
        "sform": patched("sform.nii", o252=("<hh", (0, 1)), o280=("<12f", (3, 0, 3, 0, 0, 3, 0, 0, 0, 0, 0, 0))),
    }
    assert run_ok("realign", str(tmp_path / "good.nii"), "--out", str(tmp_path / "good")).returncode == 0
    for source, path in cases.items():
        res = subprocess.run([binary(), "realign", str(path), "--out", str(tmp_path / source)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode != 0
        assert str(path) in res.stderr and f"affine from the {source}" in res.stderr and "singular" in res.stderr, res.stderr
        assert not (tmp_path / source / "motion.tsv").exists()
