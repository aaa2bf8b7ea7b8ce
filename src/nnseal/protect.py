"""Parasitic layers against model extraction (Chabanne, Despiegel & Guiga, arXiv 2005.12782).

:func:`protect` inserts into an nnseal MLP small networks ``Linear(d, width) → ReLU →
Linear(width, d)`` trained to a *noisy identity* on the model's own activations at that point over
the training data (minimise ‖P(a) − (a + η)‖², η ~ N(0, (noise · std(a))²) drawn afresh every
step, from a random initialisation). The protected model predicts almost as before but has extra
ReLUs whose bends sit where no original neuron's do, so an attacker who reconstructs the network
layer by layer from its piecewise-linear structure meets a deeper network than the one trained.

The paper's insertion points, block architecture, noise model and schedule were not retrieved
(``shared/research/papers.md`` §4); this is the reconstruction described there, for MLPs only
(the CNN variant, a small conv net at the input, is not implemented). Positions: 0 = at the
(normalised, flattened) input, k = after the k-th hidden ReLU. Default: after the first hidden
layer. What it does and does not stop is measured by ``benchmarks/bench_protect.py``.

Example::

    protected = protect(model, train, at=(1,), width=128, noise=0.05)
    save_model(protected, "protected.safetensors")   # loads with load_model, exports to ONNX
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from nnseal.errors import ModelError
from nnseal.models.architectures import MLP_DEFAULT_HIDDEN, Classifier, build_model, check_data

if TYPE_CHECKING:
    from nnseal.data import Dataset

DEFAULT_AT = (1,)


def protect(
    model: Classifier,
    train: Dataset,
    *,
    at: tuple[int, ...] = DEFAULT_AT,
    width: int | None = None,
    noise: float = 0.05,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> Classifier:
    """A copy of the MLP ``model`` with a parasitic layer at each position of ``at``.

    Args:
        at: insertion points, 0 (input) .. number of hidden layers; default ``(1,)``.
        width: hidden width of each parasitic layer (default twice the activation width there).
        noise: standard deviation of the target noise, relative to each activation's std on ``train``.
        epochs, lr, batch_size, seed: Adam on ``train``'s activations, seeded.
    """
    config = getattr(model, "config", None)
    if not isinstance(model, Classifier) or config is None or config.arch != "mlp":
        arch = getattr(config, "arch", type(model).__name__)
        raise ModelError(f"protect needs an nnseal mlp model, got {arch} (parasitic layers are MLP-only)")
    if config.parasitic:
        raise ModelError("the model already has parasitic layers")
    hidden = config.hidden or MLP_DEFAULT_HIDDEN
    at = tuple(sorted(set(int(p) for p in at)))
    if not at or not all(0 <= p <= len(hidden) for p in at):
        raise ModelError(
            f"at: want positions in 0..{len(hidden)} (0 = input, k = after hidden layer k), got {at}"
        )
    if width is not None and not 1 <= width <= 1 << 16:
        raise ModelError(f"width: want 1..65536, got {width}")
    if not 0 <= noise <= 10 or epochs < 1 or lr <= 0 or batch_size < 1:
        raise ModelError(
            f"want 0 <= noise <= 10, epochs >= 1, lr > 0, batch_size >= 1; "
            f"got {noise}, {epochs}, {lr}, {batch_size}"
        )
    check_data(model, train.input_shape, len(train.classes), "training data")
    dims = [int(np.prod(config.input_shape)), *hidden]
    widths = {p: width or 2 * dims[p] for p in at}
    new_config = dataclasses.replace(config, parasitic=tuple((p, widths[p]) for p in at))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = build_model(new_config).to(torch.float32)
    _copy_host(model, out)
    host_features = list(model.features.children())  # Flatten, (Linear, ReLU) * depth
    with torch.no_grad():
        a = model.normalize(torch.as_tensor(train.x, dtype=torch.float32))
        acts = {}
        for k in range(len(hidden) + 1):
            if k == 0:
                a = host_features[0](a)
            else:
                a = host_features[2 * k](host_features[2 * k - 1](a))
            acts[k] = a
    blocks = [m for m in out.features.children() if isinstance(m, nn.Sequential)]
    for block, p in zip(blocks, at, strict=True):
        _train_identity(
            block, acts[p], noise=noise, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + p
        )
    out.lineage = [
        *getattr(model, "lineage", []),
        {"attack": "protect", "explicit": {"at": list(at), "width": width, "noise": noise},
         "params": {"at": list(at), "widths": [widths[p] for p in at], "noise": noise, "epochs": epochs,
                    "lr": lr, "batch_size": batch_size}, "seed": seed},
    ]  # fmt: skip
    return out.eval()


def _copy_host(src: Classifier, dst: Classifier) -> None:
    """Normalisation, head and every host Linear of ``src`` into ``dst`` (parasitic blocks skipped)."""
    src_lin = [m for m in src.features.children() if isinstance(m, nn.Linear)]
    dst_lin = [m for m in dst.features.children() if isinstance(m, nn.Linear)]
    for s, d in [*zip(src_lin, dst_lin, strict=True), (src.head, dst.head), (src.normalize, dst.normalize)]:
        d.load_state_dict(s.state_dict())


def _train_identity(block: nn.Module, a: torch.Tensor, *, noise: float, epochs: int, lr: float,
                    batch_size: int, seed: int) -> None:  # fmt: skip
    """Minimise ‖block(a) − (a + η)‖², η ~ N(0, (noise · std(a))²) fresh each step."""
    std = a.std(0, keepdim=True).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(block.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    block.train()
    for _ in range(epochs):
        perm = torch.randperm(len(a), generator=gen)
        for i in range(0, len(a), batch_size):
            x = a[perm[i : i + batch_size]]
            target = x + noise * std * torch.randn(x.shape, generator=gen)
            opt.zero_grad()
            nn.functional.mse_loss(block(x), target).backward()
            opt.step()
        sched.step()
    block.eval()
