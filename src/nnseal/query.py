"""The one place queries leave nnseal, and the verdict shape every decision shares.

:func:`query` sends a fingerprint's (or watermark key's) inputs to a target in batches, validates
every answer — shape, finiteness, probabilities that are probabilities, labels that exist — and
records what was asked, answered and failed, by cause. Integrity (:mod:`nnseal.verification`) and
ownership (:mod:`nnseal.watermark`) decide on the :class:`Answers` it returns and report a
:class:`Verdict` subclass with the same evidence fields, told apart by ``kind``.

A target's own failure (:class:`~nnseal.errors.TargetError`) or a malformed answer costs the batch
it hit, never the run: those queries are *failed*, so a decision can only be *inconclusive* about
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nnseal.errors import NnsealError, TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.outputs import OutputSpec
from nnseal.targets.base import Provides, Target


def validate_answers(raw: Any, n: int, provides: Provides, n_classes: int) -> np.ndarray:
    """``raw`` as a float64 array if it is a valid answer to ``n`` queries, else :class:`TargetError`:
    wrong shape, non-finite, not probabilities, unknown labels."""
    try:
        a = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise TargetError("target returned something that is not a numeric array", "wrong-shape") from None
    if a.ndim != 2 or a.shape[0] != n:
        raise TargetError(f"target returned shape {a.shape} for {n} queries", "wrong-shape")
    if not np.isfinite(a).all():
        raise TargetError("target returned NaN or infinite values", "nan")
    if provides == "probabilities":
        if a.shape[1] != n_classes:
            raise TargetError(
                f"target returned {a.shape[1]} classes, fingerprint has {n_classes}", "wrong-shape"
            )
        if (a < 0).any() or (a > 1).any():
            raise TargetError("target returned probabilities outside [0, 1]", "not-probabilities")
        if np.abs(a.sum(1) - 1).max() > 1e-3:
            raise TargetError("target probabilities do not sum to 1", "not-probabilities")
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


@dataclass
class Answers:
    """What a target answered to a fingerprint's queries, in fingerprint order.

    ``values`` holds one validated row per query (probabilities, or ranked labels, as ``provides``
    says) where ``answered`` is true; other rows are NaN. ``asked`` of the ``planned`` queries were
    sent, ``limit`` could be under the budget; ``failed`` got no valid answer, counted by cause in
    ``problems``.
    """

    provides: Provides
    values: np.ndarray
    answered: np.ndarray
    asked: int = 0
    limit: int = 0
    planned: int = 0
    """Queries this run means to send: the whole fingerprint, or the indices drawn for it."""
    failed: list[int] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    queries_used: int = 0
    target: str = ""
    target_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_answered(self) -> int:
        return int(self.answered.sum())

    def encode(self, spec: OutputSpec) -> tuple[np.ndarray, np.ndarray]:
        """(indices, rows): the answered queries and their answers encoded under ``spec``."""
        idx = np.flatnonzero(self.answered)
        rows = self.values[idx]
        return idx, spec.encode(rows) if self.provides == "probabilities" else spec.encode_labels(rows)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, top-1 labels) of the answered queries."""
        idx = np.flatnonzero(self.answered)
        rows = self.values[idx]
        top1 = rows.argmax(1) if self.provides == "probabilities" else rows[:, 0]
        return idx, top1.astype(np.int64)


NextBatch = Callable[[Answers, int], int]
"""Given the answers so far and the default next size, how many queries to send next (0: stop)."""


