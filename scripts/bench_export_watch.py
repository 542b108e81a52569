"""Latency of `hyper-rt send --watch`: a scanner's export written one volume per TR into a folder, followed by
the sender, acknowledged by `hyper-rt receive`. Prints the sender's "file written -> volume acknowledged" line for
each polling interval.

    .venv/bin/python scripts/bench_export_watch.py [--vendor siemens|philips|ge] [--volumes 40] [--tr-secs 0.25]

Siemens: one mosaic DICOM file per volume, the three real Siemens files of the test data renumbered
(InstanceNumber) to make a longer run. Philips: one PAR/REC pair per volume (the real-time export), split from
the real EPI phantom run nibabel ships (REC written first, then its PAR). GE: one DICOM file per slice, nibabel's
real example4d run (24 slices of 128 x 96) written as GE writes it, each volume's 24 files in a burst, one volume
per TR (the latency is from the volume's last slice file).
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vendor", choices=["siemens", "philips", "ge"], default="siemens")
    ap.add_argument("--volumes", type=int, default=40)
    ap.add_argument("--tr-secs", type=float, default=0.25, help="pause between files (the scanner's TR)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--poll-ms", type=int, nargs="+", default=[50, 20])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "hyper-rt"))
    ap.add_argument("--earlier-files", type=int, default=0,
                    help="empty files of earlier runs to put in subfolders first (5000 per subfolder), to measure "
                         "what watching a busy session folder costs; the sender then follows the next series")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        stage = {"siemens": stage_siemens, "philips": stage_philips, "ge": stage_ge}[args.vendor]
        staged = stage(args, tmp)
        series = {"siemens": "13", "philips": "0", "ge": "7"}[args.vendor]
        for poll_ms in args.poll_ms:
            export = tmp / f"export_{poll_ms}"
            export.mkdir()
            for n in range(args.earlier_files):
                folder = export / f"earlier_{n // 5000:03d}"
                folder.mkdir(exist_ok=True)
                (folder / f"i{n:06d}.MRDC.{n}").touch()
            follow = ["--series", series] if args.earlier_files == 0 else []
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            receiver = subprocess.Popen([args.binary, "receive", "--bind", endpoint, "--expected-volumes",
                                         str(args.volumes), "--session-root", str(tmp / f"sessions_{poll_ms}")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out_path, log_path = tmp / f"send_{poll_ms}.out", tmp / f"send_{poll_ms}.log"
            with open(out_path, "w") as out_file, open(log_path, "w") as log_file:
                sender = subprocess.Popen([args.binary, "send", str(export), "--watch", *follow, "--connect",
                                           endpoint, "--quiet", "--poll-ms", str(poll_ms)],
                                          stdout=out_file, stderr=log_file, text=True)
            started = time.time()
            while "watching" not in log_path.read_text() and time.time() - started < 60:
                time.sleep(0.05)
            for files in staged:
                for name, data in files:  # a Philips pair: the REC, then its PAR
                    (export / name).write_bytes(data)
                time.sleep(args.tr_secs)
            _, status, usage = os.wait4(sender.pid, 0)
            sender.returncode = os.waitstatus_to_exitcode(status)
            wall = time.time() - started
            receiver.wait(timeout=60)
            out = out_path.read_text()
            line = [l for l in out.splitlines() if l.startswith("file written")]
            cpu = usage.ru_utime + usage.ru_stime
            print(f"{args.vendor}, --poll-ms {poll_ms}, {args.earlier_files} earlier files: "
                  f"{line[0] if line else out.strip()}; sender CPU {cpu:.2f} s over {wall:.1f} s")


def stage_siemens(args, tmp):
    """[[(file name, bytes)]] per volume: the real mosaic files renumbered."""
    import pydicom

    sources = sorted((pathlib.Path(args.data) / "pyneal" / "siemens").glob("*.dcm"))
    if not sources:
        sys.exit(f"no Siemens files under {args.data}/pyneal/siemens")
    staged = []
    for i in range(args.volumes):
        ds = pydicom.dcmread(str(sources[i % len(sources)]))
        ds.InstanceNumber = i + 1
        path = tmp / f"staged_{i:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        staged.append([(f"001_000013_{i + 1:06d}.dcm", path.read_bytes())])
    return staged


def stage_ge(args, tmp):
    """[[(slice file name, bytes) per slice]] per volume: nibabel's example4d volumes, cycled, as slice files."""
    import nibabel
    import numpy as np
    from mosaic_writer import write_slice_series

    img = nibabel.load(str(pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"))
    stored = np.asanyarray(img.dataobj.get_unscaled())
    stored = stored[..., [t % stored.shape[3] for t in range(args.volumes)]]
    folder = tmp / "staged_ge"
    folder.mkdir()
    paths = write_slice_series(folder, stored, img.affine, 2.0, series=7)
    n = stored.shape[2]
    return [[(p.name, p.read_bytes()) for p in paths[t * n:(t + 1) * n]] for t in range(args.volumes)]


def stage_philips(args, tmp):
    """[[(REC name, bytes), (PAR name, bytes)]] per volume: the real EPI phantom run split into pairs."""
    import nibabel
    from parrec_writer import write_realtime_series

    par = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "phantom_EPI_asc_CLEAR_2_1.PAR"
    pairs = write_realtime_series(par, args.volumes)
    return [[(f"{name}.REC", rec), (f"{name}.PAR", text.encode("latin-1"))] for name, text, rec in pairs]


if __name__ == "__main__":
    main()
