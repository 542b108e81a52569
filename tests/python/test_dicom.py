"""Siemens mosaic DICOM intake (`hyper-rt send FOLDER`, `--watch`) against pydicom + nibabel's mosaic reader,
on three real Siemens EPI volumes."""

import shutil
import subprocess
import time
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from conftest import binary, data_dir, finish_watch, start_watch, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomreaders


def siemens_files():
    folder = data_dir() / "pyneal" / "siemens"
    files = sorted(folder.glob("*.dcm"))
    if len(files) != 3:
        pytest.fail(f"{folder}: expected the three Siemens mosaic files; run scripts/test.sh, which fetches them")
    return files


def reference(path_or_dataset):
    """nibabel's mosaic reader: the volume's voxels and its RAS+ affine."""
    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else pydicom.dcmread(str(path_or_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = dicomreaders.mosaic_to_nii(ds)
    return img.get_fdata(), img.affine


def send(*args, timeout=60):
    return subprocess.run([binary(), "send", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def check_recording(r, summary, sources, dtype):
    rec = nib.load(str(r.session_dir / summary["volumes_file"]))
    assert rec.get_data_dtype() == np.dtype(dtype)
    data = rec.get_fdata()
    for i, src in enumerate(sources):
        ref_data, ref_affine = reference(src)
        np.testing.assert_array_equal(data[..., i], ref_data)
        np.testing.assert_allclose(rec.affine, ref_affine, atol=1e-4)  # the recording's sform is float32
    assert abs(rec.header.get_zooms()[3] - 1.0) < 1e-6  # RepetitionTime 1000 ms


def test_a_real_siemens_series_is_sent_as_nibabel_reads_it(receiver):
    files = siemens_files()
    r = receiver(expected=3)
    out = send(files[0].parent, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 3 volumes" in out.stdout and "the receiver said STOP" in out.stdout
    # the folder also holds the series' mask (NIfTI): named, counted, skipped
    assert "neither DICOM nor PAR/REC" in out.stderr and "dummyMask.nii.gz" in out.stderr and "1 files skipped" in out.stdout
    assert "series 13: 3 volumes" in out.stderr and "slice normal from the CSA header" in out.stderr
    s = r.wait()
    assert s["received"] == 3 and s["rejected"] == 0
    check_recording(r, s, files, "uint16")


def test_implicit_vr_and_rescaled_files(receiver, tmp_path):
    """The same series re-encoded as implicit VR little endian with a rescale slope and intercept: the volumes
    go out as float64 `stored * slope + intercept`, as nibabel scales them."""
    folder = tmp_path / "series"
    folder.mkdir()
    rewritten = []
    for path in siemens_files():
        ds = pydicom.dcmread(str(path))
        ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-100"
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        out_path = folder / path.name
        ds.save_as(str(out_path), enforce_file_format=True)
        rewritten.append(out_path)
    assert pydicom.dcmread(str(rewritten[0])).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    r = receiver(expected=3)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    s = r.wait()
    check_recording(r, s, rewritten, "float64")
    ref0, _ = reference(rewritten[0])
    raw0, _ = reference(siemens_files()[0])
    np.testing.assert_allclose(ref0, raw0 * 2.5 - 100)  # the reference really did scale


def with_series(path, out_path, series, instance=None):
    ds = pydicom.dcmread(str(path))
    ds.SeriesNumber = series
    if instance is not None:
        ds.InstanceNumber = instance
    ds.save_as(str(out_path), enforce_file_format=True)


def test_a_folder_with_several_series_needs_series(receiver, tmp_path):
    files = siemens_files()
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    with_series(files[0], tmp_path / "other_1.dcm", 14)
    with_series(files[2], tmp_path / "other_3.dcm", 14)
    listing = send(tmp_path, "--list")
    assert listing.returncode == 0, listing.stderr
    rows = {l.split()[0]: l.split() for l in listing.stdout.splitlines()[1:]}
    assert rows["13"][1:4] == ["3", "0-2", "0"] and rows["14"][1:4] == ["2", "0-2", "1"], listing.stdout
    assert rows["13"][4:9] == ["64", "x", "64", "x", "18"] and rows["13"][9:11] == ["uint16", "1.000"], listing.stdout
    out = send(tmp_path, "--connect", "tcp://127.0.0.1:9", "--fast", "--quiet")
    assert out.returncode != 0
    assert "several series" in out.stderr and "series 13" in out.stderr and "series 14" in out.stderr
    assert "--series" in out.stderr
    out = send(tmp_path, "--series", "12", "--connect", "tcp://127.0.0.1:9")
    assert out.returncode != 0 and "no volume of series 12" in out.stderr
    r = receiver(expected=3)
    out = send(tmp_path, "--series", "13", "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    s = r.wait()
    check_recording(r, s, files, "uint16")


def test_bad_files_get_a_clear_error(tmp_path):
    files = siemens_files()
    cases = {}
    data = files[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    cases["cut.dcm"] = "broken at byte"
    ds = pydicom.dcmread(str(files[0]))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 a JPEG frame \xff\xd9"])
    ds.save_as(str(tmp_path / "jpeg.dcm"), enforce_file_format=True)
    cases["jpeg.dcm"] = "JPEG Baseline (Process 1) pixel data: frame 0 could not be decoded"  # not a real JPEG
    ds = pydicom.dcmread(str(files[0]))
    del ds[0x0019, 0x100A]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    for tag in [t for t in ds.keys() if t.group == 0x0029]:
        del ds[tag]
    ds.save_as(str(tmp_path / "single.dcm"), enforce_file_format=True)
    cases["single.dcm"] = "neither a Siemens mosaic nor a slice with ImagesInAcquisition (0020,1002)"
    ds = pydicom.dcmread(str(files[0]))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.ImageOrientationPatient
    ds.save_as(str(tmp_path / "no_orientation.dcm"), enforce_file_format=True)
    cases["no_orientation.dcm"] = "ImageOrientationPatient (0020,0037) is missing"
    for name, expected in cases.items():
        out = send(tmp_path / name, "--connect", "tcp://127.0.0.1:9", "--fast")
        assert out.returncode != 0, name
        assert name in out.stderr and expected in out.stderr, (name, out.stderr)
        assert "panicked" not in out.stderr


def copy_slowly(src, dst, pause_secs=0.3):
    """Writes a file in two halves with a pause between, as a scanner export does."""
    data = src.read_bytes()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause_secs)
        f.write(data[len(data) // 2:])


def empty_folder(path):
    path.mkdir()
    return path


def test_watch_sends_each_volume_as_its_file_is_written(receiver, tmp_path):
    files = siemens_files()
    export = empty_folder(tmp_path / "export")
    # an earlier run already in the folder: not sent, since no --series is given
    with_series(files[0], export / "001_000012_000001.dcm", 12)
    r = receiver(expected=3)
    proc, log = start_watch(tmp_path, export, r.endpoint, "--idle-secs", "30")
    try:
        accepted = r.accepted
        # files there before the sender started are earlier runs: start writing once it watches
        # volumes arrive out of order, one of them written slowly
        copy_slowly(files[1], export / files[1].name)
        wait_for(lambda: accepted() == 1, what="volume 1")
        # junk, and a DICOM file that stops growing half-way: each named once it has settled, the run goes on
        (export / "notes.txt").write_text("operator notes, not an image\n" * 10)
        (export / "broken.dcm").write_bytes(files[2].read_bytes()[:5000])
        copy_slowly(files[0], export / files[0].name)
        wait_for(lambda: "broken.dcm: broken at byte" in log.read_text(), timeout=10, what="the broken file reported")
        assert accepted() == 2
        shutil.copy(files[2], export / files[2].name)
        out, err = finish_watch(proc, log)
    finally:
        proc.kill()
    assert "following series 13" in err
    assert "notes.txt: neither DICOM nor a Philips PAR header" in err
    assert "sent 3 volumes" in out and "2 files skipped" in out
    latency = out.split("file written -> volume acknowledged: p50 ", 1)[1]
    assert "over 3 volumes" in latency and 0 <= float(latency.split(" ms")[0]) < 5000, out
    s = r.wait()
    assert s["received"] == 3 and s["rejected"] == 0 and s["missing"] == 0
    check_recording(r, s, files, "uint16")


def test_watch_with_series_sends_the_files_already_there_and_stops_after_volumes(receiver, tmp_path):
    files = siemens_files()
    export = empty_folder(tmp_path / "export")
    shutil.copy(files[0], export / files[0].name)
    r = receiver(expected=3)
    proc, log = start_watch(tmp_path, export, r.endpoint, "--series", "13", "--volumes", "2")
    try:
        wait_for(lambda: r.accepted() >= 1, what="the file already there")
        (export / "001_000013_000003.dcm").write_bytes(files[2].read_bytes()[:1000])  # still being written
        # written under a temporary name, then renamed: the temporary name is forgotten, not reported
        (export / "incoming.part").write_bytes(files[1].read_bytes()[:1000])
        time.sleep(0.1)
        with open(export / "incoming.part", "ab") as f:
            f.write(files[1].read_bytes()[1000:])
        (export / "incoming.part").rename(export / files[1].name)
        out, err = finish_watch(proc, log)
    finally:
        proc.kill()
    assert "sent 2 volumes" in out and "STOP" not in out
    assert "1 files in" in err and "still incomplete" in err and "001_000013_000003.dcm" in err
    assert "incoming.part" not in err
    r.kill()


def test_watch_stops_after_idle_secs(receiver, tmp_path):
    r = receiver(expected=3)
    started = time.time()
    out = send(tmp_path, "--watch", "--idle-secs", "0.5", "--connect", r.endpoint, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 0 volumes" in out.stdout and "no new volume for 0.5 s" in out.stderr
    assert time.time() - started < 10
    r.kill()


def test_watch_waits_for_a_file_allocated_before_it_is_filled(receiver, tmp_path):
    """Some copy tools allocate the whole file, then fill it: the size never changes, only the contents (and the
    modification time). Such a file is neither rejected nor sent half-filled."""
    files = siemens_files()
    export = empty_folder(tmp_path / "export")
    r = receiver(expected=1)
    proc, log = start_watch(tmp_path, export, r.endpoint, "--series", "13")
    try:
        data = files[0].read_bytes()
        target = export / files[0].name
        target.write_bytes(bytes(len(data)))
        time.sleep(0.6)  # a dozen looks at the folder
        assert "skipped" not in log.read_text()
        with open(target, "r+b") as f:
            f.write(data)
        out, _ = finish_watch(proc, log)
    finally:
        proc.kill()
    assert "sent 1 volumes" in out and "skipped" not in out
    s = r.wait()
    check_recording(r, s, files[:1], "uint16")


def test_watch_survives_the_folder_vanishing_for_a_moment(receiver, tmp_path):
    """A network share that drops for a moment: the sender says so once and goes on when it is back."""
    files = siemens_files()
    export = empty_folder(tmp_path / "export")
    r = receiver(expected=1)
    proc, log = start_watch(tmp_path, export, r.endpoint, "--series", "13")
    try:
        export.rename(tmp_path / "away")
        wait_for(lambda: "cannot read" in log.read_text(), what="the sender to notice")
        (tmp_path / "away").rename(export)
        shutil.copy(files[0], export / files[0].name)
        out, err = finish_watch(proc, log)
    finally:
        proc.kill()
    assert err.count("cannot read") == 1 and "readable again after" in err
    assert "sent 1 volumes" in out
    s = r.wait()
    check_recording(r, s, files[:1], "uint16")
