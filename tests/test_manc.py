from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnseal.methods.manc import manc_select, relu_activations, relu_modules


def test_manc_matches_greedy_optimum_on_hand_made_case() -> None:
    # Neurons 0..7. Greedy: row 0 covers {0,1,2,3}; then row 2 adds {4,5,6}; then row 3 adds {7}.
    active = np.array(
        [
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 1],
            [1, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    assert manc_select(active, 3) == [0, 2, 3]
    # here greedy is also the true optimum: 3 rows covering all 8 neurons
    best = max(itertools.combinations(range(5), 3), key=lambda c: active[list(c)].any(0).sum())
    assert active[[0, 2, 3]].any(0).sum() == active[list(best)].any(0).sum() == 8


def test_manc_restarts_cover_when_everything_is_covered() -> None:
    active = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=bool)
    chosen = manc_select(active, 3)
    assert chosen[0] == 3  # covers all three at once
    assert chosen[1] == 0  # after restart, the largest remaining set
    assert len(set(chosen)) == 3


def test_manc_argument_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        manc_select(np.ones((3, 4), bool), 4)
    with pytest.raises(ValueError, match="2-D"):
        manc_select(np.ones(4, bool), 1)


def test_relu_activations_cover_every_relu_unit(model, digits) -> None:
    act = relu_activations(model, digits[1].x[:10])
    # LeNet on 8x8: 16*8*8 + 32*4*4 + 128 ReLU units
    assert act.shape == (10, 16 * 64 + 32 * 16 + 128)
    assert act.dtype == bool and act.any() and not act.all()
    only_fc = relu_activations(model, digits[1].x[:10], modules=[relu_modules(model)[-1]])
    assert only_fc.shape == (10, 128)
    np.testing.assert_array_equal(only_fc, act[:, -128:])
    with pytest.raises(ValueError, match="unknown neuron module"):
        relu_activations(model, digits[1].x[:2], modules=["features.99"])
