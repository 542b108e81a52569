"""The browser console in a real browser: headless Chromium (driven over WebDriver by chromedriver) opens the
operator console during a replay of a simulated run; the frame counter advances, the image the browser shows (read
back from a canvas) equals the session's frames/ image for that volume, the true stimulus is beside it, and
/participant shows the reconstruction and nothing else. Meanwhile a client that sends garbage, one that sends
nothing and one that never reads delay neither the pipeline nor a reading client, which receives every frame. On a
non-loopback address every request needs the token; nothing changes the session."""

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import binary, free_port, small_subject, wait_for
from sse_client import read_events, request_head


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return small_subject(tmp_path_factory.mktemp("web"))


class Replay:
    """`hyper-rt replay` with its console on `web`; its printed console URL, its output kept."""

    def __init__(self, subject, web, speed, extra=()):
        self.root = subject["tmp"] / f"sessions-{free_port()}"
        args = [binary(), "replay", str(subject["run"]), "--decoder", str(subject["decoder"]),
                "--events", str(subject["events"]), "--stimuli", str(subject["stimuli"]), "--headless",
                "--results-port", "0", "--publish", "tcp://127.0.0.1:*", "--session-root", str(self.root),
                "--speed", str(speed), "--web", web, *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(s.readline, "")), daemon=True).start()
        wait_for(lambda: self.url() is not None or self.proc.poll() is not None, timeout=60, what="the console URL")
        assert self.url() is not None, "".join(self.err)

    def url(self):
        for line in self.out:
            if line.startswith("web console"):
                return line.split()[-1]
        return None

    def session(self):
        return next(self.root.iterdir())

    def finish(self, timeout=120):
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        return self.proc.returncode, "".join(self.out), "".join(self.err)


def chromium(width=1920, height=1080):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for drivers on the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    # the page's own size, whatever the browser's frame takes
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


# the image element's pixels as the browser decoded them, read back through a canvas (lossless PNG)
SHOWN_PIXELS = """
const img = document.getElementById(arguments[0]);
if (!img || img.hidden || !img.complete || img.naturalWidth === 0) return null;
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
canvas.getContext("2d").drawImage(img, 0, 0);
return {volume: Number(img.dataset.volume), png: canvas.toDataURL("image/png")};
"""


def shown_image(driver, element="recon", timeout=30):
    got = {}

    def ready():
        got["shown"] = driver.execute_script(SHOWN_PIXELS, element)
        return got["shown"] is not None
    wait_for(ready, timeout=timeout, what=f"an image in #{element}")
    shown = got["shown"]
    png = base64.b64decode(shown["png"].split(",", 1)[1])
    return shown["volume"], np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def frame_file(session, volume):
    return np.asarray(Image.open(session / "frames" / f"recon_vol{volume:05d}.png").convert("RGB"))


def save_screenshot(driver, name, tmp):
    """A screenshot: kept with the test's files, and in HYPER_RT_SCREENSHOTS when set (the README's images)."""
    path = tmp / name
    driver.save_screenshot(str(path))
    if os.environ.get("HYPER_RT_SCREENSHOTS"):
        shutil.copy(path, os.path.join(os.environ["HYPER_RT_SCREENSHOTS"], name))
    return np.asarray(Image.open(path).convert("RGB"))


