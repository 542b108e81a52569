"""The DICOM network receiver (`hyper-rt send --dicom-listen`) against a real DICOM client, dcmtk's `storescu` and
`echoscu`: the real Siemens XA30 run, the Siemens mosaics and GE-style slice files pushed over the network are
recorded exactly as the folder path records them; a refused AE title, an unsupported SOP class, a compressed
transfer syntax and a malformed data set each get their proper DICOM outcome, and the run goes on."""

import pathlib
import random
import shutil
import subprocess
import time

import nibabel as nib
import numpy as np
import pydicom
from pydicom.encaps import encapsulate
import pytest

from conftest import binary, data_dir, free_port
from mosaic_writer import write_slice_series

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is installed by scripts/test.sh")

NIBABEL_DATA = pathlib.Path(nib.__file__).parent / "tests" / "data"


class Node:
    """`hyper-rt send --dicom-listen PORT --connect ENDPOINT`, running until the receiver says STOP."""

    def __init__(self, tmp_path, endpoint, *extra):
        self.port = free_port()
        self.log = tmp_path / f"node-{self.port}.log"
        with open(self.log, "w") as stderr:
            self.proc = subprocess.Popen(
                [binary(), "send", "--dicom-listen", str(self.port), "--connect", endpoint, "--quiet", *map(str, extra)],
                stdout=subprocess.PIPE, stderr=stderr, text=True)
        line = self.proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line + self.log.read_text()

    def finish(self, timeout=60):
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, self.log.read_text()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def node(tmp_path):
    started = []

    def start(endpoint, *extra):
        n = Node(tmp_path, endpoint, *extra)
        started.append(n)
        return n

    yield start
    for n in started:
        n.kill()


