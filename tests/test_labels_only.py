"""Labels-only detection (issue 16): simulated tamperings, boundary-sensitive samples, honest stats."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from nnseal import grid
from nnseal.attacks import run_attack
from nnseal.cli import main
from nnseal.evaluation.experiment import Selection, _curves
from nnseal.evaluation.stats import (
    first_detection,
    first_detections,
    smallest_supported,
    upper_bound,
    upper_curve,
)
from nnseal.methods import BoundarySensitive
from nnseal.methods.boundary import approach_junction, awaken_units
from nnseal.methods.markers import bisect_margin, pgd, top1_margin
from nnseal.models import export_onnx
from nnseal.models.inference import probabilities
from nnseal.simulation import Perturbation, flip_matrix, head_edit_flips, labels_only_family
from nnseal.targets import OnnxTarget, TorchTarget
from nnseal.verification import Status, verify


@pytest.fixture(scope="module")
def labels_only(model, digits):
    """The shipped labels-only fingerprint of the session model (20 queries, top-1)."""
    method = BoundarySensitive(specs=["top1"], pool_size=120, ss_steps=40, seed=0)
    return method, method.fingerprint(model, digits[1])


# ---- simulated tamperings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        Perturbation("gauss", 1e-2, seed=3),
        Perturbation("gauss", 1e-2, prefix="head.", seed=3),
        Perturbation("round", bits=4),
        Perturbation("cast", dtype="bfloat16"),
        Perturbation("prune", 0.05),
        Perturbation("edit", 0.5, count=3, seed=1),
        Perturbation("sgd", 1e-3, steps=3, seed=2),
    ],
    ids=lambda p: f"{p.kind}-{p.prefix or 'all'}",
)
def test_each_perturbation_changes_a_copy_reproducibly(model, digits, p) -> None:
    before = {n: t.clone() for n, t in model.state_dict().items()}
    a, b = p.apply(model, digits[1]), p.apply(model, digits[1])
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items()), "original untouched"
    changed = {n for n, t in a.state_dict().items() if not torch.equal(before[n], t)}
    assert changed, p
    if p.prefix:
        assert all(n.startswith(p.prefix) for n in changed)
    assert all(torch.equal(t, b.state_dict()[n]) for n, t in a.state_dict().items()), "seeded"
    if p.kind == "edit":
        diff = (a.head.weight != model.head.weight).sum().item()
        assert diff == 3 and changed == {"head.weight"}
    if p.kind == "prune":
        w = torch.cat([t.flatten() for n, t in a.named_parameters() if n.endswith("weight") and t.dim() > 1])
        assert (w == 0).float().mean().item() == pytest.approx(0.05, abs=0.01)


def test_sgd_perturbation_needs_data(model) -> None:
    with pytest.raises(ValueError, match="needs the data"):
        Perturbation("sgd", 1e-3, steps=1).apply(model)


def test_labels_only_family_holds_out_8bit_and_float16() -> None:
    family = labels_only_family(seed=0)
    assert not any(p.kind == "round" and p.bits == 8 for p in family)
    assert not any(p.kind == "cast" and p.dtype == "float16" for p in family)
    assert {p.kind for p in family} == {"gauss", "round", "cast", "prune", "edit", "sgd"}
    assert labels_only_family(seed=1) != family


def test_head_edit_flips_match_explicit_edits(model, labels_only) -> None:
    x = labels_only[1].queries
    flips = head_edit_flips(model, x, 0.05)
    classes, features = model.head.weight.shape
    assert flips.shape == (len(x), 2 * classes * features) and flips.any()
    rng = np.random.default_rng(0)
    base = probabilities(model, x).argmax(1)
    for col in [*rng.choice(np.flatnonzero(flips.any(0)), 15), *rng.choice(flips.shape[1], 15)]:
        sign, rest = (1, col) if col < classes * features else (-1, col - classes * features)
        edited = copy.deepcopy(model)
        with torch.no_grad():
            edited.head.weight[rest // features, rest % features] *= 1 + sign * 0.05
        np.testing.assert_array_equal(probabilities(edited, x).argmax(1) != base, flips[:, col])


# ---- candidates -----------------------------------------------------------------------------------


def _logit_gaps(model, x: np.ndarray) -> np.ndarray:
    """Per input, the label's logit minus every other, smallest first."""
    with torch.no_grad():
        z = model(torch.as_tensor(x)).double().numpy()
    z = -np.sort(-z, axis=1)
    return z[:, :1] - z[:, 1:]


@pytest.fixture(scope="module")
def boundary_points(model, digits) -> np.ndarray:
    seeds, levels = digits[1].x[:40], digits[1].levels
    x, ok = bisect_margin(model, seeds, pgd(model, seeds, seed=0), 1e-2, levels=levels)
    return x[ok]


