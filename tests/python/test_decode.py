"""Decoder training and evaluation: SSIM against scikit-image, the end-to-end train/eval commands, and bad
input."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from conftest import binary, data_dir, run_ok, simulate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dec")
    cfg = tmp / "sim.toml"
    cfg.write_text("[simulate]\ndims = [32, 32, 20]\nvoxel_mm = 4.0\ntrain_runs = 2\ntrain_trials_per_run = 150\n"
                   "test_runs = 1\ntest_faces = 8\ntest_repeats = 4\nresponsive_voxels = 800\nclusters = 6\nsnr = 8.0\n")
    data = tmp / "data"
    run_ok("--config", str(cfg), "simulate", "--out", str(data), "--no-motion")
    dec = tmp / "decoder.safetensors"
    run_ok("train", "--data", str(data), "--out", str(dec), "--voxels", "800")
    return tmp, data, dec


def test_ssim_agrees_with_scikit_image(trained):
    tmp, data, dec = trained
    out = tmp / "report"
    run_ok("eval", "--decoder", dec, "--data", data, "--out", out, "--boundaries", data_dir() / "interfacegan",
           "--image-permutations", "20", timeout=600)
    report = json.loads((out / "report.json").read_text())
    # recompute SSIM and pixel r from the grid with scikit-image / NumPy (same 224 px resize as the report)
    grid = np.asarray(Image.open(out / "grid.png"))
    side = 256
    ssims, pix = [], []
    for i in range(report["averaged"]["items"]):
        x0, y0 = (i % 4) * (2 * side + 8), (i // 4) * (side + 8)
        stim = Image.fromarray(grid[y0:y0 + side, x0:x0 + side]).resize((224, 224), Image.BILINEAR)
        recon = Image.fromarray(grid[y0:y0 + side, x0 + side:x0 + 2 * side]).resize((224, 224), Image.BILINEAR)
        a, b = np.asarray(stim), np.asarray(recon)
        ssims.append(structural_similarity(a, b, channel_axis=-1))
        la, lb = a @ [0.299, 0.587, 0.114], b @ [0.299, 0.587, 0.114]
        pix.append(np.corrcoef(la.ravel(), lb.ravel())[0, 1])
    # the resize filters differ slightly between PIL and the image crate: compare our SSIM on the same pixels too
    assert abs(np.mean(ssims) - report["ssim"]["mean"]) < 0.02
    assert abs(np.mean(pix) - report["pixel_pearson"]["mean"]) < 0.02


def test_trained_decoder_beats_chance(trained):
    tmp, data, dec = trained
    out = tmp / "report"
    report = json.loads((out / "report.json").read_text())
    a = report["averaged"]
    # 300 training trials against 512 latent dimensions: a weak but clearly non-random decoder
    assert a["cosine"]["mean"] > 0.08 and a["cosine"]["p"] < 0.01
    assert a["latent_similarity"]["p"] < 0.01
    assert a["identification_pairwise"] > 0.8 and a["identification_nway"] > 0.5
    assert (out / "report.md").read_text().count("HYPER") >= 1
    for plot in ["cv_curve.png", "attributes.png", "null_histograms.png", "grid.png"]:
        img = np.asarray(Image.open(out / plot))
        assert img.std() > 10, plot  # drawn, not blank


def test_bad_datasets_are_named(tmp_path):
    data = simulate(tmp_path / "d", "--preset", "small")
    func = data / "sub-01" / "func"
    ev = func / "sub-01_task-faces_run-1_events.tsv"
    good = ev.read_text()
    ev.write_text(good.replace("\t0\n", "\t999\n", 1))
    r = subprocess.run([binary(), "train", "--data", str(data), "--out", str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "stim_id 999" in r.stderr and "events.tsv" in r.stderr, r.stderr
    ev.write_text(good)
    r = subprocess.run([binary(), "train", "--data", str(data), "--out", str(tmp_path / "x.safetensors"), "--folds", "40"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "folds" in r.stderr, r.stderr
    r = subprocess.run([binary(), "train", "--data", str(data), "--out", str(tmp_path / "x.safetensors"), "--voxels", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "empty" in r.stderr, r.stderr
    bad = tmp_path / "not_a_decoder.safetensors"
    bad.write_bytes(b"garbage")
    r = subprocess.run([binary(), "eval", "--decoder", str(bad), "--data", str(data), "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not_a_decoder.safetensors" in r.stderr, r.stderr
