"""Hostile input and ordinary faults against the real binary (docs/reliability.md): each test here is one way a
scanner, a network, a disk or an operator could end a session, and checks that it does not. Every volume a test
sends is checked against what was recorded (nibabel), and every acknowledged one must be there."""

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import zmq

from conftest import binary, free_port, wait_for
from pyneal_client import ScannerClient


def recorded(receiver_proc, summary):
    return np.asanyarray(nib.load(str(receiver_proc.session_dir / summary["volumes_file"])).dataobj)


def rss_kib(pid, kind="RssAnon"):
    """Resident memory of a process in KiB. `RssAnon` by default: the heap and stacks, what a leak or a held
    payload grows; the spool's mapped file pages (`RssFile`) are page cache, released as segments fill."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {kind} in /proc/{pid}/status")


# --- 1. indices are bounded, never used to size memory ---------------------------------------------------------


@pytest.mark.parametrize("index", [10**12, 2**63 - 1, 10**6, 10**4, -1])
def test_a_huge_volume_index_is_refused_and_the_run_goes_on(receiver, index):
    r = receiver(expected=0, idle=0)
    c = ScannerClient(r.endpoint)
    v = np.ones((4, 4, 3), np.float32)
    reply = c.send_raw([json.dumps(ScannerClient.header(index, v)).encode(), v.tobytes()])
    assert reply.startswith("error:") and ("limit of 9999" in reply or index < 0), reply
    for i in range(3):
        assert c.send_volume(i, v * i) == f"received volIdx {i}"
    # a crash now: recovering the root (as every later `receive` on it does at start) must work
    r.proc.kill()
    r.proc.wait()
    out = subprocess.run([binary(), "recover", str(r.root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    s = r.summary()
    assert s["received"] == 3 and s["missing"] == 0
    assert recorded(r, s).shape == (4, 4, 3, 3)


def test_the_index_limit_follows_expected_volumes_and_the_flag(receiver):
    r = receiver(expected=5, idle=1.0)
    c = ScannerClient(r.endpoint)
    v = np.ones((2, 2, 2))
    assert "beyond the expected 5 volumes" in c.send_volume(5, v)
    r2 = receiver(expected=0, idle=1.0, extra=["--max-volume-index", "20000"])
    c2 = ScannerClient(r2.endpoint)
    assert c2.send_volume(15000, v) == "received volIdx 15000"
    s = r2.wait()
    assert s["received"] == 1 and s["missing"] == 15000


@pytest.mark.parametrize("field,value,expect", [
    ("TR", "1e308", "TR"), ("TR", "1e-300", "TR"), ("TR", "nan", "TR"),
    ("affine", json.dumps([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 5, 1]]), "not [0, 0, 0, 1]"),
    ("dtype", "float64\nforged log line", "dtype"),
])
def test_implausible_headers_are_refused(receiver, field, value, expect):
    r = receiver(expected=2, idle=1.0)
    c = ScannerClient(r.endpoint)
    v = np.ones((2, 2, 2))
    hdr = ScannerClient.header(0, v)
    hdr[field] = value
    reply = c.send_raw([json.dumps(hdr).encode(), v.tobytes()])
    assert reply.startswith("error:") and expect in reply, reply
    assert "\n" not in reply
    c.send_volume(0, v)
    assert c.send_volume(1, v) == "received volIdx 1 - STOP"
    s = r.wait()
    assert s["received"] == 2 and s["rejected"] == 1
    log = (r.session_dir / "messages.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in log), "every message-log line is one JSON object"
    assert not any(line.startswith("forged") for line in r.stderr.splitlines()), r.stderr


def test_an_oversized_frame_is_dropped_before_it_is_held(receiver, tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[receiver]\nmax_volume_bytes = 1048576\n")
    r = receiver(expected=2, idle=2.0, extra=["--config", str(cfg)])
    c = ScannerClient(r.endpoint, timeout_ms=1500)
    big = np.zeros(40 * 1024 * 1024, np.uint8)  # 40 MiB: over max_volume_bytes + the 1 MiB header allowance
    rss_before = rss_kib(r.proc.pid)
    with pytest.raises(TimeoutError):
        c.send_raw([json.dumps(ScannerClient.header(0, big)).encode(), big.tobytes()])
    c.close()
    assert r.proc.poll() is None
    assert rss_kib(r.proc.pid) - rss_before < 20 * 1024, "the frame was held in memory"
    # libzmq dropped that connection; a fresh one is served
    time.sleep(0.3)
    c2 = ScannerClient(r.endpoint)
    c2.send_volume(0, np.ones((2, 2, 2)))
    assert c2.send_volume(1, np.ones((2, 2, 2))) == "received volIdx 1 - STOP"
    assert r.wait()["received"] == 2


# --- 2. a full disk is an error reply, and the run goes on when space returns ------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (scripts/test.sh runs as root in CI): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_an_error_reply_and_the_run_goes_on(receiver, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\1" * (6 << 20))
    r = receiver(expected=0, idle=60.0, root=small_disk / "sessions", extra=["--no-compress"])
    c = ScannerClient(r.endpoint)
    rng = np.random.default_rng(2)
    sent, acked, first_error = [], [], None
    for i in range(60):  # 60 x 256 KiB: more than the disk holds
        v = rng.standard_normal((64, 64, 16)).astype(np.float32)
        sent.append(v)
        reply = c.send_volume(i, v)
        if reply == f"received volIdx {i}":
            acked.append(i)
        else:
            first_error = first_error or reply
            break
    assert first_error is not None and "No space left" in first_error and "cannot record" in first_error, first_error
    assert r.proc.poll() is None, "the receiver died"
    # space returns: the same volume is taken, and the run goes on
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)
    failed = len(sent) - 1
    for i in range(failed, failed + 5):
        if i >= len(sent):
            sent.append(rng.standard_normal((64, 64, 16)).astype(np.float32))
        assert c.send_volume(i, sent[i]) == f"received volIdx {i}"
        acked.append(i)
    r.proc.send_signal(signal.SIGINT)
    s = r.wait()
    assert s["received"] == len(acked) and s["rejected_by_kind"] == {"not_recorded": 1}
    data = recorded(r, s)
    for i in acked:
        np.testing.assert_array_equal(data[..., i], sent[i])


def test_recovery_in_place_on_a_full_disk_fails_clearly_then_succeeds(receiver, small_disk):
    r = receiver(expected=0, idle=0, root=small_disk / "sessions", extra=["--no-compress"])
    c = ScannerClient(r.endpoint)
    rng = np.random.default_rng(3)
    sent = [rng.standard_normal((64, 64, 16)).astype(np.float32) for _ in range(12)]
    for i, v in enumerate(sent):
        assert c.send_volume(i, v) == f"received volIdx {i}"
    r.proc.kill()
    r.proc.wait()
    # fill what is left, so the NIfTI cannot be written beside the spool
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\1" * max(0, free - 64 * 1024))
    out = subprocess.run([binary(), "recover", str(r.session_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "No space left" in out.stderr and str(r.session_dir) in out.stderr, out.stderr
    assert (r.session_dir / "spool.bin").exists(), "the spool must be kept when recovery fails"
    assert not list(r.session_dir.glob("volumes.nii*")), "no partial NIfTI left behind"
    (small_disk / "filler").unlink()
    out = subprocess.run([binary(), "recover", str(r.session_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    s = r.summary()
    assert s["received"] == 12 and s["recovered_after_crash"]
    data = recorded(r, s)
    for i, v in enumerate(sent):
        np.testing.assert_array_equal(data[..., i], v)


# --- 3. a silent or unwelcome peer cannot lock the scanner out ---------------------------------------------------


def test_a_silent_peer_is_dropped_and_the_scanner_gets_in(receiver, tmp_path):
    r = receiver(expected=3, idle=5.0, extra=["--handshake-timeout-secs", "1"])
    ctx = zmq.Context.instance()
    squatter = ctx.socket(zmq.PAIR)
    squatter.setsockopt(zmq.LINGER, 0)
    squatter.connect(r.endpoint)  # connects and says nothing, like a hung old sender
    time.sleep(0.3)
    try:
        nii = tmp_path / "run.nii"
        nib.save(nib.Nifti1Image(np.arange(3 * 8, dtype=np.float32).reshape(2, 2, 2, 3), np.eye(4)), str(nii))
        out = subprocess.run([binary(), "send", str(nii), "--connect", r.endpoint, "--fast", "--quiet"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        squatter.close()
    s = r.wait()
    assert s["received"] == 3 and s["peers"]["dropped_silent"] >= 1
    assert "has sent nothing" in r.stderr and "binding" in r.stderr


def test_allow_from_refuses_other_hosts_and_says_which(receiver):
    refused = receiver(expected=1, idle=3.0, extra=["--allow-from", "10.1.2.0/24"])
    c = ScannerClient(refused.endpoint, handshake=None, timeout_ms=1000)
    c.sock.send(b"hello")
    with pytest.raises(TimeoutError):
        c.recv()
    c.close()
    refused.proc.send_signal(signal.SIGINT)
    s = refused.wait()
    assert "refused a connection from 127.0.0.1" in refused.stderr, refused.stderr
    assert s["peers"]["refused"] >= 1 and s["received"] == 0

    allowed = receiver(expected=1, idle=3.0, extra=["--allow-from", "127.0.0.0/8", "--allow-from", "10.1.2.3"])
    c = ScannerClient(allowed.endpoint)
    assert c.send_volume(0, np.ones((2, 2, 2))) == "received volIdx 0 - STOP"
    s = allowed.wait()
    assert s["received"] == 1 and s["peers"]["refused"] == 0
    assert "peer 127.0.0.1 connected" in allowed.stderr


def test_a_bad_allow_from_names_the_flag(tmp_path):
    out = subprocess.run([binary(), "receive", "--allow-from", "10.0.0.0/33", "--session-root", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "10.0.0.0/33" in out.stderr and "allow" in out.stderr, out.stderr


def test_a_second_receiver_on_the_same_address_names_it_and_the_flag(receiver, tmp_path):
    r = receiver(expected=1, idle=30.0)
    out = subprocess.run([binary(), "receive", "--bind", r.endpoint, "--session-root", str(tmp_path / "other")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert r.endpoint in out.stderr and "--bind" in out.stderr and "in use" in out.stderr, out.stderr
    assert r.proc.poll() is None


def test_a_second_receiver_on_the_same_session_root_leaves_the_running_session_alone(receiver):
    first = receiver(expected=4, idle=10.0)
    c = ScannerClient(first.endpoint)
    for i in range(2):
        assert c.send_volume(i, np.full((3, 3, 3), i, np.float32)) == f"received volIdx {i}"
    # the second one recovers unfinalised sessions at start: the running one must not be taken
    second = receiver(expected=1, idle=10.0, root=first.root)
    out = subprocess.run([binary(), "recover", str(first.root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "running receiver" in out.stderr, out.stderr
    for i in range(2, 4):
        c.send_volume(i, np.full((3, 3, 3), i, np.float32))
    s = first.wait()
    assert s["received"] == 4 and not s["recovered_after_crash"]
    assert recorded(first, s)[0, 0, 0].tolist() == [0, 1, 2, 3]
    second.proc.send_signal(signal.SIGINT)
    second.wait()


def test_a_receiver_restarted_with_resume_keeps_the_run_in_one_session(receiver):
    rng = np.random.default_rng(11)
    sent = [rng.standard_normal((8, 8, 4)).astype(np.float32) for _ in range(12)]
    first = receiver(expected=12, idle=0)
    c = ScannerClient(first.endpoint)
    for i in range(5):
        assert c.send_volume(i, sent[i]) == f"received volIdx {i}"
    first.proc.kill()
    first.proc.wait()
    c.close()
    # the same endpoint, the same root: --resume goes on with the crashed session
    args = [binary(), "receive", "--bind", first.endpoint, "-n", "12", "--idle-timeout-secs", "10",
            "--session-root", str(first.root), "--resume"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on")
        assert proc.stdout.readline().strip() == f"recording to {first.session_dir}"
        c2 = ScannerClient(first.endpoint)
        # resent after the crash (its reply may have been lost): a duplicate, acknowledged and not kept twice
        assert c2.send_volume(4, sent[4]) == "received volIdx 4 (duplicate, ignored)"
        replies = [c2.send_volume(i, sent[i]) for i in range(5, 12)]
        assert replies[-1] == "received volIdx 11 - STOP", replies
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
    s = first.summary()
    assert (s["received"], s["missing"], s["duplicates"]) == (12, 0, 1) and s["end_reason"] == "complete"
    np.testing.assert_array_equal(recorded(first, s), np.stack(sent, axis=-1))
    assert len(list(first.root.iterdir())) == 1, "one run, one session folder"


# --- 4. Ctrl-C and SIGTERM finalise -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_receive_cleanly_and_finalises(receiver, sig):
    r = receiver(expected=0, idle=0)
    c = ScannerClient(r.endpoint)
    rng = np.random.default_rng(sig)
    sent = [rng.standard_normal((8, 8, 4)) for _ in range(5)]
    for i, v in enumerate(sent):
        c.send_volume(i, v)
    time.sleep(random.uniform(0.0, 0.3))  # anywhere in the wait for the next message
    r.proc.send_signal(sig)
    s = r.wait(timeout=30)
    assert s["end_reason"] == "interrupted" and s["received"] == 5
    np.testing.assert_array_equal(recorded(r, s), np.stack(sent, axis=-1))


# --- 5. a stray volume does not cost the run; send says when volumes were refused -----------------------------


def test_a_stray_first_volume_does_not_cost_the_run(receiver):
    r = receiver(expected=20, idle=3.0)
    c = ScannerClient(r.endpoint)
    assert c.send_volume(0, np.zeros((2, 2, 2), np.float32)) == "received volIdx 0"  # the stray
    rng = np.random.default_rng(5)
    sent = [rng.standard_normal((16, 16, 8)).astype(np.float32) for _ in range(20)]
    replies = [c.send_volume(i, v) for i, v in enumerate(sent)]
    assert all(not x.startswith("error") for x in replies), replies
    s = r.wait()
    assert (s["received"], s["strays"], s["rejected"], s["missing"]) == (20, 1, 0, 0)
    np.testing.assert_array_equal(recorded(r, s), np.stack(sent, axis=-1))
    stray = nib.load(str(next((r.session_dir / s["strays_folder"]).glob("stray-001-volIdx-0.nii"))))
    assert stray.shape[:3] == (2, 2, 2)


def test_a_geometry_change_after_the_run_is_confirmed_is_refused(receiver):
    r = receiver(expected=4, idle=2.0)
    c = ScannerClient(r.endpoint)
    for i in range(2):
        c.send_volume(i, np.ones((4, 4, 4)))
    assert c.send_volume(2, np.ones((5, 4, 4))).startswith("error:")
    c.send_volume(2, np.ones((4, 4, 4)))
    assert c.send_volume(3, np.ones((4, 4, 4))) == "received volIdx 3 - STOP"
    s = r.wait()
    assert s["received"] == 4 and s["rejected_by_kind"] == {"geometry_changed": 1}


def test_send_exits_non_zero_when_volumes_were_refused(receiver, tmp_path):
    r = receiver(expected=0, idle=2.0, extra=["--max-volume-index", "2"])
    nii = tmp_path / "run.nii"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 5), np.float32), np.eye(4)), str(nii))
    out = subprocess.run([binary(), "send", str(nii), "--connect", r.endpoint, "--fast"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "rejected" in (out.stdout + out.stderr), out.stdout + out.stderr
    assert r.wait()["received"] == 3


# --- fault injection and soak -----------------------------------------------------------------------------------


def test_kill9_at_random_points_of_50_runs_loses_no_acknowledged_volume(tmp_path):
    rng = np.random.default_rng(50)
    root = tmp_path / "sessions"
    ctx = zmq.Context.instance()
    acked_by_session = {}
    for run in range(50):
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        proc = subprocess.Popen([binary(), "receive", "--bind", endpoint, "-n", "0", "--idle-timeout-secs", "0",
                                 "--session-root", str(root), "--no-compress"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().startswith("listening on")
        session = pathlib.Path(proc.stdout.readline().split("recording to", 1)[1].strip())
        c = ScannerClient(endpoint)
        n_send = int(rng.integers(1, 40))
        kill_at = float(rng.uniform(0.0, 0.15))
        killer = threading.Timer(kill_at, lambda p=proc: p.send_signal(signal.SIGKILL))
        killer.start()
        acked = {}
        try:
            for i in range(n_send):
                v = rng.standard_normal((16, 16, 8)).astype(np.float32)
                try:
                    reply = c.send_raw([json.dumps(ScannerClient.header(i, v)).encode(), v.tobytes()])
                except TimeoutError:
                    break
                if reply.startswith("received"):
                    acked[i] = v
        finally:
            killer.cancel()
            proc.kill()
            proc.wait()
            c.close()
        acked_by_session[session] = acked
    ctx.destroy(linger=0)
    out = subprocess.run([binary(), "recover", str(root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lost = 0
    for session, acked in acked_by_session.items():
        if not acked:
            continue
        s = json.loads((session / "summary.json").read_text())
        data = np.asanyarray(nib.load(str(session / s["volumes_file"])).dataobj)
        for i, v in acked.items():
            if i >= data.shape[-1] or not np.array_equal(data[..., i], v):
                lost += 1
    acked_total = sum(len(a) for a in acked_by_session.values())
    print(f"kill -9: 50 runs, {acked_total} acknowledged volumes, {lost} lost")
    assert lost == 0, f"{lost} acknowledged volumes lost"
    assert sum(len(a) for a in acked_by_session.values()) > 200  # the kills fell at many points of the runs


def test_10000_volumes_through_receive_with_flat_memory(receiver):
    r = receiver(expected=10000, idle=10.0, extra=["--no-compress"])
    c = ScannerClient(r.endpoint)
    v = np.random.default_rng(7).standard_normal((32, 32, 16)).astype(np.float32)
    frames_header = ScannerClient.header(0, v)
    payload = v.tobytes()
    rss = {}
    for i in range(10000):
        frames_header["volIdx"] = i
        reply = c.send_raw([json.dumps(frames_header).encode(), payload])
        assert reply.startswith(f"received volIdx {i}"), reply
        if i in (1000, 5000, 9999):
            rss[i] = rss_kib(r.proc.pid)
    s = r.wait(timeout=300)
    assert s["received"] == 10000 and s["missing"] == 0
    print(f"receive soak: RssAnon KiB after volumes {rss}")
    # the spool is mapped in segments that are released as they fill: resident memory does not follow the run
    assert rss[9999] - rss[1000] < 16 * 1024, rss
    (r.session_dir / s["volumes_file"]).unlink()


class StalledClients:
    """Connections that send nothing, half a request, garbage, or never read the reply."""

    def __init__(self, port, n):
        self.socks = []
        for k in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            kind = k % 4
            if kind == 1:
                s.sendall(b"00")  # half a request, then silence
            elif kind == 2:
                s.sendall(os.urandom(64))  # garbage
            elif kind == 3:
                s.sendall(b"0000")  # a request whose reply is never read
            self.socks.append(s)

    def close(self):
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def small_subject(tmp_path_factory):
    """A small simulated subject and its decoder, for the live soak and results-server tests."""
    tmp = tmp_path_factory.mktemp("soak")
    sim = tmp / "sim.toml"
    sim.write_text("[simulate]\ndims = [16, 16, 10]\nvoxel_mm = 6.0\ntrain_runs = 1\ntrain_trials_per_run = 40\n"
                   "test_runs = 1\ntest_faces = 2\ntest_repeats = 1\nresponsive_voxels = 100\nclusters = 2\n")
    data = tmp / "data"
    subprocess.run([binary(), "--config", str(sim), "simulate", "--out", str(data)], check=True, capture_output=True)
    dec = tmp / "decoder.safetensors"
    subprocess.run([binary(), "train", "--data", str(data), "--out", str(dec), "--voxels", "100"], check=True,
                   capture_output=True)
    func = data / "sub-01" / "func"
    run = nib.load(str(next(func.glob("*run-2_bold.nii.gz"))))
    return tmp, dec, next(func.glob("*run-2_events.tsv")), np.asanyarray(run.dataobj).astype(np.float32), run.affine


def start_live(tmp, dec, events, n_volumes):
    from test_live import query  # the Pyneal results client of the live tests
    bind, results = free_port(), free_port()
    cfg = tmp / "no-idle-end.toml"
    cfg.write_text("[receiver]\nidle_timeout_secs = 0\n")
    proc = subprocess.Popen([binary(), "--config", str(cfg), "live", "--decoder", str(dec), "--events", str(events), "--headless",
                             "--bind", f"tcp://127.0.0.1:{bind}", "-n", str(n_volumes), "--results-port", str(results),
                             "--session-root", str(tmp / f"sessions-{bind}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def serving():
        try:
            return query(results, 0, timeout=1.0)["foundResults"] is False
        except (OSError, ValueError):
            return False

    wait_for(serving, timeout=60, what="the results server")
    return proc, f"tcp://127.0.0.1:{bind}", results


def stop_live(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return out, err


def test_results_server_under_200_clients_with_stalled_and_garbage_ones(small_subject):
    from test_live import query
    tmp, dec, events, run, affine = small_subject
    n_vols = run.shape[-1]
    proc, endpoint, results = start_live(tmp, dec, events, n_vols + 1)  # one more than sent: it stays up
    try:
        c = ScannerClient(endpoint)
        for i in range(n_vols):
            assert c.send_volume(i, run[..., i], affine=affine).startswith("received")
        wait_for(lambda: query(results, n_vols - 1)["foundResults"], timeout=60, what="the last volume's results")
        stalled = StalledClients(results, 100)
        answers, failures = [], []

        def poll(k):
            try:
                for j in range(5):
                    answers.append(query(results, (k + j) % n_vols, timeout=10))
            except Exception as e:  # noqa: BLE001 - any failure is counted and shown
                failures.append(repr(e))

        threads = [threading.Thread(target=poll, args=(k,)) for k in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stalled.close()
        assert failures == [], failures[:5]
        assert len(answers) == 500 and all(a["foundResults"] for a in answers)
        assert proc.poll() is None
    finally:
        stop_live(proc)


def test_10000_volumes_through_live_with_flat_memory(small_subject):
    from test_live import query
    tmp, dec, events, run, affine = small_subject
    n_vols = run.shape[-1]
    proc, endpoint, results = start_live(tmp, dec, events, 0)
    try:
        c = ScannerClient(endpoint)
        header = ScannerClient.header(0, run[..., 0], affine=affine)
        payloads = [np.ascontiguousarray(run[..., i]).tobytes() for i in range(n_vols)]
        rss = {}
        for i in range(10000):
            header["volIdx"] = i
            reply = c.send_raw([json.dumps(header).encode(), payloads[i % n_vols]])
            assert reply.startswith(f"received volIdx {i}"), reply
            if i == 5000:
                rss["after 5,000"] = rss_kib(proc.pid)
        wait_for(lambda: query(results, 9999)["foundResults"], timeout=120, what="volume 9999 processed")
        rss["after 10,000"] = rss_kib(proc.pid)
        assert query(results, 10000 - 4096)["foundResults"] and not query(results, 10000 - 4097)["foundResults"]
    finally:
        stop_live(proc)
    session = next((tmp / f"sessions-{endpoint.rsplit(':', 1)[1]}").iterdir())
    live = json.loads((session / "live_summary.json").read_text())
    assert live["volumes_processed"] == 10000
    assert json.loads((session / "summary.json").read_text())["received"] == 10000
    print(f"live soak: RssAnon KiB {rss}, volumes processed {live['volumes_processed']}")
    # the results server keeps the latest 4,096 volumes (feedback::RESULTS_KEPT): past that, memory is flat
    assert rss["after 10,000"] - rss["after 5,000"] < 4 * 1024, rss


def test_live_restarted_with_resume_analyses_the_whole_run(small_subject):
    tmp, dec, events, run, affine = small_subject
    n_vols = run.shape[-1]
    bind = free_port()
    root = tmp / f"sessions-resume-{bind}"
    args = [binary(), "live", "--decoder", str(dec), "--events", str(events), "--headless", "--bind",
            f"tcp://127.0.0.1:{bind}", "-n", str(n_vols), "--results-port", "0", "--session-root", str(root)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout.readline().startswith("listening on")
    c = ScannerClient(f"tcp://127.0.0.1:{bind}")
    for i in range(n_vols // 2):
        assert c.send_volume(i, run[..., i], affine=affine).startswith("received")
    first.kill()
    first.communicate()
    c.close()
    second = subprocess.Popen(args + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline().startswith("listening on")
        c2 = ScannerClient(f"tcp://127.0.0.1:{bind}")
        replies = [c2.send_volume(i, run[..., i], affine=affine) for i in range(n_vols // 2, n_vols)]
        assert replies[-1].endswith("STOP"), replies[-3:]
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err[-3000:]
    finally:
        second.kill()
    sessions = list(root.iterdir())
    assert len(sessions) == 1
    summary = json.loads((sessions[0] / "summary.json").read_text())
    live = json.loads((sessions[0] / "live_summary.json").read_text())
    assert summary["received"] == n_vols and live["volumes_processed"] == n_vols and live["end_reason"] == "complete"
