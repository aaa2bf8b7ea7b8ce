"""Black-box targets: anything that answers a batch of inputs, counted query by query."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

Provides = Literal["probabilities", "labels"]


class Target(ABC):
    """A model the verifier can only query.

    ``predict`` takes float32 inputs (N, C, H, W) in [0, 1] and returns either a probability matrix
    (N, classes) or ranked labels (N, k), as ``provides`` declares, so a spec that needs
    probabilities is refused up front on a labels-only target. ``queries`` counts inputs sent.
    """

    provides: Provides = "probabilities"
    input_shape: tuple[int, ...] | None = None
    """The (C, H, W) the model takes, where the target knows it (local models); None if unknown."""
    num_classes: int | None = None
    """How many classes it answers over, where known."""

    def __init__(self) -> None:
        self.queries = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.queries += len(x)
        return self._predict(np.ascontiguousarray(x, dtype=np.float32))

    @abstractmethod
    def _predict(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> str:
        """A one-line description for reports."""

    def stats(self) -> dict[str, Any]:
        """Traffic details for the verdict (remote targets: requests, retries …); none for local ones."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract: local targets hold nothing
        """Release connections (remote targets); nothing to do for local ones."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
