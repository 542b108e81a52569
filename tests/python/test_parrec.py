"""Philips PAR/REC intake (`hyper-rt send FILE.PAR`, a folder of real-time pairs, `--watch`) against nibabel's
PAR/REC reader, on the real Philips files nibabel ships (an EPI phantom run of 3 dynamics, the same with varying
scale factors and truncated, and 30 headers of every orientation and angulation)."""

import json
import pathlib
import shutil
import subprocess
import threading
import time
import warnings

import nibabel as nib
import numpy as np
import pytest
import zmq
from nibabel import parrec

from conftest import binary, finish_watch, start_watch, wait_for
from parrec_writer import write_realtime_series

NIBABEL_DATA = pathlib.Path(nib.__file__).parent / "tests" / "data"
EPI_RUN = "phantom_EPI_asc_CLEAR_2_1"


def nibabel_par(name):
    path = NIBABEL_DATA / f"{name}.PAR"
    assert path.exists(), f"{path}: nibabel's test data is missing from the venv"
    return path


def copy_pair(name, folder, new_name=None):
    """Copies a PAR/REC pair of nibabel's test data into `folder`."""
    new_name = new_name or name
    shutil.copy(NIBABEL_DATA / f"{name}.PAR", folder / f"{new_name}.PAR")
    shutil.copy(NIBABEL_DATA / f"{name}.REC", folder / f"{new_name}.REC")
    return folder / f"{new_name}.PAR"


def reference(par_path, permit_truncated=False):
    """nibabel's reading: float64 displayed values [x, y, z, t], the scanner-space affine, the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = parrec.load(str(par_path), permit_truncated=permit_truncated)
        data = img.get_fdata()
    if data.ndim == 3:
        data = data[..., None]
    return data, img.affine, img.header


class Capture:
    """A receiver written from docs/protocols.md section 1: binds a PAIR socket, echoes the handshake, keeps each
    volume's header (the affine exactly, as JSON) and array, replies `received volIdx N`."""

    def __init__(self):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PAIR)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.volumes = {}
        self.headers = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            frames = self.sock.recv_multipart()
            if len(frames) == 1:
                self.sock.send(frames[0])
                continue
            header = json.loads(frames[0])
            arr = np.frombuffer(frames[1], dtype=np.dtype(header["dtype"])).reshape(header["shape"])
            self.headers[header["volIdx"]] = header
            self.volumes[header["volIdx"]] = arr
            self.sock.send_string(f"received volIdx {header['volIdx']}")

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close(linger=0)

    def affine(self, index):
        return np.array(json.loads(self.headers[index]["affine"]))


@pytest.fixture
def capture():
    c = Capture()
    yield c
    c.close()


