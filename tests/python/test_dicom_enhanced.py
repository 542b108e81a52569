"""Siemens XA Enhanced MR Image intake (`hyper-rt send FOLDER`) against dcm2niix, the converter the field trusts,
on a real XA30 multiband BOLD run (20 volumes, oblique): voxels equal, voxel positions within 0.01 mm."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames
import pytest

from conftest import binary, data_dir

pytestmark = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is installed by scripts/test.sh")


def xa_folder():
    folder = data_dir() / "siemens-xa30"
    if len(list(folder.glob("*.dcm"))) != 20:
        pytest.fail(f"{folder}: expected the 20 XA30 files; run scripts/test.sh, which fetches them")
    return folder


def dcm2niix(folder, out):
    out.mkdir()
    r = subprocess.run(["dcm2niix", "-o", str(out), "-f", "run", "-z", "n", str(folder)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return nib.load(str(out / "run.nii")), json.loads((out / "run.json").read_text())


def send(*args, timeout=120):
    return subprocess.run([binary(), "send", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def same_voxels_in_space(ours, theirs, atol_mm=0.01):
    """Maps each of our voxel centres into the other image's voxel grid through both affines: every one must land
    on a voxel centre (within `atol_mm`) holding the same value."""
    a, b = ours.affine, theirs.affine
    shape = ours.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ a[:3, :3].T + a[:3, 3]
    theirs_ijk = (world - b[:3, 3]) @ np.linalg.inv(b[:3, :3]).T
    nearest = np.rint(theirs_ijk)
    off_mm = np.linalg.norm((theirs_ijk - nearest) @ b[:3, :3].T, axis=1)
    assert off_mm.max() < atol_mm, f"voxel centres differ by up to {off_mm.max():.4f} mm"
    n = nearest.astype(int)
    assert (n >= 0).all() and (n < np.array(theirs.shape[:3])).all(), "the grids do not cover the same voxels"
    mine = np.asanyarray(ours.dataobj).reshape(-1, ours.shape[3])
    other = np.asanyarray(theirs.dataobj)[n[:, 0], n[:, 1], n[:, 2], :]
    np.testing.assert_array_equal(mine.astype(np.int64), other.astype(np.int64))


def same_slice_timing(ours, session_dir, summary, theirs, sidecar, atol_secs):
    """Our SliceTiming (summary.json and the BIDS sidecar volumes.json) against dcm2niix's, slice by slice: our
    slice k is matched to the slice of theirs at the same place, so the comparison holds whichever way each of
    us runs the slice axis."""
    times = summary["slice_timing_secs"]
    assert json.loads((session_dir / "volumes.json").read_text()) == {
        "RepetitionTime": summary["tr_secs"], "SliceTiming": times}
    n = ours.shape[2]
    corner = np.array([[0, 0, k, 1] for k in range(n)], dtype=float)
    their_k = np.rint((np.linalg.inv(theirs.affine) @ ours.affine @ corner.T)[2]).astype(int)
    expected = np.asarray(sidecar["SliceTiming"])[their_k]
    np.testing.assert_allclose(times, expected, atol=atol_secs, rtol=0)
    return times


def test_the_xa30_run_is_recorded_as_dcm2niix_converts_it(receiver, tmp_path):
    folder = xa_folder()
    listing = send(folder, "--list")
    assert listing.returncode == 0, listing.stderr
    assert "64 x 64 x 33" in listing.stdout and "0-19" in listing.stdout, listing.stdout
    r = receiver(expected=20)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 20 volumes" in out.stdout and "the receiver said STOP" in out.stdout
    s = r.wait()
    assert (s["received"], s["missing"], s["rejected"]) == (20, 0, 0)
    ours = nib.load(str(r.session_dir / s["volumes_file"]))
    theirs, sidecar = dcm2niix(folder, tmp_path / "dcm2niix")
    assert ours.shape == theirs.shape == (64, 64, 33, 20)
    same_voxels_in_space(ours, theirs)
    assert abs(ours.header.get_zooms()[3] - sidecar["RepetitionTime"]) < 1e-6
    # multiband slice timing from the frames' FrameAcquisitionDateTime; dcm2niix evens the times out to a
    # regular grid, so they differ by up to 2.5 ms (the DICOM times' 0.1 ms steps are kept here)
    times = same_slice_timing(ours, r.session_dir, s, theirs, sidecar, atol_secs=0.005)
    assert len(set(times)) == 11, "multiband 3: 33 slices in 11 excitations"


def test_the_siemens_mosaics_agree_with_dcm2niix_too(receiver, tmp_path):
    folder = data_dir() / "pyneal" / "siemens"
    r = receiver(expected=3)
    out = send(folder, "--connect", r.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    s = r.wait()
    ours = nib.load(str(r.session_dir / s["volumes_file"]))
    theirs, sidecar = dcm2niix(folder, tmp_path / "dcm2niix")
    same_voxels_in_space(ours, theirs)
    # the CSA header's MosaicRefAcqTimes, which dcm2niix reads too
    same_slice_timing(ours, r.session_dir, s, theirs, sidecar, atol_secs=1e-6)


def broken_copies(folder, tmp_path):
    """Damaged XA files, each with the message that must name what is wrong."""
    files = sorted(folder.glob("*.dcm"))
    cases = {}
    data = files[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) * 2 // 3])
    cases["cut.dcm"] = "cut.dcm"
    ds = pydicom.dcmread(str(files[0]))
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(str(tmp_path / "frames.dcm"), enforce_file_format=True)
    cases["frames.dcm"] = "holds 32 items for 33 frames"
    ds = pydicom.dcmread(str(files[0]))
    del ds.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence
    ds.save_as(str(tmp_path / "no_position.dcm"), enforce_file_format=True)
    cases["no_position.dcm"] = "ImagePositionPatient (0020,0032) is missing"
    ds = pydicom.dcmread(str(files[0]))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(str(tmp_path / "short_pixels.dcm"), enforce_file_format=True)
    cases["short_pixels.dcm"] = "33 frame(s) of 64 x 64"
    ds = pydicom.dcmread(str(files[0]))
    ds.PerFrameFunctionalGroupsSequence[5].PixelMeasuresSequence[0].PixelSpacing = [3.0, 3.0]
    ds.save_as(str(tmp_path / "unequal.dcm"), enforce_file_format=True)
    cases["unequal.dcm"] = "the frame at InStackPositionNumber 6 has another ImageOrientationPatient or PixelSpacing"
    ds = pydicom.dcmread(str(files[0]))  # a Siemens Phoenix report: another SOP class, no image
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.12.2.1107.5.9.1"
    del ds.PixelData
    ds.save_as(str(tmp_path / "phoenix.dcm"), enforce_file_format=True)
    cases["phoenix.dcm"] = "holds no image (no PixelData; SOP class 1.3.12.2.1107.5.9.1)"
    if shutil.which("dcmconv"):  # dcmtk, installed by scripts/test.sh
        subprocess.run(["dcmconv", "+tb", str(files[0]), str(tmp_path / "big.dcm")], check=True, timeout=60)
        cases["big.dcm"] = "big-endian transfer syntax (1.2.840.10008.1.2.2) is not supported"
    if shutil.which("dcmcjpeg"):  # a JPEG lossless file whose first frame's code stream is garbage
        subprocess.run(["dcmcjpeg", "+e1", str(files[0]), str(tmp_path / "jpeg.dcm")], check=True, timeout=60)
        ds = pydicom.dcmread(str(tmp_path / "jpeg.dcm"))
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        frames[0] = b"\xff\xd8" + bytes(range(256)) * 4
        ds.PixelData = encapsulate(frames)
        ds.save_as(str(tmp_path / "jpeg_garbage.dcm"), enforce_file_format=True)
        (tmp_path / "jpeg.dcm").unlink()
        cases["jpeg_garbage.dcm"] = "pixel data: frame 0 could not be decoded"
    return cases


def test_damaged_xa_files_get_a_clear_error_and_the_rest_of_the_run_goes_on(receiver, tmp_path):
    folder = xa_folder()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    cases = broken_copies(folder, damaged)
    for name, expected in cases.items():
        out = send(damaged / name, "--connect", "tcp://127.0.0.1:9", "--fast")
        assert out.returncode != 0, name
        assert name in out.stderr and expected in out.stderr, (name, out.stderr)
        assert "panicked" not in out.stderr
    # a run folder with one damaged file: named and counted, the other 19 volumes sent
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    first = sorted(run.glob("*.dcm"))[0]
    first.write_bytes(first.read_bytes()[:100_000])
    shutil.copy(damaged / "phoenix.dcm", run / "phoenix.dcm")  # a report of the same series beside the images
    r = receiver(expected=20, idle=2.0)
    out = send(run, "--connect", r.endpoint, "--fast")
    assert first.name in out.stderr and "phoenix.dcm" in out.stderr, out.stderr
    s = r.wait()
    assert s["received"] == 19 and s["missing_indices"] == [0]


def test_watch_sends_each_xa_volume_as_its_file_is_written(receiver, tmp_path):
    from conftest import finish_watch, start_watch
    folder = xa_folder()
    export = tmp_path / "export"
    export.mkdir()
    r = receiver(expected=20)
    proc, log = start_watch(tmp_path, export, r.endpoint, "--series", "7")
    for f in sorted(folder.glob("*.dcm")):
        data = f.read_bytes()
        with open(export / f.name, "wb") as out:  # written in two halves, as an export is
            out.write(data[: len(data) // 2])
            out.flush()
            out.write(data[len(data) // 2:])
    out, err = finish_watch(proc, log)
    assert "sent 20 volumes" in out, out + err
    s = r.wait()
    assert (s["received"], s["missing"]) == (20, 0)


COMPRESSIONS = {
    # dcmtk's own encoders make the compressed copies; pydicom reads back the transfer syntax each wrote
    "jpeg-lossless": (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70"),
    "rle": (["dcmcrle"], "1.2.840.10008.1.2.5"),
    "deflate": (["dcmconv", "+td"], "1.2.840.10008.1.2.1.99"),
}


def compressed_copy(folder, out, how):
    command, syntax = COMPRESSIONS[how]
    out.mkdir()
    for f in sorted(folder.glob("*.dcm")):
        r = subprocess.run([*command, str(f), str(out / f.name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert pydicom.dcmread(str(out / f.name), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return out


@pytest.mark.parametrize("how", sorted(COMPRESSIONS))
def test_compressed_exports_are_decoded_to_the_same_voxels(receiver, tmp_path, how):
    """The XA30 run and the Siemens mosaics, compressed by dcmtk (JPEG lossless, RLE, deflate), record voxels equal
    to the uncompressed files' as dcm2niix converts them; a syntax without a decoder here is refused by name."""
    for folder, n in ((xa_folder(), 20), (data_dir() / "pyneal" / "siemens", 3)):
        packed = compressed_copy(folder, tmp_path / f"{folder.name}-{how}", how)
        r = receiver(expected=n)
        out = send(packed, "--connect", r.endpoint, "--fast", "--quiet")
        assert out.returncode == 0, out.stderr
        s = r.wait()
        assert (s["received"], s["rejected"]) == (n, 0)
        ours = nib.load(str(r.session_dir / s["volumes_file"]))
        theirs, _ = dcm2niix(folder, tmp_path / f"dcm2niix-{folder.name}-{how}")
        same_voxels_in_space(ours, theirs)


def test_a_syntax_without_a_decoder_is_refused_by_name(tmp_path):
    folder = tmp_path / "j2k"
    folder.mkdir()
    for f in sorted((data_dir() / "pyneal" / "siemens").glob("*.dcm")):
        ds = pydicom.dcmread(str(f))
        # JPEG 2000 lossless in name (the fragment is not a real code stream: the syntax alone must be refused)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
        ds.PixelData = encapsulate([ds.PixelData])
        ds.save_as(str(folder / f.name), enforce_file_format=True)
    out = send(folder, "--connect", "tcp://127.0.0.1:9")
    assert out.returncode != 0 and "holds no readable volume" in out.stderr, out.stderr
    for f in folder.iterdir():
        assert f"{f}: transfer syntax 1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression (Lossless Only)) cannot " \
               "be decoded here" in out.stderr, out.stderr
