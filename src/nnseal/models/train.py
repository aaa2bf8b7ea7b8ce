"""Seeded training loop for the reference models (Adam, cross-entropy, progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.models.architectures import Classifier, ModelConfig, build_model

if TYPE_CHECKING:
    from nnseal.data import Dataset


def config_for(data: Dataset, arch: str, **kwargs: object) -> ModelConfig:
    """A config whose normalisation is the training data's per-channel mean and std."""
    mean = tuple(float(m) for m in data.x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in data.x.std(axis=(0, 2, 3)))
    return ModelConfig(
        arch=arch, input_shape=data.input_shape, classes=data.classes, mean=mean, std=std, **kwargs
    )  # type: ignore[arg-type]


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])


def evaluate_accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy on ``data``."""
    pred = predict_logits(model, data.x, batch_size).argmax(1).numpy()
    return float((pred == data.y).mean())


def steps_to_epochs(steps: int, n: int, batch_size: int) -> float:
    """The (fractional) epochs :func:`fit` needs to take ``steps`` optimiser steps on ``n`` inputs."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps / max(1, -(-n // batch_size))


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    params: list[nn.Parameter] | None = None,
    optimizer: str = "adam",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> nn.Module:
    """Minimise ``loss(logits, y)`` on (x, y) with Adam or SGD (momentum 0.9); ``epochs`` may be
    fractional. The default loss is cross-entropy on integer labels; another loss takes ``y`` as
    float targets (distillation: soft labels)."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be adam or sgd, got {optimizer!r}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as inputs, and at least one (got {len(x)} and {len(y)})")
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64 if loss is None else torch.float32)
    loss = loss or nn.functional.cross_entropy
    trainable = params if params is not None else list(model.parameters())
    opt = torch.optim.Adam(trainable, lr=lr) if optimizer == "adam" else torch.optim.SGD(trainable, lr, 0.9)
    steps_per_epoch = max(1, -(-len(xt) // batch_size))
    total = max(1, round(epochs * steps_per_epoch))
    model.train()
    perm = torch.randperm(len(xt), generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for step in tqdm(range(total), desc=desc, disable=not progress, leave=False):
            if step % steps_per_epoch == 0 and step:
                perm = torch.randperm(len(xt), generator=gen)
            idx = perm[(step % steps_per_epoch) * batch_size :][:batch_size]
            opt.zero_grad()
            loss(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def train_model(
    train: Dataset,
    arch: str = "lenet",
    *,
    epochs: float = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Classifier:
    """Build ``arch`` for ``train``'s shape and classes and train it from a seeded initialisation."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config_for(train, arch))
    fit(
        model,
        train.x,
        train.y,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        desc=f"train {arch}",
    )
    return model  # type: ignore[return-value]
