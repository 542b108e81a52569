"""DICOM series stored one slice per file (GE's real-time export; Siemens with mosaic off): `hyper-rt send FOLDER`
and `--watch` gather the slices into volumes. Checked against nibabel (a real oblique NIfTI run written out as
slices by an independent pydicom writer) and against real GE slice files from pydicom's test data."""

import pathlib
import random
import shutil
import subprocess
import time
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import binary, finish_watch, start_watch, wait_for
from mosaic_writer import write_slice_series

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

NIBABEL_DATA = pathlib.Path(nib.__file__).parent / "tests" / "data"
GE_SLICES = pathlib.Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def send(*args, timeout=60):
    return subprocess.run([binary(), "send", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def example_run():
    """nibabel's example4d: a real oblique EPI run, 128 x 96 x 24 x 2, scaled int16."""
    img = nib.load(str(NIBABEL_DATA / "example4d.nii.gz"))
    stored = np.asanyarray(img.dataobj.get_unscaled())
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return img, stored, float(1.0 if slope is None or np.isnan(slope) else slope), float(0.0 if inter is None or np.isnan(inter) else inter)


def recorded(r, summary):
    rec = nib.load(str(r.session_dir / summary["volumes_file"]))
    return rec.get_fdata(), rec.affine


def test_a_slice_series_is_stacked_into_the_run_it_was_written_from(receiver, tmp_path):
    img, stored, slope, inter = example_run()
    assert abs(img.affine[2, 1]) > 0.1  # oblique: the check could fail on a swapped axis
    folder = tmp_path / "s0007"
    folder.mkdir()
    write_slice_series(folder, stored, img.affine, 2.0, series=7, slope=slope, intercept=inter)
    (folder / "README.txt").write_text("not an image")
    listing = send(folder, "--list")
    assert listing.returncode == 0, listing.stderr
    row = listing.stdout.splitlines()[1].split()
    assert row[:4] == ["7", "2", "0-1", "0"] and row[4:9] == ["128", "x", "96", "x", "24"], listing.stdout
    r = receiver(expected=2)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 2 volumes" in out.stdout and "single-slice files" in out.stderr
    s = r.wait()
    assert s["received"] == 2 and s["rejected"] == 0
    data, affine = recorded(r, s)
    np.testing.assert_allclose(data, img.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(affine, img.affine, atol=1e-4)


def test_without_in_stack_positions_slices_are_ordered_along_the_normal(receiver, tmp_path):
    """The same run written with its slice axis reversed (the same image), without InStackPositionNumber and under
    shuffled names: the slices are stacked in the direction of the slice normal, so the recording is whichever of
    the two equivalent forms runs along it."""
    img, stored, slope, inter = example_run()
    n = stored.shape[2]
    flip = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, n - 1], [0, 0, 0, 1]], float)
    reversed_affine = img.affine @ flip
    folder = tmp_path / "series"
    folder.mkdir()
    paths = write_slice_series(folder, stored[:, :, ::-1, :], reversed_affine, 2.0, slope=slope, intercept=inter,
                               in_stack=False)
    names = [f"img_{i:04d}.dcm" for i in random.Random(3).sample(range(len(paths)), len(paths))]
    for path, name in zip(paths, names):
        path.rename(folder / name)
    lps = np.diag([-1.0, -1.0, 1.0])
    row_cos, col_cos = lps @ img.affine[:3, 1], lps @ img.affine[:3, 0]
    along_normal = np.dot(lps @ img.affine[:3, 2], np.cross(row_cos, col_cos)) > 0
    expected_data = img.get_fdata() if along_normal else img.get_fdata()[:, :, ::-1, :]
    expected_affine = img.affine if along_normal else reversed_affine
    r = receiver(expected=2)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    s = r.wait()
    data, affine = recorded(r, s)
    np.testing.assert_allclose(data, expected_data, rtol=1e-6)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)