def test_approach_junction_with_two_classes_lowers_margins_on_grid_without_crossing(
    model, digits, boundary_points
) -> None:
    x = boundary_points
    out = approach_junction(model, x, digits[1].levels, floor=1e-4, classes=2, steps=10)
    assert grid.is_on_grid(out, digits[1].levels)
    before, after = probabilities(model, x), probabilities(model, out)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))
    assert (top1_margin(after) >= 1e-4).all()
    assert (top1_margin(after) <= top1_margin(before) + 1e-12).all()
    assert np.median(top1_margin(after)) < 0.5 * np.median(top1_margin(before))


def test_approach_junction_draws_rivals_in_and_keeps_label_and_margin(model, digits, boundary_points) -> None:
    x, levels = boundary_points, digits[1].levels
    two = approach_junction(model, x, levels, floor=1e-4, classes=2, steps=20, seed=0)
    five = approach_junction(model, x, levels, floor=1e-4, classes=5, steps=20, seed=0)
    assert grid.is_on_grid(five, levels)
    after = probabilities(model, five)
    np.testing.assert_array_equal(probabilities(model, x).argmax(1), after.argmax(1))
    assert (top1_margin(after) >= 1e-4).all()

    def searched(gaps: np.ndarray) -> np.ndarray:  # the objective: four gaps, the nearest counted 4 times
        return gaps[:, :4].sum(1) + 3 * gaps[:, 0]

    assert (searched(_logit_gaps(model, five)) <= searched(_logit_gaps(model, x)) + 1e-5).all()
    five_sum, two_sum = _logit_gaps(model, five)[:, :4].sum(1), _logit_gaps(model, two)[:, :4].sum(1)
    assert np.median(five_sum) < 0.5 * np.median(two_sum)  # the fifth class comes close, not only the second
    with pytest.raises(ValueError, match="classes"):
        approach_junction(model, x, levels, floor=1e-4, classes=1)
    with pytest.raises(ValueError, match="junction_classes"):
        BoundarySensitive(junction_classes=1)


def test_approach_junction_on_a_fine_grid_moves_single_pixels_and_stays_on_it(model, boundary_points) -> None:
    x = grid.to_grid(boundary_points, 255)
    labels = probabilities(model, x).argmax(1)
    keep = top1_margin(probabilities(model, x)) >= 1e-4
    out = approach_junction(model, x[keep], 255, floor=1e-4, steps=5)  # 255 levels: no pairs by default
    assert grid.is_on_grid(out, 255) and (np.abs(out - x[keep]) <= 5 / 255 + 1e-6).all()
    after = probabilities(model, out)
    np.testing.assert_array_equal(after.argmax(1), labels[keep])
    assert (top1_margin(after) >= 1e-4).all()
    assert np.median(_logit_gaps(model, out)[:, :4].sum(1)) < np.median(
        _logit_gaps(model, x[keep])[:, :4].sum(1)
    )


def test_awaken_units_switches_on_units_the_data_leaves_off(model, digits) -> None:
    x = digits[1].x[:60]
    off = ~(model.penultimate(torch.as_tensor(x)) > 0).any(0).numpy()
    assert off.any(), "the fixture model leaves some penultimate units off"
    woken, units = awaken_units(model, x, digits[1].levels)
    assert grid.is_on_grid(woken, digits[1].levels) and len(woken) == len(x)
    h = model.penultimate(torch.as_tensor(woken)).detach().numpy()
    on = h[np.arange(len(units)), units] > 0
    assert on.mean() >= 0.8 and set(units) <= set(np.flatnonzero(off))


def test_boundary_sensitive_fingerprint_is_labels_only_on_grid_and_intact_everywhere(
    model, digits, labels_only, tmp_path
) -> None:
    fp = labels_only[1]
    assert len(fp) == 20 and fp.specs == ["top1"] and fp.method == "boundary-sensitive"
    assert grid.is_on_grid(fp.queries, digits[1].levels)
    margins = top1_margin(fp.probabilities)
    assert (margins >= fp.provenance["noise_margin"]).all() and np.median(margins) < 1e-3
    assert "onnxruntime" in fp.provenance["noise_environments"]
    onnx = export_onnx(model, tmp_path / "m.onnx", model.config.input_shape)
    targets = [TorchTarget(model, batch_size=b, threads=t) for b in (1, 7, 64, 256) for t in (1, 2)]
    for target in [*targets, OnnxTarget(onnx)]:
        assert verify(fp, target, "top1").status is Status.INTACT


@pytest.mark.parametrize(
    ("kind", "params"),
    [("cast", {"dtype": "float16"}), ("quantize-bits", {"bits": 8}), ("noise", {"relative": 0.01})],
)
def test_boundary_sensitive_catches_small_tamperings_at_top1(
    model, digits, labels_only, kind, params
) -> None:
    fp = labels_only[1]
    tampered = run_attack(kind, model, params, seed=0).target()
    assert verify(fp, tampered, "top1").status is Status.TAMPERED


