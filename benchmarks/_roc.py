"""ROC helpers the ownership benchmarks share: a suspect's score against held-out independent models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann–Whitney)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def roc_points(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) of "claim if score ≥ t" for every threshold t, from (0, 0) to (1, 1)."""
    ts = sorted(set(pos) | set(neg), reverse=True)
    fpr = [0.0] + [float(np.mean(np.asarray(neg) >= t)) for t in ts]
    tpr = [0.0] + [float(np.mean(np.asarray(pos) >= t)) for t in ts]
    return fpr, tpr


def tpr_at_fpr(pos: Sequence[float], neg: Sequence[float], fpr: float = 0.01) -> tuple[float, float]:
    """The best TPR whose cut (claim iff score > cut) lets at most ``fpr`` of the negatives through."""
    allowed = int(np.floor(fpr * len(neg)))
    cut = float(np.sort(neg)[::-1][allowed]) if allowed < len(neg) else -np.inf
    return float(np.mean(np.asarray(pos) > cut)), cut