def query(
    fingerprint: Fingerprint,
    target: Target,
    *,
    budget: int | None = None,
    batch_size: int | None = None,
    next_batch: NextBatch | None = None,
    need_labels: int = 1,
    indices: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "query",
) -> Answers:
    """Send the first ``min(len(indices), budget)`` of the fingerprint's queries ``indices`` (default:
    all, in order) to ``target`` and collect the answers.

    Args:
        budget: most queries to send (None: all of them).
        batch_size: most queries per ``predict`` call (default: the target's ``preferred_batch``,
            which for a stealth target is the whole fingerprint, so all of it is shuffled together).
        next_batch: lets a decision stop early or send fewer per batch (see :data:`NextBatch`).
        need_labels: ranked labels per answer the decision compares (labels-only targets); an
            answer with fewer is invalid.
        indices: which queries this run sends, in this order (one-time queries:
            :class:`nnseal.ledger.Ledger` draws them).
    """
    check_target(fingerprint, target)
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, n_classes = len(fingerprint), fingerprint.probabilities.shape[1]
    order = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if (
        order.ndim != 1
        or (len(order) and (order.min() < 0 or order.max() >= n))
        or len(set(order)) != len(order)
    ):
        raise ValueError(f"indices must be distinct query positions in 0..{n - 1}")
    limit = len(order) if budget is None else min(len(order), budget)
    batch = batch_size or target.preferred_batch or max(limit, 1)
    width = n_classes if target.provides == "probabilities" else need_labels
    out = Answers(
        target.provides, np.full((n, width), np.nan), np.zeros(n, bool), limit=limit, planned=len(order)
    )
    start = target.queries
    with tqdm(total=limit, desc=desc, disable=not progress, leave=False) as bar:
        while out.asked < limit:
            size = min(batch, limit - out.asked)
            if next_batch is not None:
                size = min(size, next_batch(out, size))
                if size <= 0:
                    break
            idx = order[out.asked : out.asked + size]
            out.asked += size
            bar.update(size)
            try:
                rows = validate_answers(
                    target.predict(fingerprint.queries[idx]), size, target.provides, n_classes
                )
                if target.provides == "labels":  # ranked labels: keep the ones the decision compares
                    if rows.shape[1] < need_labels:
                        raise ValueError(f"need {need_labels} ranked labels per query, got {rows.shape[1]}")
                    rows = rows[:, :need_labels]
            except (TargetError, ValueError) as e:
                out.failed.extend(idx.tolist())
                out.reasons.append(str(e))
                kind = e.kind if isinstance(e, TargetError) else "invalid-answer"
                out.problems[kind] = out.problems.get(kind, 0) + size
                continue
            finally:
                out.queries_used = target.queries - start
            out.values[idx] = rows
            out.answered[idx] = True
    out.target, out.target_stats = target.describe(), target.stats()
    return out


class Decision(str, Enum):
    """A decision's outcome; each kind of decision has its own values and CLI exit codes."""

    @property
    def exit_code(self) -> int:
        raise NotImplementedError


@dataclass(kw_only=True)
class Verdict:
    """What every decision reports: its ``kind`` (integrity, ownership), outcome and reason, and the
    query evidence it rests on. ``signature`` is what the file's signature check found."""

    kind: str
    status: Decision
    reason: str
    model_id: str
    target: str
    queries_total: int
    queries_used: int
    answered: int
    failed: list[int] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    """Queries without a valid answer, by cause (``TargetError.kind``: timeout, http-503, nan …)."""
    target_stats: dict[str, Any] = field(default_factory=dict)
    """What the target reports about its traffic (requests, retries, decoys …; see ``Target.stats``)."""
    signature: dict[str, Any] = field(default_factory=dict)
    serving: list[str] = field(default_factory=list)
    """The serving environments the file's answers were made to survive (:mod:`nnseal.numerics`)."""

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


def evidence(fingerprint: Fingerprint, answers: Answers) -> dict[str, Any]:
    """The :class:`Verdict` fields every decision fills the same way."""
    return {
        "model_id": fingerprint.model_id,
        "target": answers.target,
        "queries_total": answers.planned,
        "queries_used": answers.queries_used,
        "answered": answers.n_answered,
        "failed": list(answers.failed),
        "problems": dict(answers.problems),
        "target_stats": answers.target_stats,
        "signature": fingerprint.signature.to_dict(),
        "serving": list(fingerprint.serving),
    }