def test_boundary_sensitive_beats_natural_inputs_on_single_weight_edits(model, digits, labels_only) -> None:
    fp = labels_only[1]
    natural = digits[1].x[:20]
    caught = {"boundary": 0, "natural": 0}
    for seed in range(40):
        edited = run_attack("modify-weights", model, {"relative": 0.01}, seed=seed).model
        caught["boundary"] += (
            probabilities(edited, fp.queries).argmax(1) != fp.probabilities.argmax(1)
        ).any()
        nat = probabilities(model, natural).argmax(1)
        caught["natural"] += (probabilities(edited, natural).argmax(1) != nat).any()
    assert caught["boundary"] >= 15 and caught["boundary"] > 3 * max(caught["natural"], 1)


def test_flip_matrix_counts_flips_of_near_boundary_queries(model, digits, labels_only) -> None:
    fp = labels_only[1]
    family = labels_only_family(seed=5)
    near = flip_matrix(model, fp.queries, family, digits[1])
    far = flip_matrix(model, digits[1].x[:20], family, digits[1])
    assert near.shape == (20, len(family)) and near.mean() > 5 * far.mean()


def test_fingerprint_cli_defaults_to_boundary_sensitive_for_top1(model, tmp_path) -> None:
    from nnseal.models import save_model

    path = save_model(model, tmp_path / "m.safetensors")
    args = ["fingerprint", str(path), "--specs", "top1", "--no-sign", "--quiet", "-p", "ss_steps=10"]
    result = CliRunner().invoke(main, [*args, "--pool-size", "60", "-n", "5", "--out", str(tmp_path / "fp")])
    assert result.exit_code == 0, result.output
    assert "boundary-sensitive" in result.output


# ---- what trials support ------------------------------------------------------------------------


def test_upper_bound_known_values() -> None:
    assert upper_bound(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert upper_bound(0, 300) < 1e-2 < upper_bound(0, 298)
    assert smallest_supported(60) == pytest.approx(0.0487, abs=1e-4) and smallest_supported(0) == 1.0
    assert upper_bound(5, 5) == 1.0 and upper_bound(1, 10) == pytest.approx(0.3942, abs=1e-4)
    with pytest.raises(ValueError):
        upper_bound(3, 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_upper_bound_covers_the_estimate_and_grows_with_misses(trials, data) -> None:
    misses = data.draw(st.integers(0, trials))
    ub = upper_bound(misses, trials)
    assert misses / trials <= ub <= 1.0
    if misses < trials:
        assert upper_bound(misses + 1, trials) >= ub


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_first_detections_matches_the_scalar_version(trials, pool, seed) -> None:
    rng = np.random.default_rng(seed)
    n = rng.integers(1, pool + 1)
    orders = np.stack([rng.permutation(pool)[:n] for _ in range(trials)])
    detects = rng.random((trials, pool)) < 0.2
    expected = [first_detection(o, d) for o, d in zip(orders, detects, strict=True)]
    assert first_detections(orders, detects).tolist() == expected


def test_curves_claim_only_what_independent_trials_support() -> None:
    pool, n_max = 10, 3
    orders = {"ordered": [np.roll(np.arange(pool), k)[:n_max] for k in range(50)]}
    sels = [Selection("ordered", "p", "ordered"), Selection("random", "p", "random")]
    always = {"top1": [{"p": np.ones(pool, bool)} for _ in range(50)]}
    curves, supported, needed, info = _curves(always, sels, orders, n_max, [1e-2], 50, deterministic=False)
    assert curves["ordered"]["top1"] == [0.0] * 3  # no miss ...
    assert supported["ordered"]["top1"][0] == pytest.approx(smallest_supported(50))  # ... supports ≈ 6 %
    assert needed["ordered"]["top1"]["0.01"] is None and info["trials"] == 50
    assert supported["random"]["top1"][0] == pytest.approx(smallest_supported(50))
    same = {"top1": [{"p": np.ones(pool, bool)}] * 2}
    _, supported, _, info = _curves(same, sels, orders, n_max, [1e-2], 50, deterministic=True)
    assert info["trials"] == 50 and info["deterministic"]  # every bag with the one deterministic model
    assert supported["random"]["top1"] == [0.0] * 3  # exact over the draw when the model is fixed
    np.testing.assert_allclose(upper_curve(np.zeros(10), 3), [smallest_supported(10)] * 3)


def test_a_common_bag_that_misses_is_weighed_as_often_as_it_is_drawn() -> None:
    """A deterministic attack that only the rare bags catch: 45 of 50 draws miss. Counting distinct
    bags alone (one missing of six) would bound the missing rate at ~58 %, below what was drawn."""
    pool, n_max = 10, 2
    common, rare = np.array([0, 1]), [np.array([2 + k, 0]) for k in range(5)]
    orders = {"ordered": [common] * 45 + rare}
    detects = np.zeros(pool, bool)
    detects[2:7] = True
    same = {"top1": [{"p": detects}] * 2}
    curves, supported, _, info = _curves(
        same, [Selection("ordered", "p", "ordered")], orders, n_max, [1e-2], 50, deterministic=True
    )
    assert info["trials"] == 50
    assert curves["ordered"]["top1"][-1] == pytest.approx(0.9)
    assert supported["ordered"]["top1"][-1] >= 0.9
