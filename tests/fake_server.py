"""An in-process prediction server for the HTTP tests: speaks V2, TF Serving, TorchServe and a custom
JSON API, answers from a local target, and injects faults on request.

Faults (``server.fault`` returns one per request, or None): ``http-500``, ``http-503``, ``timeout``
(no answer for ``timeout_sleep`` s, then the connection drops), ``slow`` (answers after
``slow_sleep`` s), ``drop`` (closes the connection without answering), ``malformed-json``,
``wrong-shape`` (one row missing), ``nan``, ``unknown-label`` (a label name not among the classes),
``429`` (Retry-After ``retry_after``).
"""

from __future__ import annotations

import json
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

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
    ) -> None:
        self.target, self.class_names, self.v2_output = target, class_names, v2_output
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

    def probs(self, x: np.ndarray) -> np.ndarray:
        with self._lock:  # one model call at a time, as a single-worker server would
            return self.target.predict(x).astype(np.float64)

    def answer(self, path: str, body: Any, fault: str | None) -> Any:
        """The JSON answer for ``body`` posted to ``path``, corrupted as ``fault`` asks."""
        if re.fullmatch(r"/v2/models/digits(/versions/[^/]+)?/infer", path):
            inp = body["inputs"][0]
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
            return {
                "predictions": self._corrupt(
                    self.probs(np.asarray(body["instances"], np.float32)), fault
                ).tolist()
            }
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
