"""What the real-server rigs and tests share: run a V2 (Open Inference Protocol) inference server from its
own virtual environment on 127.0.0.1, the ONNX copies they serve, and a target that crashes the server.

Each server (``mlserver_rig.py``, ``triton_rig.py``) lives in a venv of its own, whose pins clash with
nnseal's; its rig says how to configure and start it, and ``V2Server`` runs it: in a new session (so it
and its workers stop together), logging to ``<workdir>/<name>.log``, ready once the server and every model
answer the V2 readiness endpoints.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest

from nnseal.attacks import run_attack
from nnseal.models import Classifier, export_onnx
from nnseal.targets import HttpTarget, Target

REPO = Path(__file__).resolve().parents[1]
_Server = TypeVar("_Server", bound="V2Server")


def venv_dir(env_var: str, default: str) -> Path:
    """A server's venv: ``$env_var`` when set, else ``default`` at the repository root."""
    return Path(os.environ.get(env_var) or REPO / default)


def require_server(name: str, available: bool) -> None:
    """Skip the calling test when server ``name`` is not installed (by ``scripts/setup-<name>.sh``), or
    fail if ``NNSEAL_REQUIRE_<NAME>`` is 1, as CI sets it."""
    if available:
        return
    message = f"{name} venv missing: run scripts/setup-{name.lower()}.sh"
    require_env = f"NNSEAL_REQUIRE_{name.upper()}"
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{require_env}=1 but {message}")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def onnx_copies(model: Classifier, folder: Path) -> dict[str, str]:
    """The model's ONNX export (``intact``) and an ONNX Runtime dynamic-int8 copy of it (``tampered``)."""
    intact = export_onnx(model, folder / "intact.onnx", model.config.input_shape)
    tampered = run_attack("onnx-quantize", model, {"mode": "dynamic"}).save(folder / "int8.onnx")
    return {"intact": str(intact), "tampered": str(tampered)}


class V2Server:
    """``with Rig({"digits": onnx_path}, workdir) as server:`` serves each ONNX model under its name at
    ``server.url`` until the block ends; ``kill()`` stops it abruptly (a crash). Subclasses name the server
    and give its command (after writing any configuration it needs to ``workdir``)."""

    name = "server"

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike[str]],
        workdir: str | os.PathLike[str],
        *,
        startup_timeout: float = 60.0,
    ) -> None:
        if not models:
            raise ValueError(f"{self.name} needs at least one model")
        self.models, self.workdir = {k: Path(v) for k, v in models.items()}, Path(workdir)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{self.name.lower()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def command(self) -> list[str]:
        """The command that starts the server, once its configuration is written."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self: _Server) -> _Server:
        """Start the server and wait until it and every model are ready, or raise RuntimeError."""
        t0 = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        ready = [f"{self.url}/v2/health/ready"] + [f"{self.url}/v2/models/{m}/ready" for m in self.models]
        while time.perf_counter() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                break
            try:
                if all(httpx.get(u, timeout=1.0).status_code == 200 for u in ready):
                    self.startup_s = time.perf_counter() - t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        code = self.proc.poll()
        self.stop()
        why = f"exited with code {code}" if code is not None else f"not ready in {self.startup_timeout:g} s"
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} {why}; log tail:\n{tail}")

    def kill(self) -> None:
        """Stop the server at once (SIGKILL to its process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if it has not exited in 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StopServerAfter(Target):
    """Forwards to ``inner`` and kills the server once ``calls`` batches were answered."""

    def __init__(self, inner: HttpTarget, server: V2Server, calls: int) -> None:
        super().__init__()
        self.inner, self.server, self.calls = inner, server, calls
        self.provides = inner.provides

    def _predict(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.inner.predict(x)
        finally:
            self.calls -= 1
            if self.calls == 0:
                self.server.kill()

    def describe(self) -> str:
        return self.inner.describe()

    def stats(self) -> dict[str, int]:
        return self.inner.stats()
