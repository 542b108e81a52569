"""The live pipeline end to end over loopback: every volume recorded, every trial decoded, results served to a
Python client of the Pyneal results server and to a ZeroMQ SUB client, a slow client that delays nobody,
shutdown on end of run and on Ctrl-C, and the window under Xvfb."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from conftest import binary, free_port, run_ok, small_subject, wait_for


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    s = small_subject(tmp_path_factory.mktemp("live"))
    return s["tmp"], s["data"], s["decoder"], s["run"], s["events"]


def query(port, index, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{index:04d}".encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def start_live(tmp, dec, events, volumes, display="headless", extra=(), env=None):
    ports = {"bind": free_port(), "results": free_port(), "pub": free_port()}
    root = tmp / f"sessions-{ports['bind']}"
    args = [binary(), "live", "--decoder", str(dec), "--events", str(events), "--display", display,
            "--bind", f"tcp://127.0.0.1:{ports['bind']}", "-n", str(volumes), "--results-port", str(ports["results"]),
            "--publish", f"tcp://127.0.0.1:{ports['pub']}", "--session-root", str(root), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def serving():
        try:
            return query(ports["results"], 0, timeout=1.0)["foundResults"] is False
        except (OSError, ValueError):
            return False

    wait_for(serving, timeout=30, what="the results server")
    return proc, ports, root


def test_live_run_end_to_end(subject):
    tmp, data, dec, run, events = subject
    import nibabel as nib
    n_vols = nib.load(str(run)).shape[3]
    n_trials = len(events.read_text().splitlines()) - 1
    proc, ports, root = start_live(tmp, dec, events, n_vols)
    try:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.connect(f"tcp://127.0.0.1:{ports['pub']}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(0.3)
        # a slow client: connects and sends nothing
        slow = socket.create_connection(("127.0.0.1", ports["results"]))
        assert query(ports["results"], 0, timeout=2.0)["foundResults"] is False  # not blocked by the slow client
        sender = subprocess.Popen([binary(), "send", str(run), "--connect", f"tcp://127.0.0.1:{ports['bind']}",
                                   "--tr-secs", "0.1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = []

        def volume_5_ready():
            while sub.poll(0):
                got.append(sub.recv().decode())
            return query(ports["results"], 5)["foundResults"]

        # results for a processed volume, while the slow client is still connected
        wait_for(volume_5_ready, timeout=20, what="volume 5's results")
        started = time.time()
        r5 = query(ports["results"], 5)
        assert time.time() - started < 1.0
        assert r5["volIdx"] == 5 and "fd_mm" in r5 and "motion" in r5
        assert query(ports["results"], 99999)["foundResults"] is False
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if sub.poll(100):
                got.append(sub.recv().decode())
        slow.close()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        sender.communicate(timeout=60)  # reap the sender (it ends once the run is sent)
        while sub.poll(200):
            got.append(sub.recv().decode())
    finally:
        proc.kill()
    session = next(root.iterdir())
    summary = json.loads((session / "summary.json").read_text())
    assert summary["received"] == n_vols and summary["missing"] == 0
    results = [json.loads(l) for l in (session / "results.jsonl").read_text().splitlines()]
    assert len(results) == n_trials and {r["trial"] for r in results} == set(range(n_trials))
    assert np.load(session / "decoded_latents.npy").shape == (n_trials, 512)
    live = json.loads((session / "live_summary.json").read_text())
    assert live["volumes_processed"] == n_vols and live["patterns_decoded"] == n_trials and live["end_reason"] == "complete"
    assert len(list((session / "frames").glob("recon_vol*.png"))) == live["frames_drawn"] > 0
    assert len(list((session / "display").glob("frame_*.png"))) >= 1
    topics = [m.split(" ", 1)[0] for m in got]
    assert topics.count("volume") >= n_vols - 5 and topics.count("trial") >= n_trials - 2
    trial_msg = json.loads(next(m for m in got if m.startswith("trial ")).split(" ", 1)[1])
    assert len(trial_msg["latent"]) == 512 and "stim_id" in trial_msg
    assert "arrival -> shown" in out


def test_a_failing_generator_takes_nothing_else_down(subject):
    """The generator failing mid-run (its frames folder replaced by a file, so that every PNG write fails) is logged
    and counted frame by frame and stops after three failures in a row; the run goes on: every volume recorded and
    processed, every trial decoded, recorded and served. The summary names the failure; the exit status is not 0."""
    tmp, data, dec, run, events = subject
    import nibabel as nib
    n_vols = nib.load(str(run)).shape[3]
    n_trials = len(events.read_text().splitlines()) - 1
    proc, ports, root = start_live(tmp, dec, events, n_vols)
    sender = None
    try:
        wait_for(lambda: any((d / "frames").is_dir() for d in root.iterdir()), timeout=30, what="the frames folder")
        frames = next(d for d in root.iterdir() if (d / "frames").is_dir()) / "frames"
        shutil.rmtree(frames)
        frames.write_text("not a folder\n")
        sender = subprocess.Popen([binary(), "send", str(run), "--connect", f"tcp://127.0.0.1:{ports['bind']}",
                                   "--tr-secs", "0.05", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: query(ports["results"], n_vols - 1)["foundResults"], timeout=60, what="the last volume's results")
        out, err = proc.communicate(timeout=60)
        sender.communicate(timeout=60)
    finally:
        proc.kill()
        if sender:
            sender.kill()
    assert proc.returncode != 0
    assert "is complete, but these stages stopped early" in err and "generate: 3 frames in a row failed" in err, err[-2000:]
    session = frames.parent
    summary = json.loads((session / "summary.json").read_text())
    assert summary["received"] == n_vols and summary["missing"] == 0
    results = [json.loads(l) for l in (session / "results.jsonl").read_text().splitlines()]
    assert {r["trial"] for r in results} == set(range(n_trials))
    live = json.loads((session / "live_summary.json").read_text())
    assert live["end_reason"] == "complete" and live["volumes_processed"] == n_vols
    assert live["patterns_decoded"] == n_trials
    assert live["generator_errors"] == 3 and live["frames_drawn"] == 0
    assert len(live["stage_failures"]) == 1 and live["stage_failures"][0].startswith("generate: ")
    assert "failed 3" in out or "3 failed" in out


def test_ctrl_c_finalises_the_session(subject):
    tmp, data, dec, run, events = subject
    import nibabel as nib
    n_vols = nib.load(str(run)).shape[3]
    proc, ports, root = start_live(tmp, dec, events, n_vols)
    sender = subprocess.Popen([binary(), "send", str(run), "--connect", f"tcp://127.0.0.1:{ports['bind']}", "--tr-secs", "0.05", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        session = None
        wait_for(lambda: query(ports["results"], 20)["foundResults"], timeout=30, what="volume 20")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        sender.kill()
    session = next(root.iterdir())
    summary = json.loads((session / "summary.json").read_text())
    assert summary["end_reason"] == "interrupted" and summary["received"] >= 20
    live = json.loads((session / "live_summary.json").read_text())
    assert live["end_reason"] == "interrupted" and live["volumes_processed"] >= 20


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is installed by scripts/test.sh")
def test_window_under_xvfb_shows_the_reconstruction_and_closes(subject, tmp_path):
    tmp, data, dec, run, events = subject
    import nibabel as nib
    n_vols = nib.load(str(run)).shape[3]
    display = f":{90 + os.getpid() % 9}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, DISPLAY=display)
    try:
        time.sleep(1.0)
        # expect more volumes than are sent, so the run (and its window) stays open until the window is closed
        proc, ports, root = start_live(tmp, dec, events, n_vols + 10, display="window", env=env)
        subprocess.run([binary(), "send", str(run), "--connect", f"tcp://127.0.0.1:{ports['bind']}", "--tr-secs", "0.05", "--quiet"], timeout=60)
        wait_for(lambda: any(next(root.iterdir()).joinpath("frames").glob("recon_vol*.png")), timeout=30, what="a frame")
        time.sleep(1.0)
        shot = tmp_path / "screen.xwd"
        subprocess.run(["xwd", "-root", "-silent", "-out", str(shot)], env=env, check=True, timeout=30)
        screen = read_xwd(shot)
        frames = sorted(next(root.iterdir()).joinpath("frames").glob("recon_vol*.png"))
        recon = np.asarray(Image.open(frames[-1]))
        # find the window: the reconstruction occupies a 512 x 512 block (each image pixel drawn 2 x 2)
        expected = recon[::1, ::1].repeat(2, axis=0).repeat(2, axis=1)
        # a patch below the "RECONSTRUCTION" label
        found = locate(screen, expected[100:164, 100:164])
        Image.fromarray(screen).save(tmp_path / "screen.png")
        assert found is not None, f"the newest reconstruction is not on the screen (see {tmp_path / 'screen.png'})"
        y, x = found[0] - 100, found[1] - 100
        # the layout puts the reconstruction at RECON_RECT: the whole 512 x 512 block below the label matches
        assert np.array_equal(screen[y + 20:y + 512, x:x + 512], expected[20:512])
        # closing the window (Escape) ends the run and finalises the session
        if shutil.which("xdotool"):
            subprocess.run(["xdotool", "search", "--name", "hyper-rt", "windowactivate", "--sync", "key", "Escape"], env=env, timeout=30)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert (next(root.iterdir()) / "summary.json").exists()
    finally:
        xvfb.kill()


def read_xwd(path):
    """Reads a 24/32-bit ZPixmap XWD screenshot (the format xwd writes) into an RGB array."""
    raw = path.read_bytes()
    header = np.frombuffer(raw[:100], dtype=">u4")
    header_size, width, height = int(header[0]), int(header[4]), int(header[5])
    bits_per_pixel, bytes_per_line, ncolors = int(header[11]), int(header[12]), int(header[19])
    assert bits_per_pixel == 32, bits_per_pixel
    start = header_size + ncolors * 12
    pixels = np.frombuffer(raw[start:start + bytes_per_line * height], dtype=np.uint8).reshape(height, bytes_per_line)[:, :width * 4]
    px = pixels.reshape(height, width, 4)
    byte_order = int(header[7])  # 0 LSBFirst: B G R X
    return px[..., [2, 1, 0]] if byte_order == 0 else px[..., [1, 2, 3]]


def locate(screen, patch):
    h, w = patch.shape[:2]
    target = patch[0, 0]
    ys, xs = np.nonzero(np.all(screen == target, axis=-1))
    for y, x in zip(ys, xs):
        if y + h <= screen.shape[0] and x + w <= screen.shape[1] and np.array_equal(screen[y:y + h, x:x + w], patch):
            return y, x
    return None


def test_onsets_arriving_live_on_a_sub_socket(subject):
    tmp, data, dec, run, events = subject
    import nibabel as nib
    n_vols = nib.load(str(run)).shape[3]
    rows = [l.split("\t") for l in events.read_text().splitlines()[1:]]
    pub_port = free_port()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{pub_port}")
    empty = tmp / "no_events.tsv"
    empty.write_text("onset\tduration\ttrial_type\tstim_id\n")
    proc, ports, root = start_live(tmp, dec, empty, n_vols, extra=["--onsets", f"tcp://127.0.0.1:{pub_port}"])
    try:
        time.sleep(0.5)  # let the subscription arrive (PUB drops messages for subscribers not yet joined)
        pub.send(b"not json")
        for onset, duration, kind, stim in rows:
            pub.send(json.dumps({"onset": float(onset), "duration": float(duration), "trial_type": kind, "stim_id": int(stim)}).encode())
        time.sleep(0.2)
        subprocess.run([binary(), "send", str(run), "--connect", f"tcp://127.0.0.1:{ports['bind']}", "--tr-secs", "0.05", "--quiet"], timeout=60)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "ignored a message" in err
    finally:
        proc.kill()
        pub.close()
    session = next(root.iterdir())
    results = [json.loads(l) for l in (session / "results.jsonl").read_text().splitlines()]
    assert sorted(r["stim_id"] for r in results) == sorted(int(r[3]) for r in rows)


def test_replay_of_a_recorded_run_and_of_a_session_folder(subject):
    tmp, data, dec, run, events = subject
    n_trials = len(events.read_text().splitlines()) - 1
    root = tmp / "replay-sessions"
    common = ["--decoder", str(dec), "--events", str(events), "--headless", "--results-port", "0",
              "--publish", "tcp://127.0.0.1:*", "--session-root", str(root)]
    run_ok("replay", str(run), "--speed", "20", *common, timeout=120)
    first = next(root.iterdir())
    assert len((first / "results.jsonl").read_text().splitlines()) == n_trials
    # the recorded session folder replays through the same pipeline to the same number of trials
    run_ok("replay", str(first), "--speed", "20", *common, timeout=120)
    second = [d for d in root.iterdir() if d != first][0]
    assert len((second / "results.jsonl").read_text().splitlines()) == n_trials
    # a decoder for another grid is refused up front
    other = tmp / "other.nii.gz"
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(other))
    r = subprocess.run([binary(), "replay", str(other), *common], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "trained on" in r.stderr
    # a session left unfinalised by a crash: the message says how to finalise it
    unfinished = tmp / "unfinished-session"
    unfinished.mkdir()
    (unfinished / "spool.bin").write_bytes(b"")
    r = subprocess.run([binary(), "replay", str(unfinished), *common], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not finalised" in r.stderr and "hyper-rt recover" in r.stderr


def test_live_follows_a_siemens_dicom_export_folder(subject):
    """`live --export-folder`: the scanner's export folder followed by the session itself, files written one by one
    (an earlier run already there is ignored); every volume recorded exactly, every trial decoded. The flag's older
    name `--dicom-folder` still works."""
    import nibabel as nib
    from mosaic_writer import write_mosaic, write_nifti_run
    tmp, data, dec, run, events = subject
    img = nib.load(str(run))
    staged = tmp / "staged-mosaics"
    staged.mkdir()
    stored = write_nifti_run(img, staged, 0.1, series=7)
    n_vols = stored.shape[3]
    export = tmp / "export"
    export.mkdir()
    write_mosaic(export / "001_000006_000001.dcm", stored[..., 0], img.affine, 0.1, 1, series=6,
                 slope=float(img.dataobj.slope), intercept=float(img.dataobj.inter))
    proc, ports, root = start_live(tmp, dec, events, n_vols, extra=["--export-folder", str(export)])
    try:
        time.sleep(0.5)
        for f in sorted(staged.iterdir()):
            shutil.copy(f, export / f.name)
            time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "following series 7" in err and f"{n_vols} volumes sent, 0 files skipped" in err
    session = next(root.iterdir())
    recorded = nib.load(str(session / "volumes.nii.gz"))
    np.testing.assert_array_equal(recorded.get_fdata(), img.get_fdata())
    n_trials = len(events.read_text().splitlines()) - 1
    assert len((session / "results.jsonl").read_text().splitlines()) == n_trials
    # a folder that is not there is refused before anything starts
    r = subprocess.run([binary(), "live", "--decoder", str(dec), "--dicom-folder", str(tmp / "nowhere"), "-n", "3",
                        "--display", "none"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "live.export_folder (--export-folder)" in r.stderr and "is not a folder" in r.stderr


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is installed by scripts/test.sh")
def test_live_receives_images_over_the_dicom_network(subject):
    """`live --dicom-listen`: the scanner console pushes its images (dcmtk's storescu here) straight to the
    session, with nothing on the scanner side; every volume recorded exactly, every trial decoded."""
    import nibabel as nib
    from mosaic_writer import write_nifti_run
    tmp, data, dec, run, events = subject
    img = nib.load(str(run))
    staged = tmp / "pushed-mosaics"
    staged.mkdir()
    stored = write_nifti_run(img, staged, 0.1, series=9)
    n_vols = stored.shape[3]
    dicom_port = free_port()
    proc, ports, root = start_live(tmp, dec, events, n_vols,
                                   extra=["--dicom-listen", str(dicom_port), "--ae-title", "DECODER"])
    try:
        pushed = subprocess.run(["storescu", "-aet", "CONSOLE", "-aec", "DECODER", "127.0.0.1", str(dicom_port),
                                 *sorted(map(str, staged.iterdir()))], capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f'DICOM storage node "DECODER" listening on 127.0.0.1:{dicom_port}' in out
    assert f"{n_vols} images stored" in err
    session = next(root.iterdir())
    recorded = nib.load(str(session / "volumes.nii.gz"))
    np.testing.assert_array_equal(recorded.get_fdata(), img.get_fdata())
    n_trials = len(events.read_text().splitlines()) - 1
    assert len((session / "results.jsonl").read_text().splitlines()) == n_trials


def test_replay_of_the_run_as_scanner_dicom_matches_the_nifti_run(subject):
    """The test run written as Siemens mosaic DICOM files (stored int16 + rescale, the CSA slice normal needed to
    get the slice order right) and as GE slice files (one file per slice) replays through the live pipeline
    exactly as the NIfTI run does."""
    import nibabel as nib
    from mosaic_writer import write_nifti_run, write_slice_series
    tmp, data, dec, run, events = subject
    img = nib.load(str(run))
    tr_secs = float(img.header.get_zooms()[3])
    mosaic_folder, slice_folder = tmp / "dicom-run", tmp / "ge-run"
    mosaic_folder.mkdir()
    slice_folder.mkdir()
    stored = write_nifti_run(img, mosaic_folder, tr_secs, series=5)
    assert stored.dtype == np.int16 and float(img.dataobj.slope) != 1.0  # the scaled case
    write_slice_series(slice_folder, stored, img.affine, tr_secs, series=9, slope=float(img.dataobj.slope),
                       intercept=float(img.dataobj.inter))
    sessions = {}
    for name, source in [("mosaic", mosaic_folder), ("slices", slice_folder), ("nifti", run)]:
        root = tmp / f"replay-{name}"
        run_ok("replay", str(source), "--speed", "20", "--decoder", str(dec), "--events", str(events), "--headless",
               "--results-port", "0", "--publish", "tcp://127.0.0.1:*", "--session-root", str(root), timeout=120)
        (sessions[name],) = list(root.iterdir())
    n_trials = len(events.read_text().splitlines()) - 1
    for name in ["mosaic", "slices"]:
        recorded = nib.load(str(sessions[name] / "volumes.nii.gz"))
        np.testing.assert_array_equal(recorded.get_fdata(), img.get_fdata(), err_msg=name)
        np.testing.assert_allclose(recorded.affine, img.affine, atol=1e-5, err_msg=name)
        assert len((sessions[name] / "results.jsonl").read_text().splitlines()) == n_trials, name
        np.testing.assert_array_equal(np.load(sessions[name] / "decoded_latents.npy"),
                                      np.load(sessions["nifti"] / "decoded_latents.npy"), err_msg=name)


def test_demo_runs_the_whole_product_and_its_live_decoder_finds_the_faces(tmp_path):
    """The README's first command (headless, 20x the TR pace): simulate, train, stream, decode live, draw, evaluate.
    Scored again here from the session's results with NumPy: the live decoded latents identify the test faces."""
    data, sessions = tmp_path / "data", tmp_path / "sessions"
    r = run_ok("demo", "--headless", "--speed", "20", "--data", data, "--session-root", sessions, "--results-port", "0",
               timeout=500)
    assert "trials decoded live   32 of 32" in r.stdout, r.stdout
    (session,) = list(sessions.iterdir())
    assert len(list((session / "frames").glob("recon_vol*.png"))) == 32
    results = [json.loads(line) for line in (session / "results.jsonl").read_text().splitlines()]
    assert [x["trial"] for x in results] == list(range(32))
    latents = np.load(data / "stimuli" / "latents.npy").astype(np.float64)
    stims = sorted({x["stim_id"] for x in results})
    # each face beside its reconstruction: a repeated face is drawn once, then taken from the cache
    live = json.loads((session / "live_summary.json").read_text())
    assert live["stimulus_images_drawn"] == len(stims) < 32
    assert live["stimulus_images_drawn"] + live["stimulus_images_reused"] == 32
    assert f"stimuli          {len(stims)} drawn, {32 - len(stims)} repeats taken from the cache" in r.stdout, r.stdout
    decoded = np.array([np.mean([x["latent"] for x in results if x["stim_id"] == s], axis=0) for s in stims])
    truth = latents[stims]
    # pairwise identification: the decoded latent correlates more with its own face than with another
    corr = np.corrcoef(decoded, truth)[:len(stims), len(stims):]
    pairwise = np.mean([corr[i, i] > corr[i, j] for i in range(len(stims)) for j in range(len(stims)) if i != j])
    assert pairwise >= 0.8, f"pairwise identification {pairwise:.2f} (chance 0.5)"
    cosine = np.mean(np.sum(decoded * truth, 1) / np.linalg.norm(decoded, axis=1) / np.linalg.norm(truth, axis=1))
    assert cosine > 0.2, f"cosine {cosine:.3f} (chance 0)"
