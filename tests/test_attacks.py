"""Shared invariants over every registered attack, and each attack's own measured effect."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from nnseal.attacks import ATTACKS, run_attack, stamp_trigger
from nnseal.errors import NnsealError
from nnseal.models import export_onnx, load_model, model_id
from nnseal.targets import OnnxTarget, TorchTarget

FAST = {
    "adversarial-finetune": {"n_samples": 20, "generation_steps": 20, "steps": 10},
    "finetune": {"steps": 5},
    "trojan": {"epochs": 0.5},
    "trojan-selective": {"epochs": 0.5},
    "poison-generic": {"epochs": 0.5},
    "poison-specific": {"epochs": 0.5},
    "prune": {"amount": 0.3},
    "quantize-bits": {"bits": 4},
    "watermark": {"key_size": 10, "epsilon": 0.2, "epochs": 1.0},  # ε 0.25 flips almost every 8x8 digit
}


def _onnx_weights_digest(path) -> set[str]:
    proto = onnx.load(str(path))
    return {hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in proto.graph.initializer}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_yields_a_loadable_model_with_lineage_that_differs_in_weights(
    model, digits, name, tmp_path
) -> None:
    train, test = digits
    before = copy.deepcopy(model.state_dict())
    result = run_attack(name, model, FAST.get(name, {}), train=train, test=test, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the original model"
    record = result.record
    assert record["attack"] == name and record["seed"] == 1
    assert record["params"] == {**ATTACKS[name].defaults(), **FAST.get(name, {})}
    assert 0 <= record["metrics"]["accuracy_after"] <= 1 and record["metrics"]["accuracy_before"] > 0.9
    assert result.lineage_str.startswith(f"{name}(")

    saved = result.save(tmp_path / ("out.onnx" if ATTACKS[name].produces == "onnx" else "out.safetensors"))
    x = test.x[:64]
    if ATTACKS[name].produces == "onnx":
        assert result.model is None
        lineage = {p.key: p.value for p in onnx.load(str(saved)).metadata_props}["nnseal.lineage"]
        assert name in lineage
        original = _onnx_weights_digest(export_onnx(model, tmp_path / "orig.onnx", model.config.input_shape))
        assert _onnx_weights_digest(saved) != original
        np.testing.assert_allclose(OnnxTarget(saved).predict(x), result.target().predict(x), atol=1e-6)
    else:
        loaded = load_model(saved)
        assert loaded.lineage == result.lineage
        assert model_id(loaded) == model_id(result.model) != model_id(model)
        np.testing.assert_allclose(TorchTarget(loaded).predict(x), result.target().predict(x), atol=1e-6)


def test_lineage_chains_across_attacks(model, digits, tmp_path) -> None:
    pruned = run_attack("prune", model, {"amount": 0.5}, test=digits[1])
    chained = run_attack("quantize-int8", pruned.model, test=digits[1])
    assert chained.lineage_str == "prune(amount=0.5)-quantize-int8()"
    assert load_model(chained.save(tmp_path / "pq.safetensors")).lineage == chained.lineage
    assert chained.record["metrics"]["accuracy_before"] == pruned.record["metrics"]["accuracy_after"]


def test_trojan_reaches_high_success_with_small_accuracy_drop(model, digits) -> None:
    result = run_attack("trojan", model, train=digits[0], test=digits[1])
    m = result.record["metrics"]
    assert m["attack_success_rate"] >= 0.9
    assert m["accuracy_before"] - m["accuracy_after"] <= 0.03
    # the trigger really is the cause: without it, target-class predictions stay rare
    victims = digits[1].x[digits[1].y != 0]
    clean_hits = (TorchTarget(result.model).predict(victims).argmax(1) == 0).mean()
    trig_hits = (TorchTarget(result.model).predict(stamp_trigger(victims, 2)).argmax(1) == 0).mean()
    assert clean_hits < 0.05 < 0.9 <= trig_hits


def test_selective_trojan_leaves_early_layers_untouched(model, digits) -> None:
    result = run_attack("trojan-selective", model, {"layers": 1}, train=digits[0], test=digits[1])
    new = result.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, new[k]) == (not k.startswith("head.")), k
    assert result.record["metrics"]["attack_success_rate"] > 0.5


@pytest.mark.parametrize("name", ["poison-generic", "poison-specific"])
def test_poisoning_succeeds_on_the_source_class(model, digits, name) -> None:
    result = run_attack(name, model, {"source": 3}, train=digits[0], test=digits[1])
    m = result.record["metrics"]
    assert m["attack_success_rate"] > 0.8
    assert m["accuracy_after"] > 0.8  # the other classes still work


def test_flip_weight_finds_a_change_that_flips_exactly(model, digits) -> None:
    result = run_attack("flip-weight", model, {"index": 5}, train=digits[0])
    m = result.record["metrics"]
    base = TorchTarget(model).predict(digits[0].x).argmax(1)
    assert (TorchTarget(result.model).predict(digits[0].x).argmax(1) != base).any()
    # half the change flips nothing: the search found (nearly) the smallest change
    half = run_attack("modify-weights", model, {"index": 5, "relative": 0.0, "absolute": m["delta"] / 2})
    assert (TorchTarget(half.model).predict(digits[0].x).argmax(1) == base).all()


def test_modify_weights_changes_exactly_k_entries(model) -> None:
    result = run_attack("modify-weights", model, {"k": 3, "relative": 0.5}, seed=7)
    diff = (result.model.head.weight != model.head.weight).sum().item()
    assert diff == 3 and len(result.record["metrics"]["indices"]) == 3
    again = run_attack("modify-weights", model, {"k": 3, "relative": 0.5}, seed=7)
    assert model_id(again.model) == model_id(result.model), "same seed, same attack"


def test_cast_and_structured_prune(model, digits) -> None:
    half = run_attack("cast", model, {"dtype": "bfloat16"}, test=digits[1])
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.record["metrics"]["accuracy_after"] > 0.9
    pruned = run_attack("prune", model, {"amount": 0.25, "structured": True, "finetune_steps": 10},
                        train=digits[0], test=digits[1])  # fmt: skip
    conv = pruned.model.features[0].weight
    assert (conv.flatten(1).abs().sum(1) == 0).sum() == 4  # 25 % of 16 output channels


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("prune", {"amount": 1.5}, "amount"),
        ("quantize-bits", {"bits": 0}, "bits"),
        ("cast", {"dtype": "float64"}, "dtype"),
        ("modify-weights", {"param": "nope"}, "unknown parameter 'nope'"),
        ("modify-weights", {"relative": 0.0}, "change nothing"),
        ("quantize-int8", {"layers": "features.0"}, "Linear layer names"),
        ("trojan", {"target_label": 10}, "target_label"),
        ("poison-specific", {"source": 2, "target": 2}, "differ"),
        ("onnx-quantize", {"mode": "fp8"}, "mode"),
        ("prune", {"sparsity": 0.5}, "unknown parameter 'sparsity'"),
    ],
)
def test_impossible_parameters_give_clear_errors(model, digits, name, params, match) -> None:
    with pytest.raises(ValueError, match=match):
        run_attack(name, model, params, train=digits[0])


def test_unknown_attack_and_missing_data(model) -> None:
    with pytest.raises(NnsealError, match="unknown attack 'melt'"):
        run_attack("melt", model)
    with pytest.raises(ValueError, match="needs training data"):
        run_attack("finetune", model)


def test_parse_params_from_strings() -> None:
    spec = ATTACKS["prune"]
    assert spec.parse_params({"amount": "0.3", "structured": "true", "finetune-steps": "4"}) == {
        "amount": 0.3,
        "structured": True,
        "finetune_steps": 4,
    }
    with pytest.raises(ValueError, match="expects float"):
        spec.parse_params({"amount": "half"})
    with pytest.raises(ValueError, match="expects bool"):
        spec.parse_params({"structured": "maybe"})
