"""Save/load models as safetensors weights with their JSON config embedded; never pickle.

One ``.safetensors`` file holds the weights and, in its metadata, the JSON ``ModelConfig``: a
model can't be separated from the description needed to rebuild it, and loading executes no code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from nnseal._io import atomic_write_bytes
from nnseal.errors import ModelError
from nnseal.models.architectures import Classifier, ModelConfig, build_model

MODEL_FORMAT = "nnseal.model/1"


def model_id(model: nn.Module) -> str:
    """SHA-256 over the state dict in sorted-name order (name, dtype, shape, little-endian bytes).

    Two models with the same id compute the same function; any weight or buffer change alters it.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: Classifier, path: str | os.PathLike[str]) -> Path:
    """Write weights + config atomically to one safetensors file."""
    if not isinstance(model, Classifier):
        raise ModelError(f"only nnseal Classifier models can be saved this way, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": MODEL_FORMAT, "config": json.dumps(model.config.to_dict())}
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


def _read_metadata(raw: bytes, path: Path) -> dict[str, str]:
    if len(raw) < 8:
        raise ModelError(f"{path}: not a safetensors model file (too short)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ModelError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw[8 : 8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise ModelError(f"{path}: not a safetensors model file (bad header)") from None
    return meta


def load_model(path: str | os.PathLike[str]) -> Classifier:
    """Rebuild a model saved by :func:`save_model`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    raw = path.read_bytes()
    meta = _read_metadata(raw, path)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{path}: not an nnseal model (format {meta.get('format')!r}, want {MODEL_FORMAT!r})"
        )
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        tensors = st_load(raw)
    except (KeyError, ValueError, SafetensorError) as e:
        raise ModelError(f"{path}: corrupt model file ({e})") from None
    model = build_model(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{path}: weights do not match the {config.arch} config ({first})") from None
    return model.eval()


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: tuple[int, ...]) -> Path:
    """Export logits as a single-file ONNX model with a dynamic batch axis (input 'input')."""
    import logging
    import warnings

    path = Path(path)
    model = model.eval()
    example = torch.rand(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    tmp = path.with_name(f".{path.name}.export.onnx")
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # silence "torchvision is not installed" notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    except Exception as e:
        raise ModelError(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from e
    finally:
        onnx_log.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path
