"""Owner-side (white-box) inference: what methods and attacks compute on a model they hold.

Kept apart from :class:`~nnseal.targets.local.TorchTarget`, which is a black box that counts
queries: a method computing a model's answers is not querying a deployment. Both compute
probabilities through :func:`probabilities`, so the answers a fingerprint records are exactly what a
local target returns for the same batch size.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from nnseal.errors import ModelError
from nnseal.models.architectures import ModelConfig
from nnseal.models.io import model_dtype


@runtime_checkable
class WhiteBox(Protocol):
    """What methods that look inside a model rely on (every nnseal ``Classifier`` has it): its
    config, its last linear layer ``head`` and ``penultimate(x)``, the input of ``head``."""

    config: ModelConfig
    head: nn.Linear

    def penultimate(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def white_box(model: nn.Module, what: str) -> WhiteBox:
    """``model`` as a :class:`WhiteBox`, or a clear error naming what needs it."""
    if not isinstance(model, WhiteBox) or not isinstance(model.head, nn.Linear):
        raise ModelError(
            f"{what} needs an nnseal model (config, a linear `head` and `penultimate`), "
            f"got {type(model).__name__}; load it with nnseal.models.load_model"
        )
    return model


@torch.no_grad()
def probabilities(model: nn.Module, x: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """Softmax of ``model``'s logits on ``x`` (float32), ``batch_size`` inputs per forward (None: all)."""
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(model_dtype(model))
    bs = batch_size or max(1, len(xt))
    if not len(xt):
        return np.zeros((0, 0), np.float32)
    logits = torch.cat([model(xt[i : i + bs]) for i in range(0, len(xt), bs)])
    return torch.softmax(logits.float(), dim=1).numpy()