def test_console_and_participant_screen_in_chromium_beside_hostile_clients(subject, tmp_path):
    port = free_port()
    replay = Replay(subject, f"127.0.0.1:{port}", speed=5)
    # a reading client that takes every event until the stream ends
    got = []
    reader = threading.Thread(target=lambda: got.extend(
        read_events(port, lambda e, p: e == "summary" and p.get("state") == "ended", timeout=120)), daemon=True)
    reader.start()
    # hostile and stalled clients: garbage, a connection that sends nothing, an event stream never read
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"\x00\xff\x13GARBAGE / NOT-HTTP\r\n\r\n")
    silent = socket.create_connection(("127.0.0.1", port))
    unread = socket.create_connection(("127.0.0.1", port))
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    unread.sendall(request_head("/events", f"127.0.0.1:{port}"))
    driver = chromium()
    try:
        driver.get(replay.url())
        assert driver.title == "hyper-rt · operator console"
        counter = lambda: int(driver.find_element("id", "frames").text)
        wait_for(lambda: counter() >= 1, timeout=60, what="a first frame in the console")
        first = counter()
        wait_for(lambda: counter() > first, timeout=60, what="the frame counter to advance")
        volume, pixels = shown_image(driver)
        assert np.array_equal(pixels, frame_file(replay.session(), volume)), f"volume {volume}: not the frames/ image"
        stimulus = driver.execute_script(
            "const s = document.getElementById('stimulus'); return [s.hidden, s.naturalWidth];")
        assert stimulus == [False, pixels.shape[1]], stimulus
        trials = driver.find_element("id", "trials").text
        assert int(trials) >= 1
        shot = save_screenshot(driver, "console.png", tmp_path)
        assert shot.shape[:2] == (1080, 1920) and shot.std() > 10
        # the participant's screen: the reconstruction alone on black
        driver.get(replay.url().rstrip("/") + "/participant")
        volume, pixels = shown_image(driver)
        assert np.array_equal(pixels, frame_file(replay.session(), volume))
        page = driver.execute_script("""
            const shown = [...document.body.querySelectorAll('*')]
                .filter(e => e.tagName !== 'SCRIPT' && e.getClientRects().length > 0).map(e => e.id || e.tagName);
            return {shown, text: document.body.innerText.trim(),
                    background: getComputedStyle(document.body).backgroundColor};""")
        assert page == {"shown": ["recon"], "text": "", "background": "rgb(0, 0, 0)"}, page
        save_screenshot(driver, "participant.png", tmp_path)
        # the feedback bar follows the decoded value
        driver.get(replay.url().rstrip("/") + "/feedback")
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('feedback-bar').dataset.value !== undefined"), timeout=30,
            what="a feedback value")
        code, out, err = replay.finish()
    finally:
        driver.quit()
        replay.proc.kill()
    assert code == 0, err
    assert re.search(r"web console +http://127\.0\.0\.1:\d+/\n", out), out
    # the garbage got an HTTP error, not a hang; the never-reading client held nobody up
    garbage.settimeout(5)
    assert garbage.recv(100).startswith(b"HTTP/1.1 400"), "garbage was not answered 400"
    reader.join(timeout=30)
    frames = [p for e, p, _ in got if e == "frame"]
    drawn = sorted(int(f.name[9:14]) for f in (replay.session() / "frames").glob("recon_vol*.png"))
    assert sorted(f["volume"] for f in frames) == drawn, "the reading client missed frames"
    summaries = [p for e, p, _ in got if e == "summary"]
    assert all("state" in p and "web" in p for p in summaries), "a summary without the session's state"
    final = summaries[-1]
    assert final["state"] == "ended" and final["end_reason"] == "complete"
    assert final["frames_drawn"] == len(drawn) and final["patterns_decoded"] == 18
    assert final["web"]["connections_dropped_stalled"] >= 1, final["web"]  # the silent one
    live = json.loads((replay.session() / "live_summary.json").read_text())
    assert live["frames_drawn"] == len(drawn) and live["latents_skipped_by_generator"] == 0
    for s in (silent, unread, garbage):
        s.close()


def http(url, method="GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, r.read(200_000)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_a_console_bound_beyond_loopback_asks_for_its_token(subject):
    port = free_port()
    replay = Replay(subject, f"0.0.0.0:{port}", speed=5)
    try:
        token = re.search(r"\?token=([0-9a-f]{32})$", replay.url()).group(1)
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/participant", "/api/summary", "/api/trials", "/events", "/assets/console.js"):
            status, _, body = http(base + path)
            assert status == 401 and b"token" in body, (path, status)
        assert http(f"{base}/api/summary?token={'0' * 32}")[0] == 401
        status, headers, body = http(f"{base}/api/summary?token={token}")
        assert status == 200 and json.loads(body)["state"] in ("receiving", "waiting for the scanner")
        assert headers["Set-Cookie"].startswith(f"hyper_rt_token={token};") and "HttpOnly" in headers["Set-Cookie"]
        assert http(f"{base}/api/trials", headers={"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = http(f"{base}/", headers={"Cookie": f"hyper_rt_token={token}"})
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        # nothing changes the session
        assert http(f"{base}/api/summary?token={token}", method="POST")[0] == 405
        assert http(f"{base}/api/trials?token={token}", method="DELETE")[0] == 405
        # the event stream with the token: the summary first
        events = read_events(port, lambda e, p: True, token=token, timeout=10)
        assert events and events[0][0] == "summary"
        wait_for(lambda: json.loads(http(f"{base}/api/trials?token={token}")[2])["trials"], timeout=60,
                 what="a decoded trial in /api/trials")
        trial = json.loads(http(f"{base}/api/trials?token={token}")[2])["trials"][0]
        assert {"trial", "stim_id", "attributes", "feedback", "volIdx"} <= set(trial) and "latent" not in trial
        summary = json.loads(http(f"{base}/api/summary?token={token}")[2])
        assert summary["web"]["requests_refused"] == 7, summary["web"]
        # Ctrl-C mid-replay: the session finalised at once, exit 0
        interrupted_at = time.time()
        replay.proc.send_signal(signal.SIGINT)
        code, out, err = replay.finish(timeout=20)
        assert code == 0 and time.time() - interrupted_at < 10, err
        assert "end              interrupted" in out and "replay interrupted" in out, out
    finally:
        replay.proc.kill()
    # a token too short to guard anything is refused before the session starts
    r = subprocess.run([binary(), "replay", str(subject["run"]), "--decoder", str(subject["decoder"]),
                        "--web", f"0.0.0.0:{port}", "--web-token", "short"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "live.web_token" in r.stderr, r.stderr
    r = subprocess.run([binary(), "replay", str(subject["run"]), "--decoder", str(subject["decoder"]),
                        "--web", "localhost"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "live.web" in r.stderr and "ADDR:PORT" in r.stderr, r.stderr
