"""Covert queries: natural inputs a provider cannot tell from its traffic, chosen to catch tampering.

Sensitive samples and boundary markers are unusually sensitive or unusually close to a decision
boundary, and a provider holding the model can see that (:mod:`nnseal.detectors`). This method sends
natural inputs only (draw them from data the provider has never seen: an exact-match lookup against
its own data would find any it has; ``edits`` moves a few pixels by one grid level against that, at a
measurable cost in the statistics detector) and spends its choice where a provider cannot look: within
strata of the provider-visible suspicion scores (top-1 margin and weight sensitivity), it takes the
candidate that the most simulated tamperings flip and earlier picks do not (the flip-rate idea applied
to natural inputs). Strata are visited in a random order, so every prefix of the selection has the
suspicion profile of natural traffic. The price is detection power: see the README's stealth table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from nnseal.detectors import margin_score, sensitivity_score
from nnseal.grid import to_grid
from nnseal.methods.base import Method, Pool, answers
from nnseal.simulation import default_perturbations, flip_matrix

if TYPE_CHECKING:
    from nnseal.data import Dataset


class CovertInputs(Method):
    """Natural inputs (``edits`` pixels ±1 grid level) selected by flip coverage within suspicion strata.

    Args:
        edits: pixels per input moved by one grid level (0: inputs exactly as in the data).
        strata: suspicion strata (0: one per query asked for).
        **common: see :class:`~nnseal.methods.base.Method`.
    """

    name = "covert"

    def __init__(self, *, pool_size: int = 300, edits: int = 0, strata: int = 0, **common: Any) -> None:
        super().__init__(pool_size=pool_size, **common)
        if edits < 0 or strata < 0:
            raise ValueError(f"edits and strata must be >= 0, got {edits}, {strata}")
        self.edits, self.strata = int(edits), int(strata)
        self.perturbations = default_perturbations(seed=self.seed)

    def own_params(self) -> dict[str, Any]:
        return {"edits": self.edits, "strata": self.strata}

    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        idx = self.draw_seeds(data, rng)
        seeds = to_grid(data.x[idx], data.levels)
        x = _edit(seeds, self.edits, data.levels, rng)
        details = {
            "seed_indices": idx,
            "suspicion": _suspicion(model, x),
        }
        return Pool(x, answers(model, x), seeds, flip_matrix(model, x, self.perturbations), details)

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        """Per stratum of suspicion (visited in random order), the candidate adding the most
        uncovered flips; ties and exhausted coverage fall back to the most flipped overall."""
        assert pool.cover is not None
        strata = np.array_split(np.argsort(pool.details["suspicion"], kind="stable"), self.strata or n)
        strata = [s for s in strata if len(s)]
        covered = np.zeros(pool.cover.shape[1], dtype=bool)
        picks: list[int] = []
        while len(picks) < n:
            for k in rng.permutation(len(strata)):
                free = np.setdiff1d(strata[k], picks)
                if not len(free) or len(picks) == n:
                    continue
                cover = pool.cover[free]
                gain = (cover & ~covered).sum(1) * (cover.shape[1] + 1) + cover.sum(1)
                best = int(free[np.argmax(gain)])
                picks.append(best)
                covered |= pool.cover[best]
                if covered.all():
                    covered[:] = False  # start a new round of coverage
        return np.asarray(picks)


def _edit(x: np.ndarray, edits: int, levels: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` with ``edits`` random pixels per input moved one grid level (up or down, inside [0, 1])."""
    if edits == 0:
        return x
    out = x.reshape(len(x), -1).copy()
    step = np.float32(1.0 / levels)
    for row in out:
        where = rng.choice(row.size, min(edits, row.size), replace=False)
        sign = np.where(rng.random(len(where)) < 0.5, -1, 1)
        sign = np.where(row[where] <= 0, 1, np.where(row[where] >= 1, -1, sign))
        row[where] += sign * step
    return to_grid(out.reshape(x.shape), levels)


def _suspicion(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """What a provider would rank by: the mean percentile of the margin and sensitivity detectors."""
    ranks = [
        np.argsort(np.argsort(s, kind="stable"))
        for s in (margin_score(model, x), sensitivity_score(model, x))
    ]
    return np.mean(ranks, axis=0) / max(len(x) - 1, 1)
