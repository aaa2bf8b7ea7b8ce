"""Maximum Active-Neuron Cover selection — He, Zhang & Lee (CVPR 2019), Algorithm 2.

A weight feeding or leaving a ReLU unit that is inactive on an input has zero gradient there, so
its change cannot show in that input's output. MANC therefore picks, greedily, the samples that
together activate the most neurons: greedy maximum coverage over each candidate's set of active
units. When no candidate adds coverage any more, the cover restarts from the full neuron set so a
later pick still prefers samples covering many neurons (the paper leaves this case open).

Example::

    active = relu_activations(model, bag)       # bool (N, n_neurons)
    chosen = manc_select(active, k=10)          # indices into bag
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def relu_modules(model: nn.Module) -> list[str]:
    """Names of every ``nn.ReLU`` module: the default neurons of interest."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


@torch.no_grad()
def relu_activations(
    model: nn.Module, x: np.ndarray, modules: Sequence[str] | None = None, batch_size: int = 256
) -> np.ndarray:
    """Boolean matrix (N, n_neurons): unit j of the chosen modules' outputs is > 0 on input i."""
    names = list(modules) if modules is not None else relu_modules(model)
    table = dict(model.named_modules())
    missing = [n for n in names if n not in table]
    if missing or not names:
        raise ValueError(
            f"unknown neuron module(s) {missing or '(none)'}; ReLU modules: {relu_modules(model)}"
        )
    captured: list[torch.Tensor] = []
    hooks = [
        table[n].register_forward_hook(lambda _m, _i, out: captured.append(out.flatten(1) > 0)) for n in names
    ]
    rows = []
    try:
        model.eval()
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        for i in range(0, len(xt), batch_size):
            captured.clear()
            model(xt[i : i + batch_size])
            rows.append(torch.cat(captured, dim=1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(rows)


def manc_select(active: np.ndarray, k: int) -> list[int]:
    """Greedy maximum coverage: ``k`` distinct row indices of ``active`` (ties → lowest index).

    Rows are bit-packed and gains counted with popcount, so a bag of 500 candidates over tens of
    thousands of neurons takes milliseconds per pick.
    """
    active = np.asarray(active, dtype=bool)
    if active.ndim != 2:
        raise ValueError(f"active must be a 2-D boolean matrix, got shape {active.shape}")
    if not 0 < k <= len(active):
        raise ValueError(f"k must be between 1 and the number of candidates ({len(active)}), got {k}")
    packed = np.packbits(active, axis=1)
    everything = np.packbits(np.ones(active.shape[1], dtype=bool))
    uncovered = everything.copy()
    available = np.ones(len(active), dtype=bool)
    chosen: list[int] = []
    for _ in range(k):
        gain = np.where(available, np.bitwise_count(packed & uncovered).sum(1, dtype=np.int64), -1)
        if gain.max() == 0:  # everything coverable is covered: start a new cover
            uncovered = everything.copy()
            gain = np.where(available, np.bitwise_count(packed & uncovered).sum(1, dtype=np.int64), -1)
        best = int(gain.argmax())
        chosen.append(best)
        available[best] = False
        uncovered &= ~packed[best]
    return chosen
