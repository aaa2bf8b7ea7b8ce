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
from pathlib import Path

from server_rig import V2Server, free_port, venv_dir

VENV_ENV = "NNSEAL_MLSERVER_VENV"
_RUNTIME = Path(__file__).with_name("mlserver_runtime.py")


def mlserver_executable() -> Path | None:
    """The ``mlserver`` command of the MLServer venv, or None when it is not installed."""
    exe = venv_dir(VENV_ENV, ".venv-mlserver") / "bin" / "mlserver"
    return exe if exe.is_file() else None


class MLServer(V2Server):
    """``with MLServer({"digits": onnx_path}, workdir) as server:`` serves each ONNX model under its
    name at ``server.url`` until the block ends; ``kill()`` stops it abruptly (a crash)."""

    name = "MLServer"

    def command(self) -> list[str]:
        exe = mlserver_executable()
        if exe is None:
            raise FileNotFoundError(
                f"MLServer venv not found; run scripts/setup-mlserver.sh (or set {VENV_ENV})"
            )
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
        return [str(exe), "start", str(root)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "MLSERVER_PARALLEL_WORKERS": "0"}
