from __future__ import annotations

import numpy as np
import pytest

from nnseal.attacks import run_attack
from nnseal.errors import NnsealError, TargetError
from nnseal.models import export_onnx
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.verification import Status, verify


def _largest_weight_scaled(model, relative: float) -> Target:
    """The model with its largest last-layer weight scaled by (1 + relative)."""
    return run_attack("modify-weights", model, {"index": -2, "relative": relative}).target()


class LabelsTarget(Target):
    """A labels-only API: ranked top-k labels of a wrapped target."""

    provides = "labels"

    def __init__(self, inner: Target, k: int = 3) -> None:
        super().__init__()
        self.inner, self.k = inner, k

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.argsort(-self.inner.predict(x), axis=1, kind="stable")[:, : self.k]

    def describe(self) -> str:
        return "labels-only"


class FaultyTarget(Target):
    """Answers like ``inner`` but misbehaves on chosen calls."""

    def __init__(self, inner: Target, fault: str, on_calls: set[int]) -> None:
        super().__init__()
        self.inner, self.fault, self.on_calls, self.calls = inner, fault, on_calls, 0

    def _predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = self.inner.predict(x)
        if self.calls not in self.on_calls:
            return out
        if self.fault == "error":
            raise TargetError("connection reset")
        if self.fault == "nan":
            out[0, 0] = np.nan
        elif self.fault == "shape":
            out = out[:-1]
        elif self.fault == "classes":
            out = out[:, :5]
        return out

    def describe(self) -> str:
        return f"faulty({self.fault})"


@pytest.mark.parametrize("spec", ["top1", "top3", "top1-p2", "top1-p4"])
def test_intact_model_is_intact(model, fingerprint, spec) -> None:
    v = verify(fingerprint, TorchTarget(model), spec)
    assert v.status is Status.INTACT and v.exit_code == 0
    assert v.queries_used == v.answered == len(fingerprint) and not v.mismatches


@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_no_false_alarm_across_batch_sizes_and_threads(model, fingerprint, batch_size, threads) -> None:
    target = TorchTarget(model, batch_size=batch_size, threads=threads)
    for spec in fingerprint.specs:
        assert verify(fingerprint, target, spec, batch_size=batch_size).status is Status.INTACT


def test_onnx_runtime_copy_is_intact(model, fingerprint, tmp_path) -> None:
    target = OnnxTarget(export_onnx(model, tmp_path / "m.onnx", model.config.input_shape))
    for spec in fingerprint.specs:
        assert verify(fingerprint, target, spec).status is Status.INTACT


def test_one_weight_plus_one_percent_is_tampered(model, fingerprint) -> None:
    """Documented sensitivity: a +1 % change of the largest last-layer weight is caught by this
    20-query fingerprint when the API returns the top-1 probability (4 decimals). The top-1 label
    alone is too coarse for so small an edit (see the README's measurements)."""
    v = verify(fingerprint, _largest_weight_scaled(model, 0.01), "top1-p4")
    assert v.status is Status.TAMPERED and v.exit_code == 1
    assert v.mismatches and set(v.mismatches) <= set(range(len(fingerprint)))


def test_larger_weight_edit_is_tampered_at_top1(model, fingerprint) -> None:
    v = verify(fingerprint, _largest_weight_scaled(model, 0.5), "top1")
    assert v.status is Status.TAMPERED


def test_stop_at_first_mismatch_uses_fewer_queries(model, fingerprint) -> None:
    target = _largest_weight_scaled(model, 0.5)
    full = verify(fingerprint, target, "top1-p4", batch_size=1)
    early = verify(fingerprint, target, "top1-p4", batch_size=1, stop_at_first_mismatch=True)
    assert early.status is Status.TAMPERED
    assert early.queries_used == full.mismatches[0] + 1 < full.queries_used
    assert early.mismatches == full.mismatches[:1]


def test_budget_too_small_is_inconclusive_never_intact(model, fingerprint) -> None:
    v = verify(fingerprint, TorchTarget(model), budget=len(fingerprint) - 1)
    assert v.status is Status.INCONCLUSIVE and v.exit_code == 3
    assert v.queries_used == len(fingerprint) - 1
    assert verify(fingerprint, TorchTarget(model), budget=0).status is Status.INCONCLUSIVE


def test_budget_can_still_prove_tampering(model, fingerprint) -> None:
    tampered = _largest_weight_scaled(model, 0.5)
    full = verify(fingerprint, tampered, "top1-p4")
    v = verify(fingerprint, tampered, "top1-p4", budget=full.mismatches[0] + 1)
    assert v.status is Status.TAMPERED


@pytest.mark.parametrize("fault", ["error", "nan", "shape", "classes"])
def test_failed_or_malformed_answers_are_inconclusive(model, fingerprint, fault) -> None:
    target = FaultyTarget(TorchTarget(model), fault, on_calls={2})
    v = verify(fingerprint, target, batch_size=5)
    assert v.status is Status.INCONCLUSIVE
    assert v.failed == list(range(5, 10)) and v.answered == len(fingerprint) - 5
    assert v.reason


def test_malformed_answers_on_a_tampered_model_still_show_tampering(model, fingerprint) -> None:
    tampered = _largest_weight_scaled(model, 0.5)
    v = verify(fingerprint, FaultyTarget(tampered, "error", on_calls={1}), "top1-p4", batch_size=1)
    assert v.status is Status.TAMPERED and v.failed == [0]


def test_labels_only_target(model, fingerprint) -> None:
    target = LabelsTarget(TorchTarget(model))
    assert verify(fingerprint, target, "top1").status is Status.INTACT
    assert verify(fingerprint, target, "top3").status is Status.INTACT
    with pytest.raises(NnsealError, match="needs probabilities"):
        verify(fingerprint, target, "top1-p2")


def test_labels_out_of_range_are_malformed(model, fingerprint) -> None:
    class Bad(LabelsTarget):
        def _predict(self, x: np.ndarray) -> np.ndarray:
            return np.full((len(x), 3), 42)

    assert verify(fingerprint, Bad(TorchTarget(model))).status is Status.INCONCLUSIVE


def test_verdict_serialises(model, fingerprint) -> None:
    d = verify(fingerprint, TorchTarget(model)).to_dict()
    assert d["status"] == "intact" and d["spec"] == "top1" and d["queries_total"] == len(fingerprint)
