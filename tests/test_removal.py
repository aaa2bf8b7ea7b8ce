"""The WRT / BIVBench removal and extraction attacks of nnseal.attacks.removal on the digits LeNet."""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np
import pytest
import torch

from nnseal.attacks import ATTACKS, removal, run_attack
from nnseal.attacks.removal import STRENGTHS, adapt_inputs, soften
from nnseal.errors import DataError
from nnseal.methods.frontier import key_accuracy
from nnseal.models import model_id
from nnseal.targets import TorchTarget

REMOVAL = ("ftll", "ftal", "rtll", "rtal", "fine-pruning", "distill", "extract-labels", "overwrite")
BLACK_BOX = {"distill": 718, "extract-labels": 500}  # default queries on digits: half of 1437, budget
HEAD_ONLY = {"ftll", "rtll"}
SURROGATES = {"distill", "extract-labels"}
TINY = {"lr": 1e-12, "epochs": 0.01}  # one optimiser step that moves nothing measurable


@pytest.fixture(scope="module")
def results(model, digits):
    train, test = digits
    return {name: run_attack(name, model, train=train, test=test, seed=1) for name in REMOVAL}


def _features_equal(a, b) -> dict[str, bool]:
    sa, sb = a.state_dict(), b.state_dict()
    return {k: torch.equal(v, sb[k]) for k, v in sa.items()}


def test_registered_with_data_and_documented_strengths() -> None:
    for name in REMOVAL:
        attack = ATTACKS[name]
        assert attack.needs_data and attack.description, name
        assert name in removal.__doc__
        for params in STRENGTHS[name].values():
            assert set(params) <= set(attack.defaults()), name
    assert set(STRENGTHS) == set(REMOVAL)
    assert "adversarial-finetune" in removal.__doc__ and "adversarial-finetune" in ATTACKS


@pytest.mark.parametrize("name", REMOVAL)
def test_defaults_change_the_model_keep_accuracy_and_report_fidelity_and_queries(
    model, digits, results, name
) -> None:
    result = results[name]
    m = result.record["metrics"]
    assert model_id(result.model) != model_id(model)
    assert m["accuracy_after"] >= 0.85, m  # the sanity floor; the victim has ~0.98
    assert 0.85 <= m["fidelity"] <= 1
    expected = float((TorchTarget(result.model).predict(digits[1].x).argmax(1) == TorchTarget(model).predict(
        digits[1].x).argmax(1)).mean())  # fmt: skip
    assert m["fidelity"] == pytest.approx(expected)
    assert m["queries"] == BLACK_BOX.get(name, 0) and isinstance(m["queries"], int)
    assert result.model is not None and result.onnx is None
    assert 0 < m["attacker_inputs"] <= len(digits[0])
    if name in SURROGATES:
        assert result.model.config.arch == m["surrogate_arch"] == "lenet"


@pytest.mark.parametrize("name", REMOVAL)
def test_deterministic_for_a_seed(model, digits, results, name) -> None:
    again = run_attack(name, model, train=digits[0], test=digits[1], seed=1)
    assert model_id(again.model) == model_id(results[name].model)
    timeless = [
        {k: v for k, v in r.record["metrics"].items() if k != "seconds"} for r in (again, results[name])
    ]
    assert timeless[0] == timeless[1]
    other = run_attack(name, model, train=digits[0], test=digits[1], seed=2)
    assert model_id(other.model) != model_id(results[name].model)


def test_last_layer_attacks_train_only_the_head(model, results) -> None:
    for name in ("ftll", "rtll"):
        same = _features_equal(model, results[name].model)
        assert all(same[k] != k.startswith("head.") for k in same), (name, same)
    for name in ("ftal", "rtal"):
        same = _features_equal(model, results[name].model)
        assert not any(same[k] for k in same if k.startswith(("features.", "head."))), name


@pytest.mark.parametrize("name", ["ftll", "ftal", "rtll", "rtal"])
def test_retraining_re_initialises_the_head_from_the_seed(model, digits, name) -> None:
    result = run_attack(name, model, TINY, train=digits[0], seed=3)
    fresh = copy.deepcopy(model.head)
    removal._reinit_head(fresh, 3)
    expected = fresh if name.startswith("rt") else model.head
    other = model.head if name.startswith("rt") else fresh
    for p in ("weight", "bias"):
        got = getattr(result.model.head, p)
        torch.testing.assert_close(got, getattr(expected, p), atol=1e-8, rtol=0)
        assert not torch.allclose(got, getattr(other, p), atol=1e-3)
    assert result.record["metrics"]["head_reinitialised"] == name.startswith("rt")


def test_fine_pruning_zeroes_the_least_active_last_conv_channels(model, digits, results) -> None:
    m = results["fine-pruning"].record["metrics"]
    conv = results["fine-pruning"].model.features[3]
    assert m["layer"] == "features.3" and m["channels"] == 32 and len(m["pruned_channels"]) == 16
    dead = torch.tensor(m["pruned_channels"])
    assert (conv.weight[dead] == 0).all() and (conv.bias[dead] == 0).all()
    assert (conv.weight.flatten(1).abs().sum(1) > 0).sum() == 16
    assert m["accuracy_pruned"] < m["accuracy_after"]  # fine-tuning recovered what pruning cost
    # the pruned ones are the least active on clean data
    acts = removal._mean_activation(model, model.features[4], digits[0].x)
    assert acts[dead].max() <= np.delete(acts, dead).min()
    quarter = run_attack("fine-pruning", model, {"rate": 0.25, "epochs": 0.1}, train=digits[0])
    assert len(quarter.record["metrics"]["pruned_channels"]) == 8


