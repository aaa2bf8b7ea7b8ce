"""Verification: query a black-box target with a fingerprint and decide.

Decision rule (SSF paper): the model is *tampered* if any valid answer differs from the recorded
one under the chosen output spec. It is *intact* only if every query of the fingerprint got a
valid, matching answer. Anything less — a query budget smaller than the fingerprint, failed or
malformed answers — with no mismatch among the valid answers is *inconclusive*, never intact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nnseal.errors import NnsealError, TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.outputs import OutputSpec
from nnseal.targets.base import Target


class Status(str, Enum):
    INTACT = "intact"
    TAMPERED = "tampered"
    INCONCLUSIVE = "inconclusive"


EXIT_CODES = {Status.INTACT: 0, Status.TAMPERED: 1, Status.INCONCLUSIVE: 3}
"""CLI exit code per verdict (2 is reserved for usage and input errors)."""


@dataclass
class Verdict:
    """The outcome and its evidence."""

    status: Status
    spec: str
    queries_total: int
    queries_used: int
    answered: int
    mismatches: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    reason: str = ""
    target: str = ""
    fingerprint_model_id: str = ""
    problems: dict[str, int] = field(default_factory=dict)
    """Queries without a valid answer, by cause (``TargetError.kind``: timeout, http-503, nan …)."""
    target_stats: dict[str, Any] = field(default_factory=dict)
    """What the target reports about its traffic (requests, retries, decoys …; see ``Target.stats``)."""
    signature: dict[str, Any] = field(default_factory=dict)
    """What the fingerprint file's signature check found (:class:`nnseal.signing.Signature`)."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


def _check_answers(raw: np.ndarray, n: int, provides: str, n_classes: int) -> np.ndarray:
    """Reject malformed target output: wrong shape, non-finite, not probabilities, unknown labels."""
    a = np.asarray(raw)
    if a.ndim != 2 or a.shape[0] != n:
        raise TargetError(f"target returned shape {a.shape} for {n} queries", "wrong-shape")
    if provides == "probabilities":
        if a.shape[1] != n_classes:
            raise TargetError(
                f"target returned {a.shape[1]} classes, fingerprint has {n_classes}", "wrong-shape"
            )
        if not np.isfinite(a).all():
            raise TargetError("target returned NaN or infinite values", "nan")
        if (a < 0).any() or (a > 1).any():
            raise TargetError("target returned probabilities outside [0, 1]", "not-probabilities")
        if np.abs(a.sum(1) - 1).max() > 1e-3:
            raise TargetError("target probabilities do not sum to 1", "not-probabilities")
    elif not np.isfinite(a).all():
        raise TargetError("target returned NaN or infinite labels", "nan")
    elif (a < 0).any() or (a >= n_classes).any() or (a != np.round(a)).any():
        raise TargetError(f"target returned labels outside 0..{n_classes - 1}", "unknown-label")
    return a


def check_target(fingerprint: Fingerprint, target: Target) -> None:
    """Refuse, before any query, a target whose inputs or classes cannot match the fingerprint's:
    a wholly different model is a usage error to fix, not evidence of tampering."""
    what = "fingerprint" if fingerprint.labels is None else "watermark key"
    want, classes = fingerprint.input_shape, fingerprint.probabilities.shape[1]
    if target.input_shape is not None and tuple(target.input_shape) != want:
        raise NnsealError(
            f"the {what}'s queries are {'×'.join(map(str, want))} inputs but {target.describe()} takes "
            f"{'×'.join(map(str, target.input_shape))}: it was made for another model (or the wrong "
            f"file was given)"
        )
    if target.num_classes is not None and target.num_classes != classes:
        raise NnsealError(
            f"the {what} has {classes} classes but {target.describe()} answers over {target.num_classes}"
        )


def verify(
    fingerprint: Fingerprint,
    target: Target,
    spec: str | OutputSpec | None = None,
    *,
    budget: int | None = None,
    stop_at_first_mismatch: bool = False,
    batch_size: int = 64,
    progress: bool = False,
) -> Verdict:
    """Query ``target`` with the fingerprint and compare answers under ``spec``.

    Args:
        spec: output spec to compare (default: the fingerprint's first, normally ``top1``).
        budget: most queries to send; fewer than the fingerprint holds cannot give *intact*.
        stop_at_first_mismatch: stop once a mismatch proves tampering (fewer queries).
        batch_size: queries per ``predict`` call.
    """
    check_target(fingerprint, target)
    spec = OutputSpec.parse(spec or fingerprint.specs[0])
    expected = fingerprint.expected(spec)
    if spec.needs == "probabilities" and target.provides != "probabilities":
        raise NnsealError(f"output spec {spec} needs probabilities but the target returns {target.provides}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(fingerprint)
    limit = n if budget is None else min(n, budget)
    n_classes = fingerprint.probabilities.shape[1]
    mismatches: list[int] = []
    failed: list[int] = []
    reasons: list[str] = []
    problems: dict[str, int] = {}
    answered = used = 0
    start = target.queries
    for lo in tqdm(range(0, limit, batch_size), desc="verify", disable=not progress, leave=False):
        idx = np.arange(lo, min(lo + batch_size, limit))
        try:
            raw = target.predict(fingerprint.queries[idx])
            answers = _check_answers(raw, len(idx), target.provides, n_classes)
            got = spec.encode(answers) if target.provides == "probabilities" else spec.encode_labels(answers)
        except (TargetError, ValueError) as e:
            failed.extend(idx.tolist())
            reasons.append(str(e))
            kind = e.kind if isinstance(e, TargetError) else "invalid-answer"
            problems[kind] = problems.get(kind, 0) + len(idx)
            continue
        finally:
            used = target.queries - start
        answered += len(idx)
        bad = idx[(got != expected[idx]).any(axis=1)]
        mismatches.extend(bad.tolist())
        if mismatches and stop_at_first_mismatch:
            break
    if mismatches:
        status, reason = (
            Status.TAMPERED,
            f"{len(mismatches)} of {answered} answers differ from the fingerprint",
        )
    elif limit < n:
        status, reason = Status.INCONCLUSIVE, f"budget allowed {limit} of {n} queries"
    elif failed:
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        status, reason = (
            Status.INCONCLUSIVE,
            f"{len(failed)} of {n} queries got no valid answer ({causes}); first: {reasons[0]}",
        )
    else:
        status, reason = Status.INTACT, f"all {n} answers match"
    return Verdict(
        status,
        str(spec),
        n,
        used,
        answered,
        mismatches,
        failed,
        reason,
        target.describe(),
        fingerprint.model_id,
        problems,
        target.stats(),
        fingerprint.signature.to_dict(),
    )
