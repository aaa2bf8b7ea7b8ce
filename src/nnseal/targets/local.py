"""Local targets: a PyTorch module in this process, or an ONNX model in ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnseal.errors import TargetError
from nnseal.models.inference import probabilities
from nnseal.models.io import load_model
from nnseal.targets.base import Target, softmax


class TorchTarget(Target):
    """Softmax of a torch module's logits; ``batch_size``/``threads`` reproduce a serving setup."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int | None = None,
        threads: int | None = None,
        name: str = "torch",
    ) -> None:
        super().__init__()
        self.model, self.batch_size, self.threads, self.name = model.eval(), batch_size, threads, name
        config = getattr(model, "config", None)
        if config is not None:
            self.input_shape, self.num_classes = tuple(config.input_shape), config.num_classes

    def _predict(self, x: np.ndarray) -> np.ndarray:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return probabilities(self.model, x, batch_size=self.batch_size)
        finally:
            torch.set_num_threads(before)

    def describe(self) -> str:
        threads = self.threads or torch.get_num_threads()
        return f"{self.name} (batch {self.batch_size or 'all'}, threads {threads})"


class OnnxTarget(Target):
    """An ONNX model (a file, or its serialized bytes) run by ONNX Runtime on CPU; its first output is
    taken as logits."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        threads: int | None = None,
        batch_size: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.batch_size = batch_size
        if isinstance(model, bytes):
            source: str | bytes = model
            self.name = name or "in-memory model"
        else:
            path = Path(model)
            if not path.is_file():
                raise TargetError(f"ONNX model not found: {path}")
            source, self.name = str(path), name or path.name
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise TargetError(
                f"{self.name}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})"
            ) from None
        first_in, first_out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = first_in.name
        self.input_shape = _static(first_in.shape[1:])
        out = _static(first_out.shape[1:])
        self.num_classes = out[0] if out is not None and len(out) == 1 else None

    def _predict(self, x: np.ndarray) -> np.ndarray:
        bs = self.batch_size or max(1, len(x))
        try:
            out = [self.session.run(None, {self.input_name: x[i : i + bs]})[0] for i in range(0, len(x), bs)]
        except Exception as e:
            raise TargetError(f"ONNX Runtime failed on a batch: {str(e).splitlines()[0][:160]}") from None
        return softmax(np.concatenate(out).astype(np.float64)).astype(np.float32)

    def describe(self) -> str:
        return f"onnxruntime ({self.name})"


def _static(dims: list[int | str | None]) -> tuple[int, ...] | None:
    """Dimensions fixed in the ONNX graph, or None when any is symbolic."""
    return tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None  # type: ignore[arg-type]


def open_target(path: str | os.PathLike[str], **kwargs: int | None) -> Target:
    """A target for a model file: ``.onnx`` runs in ONNX Runtime, anything else loads as an nnseal model."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxTarget(path, **kwargs)
    return TorchTarget(load_model(path), name=f"torch ({path.name})", **kwargs)  # type: ignore[arg-type]
