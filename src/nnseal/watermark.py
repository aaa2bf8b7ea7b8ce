"""Ownership verification of a frontier-stitching watermark through any black-box target.

Decision rule (papers.md §2): query the key, count the errors m (answers that differ from the key's
labels), and claim the watermark iff m < θ, where θ is the smallest t with P_null(M ≤ t) ≥ α and M is
the number of errors a model that is NOT watermarked makes. The paper's null is Binomial(ℓ, 1/2):
each key answered correctly with probability 1/2. The level α is fixed before querying.

Keys that got no valid answer (failures, or a budget smaller than the key) are unknown. The verdict
is *watermarked* only if m stays below θ even with every unknown key counted as an error, and
*not-watermarked* only if m ≥ θ already; anything between is *inconclusive* — never a claim either
way. The sequential variant stops as soon as one of the two is certain (the same decision as the
full test, so the same error rates, with fewer queries). The reported p-value counts unknown keys
as errors, so it is exact when every key was answered and conservative otherwise.

The 1/2 null is an assumption: independently trained models may agree with the key more often.
:meth:`NullModel.calibrate` fits the null to the key accuracies of models known not to be
watermarked (a beta-binomial, which also covers model-to-model spread) for use instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.frontier import METHOD
from nnseal.query import Answers, Decision, Verdict, evidence, query
from nnseal.targets.base import Target


class Ownership(Decision):
    WATERMARKED = "watermarked"
    NOT_WATERMARKED = "not-watermarked"
    INCONCLUSIVE = "inconclusive"

    @property
    def exit_code(self) -> int:
        """CLI exit code (2 is reserved for usage and input errors), as for tamper verification."""
        return {"watermarked": 0, "not-watermarked": 1, "inconclusive": 3}[self.value]


@dataclass(frozen=True)
class NullModel:
    """How many of ℓ keys a model that is not watermarked answers correctly.

    ``binomial``: each key independently with probability ``p`` (the paper: 1/2).
    ``beta-binomial``: the per-model probability varies as Beta(a, b) — fitted by
    :meth:`calibrate` when null models spread more than a binomial allows.
    """

    kind: Literal["binomial", "beta-binomial"] = "binomial"
    p: float = 0.5
    a: float = 0.0
    b: float = 0.0
    calibration_models: int = 0

    @classmethod
    def calibrate(cls, key_accuracies: Sequence[float], key_size: int) -> NullModel:
        """Method-of-moments fit to the key accuracies of ≥ 2 models known not to be watermarked.

        The fit is only as good as the null models are representative of an innocent model
        (architectures, data, training); with n models, tail probabilities far below 1/n are
        extrapolated by the beta-binomial shape.
        """
        acc = np.asarray(key_accuracies, dtype=np.float64)
        if acc.ndim != 1 or len(acc) < 2 or not ((acc >= 0) & (acc <= 1)).all():
            raise ValueError("calibration needs the key accuracies (in [0, 1]) of at least 2 null models")
        n = int(key_size)
        counts = np.round(acc * n)
        p = float(counts.mean() / n)
        if p in (0.0, 1.0):
            return cls("binomial", p, calibration_models=len(acc))
        rho = (counts.var(ddof=1) / (n * p * (1 - p)) - 1) / max(n - 1, 1)
        if rho <= 0:  # no more spread than a binomial: the binomial at the pooled rate
            return cls("binomial", p, calibration_models=len(acc))
        total = 1 / rho - 1
        return cls("beta-binomial", p, p * total, (1 - p) * total, len(acc))

    def correct_pmf(self, n: int) -> np.ndarray:
        """P(C = c) for c = 0..n correct answers out of n keys."""
        c = np.arange(n + 1)
        if self.kind == "binomial":
            logs = [math.log(math.comb(n, k)) for k in c]
            with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 or 1: 0 · log 0 counts as 0
                lp, lq = np.log(self.p), np.log1p(-self.p)
                terms = np.array(logs) + np.where(c > 0, c * lp, 0.0) + np.where(c < n, (n - c) * lq, 0.0)
            return np.exp(terms)
        lbeta = math.lgamma(self.a) + math.lgamma(self.b) - math.lgamma(self.a + self.b)
        pmf = [
            math.exp(
                math.log(math.comb(n, k))
                + math.lgamma(k + self.a)
                + math.lgamma(n - k + self.b)
                - math.lgamma(n + self.a + self.b)
                - lbeta
            )
            for k in c
        ]
        return np.array(pmf)

    def error_cdf(self, n: int) -> np.ndarray:
        """P(M ≤ t) for t = 0..n errors (M = n − C)."""
        return np.minimum(np.cumsum(self.correct_pmf(n)[::-1]), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER_NULL = NullModel()


def threshold(key_size: int, alpha: float = 0.05, null: NullModel = PAPER_NULL) -> int:
    """θ = min{t : P_null(M ≤ t) ≥ α}; the watermark is claimed iff the errors m < θ."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if key_size < 1:
        raise ValueError(f"key_size must be >= 1, got {key_size}")
    return int(np.argmax(null.error_cdf(key_size) >= alpha - 1e-12))


