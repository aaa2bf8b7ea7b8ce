"""Black-box targets: anything that answers a batch of inputs, counted query by query."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

from nnseal.errors import TargetError

Provides = Literal["probabilities", "labels"]


class Target(ABC):
    """A model the verifier can only query.

    ``predict`` takes float32 inputs (N, C, H, W) in [0, 1] and returns either a probability matrix
    (N, classes) or ranked labels (N, k), as ``provides`` declares, so a spec that needs
    probabilities is refused up front on a labels-only target.

    ``queries`` counts inputs as the model's server saw them, in one place, :meth:`count`: the base
    class counts every input given to ``predict``; a target that sends more or other inputs than it
    is given (retries, decoys) sets ``counts_sent`` and calls :meth:`count` where they leave.
    ``max_queries`` caps the count (a :class:`~nnseal.errors.TargetError` of kind ``budget``).
    ``preferred_batch`` is how many queries one ``predict`` call should carry (None: all at once).
    """

    provides: Provides = "probabilities"
    input_shape: tuple[int, ...] | None = None
    """The (C, H, W) the model takes, where the target knows it (local models); None if unknown."""
    num_classes: int | None = None
    """How many classes it answers over, where known."""
    preferred_batch: int | None = 64
    counts_sent: bool = False

    def __init__(self, *, max_queries: int | None = None) -> None:
        if max_queries is not None and max_queries < 0:
            raise ValueError(f"max_queries must be >= 0, got {max_queries}")
        self.queries, self.max_queries = 0, max_queries
        self._count_lock = threading.Lock()

    def count(self, n: int) -> None:
        """Count ``n`` inputs about to be sent, or refuse if that would pass ``max_queries``."""
        with self._count_lock:
            if self.max_queries is not None and self.queries + n > self.max_queries:
                raise TargetError(f"query budget of {self.max_queries} inputs exhausted", "budget")
            self.queries += n

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.counts_sent:
            self.count(len(x))
        return self._predict(x)

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
