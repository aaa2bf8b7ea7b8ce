"""Serve ONNX classifiers with a real NVIDIA Triton Inference Server (V2 protocol) on 127.0.0.1, for tests.

Triton comes from PyTriton in its own virtual environment (PyTriton needs numpy < 2):
``scripts/setup-triton.sh`` creates ``.venv-triton`` at the repository root; ``NNSEAL_TRITON_VENV`` points
elsewhere. The server runs ``triton_server.py`` beside this file (ONNX Runtime behind a PyTriton
inference callable), binds HTTP and gRPC only to 127.0.0.1 on free ports, metrics off, and logs to
``<workdir>/triton.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from server_rig import V2Server, free_port, venv_dir

VENV_ENV = "NNSEAL_TRITON_VENV"
_SERVER = Path(__file__).with_name("triton_server.py")


def triton_python() -> Path | None:
    """The Python of the Triton venv, or None when PyTriton is not installed there."""
    bin_dir = venv_dir(VENV_ENV, ".venv-triton") / "bin"
    return bin_dir / "python" if (bin_dir / "pytriton").is_file() else None


class Triton(V2Server):
    """``with Triton({"digits": onnx_path}, workdir) as server:`` serves each ONNX model under its
    name at ``server.url`` until the block ends; ``kill()`` crashes it."""

    name = "Triton"

    def command(self) -> list[str]:
        python = triton_python()
        if python is None:
            raise FileNotFoundError(f"Triton venv not found; run scripts/setup-triton.sh (or set {VENV_ENV})")
        config = {
            "models": {name: str(path) for name, path in self.models.items()},
            "http_port": self.port,
            "grpc_port": free_port(),
            "workspace": str(self.workdir / "workspace"),  # PyTriton makes it, and removes it when it stops
        }
        path = self.workdir / "triton.json"
        path.write_text(json.dumps(config))
        return [str(python), str(_SERVER), str(path)]

    def kill(self) -> None:
        """Crash Triton: SIGKILL to the ``tritonserver`` process that answers HTTP. PyTriton, its parent,
        then exits and frees the shared memory Triton's Python backend holds, which a SIGKILL to all of
        them would leave in /dev/shm; SIGKILL to the whole group if it has not exited within 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in map(int, children):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver":
                os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            super().kill()
