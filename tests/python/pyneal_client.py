"""A scanner-side client written from docs/protocols.md section 1 (the Pyneal Scanner protocol), independent of
the Rust code: a ZeroMQ PAIR socket that connects, a handshake string echoed back, then per volume a JSON
header frame and a raw C-order buffer frame, each answered by a one-frame reply."""

import json

import numpy as np
import zmq


class ScannerClient:
    def __init__(self, endpoint, handshake="hello from pynealScanner_sim", timeout_ms=10000):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.timeout_ms = timeout_ms
        if handshake is not None:
            self.sock.send_string(handshake)
            echo = self.recv()
            assert echo == handshake, f"handshake echo {echo!r} != {handshake!r}"

    def recv(self):
        if not self.sock.poll(self.timeout_ms):
            raise TimeoutError("no reply from the receiver")
        return self.sock.recv().decode("utf-8")

    @staticmethod
    def header(idx, arr, affine=None, tr="1.0", dtype=None):
        affine = np.eye(4) if affine is None else affine
        return {
            "volIdx": idx,
            "dtype": dtype if dtype is not None else str(arr.dtype),
            "shape": list(arr.shape),
            "affine": json.dumps(np.asarray(affine).tolist()),
            "TR": tr,
        }

    def send_volume(self, idx, arr, affine=None, tr="1.0", dtype=None):
        """Sends one volume as Pyneal Scanner does and returns the reply."""
        hdr = self.header(idx, arr, affine, tr, dtype)
        return self.send_raw([json.dumps(hdr).encode(), np.ascontiguousarray(arr).tobytes()])

    def send_raw(self, frames):
        self.sock.send_multipart(frames)
        return self.recv()

    def close(self):
        self.sock.close(linger=0)
