"""Sensitive-Sample Fingerprinting end to end: seeds → bag of sensitive samples → selection →
fingerprint (He, Zhang & Lee, CVPR 2019).

Example::

    fp = SensitiveSampleFingerprinter(n_queries=10, bag_size=100, steps=300).fingerprint(model, data)
    verify(fp, TorchTarget(model)).status   # Status.INTACT
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.manc import manc_select, relu_activations
from nnseal.methods.sensitive import Norm, Output, SensitiveSampleGenerator
from nnseal.models.architectures import check_data
from nnseal.models.io import model_id
from nnseal.outputs import OutputSpec
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

Selection = Literal["manc", "random", "first"]


class SensitiveSampleFingerprinter:
    """Generate a bag of sensitive samples and keep ``n_queries`` of them.

    Args:
        n_queries: fingerprint size N_S.
        bag_size: candidates generated (paper: 500), from seeds drawn at random from ``data``.
        selection: "manc" (Algorithm 2), "random", or "first".
        neurons: module names whose ReLU units MANC covers (default: every ReLU).
        specs: output specs the fingerprint must be valid for (first = default for verify).
        min_margin: a candidate is kept only if every spec's answer survives a relative change of
            every probability by this much (see :meth:`OutputSpec.margin`), so benign numeric noise —
            batch size, threads, ONNX; up to 1.1e-5 measured on a GTSRB LeNet — can't flip it.
        seed: draws the seeds and the random selection.
        epsilon, norm, lr, steps, output, params, batch_size: see :class:`SensitiveSampleGenerator`.
    """

    name = "sensitive-sample"

    def __init__(
        self,
        *,
        n_queries: int = 10,
        bag_size: int = 100,
        selection: Selection = "manc",
        neurons: Sequence[str] | None = None,
        specs: Sequence[str] = ("top1",),
        min_margin: float = 2e-5,
        seed: int = 0,
        epsilon: float = 0.1,
        norm: Norm = "linf",
        lr: float = 1e-2,
        steps: int = 1000,
        output: Output = "probs",
        params: Sequence[str] | None = None,
        batch_size: int = 500,
        progress: bool = False,
    ) -> None:
        if n_queries < 1 or bag_size < n_queries:
            raise ValueError(
                f"need 1 <= n_queries <= bag_size, got n_queries={n_queries}, bag_size={bag_size}"
            )
        if selection not in ("manc", "random", "first"):
            raise ValueError(f"selection must be manc, random or first, got {selection!r}")
        if min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {min_margin}")
        self.n_queries, self.bag_size, self.selection = int(n_queries), int(bag_size), selection
        self.neurons = None if neurons is None else list(neurons)
        self.specs = [OutputSpec.parse(s) for s in specs]
        if not self.specs:
            raise ValueError("specs must name at least one output spec")
        self.min_margin, self.seed = float(min_margin), int(seed)
        self.generator = SensitiveSampleGenerator(
            epsilon=epsilon,
            norm=norm,
            lr=lr,
            steps=steps,
            output=output,
            params=params,
            batch_size=batch_size,
            progress=progress,
        )

    def __repr__(self) -> str:
        return (
            f"SensitiveSampleFingerprinter(n_queries={self.n_queries}, bag_size={self.bag_size}, "
            f"selection={self.selection!r}, generator={self.generator!r})"
        )

    def config(self) -> dict[str, Any]:
        return {
            "n_queries": self.n_queries,
            "bag_size": self.bag_size,
            "selection": self.selection,
            "neurons": self.neurons,
            "min_margin": self.min_margin,
            "seed": self.seed,
            **self.generator.config(),
        }

    def select(self, model: nn.Module, bag: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Indices into ``bag`` (restricted to ``candidates``) for the fingerprint."""
        if self.selection == "first":
            return candidates[: self.n_queries]
        if self.selection == "random":
            rng = np.random.default_rng(self.seed)
            return np.sort(rng.choice(candidates, self.n_queries, replace=False))
        active = relu_activations(model, bag[candidates], self.neurons)
        return candidates[manc_select(active, self.n_queries)]

    def fingerprint(self, model: nn.Module, data: Dataset) -> Fingerprint:
        """Generate, filter by margin, select; record answers, parameters and provenance."""
        check_data(model, data.input_shape, len(data.classes))
        rng = np.random.default_rng(self.seed)
        seed_idx = np.sort(rng.choice(len(data), min(self.bag_size, len(data)), replace=False))
        bag = self.generator.generate(model, data.x[seed_idx])
        probs = TorchTarget(model).predict(bag.x)
        margin = np.min([s.margin(probs) for s in self.specs], axis=0)
        candidates = np.flatnonzero(margin >= self.min_margin)
        if len(candidates) < self.n_queries:
            raise NnsealError(
                f"only {len(candidates)} of {len(bag.x)} samples clear min_margin={self.min_margin}; "
                "generate a larger bag or lower min_margin"
            )
        chosen = self.select(model, bag.x, candidates)
        return Fingerprint(
            queries=bag.x[chosen],
            probabilities=probs[chosen],
            specs=[str(s) for s in self.specs],
            model_id=model_id(model),
            method=self.name,
            params=self.config(),
            seeds=bag.seeds[chosen],
            provenance={
                "dataset": data.name,
                "seed_indices": seed_idx[chosen].tolist(),
                "bag_size": len(bag.x),
                "bag_candidates": len(candidates),
                "sensitivity": bag.sensitivity[chosen].tolist(),
                "seed_sensitivity": bag.seed_sensitivity[chosen].tolist(),
                "torch": torch.__version__,
            },
        )
