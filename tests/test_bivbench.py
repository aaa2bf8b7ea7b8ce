"""The BIVBench modifications of nnseal.attacks.bivbench on the digits LeNet."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from nnseal.attacks import ATTACKS, bivbench, run_attack
from nnseal.attacks.training import stamp_trigger
from nnseal.models import model_id
from nnseal.targets import TorchTarget

NEW = ("fzll", "degrade-random", "degrade-sample", "backdoor-clean-label", "backdoor-targeted", "unlearn",
       "online")  # fmt: skip
QUICK = {  # a few optimiser steps each, for the seed tests
    "fzll": {"epochs": 0.5},
    "degrade-random": {"epochs": 0.5},
    "degrade-sample": {"count": 3, "max_epochs": 1},
    "backdoor-clean-label": {"epochs": 0.3, "pgd_steps": 2, "poison_fraction": 0.5},
    "backdoor-targeted": {"epochs": 0.3},
    "unlearn": {"epochs": 0.3},
    "online": {"samples": 20},
}
BAD = [
    ("fzll", {"fraction": 0.0}),
    ("fzll", {"optimizer": "rmsprop"}),
    ("degrade-random", {"fraction": 1.5}),
    ("degrade-random", {"epochs": 0.0}),
    ("degrade-sample", {"count": 0}),
    ("degrade-sample", {"copies": 0}),
    ("degrade-sample", {"max_epochs": 0}),
    ("backdoor-clean-label", {"target": 10}),
    ("backdoor-clean-label", {"epsilon": 0.0}),
    ("backdoor-clean-label", {"pgd_steps": 0}),
    ("backdoor-clean-label", {"patch_size": 7}),
    ("backdoor-targeted", {"source": 2, "target": 2}),
    ("backdoor-targeted", {"source": -1}),
    ("backdoor-targeted", {"cover_fraction": 2.0}),
    ("unlearn", {"forget": 10}),
    ("unlearn", {"lr": -1.0}),
    ("online", {"samples": 0}),
    ("online", {"samples": 10_000}),
    ("online", {"batch_size": 0}),
    ("online", {"noise": -0.1}),
]


@pytest.fixture(scope="module")
def results(model, digits):
    before = model_id(model)
    out = {name: run_attack(name, model, train=digits[0], test=digits[1], seed=0) for name in NEW}
    assert model_id(model) == before, "an attack modified its input model"
    return out


def _top1(model, x) -> np.ndarray:
    return TorchTarget(model).predict(x).argmax(1)


def test_registered_and_every_bivbench_name_mapped() -> None:
    for name in NEW:
        assert ATTACKS[name].needs_data and ATTACKS[name].description, name
    table = bivbench.__doc__.split("==\n", 3)[2]  # the table body, between its header rules
    mapped = set(re.findall(r"``([a-z0-9-]+)``", table))
    assert set(NEW) <= mapped and mapped <= set(ATTACKS), mapped - set(ATTACKS)
    rows = [line for line in table.splitlines() if line and not line.startswith((" ", "="))]
    assert len(rows) == 16, rows
    assert "reconstruct" in ATTACKS["fzll"].description


@pytest.mark.parametrize("name", NEW)
def test_defaults_change_the_model_and_report(model, results, name) -> None:
    result = results[name]
    m = result.record["metrics"]
    assert result.model is not None and model_id(result.model) != model_id(model)
    assert m["accuracy_after"] >= 0.85, m  # the victim has ~0.98
    assert 0.8 <= m["fidelity"] < 1, m  # measurably different, still the same model at heart
    assert m["queries"] == 0


@pytest.mark.parametrize("name", NEW)
def test_reproducible_for_a_seed_and_different_across_seeds(model, digits, name) -> None:
    runs = [run_attack(name, model, QUICK[name], train=digits[0], test=digits[1], seed=s) for s in (1, 1, 2)]
    assert model_id(runs[0].model) == model_id(runs[1].model)
    assert runs[0].record["metrics"] == runs[1].record["metrics"]
    assert model_id(runs[2].model) != model_id(runs[0].model)


@pytest.mark.parametrize(("name", "params"), BAD)
def test_bad_parameters_are_value_errors(model, digits, name, params) -> None:
    with pytest.raises(ValueError):
        run_attack(name, model, params, train=digits[0])


def test_fzll_keeps_the_head_frozen(model, results) -> None:
    new = dict(results["fzll"].model.named_parameters())
    for k, v in model.named_parameters():
        assert torch.equal(v, new[k]) == k.startswith("head."), k


def test_degrade_random_costs_accuracy(results) -> None:
    m = results["degrade-random"].record["metrics"]
    assert m["relabelled"] == round(0.4 * 1437)
    assert m["accuracy_after"] < m["accuracy_before"] - 0.01


def test_degrade_sample_misclassifies_the_chosen_inputs(model, digits, results) -> None:
    result = results["degrade-sample"]
    m = result.record["metrics"]
    chosen = np.array(m["chosen"])
    assert len(set(m["chosen"])) == 10 and m["misclassified"] >= 0.8
    assert (_top1(model, digits[0].x[chosen]) == digits[0].y[chosen]).mean() >= 0.9  # they were right
    now = (_top1(result.model, digits[0].x[chosen]) != digits[0].y[chosen]).mean()
    assert now == pytest.approx(m["misclassified"])
    assert 1 <= m["epochs"] <= 15


@pytest.mark.parametrize("name", ["backdoor-clean-label", "backdoor-targeted"])
def test_backdoors_work_where_the_clean_model_ignores_the_trigger(results, name) -> None:
    m = results[name].record["metrics"]
    assert m["attack_success_before"] < 0.2 < 0.7 < m["attack_success_rate"], m
    assert m["trigger"]["value"] == 1.0


def test_clean_label_backdoor_poisons_only_the_target_class(model, digits, results) -> None:
    m = results["backdoor-clean-label"].record["metrics"]
    assert m["poisoned"] == int((digits[0].y == 0).sum())
    assert m["perturbed_misclassified"] > 0.5  # PGD made the target images hard
    size = m["trigger"]["size"]
    victims = digits[1].x[digits[1].y != 0]
    hits = (_top1(results["backdoor-clean-label"].model, stamp_trigger(victims, size)) == 0).mean()
    assert hits == pytest.approx(m["attack_success_rate"])


def test_targeted_backdoor_leaves_other_classes_alone(results) -> None:
    m = results["backdoor-targeted"].record["metrics"]
    assert m["kept_label_rate"] > 0.75 and m["kept_label_rate_before"] > 0.75


def test_unlearn_forgets_one_class_and_keeps_the_rest(results) -> None:
    m = results["unlearn"].record["metrics"]
    assert m["forgotten_accuracy_before"] > 0.9 and m["forgotten_accuracy"] < 0.2
    assert m["retained_accuracy"] > 0.9


def test_online_counts_its_stream(model, digits, results) -> None:
    m = results["online"].record["metrics"]
    assert m["samples_seen"] == m["steps"] == 200
    batched = run_attack("online", model, {"samples": 30, "batch_size": 4}, train=digits[0], seed=3)
    assert batched.record["metrics"]["steps"] == 8


def test_without_test_data_metrics_fall_back_or_are_left_out(model, digits) -> None:
    m = run_attack("unlearn", model, QUICK["unlearn"], train=digits[0]).record["metrics"]
    assert "forgotten_accuracy" in m and "retained_accuracy" not in m and "fidelity" not in m
    m = run_attack("backdoor-targeted", model, QUICK["backdoor-targeted"], train=digits[0]).record["metrics"]
    assert "attack_success_rate" not in m and m["poisoned"] > 0