def storescu(port, files, *options, calling="CONSOLE", called="HYPER-RT"):
    return subprocess.run(["storescu", "-v", *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def echoscu(port, calling="CONSOLE", called="HYPER-RT"):
    return subprocess.run(["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def xa_files():
    files = sorted((data_dir() / "siemens-xa30").glob("*.dcm"))
    assert len(files) == 20, "run scripts/test.sh, which fetches the XA30 run"
    return files


def by_folder(receiver, folder, expected, *extra):
    """The same images recorded through the folder path (`hyper-rt send FOLDER`)."""
    r = receiver(expected=expected)
    out = subprocess.run([binary(), "send", str(folder), "--connect", r.endpoint, "--fast", "--quiet", *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    s = r.wait()
    return nib.load(str(r.session_dir / s["volumes_file"])), s


def by_network(receiver, node, files, expected, *extra, shuffle=False, storescu_options=()):
    r = receiver(expected=expected)
    n = node(r.endpoint, *extra)
    files = list(files)
    if shuffle:
        random.Random(5).shuffle(files)
    sent = storescu(n.port, files, *storescu_options)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    rc, out, log = n.finish()
    assert rc == 0, out + log
    s = r.wait()
    return nib.load(str(r.session_dir / s["volumes_file"])), s, out, log


def assert_same_recording(a, b):
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.get_data_dtype() == b.get_data_dtype()


def test_the_xa30_run_over_the_network_is_recorded_as_the_folder_path_records_it(receiver, node, tmp_path):
    files = xa_files()
    folder_img, folder_summary = by_folder(receiver, files[0].parent, 20)
    kept = tmp_path / "kept"
    r = receiver(expected=20)
    n = node(r.endpoint, "--dicom-store", kept)
    echo = echoscu(n.port)
    assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.stdout + echo.stderr
    shuffled = list(files)
    random.Random(3).shuffle(shuffled)  # volumes arriving out of order keep their own indices
    sent = storescu(n.port, shuffled)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert (sent.stdout + sent.stderr).count("Received Store Response (Success)") == 20
    rc, out, log = n.finish()
    assert rc == 0, out + log
    assert "DICOM: 2 associations, 20 images stored, 1 echoes" in out, out
    assert "sent 20 volumes" in out and "the receiver said STOP" in out
    s = r.wait()
    assert (s["received"], s["missing"], s["rejected"]) == (20, 0, 0)
    assert_same_recording(nib.load(str(r.session_dir / s["volumes_file"])), folder_img)
    assert s["slice_timing_secs"] == folder_summary["slice_timing_secs"] and len(s["slice_timing_secs"]) == 33
    # the kept copies are DICOM files any tool reads: the same images, the same instances
    kept_files = sorted(kept.glob("*.dcm"))
    assert len(kept_files) == 20 and not list(kept.glob(".*"))
    for original in files[:3]:
        a = pydicom.dcmread(str(original))
        b = pydicom.dcmread(str(kept / f"{a.SOPInstanceUID}.dcm"))
        assert b.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
        assert b.file_meta.MediaStorageSOPClassUID == a.SOPClassUID
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)


def test_mosaics_and_slice_files_over_the_network_match_the_folder_path(receiver, node, tmp_path):
    mosaics = data_dir() / "pyneal" / "siemens"
    folder_img, _ = by_folder(receiver, mosaics, 3)
    net_img, s, out, _ = by_network(receiver, node, sorted(mosaics.glob("*.dcm")), 3)
    assert_same_recording(net_img, folder_img)
    assert "3 images stored" in out
    # GE-style: one slice per file (nibabel's real oblique example4d written as slices), sent in random order;
    # each volume leaves once its last slice is in
    img = nib.load(str(NIBABEL_DATA / "example4d.nii.gz"))
    stored = np.asanyarray(img.dataobj.get_unscaled())
    slices = tmp_path / "slices"
    slices.mkdir()
    paths = write_slice_series(slices, stored, img.affine, 2.0, slope=float(img.dataobj.slope),
                               intercept=float(img.dataobj.inter))
    folder_img, _ = by_folder(receiver, slices, 2)
    net_img, s, out, _ = by_network(receiver, node, paths, 2, shuffle=True)
    assert_same_recording(net_img, folder_img)
    assert f"{len(paths)} images stored" in out and s["received"] == 2


def secondary_capture(source, out):
    ds = pydicom.dcmread(str(source))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.save_as(str(out), enforce_file_format=True)
    return out


def pixels_too_short(source, out):
    ds = pydicom.dcmread(str(source))
    ds.Rows = ds.Rows * 2  # the pixel data now holds half the image it claims
    ds.save_as(str(out), enforce_file_format=True)
    return out


def test_jpeg_lossless_images_over_the_network_are_decoded_to_the_same_recording(receiver, node, tmp_path):
    files = xa_files()
    folder_img, _ = by_folder(receiver, files[0].parent, 20)
    packed = tmp_path / "jpeg"
    packed.mkdir()
    for f in files:  # dcmtk's JPEG lossless encoder, then storescu proposing JPEG lossless only
        subprocess.run(["dcmcjpeg", "+e1", str(f), str(packed / f.name)], check=True, capture_output=True, timeout=60)
    net_img, s, out, _ = by_network(receiver, node, sorted(packed.glob("*.dcm")), 20,
                                    storescu_options=("--propose-lossless", "--required"))
    assert "20 images stored" in out and s["received"] == 20
    assert_same_recording(net_img, folder_img)


def jpeg2000_in_name(source, out):
    ds = pydicom.dcmread(str(source))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # the fragment is not a real code stream
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(str(out), enforce_file_format=True)
    return out


def test_refusals_get_their_dicom_status_and_the_run_goes_on(receiver, node, tmp_path):
    files = xa_files()
    r = receiver(expected=20)
    n = node(r.endpoint, "--allow-ae", "CONSOLE")
    # a calling AE title not allowed, and a called one that is not this node's: rejected at association
    intruder = echoscu(n.port, calling="INTRUDER")
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stdout + intruder.stderr
    misdirected = echoscu(n.port, called="PACS")
    assert misdirected.returncode != 0 and "Called AE Title Not Recognized" in misdirected.stdout + misdirected.stderr
    # an image of another SOP class (a secondary capture, as a Phoenix report is): refused with 0x0122
    sc = storescu(n.port, [secondary_capture(files[0], tmp_path / "report.dcm")])
    assert "Refused: SOPClassNotSupported" in sc.stdout + sc.stderr, sc.stdout + sc.stderr
    # a data set whose pixel data do not fill its image: 0xC000, the reason in the comment
    bad = storescu(n.port, [pixels_too_short(files[1], tmp_path / "short.dcm")])
    assert "Error: CannotUnderstand" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # a transfer syntax without a decoder here (JPEG 2000, proposed alone): refused at negotiation
    compressed = storescu(n.port, [jpeg2000_in_name(files[2], tmp_path / "j2k.dcm")], "-d",
                          "--propose-j2k-lossless", "--required")
    assert "(Transfer Syntaxes Not Supported)" in compressed.stdout + compressed.stderr
    # the whole run still arrives
    sent = storescu(n.port, files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    rc, out, log = n.finish()
    assert rc == 0, out + log
    for said in ["20 images stored", "2 associations refused", "1 presentation contexts refused",
                 "1 images of an unsupported SOP class", "1 images unreadable"]:
        assert said in out, out
    assert "not in --allow-ae" in log and "1.2.840.10008.5.1.4.1.1.7 is not read here" in log
    assert "PixelData holds 270336 bytes, 33 frame(s) of 128 x 64 x 16 bits need 540672" in log
    s = r.wait()
    assert (s["received"], s["rejected"]) == (20, 0)


def test_a_silent_or_garbage_peer_does_not_stop_the_node(receiver, node):
    import socket
    files = xa_files()[:2]
    r = receiver(expected=2)
    n = node(r.endpoint)
    silent = socket.create_connection(("127.0.0.1", n.port))
    garbage = socket.create_connection(("127.0.0.1", n.port))
    garbage.sendall(b"\x01\x00\xff\xff\xff\xf0" + b"\x00" * 64)  # an A-ASSOCIATE-RQ claiming 4 GB
    time.sleep(0.2)
    sent = storescu(n.port, files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    rc, out, log = n.finish()
    silent.close()
    garbage.close()
    assert rc == 0 and "2 images stored" in out, out + log
    assert r.wait()["received"] == 2
