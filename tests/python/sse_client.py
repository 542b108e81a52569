"""A minimal server-sent-events client over a raw socket, written here from the SSE format (lines `event:` and
`data:`, an empty line ending each event): the browser console's stream as a program sees it, for the tests and the
load benchmark (scripts/bench_web_console.py)."""

import asyncio
import json
import socket
import time


def request_head(path, host, token=None):
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{auth}"
            "Connection: keep-alive\r\n\r\n").encode()


class EventParser:
    """Feeds on the bytes of a chunked `text/event-stream` response; yields (event, data, received_unix_ms)."""

    def __init__(self):
        self.buffer = b""
        self.head_done = False
        self.body = b""
        self.event = None
        self.data = []
        self.status = None
        # the last chunk (size 0) came: the server ended the stream
        self.ended = False

    def feed(self, chunk):
        self.buffer += chunk
        if not self.head_done:
            if b"\r\n\r\n" not in self.buffer:
                return []
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(head.split(b" ", 2)[1])
            self.head_done = True
        # undo the chunked transfer coding
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.buffer[:line_end].split(b";")[0] or b"0", 16)
            if size == 0:
                self.ended = True
                self.buffer = b""
                break
            if len(self.buffer) < line_end + 2 + size + 2:
                break
            self.body += self.buffer[line_end + 2:line_end + 2 + size]
            self.buffer = self.buffer[line_end + 2 + size + 2:]
        events = []
        while b"\n" in self.body:
            line, self.body = self.body.split(b"\n", 1)
            line = line.decode().rstrip("\r")
            if line == "":
                if self.data:
                    events.append((self.event or "message", "\n".join(self.data), time.time() * 1e3))
                self.event, self.data = None, []
            elif line.startswith("event:"):
                self.event = line[6:].strip()
            elif line.startswith("data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(" ") else value)
        return events


def read_events(port, until, token=None, timeout=60.0, host="127.0.0.1"):
    """Reads /events until `until(event, payload)` is true or the stream ends; returns [(event, payload, ms)]."""
    got = []
    parser = EventParser()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request_head("/events", f"{host}:{port}", token))
        deadline = time.time() + timeout
        while time.time() < deadline:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            for event, data, ms in parser.feed(chunk):
                payload = json.loads(data)
                got.append((event, payload, ms))
                if until(event, payload):
                    return got
            if parser.ended:
                break
    return got


async def read_events_async(port, on_event, token=None, host="127.0.0.1"):
    """Reads /events until the stream ends, calling `on_event(event, payload, received_ms)`; returns the status."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request_head("/events", f"{host}:{port}", token))
    await writer.drain()
    parser = EventParser()
    try:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            for event, data, ms in parser.feed(chunk):
                on_event(event, json.loads(data), ms)
            if parser.ended:
                break
    finally:
        writer.close()
    return parser.status
