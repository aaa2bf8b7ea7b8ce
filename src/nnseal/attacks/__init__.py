"""Tampering attacks: model → model transformations with parameters and a seed.

Each attack returns a new model and leaves its input untouched. ``ATTACKS`` maps a name to an
:class:`Attack` that declares whether it needs training data, so callers can iterate over them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnseal.models.train import fit

if TYPE_CHECKING:
    from nnseal.data import Dataset


def perturb_weight(
    model: nn.Module,
    *,
    relative: float = 0.01,
    param: str = "head.weight",
    index: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Scale one weight of ``param`` by (1 + relative); a seeded random entry unless ``index`` is given."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    if param not in params:
        raise ValueError(f"unknown parameter {param!r}; model has: {', '.join(params)}")
    flat = params[param].data.view(-1)
    i = int(np.random.default_rng(seed).integers(flat.numel())) if index is None else index
    if not 0 <= i < flat.numel():
        raise ValueError(f"index {i} out of range for {param} with {flat.numel()} entries")
    flat[i] *= 1.0 + relative
    return out


def quantize_int8(model: nn.Module) -> nn.Module:
    """torch.ao post-training dynamic int8 quantization of every Linear layer."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def quantize_weights(model: nn.Module, *, bits: int = 8) -> nn.Module:
    """Uniform symmetric per-tensor quantization of every weight to ``bits`` bits (precision
    reduction: 32 → 8 bits is the SSF paper's "4× compression"); values stay float."""
    if not 1 < bits < 32:
        raise ValueError(f"bits must be between 2 and 31, got {bits}")
    out = copy.deepcopy(model)
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.endswith("weight"):
                scale = p.abs().max().clamp_min(1e-12) / levels
                p.copy_(torch.round(p / scale) * scale)
    return out


def prune_global(model: nn.Module, *, amount: float = 0.2) -> nn.Module:
    """torch.nn.utils.prune global unstructured L1 pruning of all conv/linear weights, made permanent."""
    if not 0 < amount < 1:
        raise ValueError(f"amount (sparsity) must be in (0, 1), got {amount}")
    out = copy.deepcopy(model)
    targets = [(m, "weight") for m in out.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for m, name in targets:
        torch_prune.remove(m, name)
    return out


def finetune(
    model: nn.Module,
    data: Dataset,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    batch_size: int = 32,
    last_layer_only: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Continue training on clean data for ``steps`` Adam steps (all layers, or the head only)."""
    out = copy.deepcopy(model)
    params = list(out.head.parameters()) if last_layer_only else list(out.parameters())
    epochs = steps / max(1, -(-len(data) // batch_size))
    return fit(out, data.x, data.y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, params=params)


@dataclass(frozen=True)
class Attack:
    name: str
    fn: Callable[..., nn.Module]
    needs_data: bool
    description: str

    def __call__(self, model: nn.Module, data: Dataset | None = None, **params: Any) -> nn.Module:
        if self.needs_data:
            if data is None:
                raise ValueError(f"attack {self.name} needs training data")
            return self.fn(model, data, **params)
        return self.fn(model, **params)


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in [
        Attack("perturb-weight", perturb_weight, False, "one weight scaled by (1 + relative)"),
        Attack("quantize-int8", quantize_int8, False, "torch.ao dynamic int8 quantization of Linear layers"),
        Attack("quantize-weights", quantize_weights, False, "uniform n-bit weight quantization"),
        Attack("prune", prune_global, False, "global L1 unstructured pruning (torch.nn.utils.prune)"),
        Attack("finetune", finetune, True, "fine-tuning on clean data"),
    ]
}

__all__ = [
    "ATTACKS",
    "Attack",
    "finetune",
    "perturb_weight",
    "prune_global",
    "quantize_int8",
    "quantize_weights",
]
