"""Latency of the two roads a Siemens XA volume takes into hyper-rt, each ending at `hyper-rt receive`'s
acknowledgement (the volume spooled):

- network: a C-STORE of one XA enhanced file (33 frames, 64 x 64, explicit VR little endian) to `hyper-rt send
  --dicom-listen`, timed from the request until its C-STORE response (which hyper-rt sends once the receiver has
  acknowledged the volume). The client is a minimal one in this script whose messages are encoded before the clock
  starts: pynetdicom spends about 30 ms encoding each XA data set in Python, which would time the client, not
  hyper-rt. (The tests check the node against dcmtk's storescu.)
- folder: the same file written into a folder followed by `hyper-rt send --watch`, timed from the end of the
  write until the receiver's acknowledgement (its arrival time plus its reply latency, from messages.jsonl).

One file per --interval-secs (a TR); the real XA30 run's 20 files are cycled, renumbered (InstanceNumber,
SOPInstanceUID) so that each is a new volume. Prints p50 / p95 / p99 / max in milliseconds for each road.

    .venv/bin/python scripts/bench_dicom_intake.py [--volumes 300] [--interval-secs 0.1] [--poll-ms 20]
"""

import argparse
import copy
import json
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def staged_volumes(data, count):
    """`count` XA datasets: the real run's files cycled, each renumbered as a new volume."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted((pathlib.Path(data) / "siemens-xa30").glob("*.dcm"))
    if len(sources) != 20:
        sys.exit(f"expected the 20 XA30 files under {data}/siemens-xa30 (scripts/test.sh fetches them)")
    originals = [pydicom.dcmread(str(p)) for p in sources]
    staged = []
    for i in range(count):
        ds = copy.deepcopy(originals[i % 20])
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        staged.append(ds)
    return staged


def start_receiver(binary, tmp, name, volumes):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    root = tmp / f"sessions-{name}"
    proc = subprocess.Popen([binary, "receive", "--bind", endpoint, "--expected-volumes", str(volumes),
                             "--session-root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()
    session = pathlib.Path(proc.stdout.readline().split("recording to", 1)[1].strip())
    return proc, endpoint, session


def acknowledged_at(session):
    """volIdx -> when the receiver's reply went out (unix seconds), from the message log."""
    times = {}
    for line in (session / "messages.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["outcome"] == "accepted":
            times[m["vol_idx"]] = m["arrived_unix_secs"] + m["reply_latency_ms"] / 1e3
    return times


def element(group, elem, value):
    """One implicit-VR little-endian element (commands are always encoded so), padded to an even length."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value)) + value


def store_request(message_id, sop_class, sop_instance):
    body = (element(0, 0x0002, sop_class.encode()) + element(0, 0x0100, struct.pack("<H", 0x0001))
            + element(0, 0x0110, struct.pack("<H", message_id)) + element(0, 0x0700, struct.pack("<H", 0))
            + element(0, 0x0800, struct.pack("<H", 0)) + element(0, 0x1000, sop_instance.encode()))
    return element(0, 0x0000, struct.pack("<I", len(body))) + body


def pdata(context, command, data, max_pdu):
    """P-DATA-TF PDUs carrying one message: the command in one PDV, the data set cut into PDVs that fit."""
    pdus = []
    for payload, control in [(command, 0x03)] + [
            (data[i:i + max_pdu - 6], 0x00 | (0x02 if i + max_pdu - 6 >= len(data) else 0))
            for i in range(0, len(data), max_pdu - 6)]:
        pdv = struct.pack(">IBB", len(payload) + 2, context, control) + payload
        pdus.append(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
    return b"".join(pdus)


def associate_request(calling, called, abstract_syntax, transfer_syntax):
    def item(kind, body):
        return struct.pack(">BBH", kind, 0, len(body)) + body
    context = item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, abstract_syntax.encode())
                   + item(0x40, transfer_syntax.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", 0)) + item(0x52, b"2.25.1"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock):
    def exactly(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the node closed the connection")
            out += chunk
        return out
    kind, _, length = struct.unpack(">BBI", exactly(6))
    return kind, exactly(length)


def response_status(body):
    """The Status (0000,0900) of a response command PDU's single PDV."""
    command = body[6:]
    offset = 0
    while offset < len(command):
        group, elem, length = struct.unpack_from("<HHI", command, offset)
        if (group, elem) == (0, 0x0900):
            return struct.unpack_from("<H", command, offset + 8)[0]
        offset += 8 + length
    raise ValueError("no status in the response")


def network(args, tmp, staged):
    """C-STOREs from a minimal client written for this benchmark: the messages are encoded before the clock starts,
    so the time is the node's (receiving, reading, forwarding, the receiver's acknowledgement) and the wire's."""
    receiver, endpoint, _ = start_receiver(args.binary, tmp, "network", len(staged))
    port = free_port()
    node = subprocess.Popen([args.binary, "send", "--dicom-listen", str(port), "--connect", endpoint, "--quiet"],
                            stdout=subprocess.PIPE, stderr=open(tmp / "node.log", "w"), text=True)
    assert "listening on" in node.stdout.readline()
    explicit_le = "1.2.840.10008.1.2.1"
    messages = []
    for i, ds in enumerate(staged):
        path = tmp / "encode.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        raw = path.read_bytes()
        meta_end = 132 + 12 + struct.unpack_from("<I", raw, 140)[0]  # preamble, DICM, group length element
        messages.append(pdata(1, store_request(i + 1, ds.SOPClassUID, ds.SOPInstanceUID), raw[meta_end:], 1 << 16))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(associate_request("BENCH", "HYPER-RT", staged[0].SOPClassUID, explicit_le))
    kind, _ = read_pdu(sock)
    assert kind == 0x02, f"association not accepted (PDU type {kind})"
    latencies = []
    for message in messages:
        due = time.perf_counter() + args.interval_secs
        t0 = time.perf_counter()
        sock.sendall(message)
        kind, body = read_pdu(sock)
        latencies.append((time.perf_counter() - t0) * 1e3)
        status = response_status(body)
        assert kind == 0x04 and status == 0, f"C-STORE status 0x{status:04X}: {(tmp / 'node.log').read_text()}"
        time.sleep(max(0.0, due - time.perf_counter()))
    sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
    read_pdu(sock)
    sock.close()
    node.communicate(timeout=60)
    receiver.wait(timeout=60)
    return latencies


def folder(args, tmp, staged):
    receiver, endpoint, session = start_receiver(args.binary, tmp, "folder", len(staged))
    export = tmp / "export"
    export.mkdir()
    log = tmp / "watch.log"
    with open(log, "w") as err:
        sender = subprocess.Popen([args.binary, "send", str(export), "--watch", "--connect", endpoint, "--quiet",
                                   "--poll-ms", str(args.poll_ms)], stdout=subprocess.DEVNULL, stderr=err)
    while "watching" not in log.read_text():
        time.sleep(0.02)
    encoded = []
    for i, ds in enumerate(staged):
        path = tmp / "encode.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        encoded.append((f"{i + 1:04d}_{ds.SOPInstanceUID}.dcm", path.read_bytes()))
    written = {}
    for i, (name, data) in enumerate(encoded):
        due = time.perf_counter() + args.interval_secs
        (export / name).write_bytes(data)
        written[i] = time.time()
        time.sleep(max(0.0, due - time.perf_counter()))
    sender.wait(timeout=60)
    receiver.wait(timeout=60)
    acked = acknowledged_at(session)
    return [(acked[i] - written[i]) * 1e3 for i in written]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--interval-secs", type=float, default=0.1, help="one volume per this many seconds")
    ap.add_argument("--poll-ms", type=int, default=20, help="the folder watcher's polling interval")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "hyper-rt"))
    args = ap.parse_args()
    staged = staged_volumes(args.data, args.volumes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for road, measure in [("C-STORE until its response", network),
                              (f"watched folder (--poll-ms {args.poll_ms}), written until acknowledged", folder)]:
            ms = np.asarray(measure(args, tmp, staged))
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            print(f"{road}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {ms.max():.1f} ms "
                  f"over {len(ms)} XA volumes")


if __name__ == "__main__":
    main()
