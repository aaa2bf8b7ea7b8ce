"""Serve ONNX classifiers' logits with NVIDIA Triton (through PyTriton) and ONNX Runtime, on 127.0.0.1.

Runs inside Triton's own virtual environment (``.venv-triton``, made by ``scripts/setup-triton.sh``),
not nnseal's: ``triton_rig.py`` starts ``python triton_server.py CONFIG.json`` there. The config names
each model's ONNX file, the HTTP and gRPC ports and PyTriton's workspace folder.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

LOOPBACK = "127.0.0.1"
MAX_BATCH = 64  # nnseal's default --max-batch; Triton refuses larger requests


def onnx_classifier(path: str) -> tuple[Callable[..., dict[str, np.ndarray]], tuple[int, ...]]:
    """An inference callable taking the V2 tensor ``input`` and answering ``logits``, and the input's
    shape without its batch axis."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": session.run(None, {model_input.name: input.astype(np.float32)})[0]}

    return infer, tuple(model_input.shape[1:])


def main(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    # Triton's Python-backend stub links libpython: find this interpreter's, not another Python's
    libs = [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH", "")]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    triton_config = TritonConfig(
        http_address=LOOPBACK,
        http_port=cfg["http_port"],
        grpc_address=LOOPBACK,
        grpc_port=cfg["grpc_port"],
        allow_metrics=False,
        metrics_address=LOOPBACK,
        exit_on_error=True,
    )
    # models written to the workspace's model store before Triton starts, which loads them from there
    # (by default PyTriton uploads them and Triton copies them to /tmp, left behind on a crash)
    policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
    with Triton(config=triton_config, workspace=cfg["workspace"], triton_lifecycle_policy=policy) as triton:
        for name, path in cfg["models"].items():
            infer, shape = onnx_classifier(path)
            triton.bind(
                model_name=name,
                infer_func=infer,
                inputs=[Tensor(name="input", dtype=np.float32, shape=shape)],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
                # no dynamic batcher: each request is one ONNX Runtime call, as nnseal batched it
                config=ModelConfig(max_batch_size=MAX_BATCH, batcher=None),
                strict=True,
            )
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1])
