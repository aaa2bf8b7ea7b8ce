from __future__ import annotations

import numpy as np
import pytest

from nnseal.outputs import OutputSpec

P = np.array([[0.1, 0.6, 0.3], [0.5049, 0.4951, 0.0]])


@pytest.mark.parametrize("text", ["top1", "top3", "top1-p2", "top2-p4", "probs-p1"])
def test_parse_round_trip(text: str) -> None:
    assert str(OutputSpec.parse(text)) == text


@pytest.mark.parametrize("text", ["top0", "probs", "top1-p", "banana", "top-1"])
def test_bad_spec_strings(text: str) -> None:
    with pytest.raises(ValueError, match="unknown output spec"):
        OutputSpec.parse(text)


def test_encode_labels_and_rounded_probabilities() -> None:
    np.testing.assert_array_equal(OutputSpec.parse("top1").encode(P), [[1], [0]])
    np.testing.assert_array_equal(OutputSpec.parse("top2").encode(P), [[1, 2], [0, 1]])
    np.testing.assert_allclose(OutputSpec.parse("top1-p2").encode(P), [[1, 0.6], [0, 0.5]])
    np.testing.assert_allclose(
        OutputSpec.parse("probs-p1").encode(P), [[1, 0.1, 0.6, 0.3], [0, 0.5, 0.5, 0.0]]
    )


def test_encode_labels_only_answers() -> None:
    spec = OutputSpec.parse("top2")
    np.testing.assert_array_equal(spec.encode_labels(np.array([[1, 2, 0]])), [[1, 2]])
    with pytest.raises(ValueError, match="needs probabilities"):
        OutputSpec.parse("top1-p2").encode_labels(np.array([[1]]))
    with pytest.raises(ValueError, match="ranked labels"):
        spec.encode_labels(np.array([[1]]))


def test_margin_is_distance_to_a_changed_answer() -> None:
    top1 = OutputSpec.parse("top1").margin(P)
    np.testing.assert_allclose(top1, [0.3 / 0.9, 0.0098 / 1.0])  # relative: gap / (p1 + p2)
    tiny = np.array([[0.99, 1e-9, 0.99e-9, 0.0]])
    assert OutputSpec.parse("top2").margin(tiny)[0] == pytest.approx(0.01e-9 / 1.99e-9)
    # 0.5049 at 2 decimals is 0.0001 from the 0.505 rounding boundary: relative 0.0001 / 0.5049
    np.testing.assert_allclose(
        OutputSpec.parse("top1-p2").margin(P), [0.005 / 0.6, 0.0001 / 0.5049], rtol=1e-9
    )


def test_spec_larger_than_class_count() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        OutputSpec.parse("top5").encode(P)
