"""Compression attacks with the real tools: torch.ao quantization, torch.nn.utils.prune, ONNX
Runtime quantization; plus dtype casts and n-bit precision reduction (the SSF "4x compression")."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnseal.attacks.base import AttackContext, register
from nnseal.models.io import DTYPES, export_onnx, quantize_dynamic_int8
from nnseal.models.train import fit, steps_to_epochs


@register("quantize-int8")
def quantize_int8(model: nn.Module, ctx: AttackContext, *, layers: str = "all") -> nn.Module:
    """torch.ao post-training dynamic int8 quantization of Linear layers (all, or comma-separated names)."""
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = linear if layers == "all" else set(layers.split(","))
    if not chosen or not chosen <= linear:
        raise ValueError(f"layers must be 'all' or Linear layer names from: {', '.join(sorted(linear))}")
    return quantize_dynamic_int8(model, chosen)


@register("quantize-bits")
def quantize_bits(
    model: nn.Module, ctx: AttackContext, *, bits: int = 8, per_channel: bool = False
) -> nn.Module:
    """Uniform symmetric n-bit quantization of every weight (precision reduction; values stay float)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                dims = tuple(range(1, p.dim())) if per_channel else tuple(range(p.dim()))
                scale = p.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / levels
                p.copy_(torch.round(p / scale) * scale)
    return model


@register("cast")
def cast(model: nn.Module, ctx: AttackContext, *, dtype: str = "float16") -> nn.Module:
    """Cast all weights and computation to float16 or bfloat16."""
    if dtype not in DTYPES or dtype == "float32":
        raise ValueError(f"dtype must be float16 or bfloat16, got {dtype!r}")
    return model.to(DTYPES[dtype])


@register("prune")
def prune(
    model: nn.Module,
    ctx: AttackContext,
    *,
    amount: float = 0.5,
    structured: bool = False,
    finetune_steps: int = 0,
    lr: float = 1e-3,
) -> nn.Module:
    """torch.nn.utils.prune: global L1 unstructured, or per-layer L2 structured (output channels/rows)
    at sparsity ``amount``, made permanent; optionally fine-tuned with the pruned weights kept at zero."""
    if not 0 < amount < 1:
        raise ValueError(f"amount (sparsity) must be in (0, 1), got {amount}")
    targets = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if structured:
        targets = targets[:-1]  # pruning output rows of the head would delete classes
        for m in targets:
            torch_prune.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    else:
        torch_prune.global_unstructured(
            [(m, "weight") for m in targets], pruning_method=torch_prune.L1Unstructured, amount=amount
        )
    if finetune_steps > 0:  # the masks stay in place while training, so pruned weights stay zero
        train = ctx.require_train("prune with finetune_steps")
        epochs = steps_to_epochs(finetune_steps, len(train), batch_size=64)
        fit(model, train.x, train.y, epochs=epochs, lr=lr, batch_size=64, seed=ctx.seed)
    for m in targets:
        torch_prune.remove(m, "weight")
    ctx.metrics["sparsity"] = float(
        sum(int((m.weight == 0).sum()) for m in targets) / sum(m.weight.numel() for m in targets)
    )
    return model


@register("onnx-quantize", produces="onnx")
def onnx_quantize(
    model: nn.Module, ctx: AttackContext, *, mode: str = "dynamic", calibration: int = 256
) -> bytes:
    """ONNX Runtime int8 quantization of the exported ONNX model (dynamic, or static calibrated on
    ``calibration`` training inputs); the attacked model is an ONNX file run in ONNX Runtime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("dynamic", "static"):
        raise ValueError(f"mode must be dynamic or static, got {mode!r}")
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("onnx-quantize needs an nnseal model (its config gives the input shape)")
    with tempfile.TemporaryDirectory(prefix="nnseal-onnx-quantize-") as tmp:
        work = Path(tmp)
        src = export_onnx(model, work / "float.onnx", cfg.input_shape)
        pre = work / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre))  # quantize_* fail on the exporter's raw output without it
        out = work / f"int8-{mode}.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
        else:
            train = ctx.require_train("onnx-quantize static")
            idx = ctx.rng().choice(len(train), min(calibration, len(train)), replace=False)
            x = train.x[np.sort(idx)]

            class Calibration(CalibrationDataReader):
                """A few batches of training inputs, as ONNX Runtime's calibration expects them."""

                def __init__(self) -> None:
                    self.batches = iter([{"input": x[i : i + 32]} for i in range(0, len(x), 32)])

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.batches, None)

            quantize_static(str(pre), str(out), Calibration())
        return out.read_bytes()