class _SpyTarget(TorchTarget):
    """Counts inputs as they reach the model, independently of Target.queries."""

    seen: ClassVar[list[int]] = []

    def _predict(self, x: np.ndarray) -> np.ndarray:
        _SpyTarget.seen.append(len(x))
        return super()._predict(x)


@pytest.mark.parametrize(
    ("name", "params", "queries"),
    [
        ("extract-labels", {"budget": 100}, 100),
        ("extract-labels", {"budget": 5000}, 718),  # the attacker holds only 718 inputs
        ("extract-labels", {"budget": 64, "source": "noise"}, 64),
        ("distill", {"budget": 200}, 200),
        ("distill", {"fraction": 1.0, "budget": 5000}, 1437),
    ],
)
def test_black_box_queries_are_counted_exactly_within_the_budget(
    model, digits, monkeypatch, name, params, queries
) -> None:
    monkeypatch.setattr(removal, "TorchTarget", _SpyTarget)
    _SpyTarget.seen = []
    params = {**params, "epochs": 1.0}
    m = run_attack(name, model, params, train=digits[0], test=digits[1]).record["metrics"]
    assert m["queries"] == sum(_SpyTarget.seen) == m["attacker_inputs"] == queries <= params["budget"]


def test_extraction_surrogate_architecture_and_sources(model, digits) -> None:
    train, test = digits
    mlp = run_attack("distill", model, {"arch": "mlp", "budget": 300}, train=train, test=test)
    assert mlp.model.config.arch == mlp.record["metrics"]["surrogate_arch"] == "mlp"
    assert mlp.record["metrics"]["accuracy_after"] > 0.7
    params = {"source": "noise", "budget": 200, "epochs": 2.0}
    noise = run_attack("extract-labels", model, params, train=train, test=test)
    assert noise.record["metrics"]["data"] == "uniform noise"
    params = {"source": "digits", "budget": 200, "epochs": 5.0}
    named = run_attack("extract-labels", model, params, train=train, test=test)
    assert (
        named.record["metrics"]["data"].startswith("digits train")
        and "resized" not in named.record["metrics"]["data"]
    )
    with pytest.raises(DataError, match="root folder is required"):
        run_attack("extract-labels", model, {"source": "mnist"}, train=train)


def test_adapt_inputs_and_soften() -> None:
    colour = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    grey = adapt_inputs(colour, (1, 8, 8))
    assert grey.shape == (3, 1, 8, 8) and grey.dtype == np.float32 and 0 <= grey.min() <= grey.max() <= 1
    assert adapt_inputs(grey, (3, 16, 16)).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="source"):
        adapt_inputs(colour, (2, 8, 8))
    z = torch.randn(5, 10) * 5
    np.testing.assert_allclose(soften(torch.softmax(z, 1).numpy(), 4.0), torch.softmax(z / 4, 1).numpy(),
                               atol=1e-5)  # fmt: skip


def test_overwrite_embeds_the_attackers_own_key(model, digits, results) -> None:
    result = results["overwrite"]
    key = result.artifacts["key"]
    assert key.method == "frontier-stitching" and len(key) == 50 and key.params["seed"] == 1
    assert key_accuracy(result.model, key) == result.record["metrics"]["key_accuracy_after"] == 1.0
    assert key.provenance["source_model_id"] == model_id(model)
    assert "epsilon_fallback" not in result.record["metrics"] and key.params["epsilon"] == 0.1


def test_overwrite_retries_with_the_epsilon_search_where_its_epsilon_forms_no_key(model, digits) -> None:
    # ε = 0.9 flips every 8×8 digit: no false adversaries; the attacker falls back to the search
    result = run_attack("overwrite", model, {"epsilon": 0.9, "key_size": 10}, train=digits[0], seed=1)
    metrics, key = result.record["metrics"], result.artifacts["key"]
    assert metrics["epsilon_fallback"] is True and key.params["epsilon_requested"] == "auto"
    assert 0 < metrics["epsilon"] < 0.9 and key_accuracy(result.model, key) == metrics["key_accuracy_after"]


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("ftll", {"fraction": 0.0}, "fraction"),
        ("ftal", {"epochs": 0.0}, "epochs"),
        ("rtll", {"lr": -1.0}, "lr"),
        ("rtal", {"batch_size": 0}, "batch_size"),
        ("ftll", {"optimizer": "rmsprop"}, "optimizer"),
        ("fine-pruning", {"rate": 1.0}, "rate"),
        ("fine-pruning", {"fraction": 1.5}, "fraction"),
        ("distill", {"temperature": 0.0}, "temperature"),
        ("distill", {"arch": "resnet"}, "arch"),
        ("extract-labels", {"budget": 0}, "budget"),
        ("extract-labels", {"source": "test"}, "source"),
        ("overwrite", {"key_size": 3}, "key_size"),
        ("overwrite", {"fraction": 2.0}, "fraction"),
        ("rtal", {"steps": 10}, "unknown parameter 'steps'"),
    ],
)
def test_bad_parameters_name_the_parameter(model, digits, name, params, match) -> None:
    with pytest.raises(ValueError, match=match):
        run_attack(name, model, params, train=digits[0])


@pytest.mark.parametrize("name", REMOVAL)
def test_needs_training_data(model, name) -> None:
    with pytest.raises(ValueError, match="needs training data"):
        run_attack(name, model)
