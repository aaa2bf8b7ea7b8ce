"""Exact extraction of ReLU MLPs from logits (nnseal.attacks.extraction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnseal.attacks.extraction import (
    CountingOracle,
    extract_mlp,
    fidelity,
    first_layer,
    model_oracle,
    neuron_recovery,
)
from nnseal.data import Dataset
from nnseal.errors import ModelError
from nnseal.models import Classifier, build_model
from nnseal.models.train import config_for, fit


def tiny_mlp(train: Dataset, hidden: tuple[int, ...], seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = build_model(config_for(train, "mlp", hidden=hidden))
    fit(model, train.x, train.y, epochs=8, seed=seed)
    return model  # type: ignore[return-value]


@pytest.fixture(scope="module")
def mlp16(digits: tuple[Dataset, Dataset]) -> Classifier:
    return tiny_mlp(digits[0], (16,))


def test_one_hidden_layer_is_recovered_exactly(mlp16: Classifier, digits: tuple[Dataset, Dataset]) -> None:
    oracle = model_oracle(mlp16)
    ext = extract_mlp(oracle, lines=3, segments=128, seed=1)
    true_w, true_b = first_layer(mlp16)
    assert neuron_recovery(true_w, ext.weights) == 1.0
    assert len(ext.weights) == 16  # deduplicated: one row per neuron
    # signs resolved: each recovered row points the same way as its true row, biases match
    t = true_w / np.linalg.norm(true_w, axis=1, keepdims=True)
    cos = ext.weights @ t.T
    match = np.abs(cos).argmax(1)
    assert np.all(cos[np.arange(len(match)), match] > 0.999)
    scale = np.linalg.norm(true_w[match], axis=1)
    assert np.allclose(ext.biases, true_b[match] / scale, atol=1e-6)
    f = fidelity(ext, oracle, digits[1].x)
    assert f["agreement"] == 1.0 and f["max_logit_error"] < 1e-5
    assert ext.total_queries == oracle.queries > 0  # the evaluation queries were not counted


def test_oracle_counts_every_row() -> None:
    oracle = CountingOracle(lambda x: x[:, :2] * 2, input_dim=3, num_classes=2)
    assert oracle(np.ones((5, 3))).shape == (5, 2)
    oracle(np.ones(3))
    assert oracle.queries == 6
    assert "queries=6" in repr(oracle)


def test_bad_arguments_are_refused(mlp16: Classifier) -> None:
    with pytest.raises(ValueError, match="min_hits"):
        extract_mlp(model_oracle(mlp16), lines=2, min_hits=3)
    with pytest.raises(ValueError, match="radius > 0"):
        extract_mlp(model_oracle(mlp16), radius=0)
    with pytest.raises(ModelError, match="input_shape"):
        model_oracle(torch.nn.Linear(3, 2))


def test_recovery_metric() -> None:
    w = np.eye(3)
    assert neuron_recovery(w, -2 * w[:2]) == pytest.approx(2 / 3)
    assert neuron_recovery(w, np.zeros((0, 3))) == 0.0
