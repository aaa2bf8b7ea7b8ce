"""The one query layer: batching, counting, budgets and the verdict shape shared by integrity and
ownership decisions."""

from __future__ import annotations

import numpy as np
import pytest

from nnseal.errors import TargetError
from nnseal.query import Verdict, query
from nnseal.targets import Target, TorchTarget
from nnseal.targets.stealth import StealthTarget
from nnseal.verification import IntegrityVerdict, Status, verify
from nnseal.watermark import PAPER_NULL, Ownership, OwnershipVerdict, verify_watermark


class Recording(Target):
    """Answers like ``inner`` and records the size of every ``predict`` call."""

    def __init__(self, inner: Target, preferred: int | None = 64, max_queries: int | None = None) -> None:
        super().__init__(max_queries=max_queries)
        self.inner, self.calls, self.preferred_batch = inner, [], preferred
        self.input_shape, self.num_classes = inner.input_shape, inner.num_classes

    def _predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return self.inner.predict(x)

    def describe(self) -> str:
        return "recording"


def test_batches_follow_the_targets_preferred_size(model, fingerprint) -> None:
    for preferred, calls in ((64, [20]), (6, [6, 6, 6, 2]), (None, [20])):
        target = Recording(TorchTarget(model), preferred)
        answers = query(fingerprint, target)
        assert target.calls == calls and answers.n_answered == 20 and target.queries == 20
    target = Recording(TorchTarget(model), 6)
    query(fingerprint, target, batch_size=8, budget=11)
    assert target.calls == [8, 3] and target.queries == 11


def test_stealth_target_shuffles_the_whole_fingerprint_by_default(model, fingerprint) -> None:
    inner = Recording(TorchTarget(model), 64)
    stealth = StealthTarget(inner, fingerprint.seeds, decoy_ratio=1.0, batch_size=40, seed=0)
    v = verify(fingerprint, stealth)  # no batch size: the stealth target asks for all queries at once
    assert v.status is Status.INTACT and inner.calls == [40]  # 20 queries + 20 decoys in one request
    assert stealth.queries == inner.queries == 40 == v.queries_used


def test_max_queries_is_a_cap_on_every_target(model, fingerprint) -> None:
    target = Recording(TorchTarget(model), 5, max_queries=12)
    v = verify(fingerprint, target)
    assert v.status is Status.INCONCLUSIVE and v.problems == {"budget": 10} and target.queries == 10
    with pytest.raises(ValueError, match="max_queries"):
        Recording(TorchTarget(model), max_queries=-1)


def test_labels_targets_must_give_the_labels_the_spec_compares(model, fingerprint) -> None:
    class TopLabel(Target):
        provides = "labels"

        def _predict(self, x: np.ndarray) -> np.ndarray:
            return TorchTarget(model).predict(x).argmax(1)[:, None]

        def describe(self) -> str:
            return "top-1 labels"

    assert verify(fingerprint, TopLabel(), "top1").status is Status.INTACT
    v = verify(fingerprint, TopLabel(), "top3")
    assert v.status is Status.INCONCLUSIVE and v.problems == {"invalid-answer": 20}
    assert "need 3 ranked labels" in v.reason


@pytest.fixture(scope="module")
def watermarked(model, digits):
    from nnseal.methods.frontier import FrontierStitching

    marked, key, _ = FrontierStitching(key_size=20, epsilon=0.1, seed=0).embed(model, digits[0])
    return marked, key


def test_integrity_and_ownership_share_one_verdict_shape(model, fingerprint, watermarked) -> None:
    marked, key = watermarked
    integrity = verify(fingerprint, TorchTarget(model))
    ownership = verify_watermark(key, TorchTarget(marked), null=PAPER_NULL)
    assert isinstance(integrity, IntegrityVerdict) and isinstance(ownership, OwnershipVerdict)
    assert isinstance(integrity, Verdict) and isinstance(ownership, Verdict)
    shared = {"kind", "status", "reason", "model_id", "target", "queries_total", "queries_used", "answered",
              "failed", "problems", "target_stats", "signature"}  # fmt: skip
    assert shared <= integrity.to_dict().keys() and shared <= ownership.to_dict().keys()
    assert (integrity.kind, ownership.kind) == ("integrity", "ownership")
    assert integrity.exit_code == 0 and ownership.status is Ownership.WATERMARKED and ownership.exit_code == 0


def test_ownership_failures_are_counted_by_cause(watermarked) -> None:
    """The ownership loop once dropped causes and let ValueError escape; it now shares the query layer."""
    marked, key = watermarked

    class Flaky(Target):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def _predict(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 1:
                raise TargetError("server said no", "http-503")
            return np.full((len(x), 10), np.nan) if self.calls == 2 else TorchTarget(marked).predict(x)

        def describe(self) -> str:
            return "flaky"

    v = verify_watermark(key, Flaky(), batch_size=5, null=PAPER_NULL)
    assert v.problems == {"http-503": 5, "nan": 5} and v.failed == list(range(10))
    assert v.status is Ownership.INCONCLUSIVE and "keys got no valid answer" in v.reason
