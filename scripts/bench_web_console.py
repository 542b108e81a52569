#!/usr/bin/env python3
"""Load benchmark of the browser console (not part of the test suite; its figures go in docs/benchmarks.md).

Three replays of the same simulated run at 10x, on this machine:
  A. the console off: the pipeline's own latencies, the baseline;
  B. the console on, with 100 reading event-stream clients (asyncio, written from the SSE format in
     tests/python/sse_client.py) and 5 clients that connect, ask for the stream and never read: does every frame
     reach every reading client, do the pipeline's latencies change against A, does the memory stay flat;
  C. the console on, with one headless Chromium on the operator console: frame drawn -> shown in the browser
     (the page's own measurement: Date.now() when the image has decoded, minus the frame's drawn time).

Usage: .venv/bin/python scripts/bench_web_console.py [--bin target/release/hyper-rt] [--clients 100]
The clients run at a lower priority (nice 10) so that on a small machine they compete less with the pipeline.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
from sse_client import read_events_async, request_head  # noqa: E402


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(binary, work):
    cfg = work / "sim.toml"
    cfg.write_text("[simulate]\ndims = [32, 32, 20]\nvoxel_mm = 4.0\ntrain_runs = 2\ntrain_trials_per_run = 100\n"
                   "test_runs = 1\ntest_faces = 8\ntest_repeats = 6\nresponsive_voxels = 600\nclusters = 6\n"
                   "snr = 8.0\n")
    data = work / "data"
    subprocess.run([binary, "--config", str(cfg), "simulate", "--out", str(data)], check=True,
                   stdout=subprocess.DEVNULL)
    dec = work / "decoder.safetensors"
    subprocess.run([binary, "train", "--data", str(data), "--out", str(dec), "--voxels", "600"], check=True,
                   stdout=subprocess.DEVNULL)
    func = data / "sub-01" / "func"
    return {"decoder": dec, "stimuli": data / "stimuli" / "latents.npy",
            "run": func / "sub-01_task-faces_run-3_bold.nii.gz", "events": func / "sub-01_task-faces_run-3_events.tsv"}


def start_replay(binary, subject, root, web):
    args = [binary, "replay", str(subject["run"]), "--decoder", str(subject["decoder"]), "--events",
            str(subject["events"]), "--stimuli", str(subject["stimuli"]), "--display", "none", "--results-port", "0",
            "--publish", "tcp://127.0.0.1:*", "--session-root", str(root), "--speed", "10", "--web", web]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_url(proc):
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("web console"):
            threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
            return line.split()[-1]
    raise RuntimeError("the replay printed no console URL")


def rss_sampler(pid, samples, stop):
    while not stop.is_set():
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    samples.append((time.time(), int(line.split()[1]) / 1024))
        except OSError:
            return
        time.sleep(0.25)


def pipeline_latency(root):
    session = next(Path(root).iterdir())
    s = json.loads((session / "live_summary.json").read_text())
    frames = len(list((session / "frames").glob("recon_vol*.png")))
    return {k: (pct(s[k], 50), pct(s[k], 95)) for k in ("preprocess_ms", "decode_ms", "generate_ms", "end_to_end_ms")}, \
        frames, s


def run_a(binary, subject, work):
    root = work / "a"
    proc = start_replay(binary, subject, root, "off")
    samples, stop = [], threading.Event()
    threading.Thread(target=rss_sampler, args=(proc.pid, samples, stop), daemon=True).start()
    proc.stdout.read()
    proc.wait()
    stop.set()
    lat, frames, _ = pipeline_latency(root)
    return lat, frames, samples


def run_b(binary, subject, work, n_clients, n_stalled):
    root = work / "b"
    port = free_port()
    proc = start_replay(binary, subject, root, f"127.0.0.1:{port}")
    wait_url(proc)
    samples, stop = [], threading.Event()
    threading.Thread(target=rss_sampler, args=(proc.pid, samples, stop), daemon=True).start()
    stalled = []
    for _ in range(n_stalled):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request_head("/events", f"127.0.0.1:{port}"))
        stalled.append(s)
    received = [dict() for _ in range(n_clients)]
    latency_ms = []

    def on_event(i):
        def handle(event, payload, ms):
            if event == "frame":
                received[i][payload["volume"]] = True
                latency_ms.append(ms - payload["drawn_unix_ms"])
        return handle

    async def main():
        return await asyncio.gather(*(read_events_async(port, on_event(i)) for i in range(n_clients)))

    statuses = asyncio.run(main())
    proc.wait()
    stop.set()
    for s in stalled:
        s.close()
    lat, frames, summary = pipeline_latency(root)
    complete = sum(1 for r in received if len(r) == frames)
    return lat, frames, samples, latency_ms, complete, statuses


def run_c(binary, subject, work):
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    root = work / "c"
    port = free_port()
    proc = start_replay(binary, subject, root, f"127.0.0.1:{port}")
    url = wait_url(proc)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1920,1080"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        proc.wait()
        time.sleep(1.0)
        latencies = driver.execute_script("return window.hyperRt.latenciesMs")
        shown = driver.execute_script("return window.hyperRt.framesReceived")
    finally:
        driver.quit()
    _, frames, _ = pipeline_latency(root)
    return latencies, shown, frames


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "hyper-rt"))
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--stalled", type=int, default=5)
    args = ap.parse_args()
    os.nice(10)
    work = Path(tempfile.mkdtemp(prefix="hyper-rt-web-bench-"))
    subject = prepare(args.bin, work)
    print("A: console off ...", flush=True)
    lat_a, frames_a, rss_a = run_a(args.bin, subject, work)
    print(f"B: console on, {args.clients} reading + {args.stalled} never-reading clients ...", flush=True)
    lat_b, frames_b, rss_b, client_ms, complete, statuses = run_b(args.bin, subject, work, args.clients,
                                                                   args.stalled)
    print("C: console on, one headless Chromium ...", flush=True)
    browser_ms, shown, frames_c = run_c(args.bin, subject, work)

    print(f"\nreplay at 10x, {frames_a} frames; machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print("| pipeline latency (ms) | console off p50 / p95 | console on, 105 clients p50 / p95 |")
    print("|---|---|---|")
    for key, name in (("preprocess_ms", "preprocess"), ("decode_ms", "decode"), ("generate_ms", "generate"),
                      ("end_to_end_ms", "volume arrival -> frame shown")):
        print(f"| {name} | {lat_a[key][0]:.1f} / {lat_a[key][1]:.1f} | {lat_b[key][0]:.1f} / {lat_b[key][1]:.1f} |")
    rss = [m for _, m in rss_b]
    rss_off = [m for _, m in rss_a]
    third = max(1, len(rss) // 3)
    print(f"\nB: {complete}/{args.clients} reading clients received all {frames_b} frames "
          f"(HTTP status {sorted(set(statuses))}); frame drawn -> parsed by a client: "
          f"p50 {pct(client_ms, 50):.1f} ms, p95 {pct(client_ms, 95):.1f} ms, n {len(client_ms)}")
    print(f"B: resident memory {min(rss):.0f}-{max(rss):.0f} MiB (first third of the run max "
          f"{max(rss[:third]):.0f}, last third max {max(rss[-third:]):.0f}); console off: "
          f"{min(rss_off):.0f}-{max(rss_off):.0f} MiB")
    print(f"C: Chromium showed {shown}/{frames_c} frames; frame drawn -> decoded and shown in Chromium: "
          f"p50 {pct(browser_ms, 50):.1f} ms, p95 {pct(browser_ms, 95):.1f} ms, n {len(browser_ms)}")
    shutil.rmtree(work, ignore_errors=True)
    ok = complete == args.clients and pct(browser_ms, 95) < 50
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
