"""Save/load models as safetensors weights with their JSON config embedded; never pickle.

One ``.safetensors`` file holds the tensors and, in its metadata, the JSON ``ModelConfig``, the
weights' dtype, which layers are int8-quantized (torch.ao dynamic quantization) and the model's
lineage (the attacks that produced it): a model can't be separated from the description needed to
rebuild it, and loading executes no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from nnseal._io import SAFETENSORS_MAX_HEADER, atomic_write_bytes, parse_json, safetensors_metadata
from nnseal.errors import ModelError
from nnseal.models.architectures import Classifier, ModelConfig, build_model

MODEL_FORMAT = "nnseal.model/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _quantized_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, DynamicQuantizedLinear)]


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that defines the model, as plain tensors: the state dict, with each int8
    dynamically quantized layer as ``<layer>.weight.int8`` / ``.weight.scale`` / ``.weight.zero_point``
    / ``.bias``."""
    quantized = _quantized_layers(model)
    out = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and not any(k.startswith(q + ".") for q in quantized)
    }
    for name in quantized:
        weight, bias = dict(model.named_modules())[name]._weight_bias()
        if weight.qscheme() != torch.per_tensor_affine:
            raise ModelError(f"layer {name}: only per-tensor int8 quantization can be saved")
        out[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        out[f"{name}.weight.scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
        out[f"{name}.weight.zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().contiguous()
    return out


def model_id(model: nn.Module) -> str:
    """SHA-256 over :func:`model_tensors` in sorted-name order (name, dtype, shape, bytes).

    Two models with the same id compute the same function; any weight or buffer change alters it.
    """
    h = hashlib.sha256()
    for name, t in sorted(model_tensors(model).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-d buffer (batch norm's num_batches_tracked) can't be viewed as bytes; same bytes
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter's)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def save_model(model: Classifier, path: str | os.PathLike[str]) -> Path:
    """Write tensors + config (+ dtype, quantized layers, lineage) atomically to one file."""
    if not isinstance(model, Classifier):
        raise ModelError(f"only nnseal Classifier models can be saved this way, got {type(model).__name__}")
    dtype = {v: k for k, v in DTYPES.items()}.get(model_dtype(model))
    if dtype is None:
        raise ModelError(f"cannot save a model in {model_dtype(model)}")
    meta = {
        "format": MODEL_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "dtype": dtype,
        "quantized": json.dumps(_quantized_layers(model)),
        "lineage": json.dumps(getattr(model, "lineage", [])),
    }
    return atomic_write_bytes(path, st_save(model_tensors(model), metadata=meta))


def quantize_dynamic_int8(model: nn.Module, layers: set[str] | None = None) -> nn.Module:
    """torch.ao dynamic int8 quantization of the given Linear layers (default: all), on a copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec: Any = {nn.Linear} if layers is None else layers
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def load_model(path: str | os.PathLike[str]) -> Classifier:
    """Rebuild a model saved by :func:`save_model`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    raw = path.read_bytes()
    try:
        meta = safetensors_metadata(raw)
    except ValueError as e:
        raise ModelError(f"{path}: not a safetensors model file: {e}") from None
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{path}: not an nnseal model (format {meta.get('format')!r}, want {MODEL_FORMAT!r})"
        )
    try:
        config = ModelConfig.from_dict(_meta_json(meta, "config", None))
        dtype = DTYPES[meta.get("dtype", "float32")]
        quantized = _meta_json(meta, "quantized", [])
        lineage = _meta_json(meta, "lineage", [])
        if not isinstance(quantized, list) or not all(isinstance(q, str) for q in quantized):
            raise ValueError("'quantized' must list layer names")
        if not isinstance(lineage, list):
            raise ValueError("'lineage' must be a list")
        tensors = st_load(raw)
    except (KeyError, ValueError, SafetensorError) as e:
        raise ModelError(f"{path}: corrupt model file ({_first_line(e)})") from None
    try:
        qparams = {q: _pop_quantized(tensors, q) for q in set(quantized)}
        _check_shapes(config, dtype, tensors)
        model: Any = build_model(config).to(dtype)
        model.load_state_dict(tensors, strict=True)
        if quantized:
            model = quantize_dynamic_int8(model, set(quantized))
            for name, (weight, bias) in qparams.items():
                dict(model.named_modules())[name].set_weight_bias(weight, bias)
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ModelError(
            f"{path}: weights do not match the {config.arch} config ({_first_line(e)})"
        ) from None
    model.lineage = lineage
    return model.eval()


def _meta_json(meta: dict[str, str], key: str, default: Any) -> Any:
    if key not in meta:
        if default is None:
            raise KeyError(key)
        return default
    return parse_json(meta[key], max_bytes=SAFETENSORS_MAX_HEADER, what=f"metadata {key!r}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _check_shapes(config: ModelConfig, dtype: torch.dtype, tensors: dict[str, torch.Tensor]) -> None:
    """Compare the file's tensors with the config's on the meta device (no memory), so a config that
    asks for a huge model is refused before anything is allocated."""
    with torch.device("meta"):
        want = {k: (tuple(v.shape), v.dtype) for k, v in build_model(config).to(dtype).state_dict().items()}
    floats = {k: v for k, v in want.items() if v[1].is_floating_point}
    got = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    if set(want) != set(got):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise KeyError(f"missing tensors {missing[:3]}, unexpected {extra[:3]}")
    for k, (shape, kind) in want.items():
        if got[k][0] != shape or (k in floats and not got[k][1].is_floating_point):
            raise ValueError(f"tensor {k} is {got[k][0]} {got[k][1]}, the config needs {shape} {kind}")


def _pop_quantized(tensors: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Take a quantized layer's entries out of ``tensors``; the float placeholders it replaces
    (``<name>.weight``/``.bias``) are filled with dequantized values so the float model loads."""
    int8 = tensors.pop(f"{name}.weight.int8")
    scale = float(tensors.pop(f"{name}.weight.scale")[0])
    zero_point = int(tensors.pop(f"{name}.weight.zero_point")[0])
    with warnings.catch_warnings():  # torch deprecates quantized tensors; torch.ao still needs them
        warnings.simplefilter("ignore")
        weight = torch._make_per_tensor_quantized_tensor(int8, scale, zero_point)
    bias = tensors.get(f"{name}.bias")
    tensors[f"{name}.weight"] = weight.dequantize()
    return weight, bias


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: tuple[int, ...]) -> Path:
    """Export logits as a single-file ONNX model with a dynamic batch axis (input 'input')."""
    import logging

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
