"""Scanner intake against an independent Python client (docs/protocols.md section 1) and nibabel."""

import json
import os
import pathlib
import signal
import subprocess
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import binary, data_dir, wait_for
from pyneal_client import ScannerClient

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"]
AFFINE = np.array([[3.0, 0.0, 0.0, -93.0],
                   [0.0, 2.9597164863372902, -0.6206386314698001, -66.13679876871245],
                   [0.0, 0.48997787756520006, 3.748974134805806, -85.02169640668882],
                   [0.0, 0.0, 0.0, 1.0]])


def random_volume(rng, dtype, shape=(7, 5, 4)):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**52)), min(info.max, 2**52)
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64 if dt.kind == "i" else np.uint64).astype(dt)


def recorded(receiver_proc, summary):
    img = nib.load(str(receiver_proc.session_dir / summary["volumes_file"]))
    return img, np.asanyarray(img.dataobj)


@pytest.mark.parametrize("dtype", DTYPES + ["<f4", "|u1", "<i2", ">i2", ">f8"])
def test_every_dtype_is_recorded_exactly(receiver, dtype):
    rng = np.random.default_rng(abs(hash(dtype)) % 2**32)
    r = receiver(expected=3)
    client = ScannerClient(r.endpoint)
    vols = [random_volume(rng, np.dtype(dtype).newbyteorder("=")) for _ in range(3)]
    replies = []
    for i, v in enumerate(vols):
        wire = v.astype(np.dtype(dtype))  # big-endian names send big-endian bytes
        replies.append(client.send_volume(i, wire, affine=AFFINE, tr="2.0", dtype=dtype))
    assert replies[0] == "received volIdx 0" and replies[1] == "received volIdx 1"
    assert replies[2] == "received volIdx 2 - STOP"
    s = r.wait()
    assert (s["received"], s["rejected"], s["missing"], s["duplicates"]) == (3, 0, 0, 0)
    img, data = recorded(r, s)
    expected_dtype = np.float32 if np.dtype(dtype) == np.float16 else np.dtype(dtype).newbyteorder("<")
    assert data.dtype == expected_dtype
    for i, v in enumerate(vols):
        np.testing.assert_array_equal(data[..., i], v.astype(expected_dtype))
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert img.header.get_zooms()[3] == 2.0


def test_handshake_is_echoed_byte_for_byte(receiver):
    r = receiver(expected=1)
    for text in ["hello from pyneal_scanner ", "hello from pynealScanner_sim", "anything at all \u00e9"]:
        # libzmq's PAIR refuses a new peer until the previous one's disconnect is processed: leave it a moment
        time.sleep(0.3)
        c = ScannerClient(r.endpoint, handshake=None)
        c.sock.send(text.encode())
        assert c.recv() == text
        c.close()
    time.sleep(0.3)
    c = ScannerClient(r.endpoint)
    assert c.send_volume(0, np.zeros((2, 2, 2), np.float64)) == "received volIdx 0 - STOP"
    assert r.wait()["handshakes"] == 4


