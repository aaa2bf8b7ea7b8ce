"""Serve an ONNX classifier with a real MLServer (V2 protocol) on 127.0.0.1, for tests and benchmarks.

MLServer lives in its own virtual environment (its pins clash with nnseal's): ``scripts/setup-mlserver.sh``
creates ``.venv-mlserver`` at the repository root; ``NNSEAL_MLSERVER_VENV`` points elsewhere. The
server runs the custom runtime in ``mlserver_runtime.py`` beside this file, binds only to 127.0.0.1 on free
ports, with parallel workers and its metrics server off, and logs to ``<workdir>/mlserver.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

VENV_ENV = "NNSEAL_MLSERVER_VENV"
_RUNTIME = Path(__file__).with_name("mlserver_runtime.py")


def mlserver_executable() -> Path | None:
    """The ``mlserver`` command of the MLServer venv, or None when it is not installed."""
    venv = Path(os.environ.get(VENV_ENV) or Path(__file__).resolve().parents[1] / ".venv-mlserver")
    exe = venv / "bin" / "mlserver"
    return exe if exe.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLServer:
    """``with MLServer({"digits": onnx_path}, workdir) as server:`` serves each ONNX model under its
    name at ``server.url`` until the block ends; ``kill()`` stops it abruptly (a crash)."""

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike[str]],
        workdir: str | os.PathLike[str],
        *,
        startup_timeout: float = 60.0,
    ) -> None:
        exe = mlserver_executable()
        if exe is None:
            raise FileNotFoundError(
                f"MLServer venv not found; run scripts/setup-mlserver.sh (or set {VENV_ENV})"
            )
        if not models:
            raise ValueError("MLServer needs at least one model")
        self.exe, self.models, self.workdir = exe, {k: Path(v) for k, v in models.items()}, Path(workdir)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "mlserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def _write_config(self) -> None:
        root = self.workdir / "models"
        for name, path in self.models.items():
            model_dir = root / name
            model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, model_dir / "model.onnx")
            model = {
                "name": name,
                "implementation": "nnseal_runtime.OnnxClassifier",
                "parameters": {"uri": "./model.onnx"},
            }
            (model_dir / "model-settings.json").write_text(json.dumps(model))
        shutil.copyfile(_RUNTIME, root / "nnseal_runtime.py")
        settings = {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": free_port(),
            "parallel_workers": 0,
            "metrics_endpoint": None,
            "debug": False,
        }
        (root / "settings.json").write_text(json.dumps(settings))

    def start(self) -> MLServer:
        """Start the server and wait until it and the model are ready, or raise RuntimeError."""
        self._write_config()
        env = {**os.environ, "MLSERVER_PARALLEL_WORKERS": "0"}
        t0 = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "start", str(self.workdir / "models")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
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
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"MLServer did not become ready within {self.startup_timeout:g} s; log tail:\n{tail}"
        )

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

    def __enter__(self) -> MLServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
