"""An in-process prediction server for the HTTP tests: speaks V2, TF Serving, TorchServe and a custom
JSON API, answers from a local target, and injects faults on request.

Faults (``server.fault`` returns one per request, or None): ``http-500``, ``http-503``, ``timeout``
(no answer for ``timeout_sleep`` s, then the connection drops), ``slow`` (answers after
``slow_sleep`` s), ``drop`` (closes the connection without answering), ``malformed-json``,
``wrong-shape`` (one row missing), ``nan``, ``unknown-label`` (a label name not among the classes),
``429`` (Retry-After ``retry_after``).

:class:`HostileServer` is another kind: a server that attacks the verifier (deep JSON, a gzip bomb,
a huge body, a trickle, a stall, odd encodings).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from nnseal.grid import from_pixels
from nnseal.targets import Target

FAULTS = (
    "http-500",
    "http-503",
    "timeout",
    "slow",
    "drop",
    "malformed-json",
    "wrong-shape",
    "nan",
    "unknown-label",
    "429",
)


class FakeServer:
    """``with FakeServer(target) as s:`` serves at ``s.url`` (https with ``tls``); ``v2_output`` picks
    what V2 answers (logits, probabilities or label-names) for model ``digits``; ``seen_headers``
    keeps each request's headers and ``seen_queries`` its query string, ``max_in_flight`` the most
    requests handled at once."""

    def __init__(
        self,
        target: Target,
        class_names: list[str],
        *,
        v2_output: str = "logits",
        timeout_sleep: float = 0.15,
        slow_sleep: float = 0.02,
        retry_after: str = "0",
        tls: ssl.SSLContext | None = None,
        png_levels: int = 16,
    ) -> None:
        self.target, self.class_names, self.v2_output = target, class_names, v2_output
        self.png_levels = png_levels
        self.timeout_sleep, self.slow_sleep, self.retry_after = timeout_sleep, slow_sleep, retry_after
        self.fault: Callable[[], str | None] = lambda: None
        self.fired = self.in_flight = self.max_in_flight = 0
        self.seen_headers: list[dict[str, str]] = []
        self.seen_queries: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def png(self, b64: str) -> np.ndarray:
        """A base64 PNG as the model's input (C, H, W): its integer pixels / ``png_levels``."""
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
        return from_pixels(img[None] if img.ndim == 2 else img.transpose(2, 0, 1), self.png_levels)

    def probs(self, x: np.ndarray) -> np.ndarray:
        with self._lock:  # one model call at a time, as a single-worker server would
            return self.target.predict(x).astype(np.float64)

    def answer(self, path: str, body: Any, fault: str | None) -> Any:
        """The JSON answer for ``body`` posted to ``path``, corrupted as ``fault`` asks."""
        if re.fullmatch(r"/v2/models/digits(/versions/[^/]+)?/infer", path):
            inp = body["inputs"][0]
            if inp["datatype"] == "BYTES":  # base64 PNGs of integer pixels k; the model sees k / levels
                x = np.stack([self.png(b) for b in inp["data"]])
            else:
                x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
            p = self._corrupt(self.probs(x), fault)
            if self.v2_output == "label-names":
                names = [
                    [self._name(int(i), fault == "unknown-label" and j == 0)]
                    for j, i in enumerate(p.argmax(1))
                ]
                return {"outputs": [{"name": "label", "shape": [len(names), 1], "datatype": "BYTES",
                                     "data": [n[0] for n in names]}]}  # fmt: skip
            v = np.log(p) if self.v2_output == "logits" else p
            return {"outputs": [{"name": "out", "shape": list(v.shape), "datatype": "FP64",
                                 "data": v.ravel().tolist()}]}  # fmt: skip
        if re.fullmatch(r"/v1/models/[^/:]+(/versions/[^/:]+)?:predict", path):
            inst = body["instances"]
            x = np.stack([self.png(i["b64"]) for i in inst]) if isinstance(inst[0], dict) else inst
            return {"predictions": self._corrupt(self.probs(np.asarray(x, np.float32)), fault).tolist()}
        if re.fullmatch(r"/predictions/[^/]+(/[^/]+)?", path):
            p = self._corrupt(self.probs(np.asarray([body["data"]], np.float32)), fault)[0]
            top = np.argsort(-p)[:3]
            return {self._name(int(i), fault == "unknown-label"): float(p[i]) for i in top}
        if path == "/custom":
            p = self._corrupt(self.probs(np.asarray(body["batch"], np.float32)), fault)
            return {"result": [{"probs": row} for row in p.tolist()]}
        raise KeyError(path)

    def _name(self, i: int, unknown: bool) -> str:
        return "banana" if unknown else self.class_names[i]

    @staticmethod
    def _corrupt(p: np.ndarray, fault: str | None) -> np.ndarray:
        if fault == "wrong-shape":
            return p[:-1]
        if fault == "nan":
            p = p.copy()
            p[0, 0] = math.nan
        return p


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._post()
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _post(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.seen_headers.append(dict(self.headers))
            server.seen_queries.append(urlsplit(self.path).query)
            fault = server.fault()
            if fault is not None:
                with server._lock:
                    server.fired += 1
            if fault in ("timeout", "drop"):
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                self.close_connection = True
                return
            if fault == "slow":
                time.sleep(server.slow_sleep)
            if fault in ("http-500", "http-503"):
                self._send(int(fault[5:]), b'{"error": "injected"}')
            elif fault == "429":
                self._send(429, b'{"error": "slow down"}', {"Retry-After": server.retry_after})
            elif fault == "malformed-json":
                self._send(200, b'{"outputs": [{"name": "out", "shape": [')
            else:
                try:
                    answer = server.answer(urlsplit(self.path).path, body, fault)
                except KeyError:
                    self._send(404, b'{"error": "no such model"}')
                    return
                self._send(200, json.dumps(answer).encode())

    return Handler


HOSTILE = ("honest", "deep-json", "gzip-bomb", "huge-body", "huge-length", "trickle", "stall")


@functools.cache
def gzip_bomb(wire_bytes: int = 1_000_000) -> bytes:
    """A valid gzip stream of about ``wire_bytes`` that inflates ~1000-fold (1 MB → 1 GB of zeros),
    built in a fraction of a second: after a full flush every MiB of zeros compresses to the same block."""
    zeros, c = bytes(1 << 20), zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    k = max(0, wire_bytes - len(head)) // len(block)
    crc = zlib.crc32(zeros)
    for _ in range(k):
        crc = zlib.crc32(zeros, crc)
    # an empty final block, then the gzip trailer: CRC-32 and length (mod 2^32) of everything
    return head + block * k + b"\x03\x00" + struct.pack("<II", crc, ((k + 1) << 20) & 0xFFFFFFFF)


class HostileServer:
    """An HTTP server on 127.0.0.1 that answers every POST as ``mode`` says (one of ``HOSTILE``):

    ``honest`` sends ``body`` with ``headers`` (say, a ``Content-Encoding``); ``deep-json``
    100,000-deep brackets; ``gzip-bomb`` :func:`gzip_bomb`; ``huge-body`` ``huge_bytes`` of spaces
    without a length, streamed lazily; ``huge-length`` announces 1 TB and sends 1 MiB; ``trickle``
    sends the whole honest response one byte every ``interval`` seconds; ``stall`` waits until
    ``stall_at`` s, sends the headers and half the body, and stalls for ``stall_for`` s before the rest.

    Raw sockets, so nothing is tidied up for the client; each answer ends within ``max_seconds`` and
    on ``__exit__``. ``requests`` counts the requests read.
    """

    def __init__(
        self,
        mode: str,
        body: bytes = b"{}",
        *,
        headers: dict[str, str] | None = None,
        interval: float = 1.0,
        stall_at: float = 0.9,
        stall_for: float = 5.0,
        huge_bytes: int = 200 << 20,
        max_seconds: float = 60.0,
    ) -> None:
        if mode not in HOSTILE:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.body, self.headers, self.interval = mode, body, headers or {}, interval
        self.stall_at, self.stall_for = stall_at, stall_for
        self.huge_bytes, self.max_seconds = huge_bytes, max_seconds
        self.requests = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                self._read_request(conn)
                self._answer(conn, time.monotonic() + self.max_seconds)
            except OSError:  # the client gave up: what a hostile server hopes for least
                pass

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk or len(data) > 1 << 20:
                raise ConnectionError("no request")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m[1]) if m else 0
        while len(rest) < length:
            rest += conn.recv(65536)
        with self._lock:
            self.requests += 1

    def _wait(self, seconds: float) -> bool:
        """Sleep; False once the server is stopping."""
        return not self._stop.wait(seconds)

    def _answer(self, conn: socket.socket, end: float) -> None:
        def head(**headers: object) -> bytes:
            lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", "Connection: close"]
            fields = {**self.headers, **{k.replace("_", "-"): v for k, v in headers.items()}}
            lines += [f"{k}: {v}" for k, v in fields.items()]
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        mode, body = self.mode, self.body
        if mode == "deep-json":
            body = b"[" * 100_000 + b"]" * 100_000
        if mode in ("honest", "deep-json"):
            conn.sendall(head(Content_Length=len(body)) + body)
        elif mode == "gzip-bomb":
            bomb = gzip_bomb()
            conn.sendall(head(Content_Length=len(bomb), Content_Encoding="gzip") + bomb)
        elif mode in ("huge-body", "huge-length"):
            size = self.huge_bytes if mode == "huge-body" else 1 << 20
            conn.sendall(head(Content_Length=10**12) if mode == "huge-length" else head())
            chunk = b" " * 65536
            for _ in range(size // len(chunk)):
                if time.monotonic() > end or self._stop.is_set():
                    break
                conn.sendall(chunk)
        elif mode == "trickle":
            for byte in head(Content_Length=len(body)) + body:
                if time.monotonic() > end or not self._wait(self.interval):
                    break
                conn.sendall(bytes([byte]))
        elif mode == "stall":
            half = len(body) // 2
            if self._wait(self.stall_at):
                conn.sendall(head(Content_Length=len(body)) + body[:half])
                if self._wait(self.stall_for):
                    conn.sendall(body[half:])