def test_real_ge_slice_files(receiver, tmp_path):
    """Five real consecutive GE slices (pydicom's test data; CT, but written as GE writes every series, one slice
    per file), given ImagesInAcquisition: one volume (InstanceNumber 6 to 10 -> volume 1) whose voxels are
    pydicom's scaled pixels and whose affine is nibabel's slice affine (in RAS) with the slice axis running
    between the outer ImagePositionPatients."""
    files = sorted(GE_SLICES.iterdir())
    assert len(files) == 5, files
    folder = tmp_path / "ge"
    folder.mkdir()
    datasets = []
    for path in files:
        ds = pydicom.dcmread(str(path))
        assert ds.Manufacturer == "GE MEDICAL SYSTEMS" and "ImagesInAcquisition" not in ds
        ds.ImagesInAcquisition = 5
        ds.save_as(str(folder / path.name), enforce_file_format=True)
        datasets.append(ds)
    by_z = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))  # the normal is +z here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrappers = [dicomwrappers.wrapper_from_data(d) for d in by_z]
        expected = np.stack([w.get_data() for w in wrappers], axis=2)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        expected_affine = lps_to_ras @ wrappers[0].affine
    step = (np.array(by_z[-1].ImagePositionPatient, float) - np.array(by_z[0].ImagePositionPatient, float)) / 4
    expected_affine[:3, 2] = np.diag([-1.0, -1.0, 1.0]) @ step
    r = receiver(expected=2, idle=1.0)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet", "--tr-secs", "2")
    assert out.returncode == 0, out.stderr
    s = r.wait()
    assert s["received"] == 1 and s["rejected"] == 0
    data, affine = recorded(r, s)
    np.testing.assert_array_equal(data[..., 1], expected)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)


def test_watch_sends_a_volume_once_all_its_slices_are_written(receiver, tmp_path):
    img, stored, slope, inter = example_run()
    staged = tmp_path / "staged"
    staged.mkdir()
    paths = write_slice_series(staged, stored, img.affine, 2.0, series=9, slope=slope, intercept=inter)
    n = stored.shape[2]
    export = tmp_path / "export"
    export.mkdir()
    r = receiver(expected=2)
    proc, log = start_watch(tmp_path, export, r.endpoint)
    try:
        accepted = r.accepted
        first_volume = paths[:n]
        random.Random(1).shuffle(first_volume)
        for path in first_volume[:-1]:  # all but one slice of volume 0: nothing is sent yet
            shutil.copy(path, export / path.name)
        time.sleep(0.5)
        assert accepted() == 0
        shutil.copy(first_volume[-1], export / first_volume[-1].name)
        wait_for(lambda: accepted() == 1, what="volume 0 once complete")
        for path in paths[n:]:
            shutil.copy(path, export / path.name)
        out, err = finish_watch(proc, log)
    finally:
        proc.kill()
    assert "following series 9" in err and "the receiver said STOP" in out and "skipped" not in out
    s = r.wait()
    data, affine = recorded(r, s)
    np.testing.assert_allclose(data, img.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(affine, img.affine, atol=1e-4)


def test_a_volume_missing_slices_is_named_and_left_out(receiver, tmp_path):
    img, stored, slope, inter = example_run()
    folder = tmp_path / "series"
    folder.mkdir()
    paths = write_slice_series(folder, stored, img.affine, 2.0, slope=slope, intercept=inter)
    paths[-1].unlink()  # the last slice of volume 1 never came
    r = receiver(expected=2, idle=1.0)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "skipped volume 1 of series 7: 23 of its 24 slice files are there" in out.stderr
    assert "sent 1 volumes" in out.stdout and "23 files skipped" in out.stdout
    r.wait()


def test_bad_slice_files_get_a_clear_error(receiver, tmp_path):
    img, stored, slope, inter = example_run()
    folder = tmp_path / "series"
    folder.mkdir()
    paths = write_slice_series(folder, stored[:, :, :4, :], img.affine, 2.0, slope=slope, intercept=inter)
    # a slice of volume 0 tilted against the others: that volume is named and left out, the run goes on
    ds = pydicom.dcmread(str(paths[1]))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(str(paths[1]), enforce_file_format=True)
    r = receiver(expected=2, idle=1.0)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert f"{paths[1].name}: its ImageOrientationPatient or PixelSpacing differs from" in out.stderr, out.stderr
    assert "sent 1 volumes" in out.stdout and "4 files skipped" in out.stdout  # the four slices of volume 0
    assert r.wait()["received"] == 1
    # a multi-frame (enhanced) image is refused, not read as its first frame
    ds = pydicom.dcmread(str(paths[0]))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    multi = tmp_path / "multi.dcm"
    ds.save_as(str(multi), enforce_file_format=True)
    out = send(multi, "--connect", "tcp://127.0.0.1:9", "--fast")
    assert out.returncode != 0 and "multi.dcm: a multi-frame (enhanced) image of 2 frames: not read" in out.stderr, out.stderr
