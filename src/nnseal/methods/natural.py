"""Natural inputs as they are: the baseline every method is measured against (SSF paper, Table 3's
"non-sensitive" column), and the smallest example of a :class:`~nnseal.methods.base.Method`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from nnseal.grid import to_grid
from nnseal.methods.base import Method, Pool, answers

if TYPE_CHECKING:
    from nnseal.data import Dataset


class NaturalInputs(Method):
    """``n_queries`` inputs drawn at random from the data, kept only if their answers clear the margin."""

    name = "natural"
    white_box = False

    def own_params(self) -> dict[str, Any]:
        return {}

    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        idx = self.draw_seeds(data, rng)
        x = to_grid(data.x[idx], data.levels)  # real data already is; generated data may not be
        return Pool(x, answers(model, x), seeds=x, details={"seed_indices": idx})
