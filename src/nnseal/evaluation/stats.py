"""Missing rates, computed exactly where the selection allows it and by vectorised Monte Carlo
otherwise.

Setting (SSF paper): a fingerprint of N queries detects an attacked model when at least one answer
differs; the missing rate is the probability that none does.

* **Random selection** (natural samples, SS + random): N queries drawn without replacement from a
  pool of P candidates of which D detect the attacked model. The missing rate is hypergeometric,
  ``C(P − D, N) / C(P, N)``, computed exactly — the limit of infinitely many repetitions, so
  Table 5's 10⁸ runs cost nothing. :func:`missing_rate_monte_carlo` simulates the same draws in
  chunks (flat memory) to cross-check.
* **Deterministic selection** (MANC on a given bag): the queries are the first N picks of a fixed
  order, so for each (bag, attacked model) the outcome is known exactly from the position of the
  first detecting pick; repetitions re-draw the bag.

What trials support: a missing rate estimated from n independent trials is only claimed up to its
one-sided 95 % Clopper–Pearson upper bound (:func:`upper_bound`); with no miss that bound is
1 − 0.05^{1/n} ≈ 3/n (:func:`smallest_supported`), so "no miss in 60 trials" supports 0.049, not 1e-8.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.95


def missing_rate_exact(pool_size: int, detecting: int, n_max: int) -> np.ndarray:
    """P(no detecting query among N drawn without replacement), for N = 1..n_max."""
    if not 0 <= detecting <= pool_size:
        raise ValueError(f"need 0 <= detecting <= pool_size, got {detecting} of {pool_size}")
    n = np.arange(n_max)
    ratios = np.clip((pool_size - detecting - n) / np.maximum(pool_size - n, 1), 0.0, 1.0)
    return np.cumprod(ratios)


def missing_rate_monte_carlo(
    pool_size: int, detecting: int, n: int, repetitions: int, seed: int = 0, chunk: int = 1_000_000
) -> float:
    """The same quantity by simulation: the number of detecting queries among N drawn is a
    hypergeometric variate; ``repetitions`` of them are drawn ``chunk`` at a time (memory stays flat)."""
    if not 1 <= n <= pool_size:
        raise ValueError(f"need 1 <= n <= pool_size, got n={n}, pool_size={pool_size}")
    rng = np.random.default_rng(seed)
    misses = 0
    for start in range(0, repetitions, chunk):
        size = min(chunk, repetitions - start)
        misses += int((rng.hypergeometric(detecting, pool_size - detecting, n, size=size) == 0).sum())
    return misses / repetitions


def missing_rate_ordered(first_detection: np.ndarray, n_max: int) -> np.ndarray:
    """Missing rate for N = 1..n_max when queries are the first N of a fixed order, from the index
    of the first detecting query in each trial (``n_max`` or more = never within n_max)."""
    first = np.asarray(first_detection).ravel()
    return np.array([(first >= n).mean() for n in range(1, n_max + 1)])


def first_detection(order: np.ndarray, detects: np.ndarray) -> int:
    """Index in ``order`` of the first query that detects (len(order) if none does)."""
    hits = np.flatnonzero(np.asarray(detects, dtype=bool)[np.asarray(order)])
    return int(hits[0]) if len(hits) else len(order)


def queries_needed(missing: np.ndarray, alpha: float) -> int | None:
    """Smallest N (1-based) with missing rate ≤ alpha, or None if no N in the curve reaches it."""
    ok = np.flatnonzero(np.asarray(missing) <= alpha)
    return int(ok[0]) + 1 if len(ok) else None


def upper_bound(misses: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper bound on a missing rate seen ``misses`` times in ``trials``."""
    if not 0 <= misses <= trials:
        raise ValueError(f"need 0 <= misses <= trials, got {misses} of {trials}")
    if misses == trials:
        return 1.0
    return float(beta.ppf(confidence, misses + 1, trials - misses))


def smallest_supported(trials: int, confidence: float = CONFIDENCE) -> float:
    """The smallest missing rate ``trials`` independent trials can support: the bound at no miss."""
    return upper_bound(0, trials, confidence) if trials else 1.0


def upper_curve(first_detection: np.ndarray, n_max: int, confidence: float = CONFIDENCE) -> np.ndarray:
    """Upper bounds for N = 1..n_max from the first detecting query of independent trials."""
    first = np.asarray(first_detection).ravel()
    return np.array(
        [upper_bound(int((first >= n).sum()), len(first), confidence) for n in range(1, n_max + 1)]
    )


def first_detections(orders: np.ndarray, detects: np.ndarray) -> np.ndarray:
    """Vectorised :func:`first_detection`: orders (T, n) of query indices, detects (T, pool) booleans
    (trial t's attacked model); returns each trial's first detecting position (n if none)."""
    hits = np.take_along_axis(np.asarray(detects, dtype=bool), np.asarray(orders), axis=1)
    return np.where(hits.any(1), hits.argmax(1), hits.shape[1])