def test_every_bad_input_gets_an_error_reply_and_a_counter(receiver):
    r = receiver(expected=3)
    c = ScannerClient(r.endpoint)
    good = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    hdr = ScannerClient.header(0, good)

    def bad(frames, needle):
        reply = c.send_raw(frames)
        assert reply.startswith("error:"), reply
        assert needle in reply, (needle, reply)

    def with_(**kw):
        h = dict(hdr)
        for k, v in kw.items():
            if v is None:
                h.pop(k)
            else:
                h[k] = v
        return json.dumps(h).encode()

    buf = good.tobytes()
    bad([b"{not json", buf], "not valid JSON")
    bad([with_(dtype=None), buf], 'lacks key "dtype"')
    bad([with_(volIdx="zero"), buf], "volIdx must be an integer")
    bad([with_(shape=[2, 12]), buf], "3 dimensions")
    bad([with_(shape=[2, 0, 4]), buf], "must be positive")
    bad([with_(shape=[100000, 100000, 100000]), buf], "exceeds the limit")
    bad([with_(shape=[3, 3, 4]), buf], "buffer holds 48 bytes")
    bad([with_(dtype="complex128"), buf], "unknown or non-numeric dtype")
    bad([with_(affine=json.dumps([[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), buf], "affine")
    bad([with_(affine=json.dumps([[1, 0, 0, 0]])), buf], "affine must be a 4 x 4 list")
    bad([with_(affine=json.dumps([[3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])), buf],
        "affine: its 3 x 3 part is singular")
    bad([with_(TR="0"), buf], "TR 0 must be a positive number")
    bad([with_(TR="-1.5"), buf], "must be a positive number")
    bad([with_(), buf, b"extra"], "expected 2 frames")
    bad([with_()], "two frames")
    bad([with_(volIdx=7), buf], "beyond the expected 3 volumes")
    bad([with_(volIdx=-2), buf], "negative")
    # the receiver is still healthy: a complete run follows
    assert c.send_volume(1, good) == "received volIdx 1"
    assert c.send_volume(1, good + 1) == "received volIdx 1 (duplicate, ignored)"
    assert c.send_volume(0, good + 2) == "received volIdx 0"
    # two volumes agree on the geometry: now a volume of another shape is refused
    bad([with_(volIdx=2, shape=[4, 3, 2]), buf], "differs from this run")
    assert c.send_volume(2, good + 3) == "received volIdx 2 - STOP"
    s = r.wait()
    assert s["received"] == 3 and s["duplicates"] == 1 and s["missing"] == 0
    assert s["rejected"] == 18
    assert s["rejected_by_kind"] == {
        "invalid_json": 1, "missing_key": 1, "wrong_type": 1, "bad_shape": 2, "too_large": 1, "buffer_length": 1,
        "unknown_dtype": 1, "bad_affine": 3, "bad_tr": 2, "frame_count": 2, "index_beyond_expected": 1,
        "bad_index": 1, "geometry_changed": 1}
    _, data = recorded(r, s)
    np.testing.assert_array_equal(data[..., 1], good)  # the first copy of the duplicate is kept
    np.testing.assert_array_equal(data[..., 0], good + 2)
    lines = [json.loads(l) for l in (r.session_dir / "messages.jsonl").read_text().splitlines()]
    assert len(lines) == s["messages"] == 1 + 18 + 4
    assert sum(1 for l in lines if l["outcome"] == "rejected") == 18


def test_out_of_order_volumes_and_gaps(receiver):
    r = receiver(expected=6, idle=1.0)
    c = ScannerClient(r.endpoint)
    vols = {i: np.full((3, 3, 3), i + 1, np.float32) for i in [4, 0, 2, 5]}
    for i, v in vols.items():
        assert c.send_volume(i, v, tr="1500.0") == f"received volIdx {i}"
    s = r.wait()
    assert s["end_reason"] == "idle_timeout"
    assert s["missing_indices"] == [1, 3] and s["received"] == 4
    assert s["tr_secs"] == 1.5  # TR over 100 is milliseconds
    _, data = recorded(r, s)
    assert data.shape == (3, 3, 3, 6)
    for i, v in vols.items():
        np.testing.assert_array_equal(data[..., i], v)
    assert not data[..., 1].any() and not data[..., 3].any()


def test_ipc_endpoint(tmp_path):
    endpoint = f"ipc://{tmp_path}/scanner.ipc"
    proc = subprocess.Popen([binary(), "receive", "--bind", endpoint, "-n", "1", "--session-root", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on ipc://")
        c = ScannerClient(endpoint)
        assert c.send_volume(0, np.ones((2, 2, 2))) == "received volIdx 0 - STOP"
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        proc.kill()


def nibabel_file(name):
    return pathlib.Path(nib.__file__).parent / "tests" / "data" / name


REAL_RUNS = [
    ("pyneal testSeries", lambda: data_dir() / "pyneal" / "testSeries.nii.gz"),
    ("nibabel example4d (oblique, TR 2000 marked seconds)", lambda: nibabel_file("example4d.nii.gz")),
    ("nibabel functional (scaled int16)", lambda: nibabel_file("functional.nii")),
    ("nibabel anatomical (big-endian, 3-D)", lambda: nibabel_file("anatomical.nii")),
]


@pytest.mark.parametrize("name,path", REAL_RUNS, ids=[n.split(" ")[1] for n, _ in REAL_RUNS])
def test_send_receive_round_trip_of_real_files(receiver, name, path):
    src = nib.load(str(path()))
    n_vols = src.shape[3] if len(src.shape) == 4 else 1
    r = receiver(expected=n_vols)
    args = [binary(), "send", str(path()), "--connect", r.endpoint, "--fast", "--quiet"]
    has_tr = len(src.header.get_zooms()) > 3 and src.header.get_zooms()[3] > 0
    if not has_tr:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "has no TR" in out.stderr and "--tr-secs" in out.stderr
        args += ["--tr-secs", "2.5"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the receiver said STOP" in out.stdout
    s = r.wait()
    assert s["received"] == n_vols and s["rejected"] == 0
    rec = nib.load(str(r.session_dir / s["volumes_file"]))
    src_data = src.get_fdata().reshape(src.shape[:3] + (n_vols,))
    np.testing.assert_array_equal(rec.get_fdata(), src_data)
    np.testing.assert_allclose(rec.affine, src.affine, atol=1e-5)
    zooms = src.header.get_zooms()
    src_tr = (zooms[3] / 1000.0 if zooms[3] > 100 else zooms[3]) if has_tr else 2.5
    assert abs(rec.header.get_zooms()[3] - src_tr) < 1e-6
    if "example4d" in name:
        assert "taken as milliseconds" in out.stderr


def write_series(path, n, shape=(8, 8, 6)):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 3000, size=shape + (n,)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.0
    nib.save(img, str(path))
    return data


def test_sender_killed_and_restarted_mid_run(receiver, tmp_path):
    data = write_series(tmp_path / "run.nii.gz", 12)
    r = receiver(expected=12)
    first = subprocess.Popen([binary(), "send", str(tmp_path / "run.nii.gz"), "--connect", r.endpoint,
                              "--tr-secs", "0.15", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accepted = r.accepted
    wait_for(lambda: accepted() >= 4, what="4 volumes from the first sender")
    first.send_signal(signal.SIGKILL)
    first.wait()
    resume_at = accepted()
    second = subprocess.run([binary(), "send", str(tmp_path / "run.nii.gz"), "--connect", r.endpoint, "--fast",
                             "--quiet", "--start-at", str(resume_at)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    s = r.wait()
    assert s["received"] == 12 and s["missing"] == 0 and s["handshakes"] == 2
    rec = nib.load(str(r.session_dir / s["volumes_file"]))
    np.testing.assert_array_equal(np.asanyarray(rec.dataobj), data)


@pytest.mark.parametrize("how", ["recover command", "next start"])
def test_receiver_kill9_loses_no_acknowledged_volume(receiver, tmp_path, how):
    r = receiver(expected=50, idle=0)
    c = ScannerClient(r.endpoint)
    rng = np.random.default_rng(9)
    sent = []
    for i in range(20):
        v = rng.standard_normal((16, 16, 10))
        assert c.send_volume(i, v) == f"received volIdx {i}"
        sent.append(v)
    os.kill(r.proc.pid, signal.SIGKILL)
    r.proc.wait()
    assert not (r.session_dir / "summary.json").exists()
    if how == "recover command":
        out = subprocess.run([binary(), "recover", str(r.session_dir)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    else:
        r2 = receiver(expected=1, root=r.root)
        c2 = ScannerClient(r2.endpoint)
        assert c2.send_volume(0, np.zeros((2, 2, 2))) == "received volIdx 0 - STOP"
        r2.wait()
        assert "was left unfinalised" in r2.stderr
    s = r.summary()
    assert s["recovered_after_crash"] and s["received"] == 20
    assert s["missing_indices"] == list(range(20, 50))
    rec = np.asanyarray(nib.load(str(r.session_dir / s["volumes_file"])).dataobj)
    for i, v in enumerate(sent):
        np.testing.assert_array_equal(rec[..., i], v)


def test_config_errors_name_the_key_and_the_file(tmp_path):
    cases = {
        "[receiver]\nbindd = 'tcp://127.0.0.1:1'\n": "bindd",
        "[receiver]\nexpected_volumes = 'ten'\n": "expected_volumes",
        "[recever]\nbind = 'x'\n": "recever",
        "[receiver]\nbind = 'udp://x'\n": "receiver.bind",
    }
    for text, key in cases.items():
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        out = subprocess.run([binary(), "--config", str(cfg), "receive"], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert key in out.stderr and str(cfg) in out.stderr, out.stderr


def test_flags_override_the_config_file(receiver, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[receiver]\nexpected_volumes = 99\nidle_timeout_secs = 0.5\n")
    r = receiver(expected=2, extra=["--config", str(cfg)])
    c = ScannerClient(r.endpoint)
    c.send_volume(0, np.ones((2, 2, 2)))
    assert c.send_volume(1, np.ones((2, 2, 2))) == "received volIdx 1 - STOP"
    assert r.wait()["expected_volumes"] == 2
