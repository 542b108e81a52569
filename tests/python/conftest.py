"""Shared fixtures: the built binary, free ports, a receiver process, the real data files."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).parent))


def binary():
    path = os.environ.get("HYPER_RT_BIN", str(ROOT / "target" / "release" / "hyper-rt"))
    assert pathlib.Path(path).exists(), f"build the binary first: {path}"
    return path


def run_ok(*args, timeout=300):
    """Runs `hyper-rt ARGS...`, asserts that it succeeded (showing the end of its stderr if not), returns the
    completed process."""
    r = subprocess.run([binary(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def simulate(out, *args):
    """`hyper-rt simulate --out OUT ARGS...`; returns OUT."""
    run_ok("simulate", "--out", out, *args)
    return out


def data_dir():
    """Real data: ../shared/data in this workplace, else the cache scripts/test.sh fills."""
    for candidate in [os.environ.get("HYPER_RT_DATA"), ROOT.parent / "shared" / "data", ROOT / ".cache" / "data"]:
        if candidate and (pathlib.Path(candidate) / "pyneal" / "testSeries.nii.gz").exists():
            return pathlib.Path(candidate)
    pytest.fail("real test data not found: run scripts/test.sh, which fetches it")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    def __init__(self, tmp_path, expected=0, idle=5.0, extra=(), root=None):
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.root = root or (tmp_path / "sessions")
        args = [binary(), "receive", "--bind", self.endpoint, "--expected-volumes", str(expected),
                "--idle-timeout-secs", str(idle), "--session-root", str(self.root), *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait until the socket is bound
        line = self.proc.stdout.readline()
        assert line.startswith("listening on"), line + self.proc.stderr.read()
        line = self.proc.stdout.readline()
        assert line.startswith("recording to"), line
        self.session_dir = pathlib.Path(line.split("recording to", 1)[1].strip())

    def wait(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        self.stdout, self.stderr = out, err
        assert self.proc.returncode == 0, f"receiver failed: {err}"
        return self.summary()

    def summary(self):
        return json.loads((self.session_dir / "summary.json").read_text())

    def accepted(self):
        """Volumes accepted so far, from the session's message log (readable while the receiver runs)."""
        jsonl = self.session_dir / "messages.jsonl"
        return sum(1 for l in jsonl.read_text().splitlines() if '"accepted"' in l) if jsonl.exists() else 0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def receiver(tmp_path):
    started = []

    def start(**kwargs):
        r = ReceiverProcess(tmp_path, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def rotation(deg):
    """R = Rz Ry Rx for rotations in degrees about x, y, z (the convention of docs/preprocessing.md)."""
    import numpy as np
    a, b, g = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def start_watch(tmp_path, export, endpoint, *extra):
    """`hyper-rt send EXPORT --watch` in the background, once it watches; its log goes to a file the test can read
    while it runs."""
    log = tmp_path / "send.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([binary(), "send", str(export), "--watch", "--connect", endpoint, "--quiet", *extra],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    wait_for(lambda: "watching" in log.read_text() or proc.poll() is not None, what="the sender to start watching")
    return proc, log


def finish_watch(proc, log):
    """Waits for a `start_watch` sender to end by itself; returns its stdout and log after checking it succeeded."""
    out, _ = proc.communicate(timeout=30)
    err = log.read_text()
    assert proc.returncode == 0, err
    return out, err


def small_subject(tmp):
    """A small simulated subject (32 x 32 x 20, 600 responsive voxels, 2 training runs of 100 faces, a 68-volume
    test run of 6 faces x 3) and its trained decoder: the paths of the data, the decoder, the stimulus latents and
    the test run with its events."""
    cfg = tmp / "sim.toml"
    cfg.write_text("[simulate]\ndims = [32, 32, 20]\nvoxel_mm = 4.0\ntrain_runs = 2\ntrain_trials_per_run = 100\n"
                   "test_runs = 1\ntest_faces = 6\ntest_repeats = 3\nresponsive_voxels = 600\nclusters = 6\nsnr = 8.0\n")
    data = tmp / "data"
    run_ok("--config", str(cfg), "simulate", "--out", str(data))
    dec = tmp / "decoder.safetensors"
    run_ok("train", "--data", str(data), "--out", str(dec), "--voxels", "600")
    func = data / "sub-01" / "func"
    return {"tmp": tmp, "data": data, "decoder": dec, "stimuli": data / "stimuli" / "latents.npy",
            "run": func / "sub-01_task-faces_run-3_bold.nii.gz", "events": func / "sub-01_task-faces_run-3_events.tsv"}
