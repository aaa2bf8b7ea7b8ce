"""Stealthy verification: fingerprint queries hidden among natural inputs and paced like normal use.

Sensitive samples sent in one burst, in a fixed order, are easy for a dishonest server to spot and
answer from the original model. :class:`StealthTarget` shuffles each batch it is given together
with decoys — natural inputs (test images, or the fingerprint's seeds) — sends them in small
requests with a randomized delay between them, and returns only the fingerprint's answers. Decoy
answers are never compared; a failed decoy request is counted and ignored.

Its ``preferred_batch`` is None, so :func:`nnseal.query.query` gives it the whole fingerprint at once
and all of it is shuffled together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nnseal.errors import TargetError
from nnseal.targets.base import Target


class StealthTarget(Target):
    """Wraps ``inner``: per batch, ``round(decoy_ratio × N)`` decoys drawn from ``decoys`` (M, C, H, W)
    are shuffled in, sent ``batch_size`` inputs per call, ``delay`` ± ``jitter`` seconds apart.

    ``queries`` counts every input sent to ``inner``, decoys included, as the server sees them.

    Example::

        target = StealthTarget(HttpTarget(url, V2Protocol("digits")), test.x, decoy_ratio=3, delay=0.5)
        verdict = verify(fingerprint, target)
    """

    def __init__(
        self,
        inner: Target,
        decoys: np.ndarray,
        *,
        decoy_ratio: float = 1.0,
        batch_size: int = 1,
        delay: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        decoys = np.asarray(decoys, dtype=np.float32)
        if decoys.ndim != 4 or len(decoys) == 0:
            raise ValueError(f"decoys must be a non-empty (M, C, H, W) array, got shape {decoys.shape}")
        if decoy_ratio < 0 or batch_size < 1 or delay < 0 or jitter < 0:
            raise ValueError("decoy_ratio, delay and jitter must be >= 0 and batch_size >= 1")
        self.inner, self.decoys, self.decoy_ratio = inner, decoys, decoy_ratio
        self.batch_size, self.delay, self.jitter = batch_size, delay, jitter
        self.provides = inner.provides
        self._rng = np.random.default_rng(seed)
        self._sleep = sleep
        self.decoys_sent = self.decoys_failed = 0

    preferred_batch = None
    counts_sent = True  # what ``inner`` sent, decoys included

    def _predict(self, x: np.ndarray) -> np.ndarray:
        before = self.inner.queries
        try:
            return self._shuffled(x)
        finally:
            self.count(self.inner.queries - before)

    def _shuffled(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1:] != self.decoys.shape[1:]:
            raise ValueError(f"decoys have shape {self.decoys.shape[1:]}, queries {x.shape[1:]}")
        n = len(x)
        k = round(self.decoy_ratio * n)
        picked = self._rng.choice(len(self.decoys), k, replace=k > len(self.decoys))
        items = np.concatenate([x, self.decoys[picked]])
        order = self._rng.permutation(n + k)
        answers: list[np.ndarray | None] = [None] * n
        for start in range(0, n + k, self.batch_size):
            if start:
                self._sleep(max(0.0, self.delay + self._rng.uniform(-self.jitter, self.jitter)))
            sel = order[start : start + self.batch_size]
            real = sel < n
            self.decoys_sent += int((~real).sum())
            try:
                out = np.asarray(self.inner.predict(items[sel]))
                if len(out) != len(sel):
                    raise TargetError(
                        f"target returned {len(out)} answers for {len(sel)} inputs", "wrong-shape"
                    )
            except TargetError:
                if real.any():
                    raise
                self.decoys_failed += 1
                continue
            for j in np.flatnonzero(real):
                answers[sel[j]] = out[j]
        return np.stack(answers) if n else np.zeros((0, 0), np.float32)  # type: ignore[arg-type]

    def describe(self) -> str:
        return (
            f"{self.inner.describe()}, stealth (decoys x{self.decoy_ratio:g}, "
            f"delay {self.delay:g}±{self.jitter:g} s)"
        )

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, Any]:
        return {
            **self.inner.stats(),
            "decoys_sent": self.decoys_sent,
            "decoy_requests_failed": self.decoys_failed,
        }