def p_value(errors: int, key_size: int, null: NullModel = PAPER_NULL) -> float:
    """P_null(M ≤ errors): how likely a model that is not watermarked makes this few errors."""
    return float(null.error_cdf(key_size)[errors])


@dataclass(kw_only=True)
class OwnershipVerdict(Verdict):
    """Does the target carry the watermark? ``errors`` / ``correct``: key answers that differ from /
    match the key's labels; ``theta``: the claim needs fewer errors than this at level ``alpha``."""

    kind: str = "ownership"
    status: Ownership
    alpha: float
    theta: int
    errors: int
    correct: int
    p_value: float
    key_accuracy: float | None
    sequential: bool
    null: dict[str, Any] = field(default_factory=dict)


def verify_watermark(
    key: Fingerprint,
    target: Target,
    *,
    alpha: float = 0.05,
    null: NullModel = PAPER_NULL,
    sequential: bool = False,
    budget: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> OwnershipVerdict:
    """Query ``target`` with the watermark key and decide at level ``alpha`` (see module docstring).

    Args:
        null: the distribution of correct answers of a model that is not watermarked.
        sequential: query only as many keys as the decision needs; a batch is never larger than
            the fewest further answers that could decide, so no query is wasted.
        budget: most queries to send; keys left unqueried count as unknown.
        batch_size: most queries per ``predict`` call (default: the target's preferred size).
    """
    if key.method != METHOD or key.labels is None:
        raise NnsealError(f"not a {METHOD} watermark key (method {key.method!r}, labels missing)")
    labels = key.labels
    n = len(key)
    theta = threshold(n, alpha, null)
    if theta == 0:
        raise NnsealError(
            f"a key of {n} inputs cannot reach alpha={alpha} under this null: even 0 errors are "
            "that likely for a model that is not watermarked (use a longer key or a larger alpha)"
        )

    def tally(answers: Answers) -> tuple[int, int]:
        idx, got = answers.labels()
        correct = int((got == labels[idx]).sum())
        return len(idx) - correct, correct

    def next_batch(answers: Answers, size: int) -> int:
        errors, correct = tally(answers)
        unknown = n - errors - correct
        if errors >= theta or errors + unknown < theta:
            return 0
        return min(size, max(1, min(theta - errors, unknown - (theta - 1 - errors))))

    answers = query(
        key,
        target,
        budget=budget,
        batch_size=batch_size,
        next_batch=next_batch if sequential else None,
        progress=progress,
        desc="verify watermark",
    )
    errors, correct = tally(answers)
    unknown = n - errors - correct
    if errors >= theta:
        status = Ownership.NOT_WATERMARKED
        reason = f"{errors} key errors >= theta={theta}: no evidence of the watermark at alpha={alpha}"
    elif errors + unknown < theta:
        status = Ownership.WATERMARKED
        reason = f"{errors} key errors < theta={theta}" + (
            f" even if the {unknown} unqueried keys were all wrong" if unknown else ""
        )
    else:
        why = ""
        if answers.failed:
            causes = ", ".join(f"{k}: {v}" for k, v in sorted(answers.problems.items()))
            why = f"{len(answers.failed)} keys got no valid answer ({causes}); first: {answers.reasons[0]}"
        if answers.limit < n:
            why = f"budget allowed {answers.limit} of {n} queries" + (f"; {why}" if why else "")
        status = Ownership.INCONCLUSIVE
        reason = f"{errors} errors with {unknown} keys unknown could end either side of theta={theta}: {why}"
    answered = errors + correct
    return OwnershipVerdict(
        status=status,
        reason=reason,
        alpha=alpha,
        theta=theta,
        errors=errors,
        correct=correct,
        p_value=p_value(errors + unknown, n, null),
        key_accuracy=correct / answered if answered else None,
        sequential=sequential,
        null=null.to_dict(),
        **evidence(key, answers),
    )
