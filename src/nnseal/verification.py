"""Integrity verification: query a black-box target with a fingerprint and decide.

Decision rule (SSF paper): the model is *tampered* if any valid answer differs from the recorded
one under the chosen output spec. It is *intact* only if every query of the fingerprint got a
valid, matching answer. Anything less — a query budget smaller than the fingerprint, failed or
malformed answers — with no mismatch among the valid answers is *inconclusive*, never intact.
Queries go through :func:`nnseal.query.query`, as ownership verification's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.outputs import OutputSpec
from nnseal.query import Answers, Decision, Verdict, evidence, query
from nnseal.targets.base import Target


class Status(Decision):
    INTACT = "intact"
    TAMPERED = "tampered"
    INCONCLUSIVE = "inconclusive"

    @property
    def exit_code(self) -> int:
        """CLI exit code (2 is reserved for usage and input errors)."""
        return {"intact": 0, "tampered": 1, "inconclusive": 3}[self.value]


@dataclass(kw_only=True)
class IntegrityVerdict(Verdict):
    """Is the target still the fingerprinted model? ``mismatches`` are the queries whose answers
    differ under ``spec``."""

    kind: str = "integrity"
    status: Status
    spec: str
    mismatches: list[int] = field(default_factory=list)
    fresh_remaining: int | None = None
    """One-time queries (:class:`nnseal.ledger.Ledger`): how many were never sent, after this run."""


def _mismatches(fp: Fingerprint, answers: Answers, spec: OutputSpec, expected: np.ndarray) -> list[int]:
    idx, got = answers.encode(spec)
    return idx[(got != expected[idx]).any(axis=1)].tolist()


def verify(
    fingerprint: Fingerprint,
    target: Target,
    spec: str | OutputSpec | None = None,
    *,
    budget: int | None = None,
    stop_at_first_mismatch: bool = False,
    batch_size: int | None = None,
    indices: np.ndarray | None = None,
    progress: bool = False,
) -> IntegrityVerdict:
    """Query ``target`` with the fingerprint and compare answers under ``spec``.

    Args:
        spec: output spec to compare (default: the fingerprint's first, normally ``top1``).
        budget: most queries to send; fewer than the fingerprint holds cannot give *intact*.
        stop_at_first_mismatch: stop once a mismatch proves tampering. Batches then grow 1, 2, 4 …
            up to ``batch_size``, so even a short fingerprint stops after the first mismatching one.
        batch_size: most queries per ``predict`` call (default: the target's preferred size).
        indices: send only these queries (one-time queries drawn by :class:`nnseal.ledger.Ledger`);
            *intact* then means every one of them matched.
    """
    spec = OutputSpec.parse(spec or fingerprint.specs[0])
    expected = fingerprint.expected(spec)
    if spec.needs == "probabilities" and target.provides != "probabilities":
        raise NnsealError(f"output spec {spec} needs probabilities but the target returns {target.provides}")

    def next_batch(answers: Answers, size: int) -> int:
        if _mismatches(fingerprint, answers, spec, expected):
            return 0
        return min(size, max(1, answers.asked))  # 1, 2, 4, … : doubling what was asked so far

    answers = query(
        fingerprint,
        target,
        budget=budget,
        batch_size=batch_size,
        next_batch=next_batch if stop_at_first_mismatch else None,
        need_labels=spec.k,
        indices=indices,
        progress=progress,
        desc="verify",
    )
    mismatches = _mismatches(fingerprint, answers, spec, expected)
    n, answered = answers.planned, answers.n_answered
    if mismatches:
        status, reason = (
            Status.TAMPERED,
            f"{len(mismatches)} of {answered} answers differ from the fingerprint",
        )
    elif answers.limit < n:
        status, reason = Status.INCONCLUSIVE, f"budget allowed {answers.limit} of {n} queries"
    elif answers.failed:
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(answers.problems.items()))
        status, reason = (
            Status.INCONCLUSIVE,
            f"{len(answers.failed)} of {n} queries got no valid answer ({causes}); "
            f"first: {answers.reasons[0]}",
        )
    else:
        status, reason = Status.INTACT, f"all {n} answers match"
    return IntegrityVerdict(
        status=status, reason=reason, spec=str(spec), mismatches=mismatches, **evidence(fingerprint, answers)
    )