def send(*args, timeout=60):
    return subprocess.run([binary(), "send", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_a_real_philips_epi_run_is_sent_as_nibabel_reads_it(capture):
    par = nibabel_par(EPI_RUN)
    out = send(par, "--connect", capture.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 3 volumes" in out.stdout
    assert "Philips PAR V4.2" in out.stderr and "TR 2 s" in out.stderr
    data, affine, header = reference(par)
    assert data.shape == (64, 64, 9, 3)
    assert sorted(capture.volumes) == [0, 1, 2]  # dynamics 1..3
    for t in range(3):
        h = capture.headers[t]
        assert h["dtype"] == "float64" and h["shape"] == [64, 64, 9] and float(h["TR"]) == 2.0
        np.testing.assert_array_equal(capture.volumes[t], data[..., t])
        np.testing.assert_allclose(capture.affine(t), affine, rtol=0, atol=1e-9)
    # the reference really is oblique and scaled: the check could fail
    assert np.count_nonzero(np.abs(affine[:3, :3]) > 0.1) > 3 and not np.array_equal(data, np.round(data))


def test_per_slice_scale_factors_are_applied_image_by_image(capture):
    par = nibabel_par("phantom_varscale")
    _, _, header = reference(par)
    assert len(np.unique(header.image_defs["rescale slope"])) > 1
    out = send(par, "--connect", capture.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    data, affine, _ = reference(par)
    for t in range(data.shape[3]):
        np.testing.assert_allclose(capture.volumes[t], data[..., t], rtol=1e-12, atol=0)


def test_a_truncated_recording_sends_its_complete_dynamics_and_says_what_was_left_out(capture):
    par = nibabel_par("phantom_truncated")
    out = send(par, "--connect", capture.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    data, _, _ = reference(par, permit_truncated=True)
    assert "announces 4 dynamics, the file holds 3 complete ones" in out.stderr, out.stderr
    assert len(capture.volumes) == data.shape[3]
    for t in range(data.shape[3]):
        np.testing.assert_array_equal(capture.volumes[t], data[..., t])


def headers_nibabel_reads():
    names = []
    for par in sorted(NIBABEL_DATA.glob("*.PAR")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                header = parrec.PARRECHeader.from_fileobj(open(par, encoding="latin-1"), permit_truncated=True)
                header.get_affine()
            except Exception:  # e.g. NA.PAR, whose slice orientation varies (refused by both readers)
                continue
        names.append(par.stem)
    return names


def test_every_orientation_and_angulation_gets_nibabels_affine(tmp_path):
    """Every PAR header nibabel ships and reads (transverse, sagittal and coronal; angulated about each axis;
    versions 4, 4.1 and 4.2), given a REC file of zeros: one volume's affine must equal nibabel's."""
    names = headers_nibabel_reads()
    assert len(names) >= 25, names
    orientations, checked = set(), 0
    for name in names:
        par = tmp_path / f"{name}.PAR"
        shutil.copy(NIBABEL_DATA / f"{name}.PAR", par)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = parrec.PARRECHeader.from_fileobj(open(par, encoding="latin-1"), permit_truncated=True)
        image_bytes = int(np.prod(header.get_rec_shape()[:2])) * header.get_data_dtype().itemsize
        n_images = max(len(header.image_defs), int(header.image_defs["index in REC file"].max()) + 1)
        (tmp_path / f"{name}.REC").write_bytes(bytes(image_bytes * n_images))
        capture = Capture()
        try:
            out = send(par, "--connect", capture.endpoint, "--fast", "--quiet", "--tr-secs", "1")
            if "a second image for dynamic" in out.stderr:
                # diffusion images in a version-4 file, which has no diffusion columns to tell them apart
                assert name == "DTIv40", out.stderr
                continue
            assert out.returncode == 0, (name, out.stderr)
            first = min(capture.volumes)
            np.testing.assert_allclose(capture.affine(first), header.get_affine(), rtol=0, atol=1e-9, err_msg=name)
            assert capture.headers[first]["shape"] == list(header.get_data_shape()[:3]), name
        finally:
            capture.close()
        orientations.add(header.get_slice_orientation())
        checked += 1
    assert orientations == {"transverse", "sagittal", "coronal"} and checked >= 25


def test_a_finished_realtime_series_folder_is_sent_in_acquisition_order(capture, tmp_path):
    folder = tmp_path / "0003"
    folder.mkdir()
    for name, par, rec in reversed(write_realtime_series(nibabel_par(EPI_RUN), 3)):
        (folder / f"{name}.PAR").write_text(par, encoding="latin-1")
        (folder / f"{name}.REC").write_bytes(rec)
    # the split files are a faithful Philips export: nibabel reads each as one volume of the run
    data, affine, _ = reference(nibabel_par(EPI_RUN))
    one, one_affine, one_header = reference(folder / "vol_0002.PAR")
    np.testing.assert_array_equal(one[..., 0], data[..., 1])
    assert one_header.general_info["acq_nr"] == 2
    listing = send(tmp_path, "--list")
    assert listing.returncode == 0, listing.stderr
    row = listing.stdout.splitlines()[1].split()
    assert row[:4] == ["3", "3", "0-2", "0"] and row[4:9] == ["64", "x", "64", "x", "9"], listing.stdout
    out = send(folder, "--connect", capture.endpoint, "--fast", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sent 3 volumes" in out.stdout and "series 3" in out.stderr
    for t in range(3):
        np.testing.assert_array_equal(capture.volumes[t], data[..., t])
        np.testing.assert_allclose(capture.affine(t), affine, rtol=0, atol=1e-9)


def test_watch_follows_a_new_series_folder_pair_by_pair(receiver, tmp_path):
    """Pyneal Scanner's Philips layout: a session folder gains one subfolder per series, and the real-time export
    writes one PAR/REC pair per volume into it. The REC may come after its PAR: the volume waits for it."""
    session = tmp_path / "session"
    earlier = session / "0001"
    earlier.mkdir(parents=True)
    for name, par, rec in write_realtime_series(nibabel_par(EPI_RUN), 2):  # an earlier run: not sent
        (earlier / f"{name}.PAR").write_text(par, encoding="latin-1")
        (earlier / f"{name}.REC").write_bytes(rec)
    r = receiver(expected=3)
    proc, log = start_watch(tmp_path, session, r.endpoint)
    try:
        series = session / "0002"
        series.mkdir()
        pairs = write_realtime_series(nibabel_par(EPI_RUN), 3)
        accepted = r.accepted
        for n, (name, par, rec) in enumerate(pairs):
            (series / f"{name}.PAR").write_text(par, encoding="latin-1")
            if n == 1:  # the header first, its pixels a moment later
                wait_for(lambda: accepted() == 1, what="volume 0")
                time.sleep(0.3)
                assert accepted() == 1
            (series / f"{name}.REC").write_bytes(rec)
        out, err = finish_watch(proc, log)
    finally:
        proc.kill()
    assert "following series 2" in err and "the receiver said STOP" in out and "skipped" not in out
    s = r.wait()
    assert s["received"] == 3 and s["rejected"] == 0 and s["missing"] == 0
    data, affine, _ = reference(nibabel_par(EPI_RUN))
    rec = nib.load(str(r.session_dir / s["volumes_file"]))
    np.testing.assert_allclose(rec.get_fdata(), data, rtol=1e-6)
    np.testing.assert_allclose(rec.affine, affine, atol=1e-4)


def test_bad_par_files_get_a_clear_error(tmp_path):
    good = copy_pair(EPI_RUN, tmp_path)
    text = good.read_text(encoding="latin-1")
    cases = {}
    (tmp_path / "no_rec.PAR").write_text(text, encoding="latin-1")
    cases["no_rec.PAR"] = "no REC file beside it"
    copy_pair(EPI_RUN, tmp_path, "short")
    (tmp_path / "short.REC").write_bytes((tmp_path / "short.REC").read_bytes()[:1000])
    cases["short.PAR"] = "short.REC: 1000 bytes, but its PAR file places images up to byte 221184"
    lines = text.splitlines()
    first_image = next(i for i, l in enumerate(lines) if l.strip() and l.strip()[0].isdigit())
    damaged = lines.copy()
    damaged[first_image] = damaged[first_image].replace(" 16 ", " xx ", 1)
    copy_pair(EPI_RUN, tmp_path, "damaged")
    (tmp_path / "damaged.PAR").write_text("\n".join(damaged) + "\n", encoding="latin-1")
    cases["damaged.PAR"] = f"line {first_image + 1}: image pixel size (in bits) is \"xx\", not a number"
    odd = lines.copy()
    odd[first_image] = odd[first_image] + "  7"
    copy_pair(EPI_RUN, tmp_path, "extra_column")
    (tmp_path / "extra_column.PAR").write_text("\n".join(odd) + "\n", encoding="latin-1")
    cases["extra_column.PAR"] = f"line {first_image + 1}:"
    copy_pair(EPI_RUN, tmp_path, "no_definitions")
    (tmp_path / "no_definitions.PAR").write_text("\n".join(l for l in lines if "IMAGE INFORMATION DEFINITION" not in l) + "\n", encoding="latin-1")
    cases["no_definitions.PAR"] = "no IMAGE INFORMATION DEFINITION block"
    shutil.copy(nibabel_par("NA"), tmp_path / "NA.PAR")
    cases["NA.PAR"] = "line 104: slice orientation differs from the first image's (line 101): not supported"
    for name, expected in cases.items():
        out = send(tmp_path / name, "--connect", "tcp://127.0.0.1:9", "--fast")
        assert out.returncode != 0, name
        assert name.split(".")[0] in out.stderr and expected in out.stderr, (name, out.stderr)
        assert "panicked" not in out.stderr
    out = send(tmp_path / f"{EPI_RUN}.REC", "--connect", "tcp://127.0.0.1:9")
    assert out.returncode != 0 and "give its PAR header" in out.stderr
