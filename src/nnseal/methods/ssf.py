"""Sensitive-Sample Fingerprinting end to end: seeds → bag of sensitive samples → selection →
fingerprint (He, Zhang & Lee, CVPR 2019).

Example::

    fp = SensitiveSampleFingerprinter(n_queries=10, pool_size=100, steps=300).fingerprint(model, data)
    verify(fp, TorchTarget(model)).status   # Status.INTACT
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from nnseal.methods.base import Method, Pool, answers, names
from nnseal.methods.manc import relu_activations
from nnseal.methods.sensitive import Norm, SensitiveSampleGenerator, SensitivityOf

if TYPE_CHECKING:
    from nnseal.data import Dataset

Selection = Literal["manc", "random", "first"]


class SensitiveSampleFingerprinter(Method):
    """Generate sensitive samples from ``pool_size`` seeds and keep ``n_queries`` of them.

    Args:
        selection: "manc" (Algorithm 2: greedy cover of the ReLU units each sample activates),
            "random", or "first".
        neurons: module names whose ReLU units MANC covers (default: every ReLU).
        epsilon, norm, lr, steps, of, params, batch_size: see :class:`SensitiveSampleGenerator`.
        **common: ``n_queries``, ``pool_size`` (the paper's bag, 500 there), ``specs``, ``min_margin``
            (benign numeric noise — batch size, threads, ONNX; up to 1.1e-5 measured on a GTSRB LeNet —
            must not flip a kept answer), ``seed``, ``progress``: see :class:`~nnseal.methods.base.Method`.
    """

    name = "sensitive-sample"

    def __init__(
        self,
        *,
        selection: Selection = "manc",
        neurons: Sequence[str] | str | None = None,
        epsilon: float = 0.1,
        norm: Norm = "linf",
        lr: float = 1e-2,
        steps: int = 1000,
        of: SensitivityOf = "probs",
        params: Sequence[str] | str | None = None,
        batch_size: int = 500,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if selection not in ("manc", "random", "first"):
            raise ValueError(f"selection must be manc, random or first, got {selection!r}")
        self.selection, self.neurons = selection, names(neurons)
        self.generator = SensitiveSampleGenerator(
            epsilon=epsilon,
            norm=norm,
            lr=lr,
            steps=steps,
            of=of,
            params=names(params),
            batch_size=batch_size,
            progress=self.progress,
        )

    def __repr__(self) -> str:
        return (
            f"SensitiveSampleFingerprinter(n_queries={self.n_queries}, pool_size={self.pool_size}, "
            f"selection={self.selection!r}, generator={self.generator!r})"
        )

    def own_params(self) -> dict[str, Any]:
        return {"selection": self.selection, "neurons": self.neurons, **self.generator.config()}

    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        idx = self.draw_seeds(data, rng)
        bag = self.generator.generate(model, data.x[idx], levels=data.levels)
        cover = relu_activations(model, bag.x, self.neurons) if self.selection == "manc" else None
        details = {
            "seed_indices": idx,
            "sensitivity": bag.sensitivity,
            "seed_sensitivity": bag.seed_sensitivity,
        }
        return Pool(bag.x, answers(model, bag.x), bag.seeds, cover, details)

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.selection == "first":
            return np.arange(n)
        return super().select(pool, n, rng)
