from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nnseal.methods.sensitive import (
    SensitiveSampleGenerator,
    project,
    resolve_params,
    sensitivity,
    sensitivity_reference,
)

ANY_LAYER = ["features.3.weight", "features.7.weight", "head.weight"]


@pytest.mark.parametrize("output", ["probs", "logits"])
@pytest.mark.parametrize("params", [None, ["head.weight"], ANY_LAYER])
def test_sensitivity_and_gradient_equal_algorithm_1_as_written(model, digits, params, output) -> None:
    """The closed-form last-layer path and the torch.func path compute the paper's S(x) and ∂S/∂x.

    Compared in float64 so that the reference's own float32 rounding doesn't blur the check.
    """
    model64 = copy.deepcopy(model).double()
    x = torch.from_numpy(digits[1].x[:4]).double()
    names = resolve_params(model64, params)
    s, grad_log = SensitiveSampleGenerator(params=params, output=output)._value_and_grad(model64, x, names)
    for i in range(len(x)):
        s_ref, g_ref = sensitivity_reference(model64, x[i], params, output)
        assert s[i].item() == pytest.approx(s_ref.item(), rel=1e-9)
        torch.testing.assert_close(grad_log[i], g_ref / s_ref, rtol=1e-6, atol=1e-9)
    # the public float32 helper agrees to float32 precision
    np.testing.assert_allclose(sensitivity(model, x.float(), params, output), s.numpy(), rtol=1e-3)


def test_softmax_jacobian_is_stable_when_confident() -> None:
    from nnseal.methods.sensitive import _softmax_jacobian_sq

    z = torch.tensor([[30.0, 0.0, 0.0]])
    p = torch.softmax(z.double(), 1)[0]
    jac = torch.diag(p) - torch.outer(p, p)
    assert _softmax_jacobian_sq(z).item() == pytest.approx(jac.pow(2).sum().item(), rel=1e-9)
    assert _softmax_jacobian_sq(z).item() > 0


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)])
def test_epsilon_ball_and_box_respected_exactly(model, digits, norm, eps) -> None:
    seeds = digits[1].x[:32]
    out = SensitiveSampleGenerator(epsilon=eps, norm=norm, steps=60, lr=0.05).generate(model, seeds)
    d = (out.x - seeds).reshape(len(seeds), -1).astype(np.float64)
    dist = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
    assert dist.max() <= eps * (1 + 1e-6)
    assert dist.max() > 0.5 * eps, "the ascent should use the budget it has"
    assert out.x.min() >= 0.0 and out.x.max() <= 1.0
    assert out.x.dtype == np.float32


def test_box_other_than_unit_interval(model, digits) -> None:
    seeds = np.clip(digits[1].x[:8], 0.2, 0.8)
    out = SensitiveSampleGenerator(epsilon=0.5, steps=40, lr=0.1, bounds=(0.2, 0.8)).generate(model, seeds)
    assert out.x.min() >= 0.2 and out.x.max() <= 0.8


def test_project_clips_inside_ball_for_l2() -> None:
    v0 = torch.full((1, 1, 2, 2), 0.9)
    x = torch.full((1, 1, 2, 2), 3.0)
    p = project(x, v0, epsilon=0.5, norm="l2", bounds=(0.0, 1.0))
    assert (p <= 1.0).all() and (p - v0).norm() <= 0.5


def test_generated_samples_are_far_more_sensitive_than_their_seeds(fingerprint) -> None:
    sens = np.array(fingerprint.provenance["sensitivity"])
    seed_sens = np.array(fingerprint.provenance["seed_sensitivity"])
    assert np.median(sens / seed_sens) > 100
    assert (sens >= seed_sens).all()


def test_any_layer_generation_increases_sensitivity(model, digits) -> None:
    out = SensitiveSampleGenerator(params=ANY_LAYER, steps=30, epsilon=0.1).generate(model, digits[1].x[:6])
    assert np.median(out.sensitivity / out.seed_sensitivity) > 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0}, "epsilon"),
        ({"norm": "l1"}, "norm"),
        ({"output": "softmax"}, "output"),
        ({"lr": -1}, "lr"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_bad_generator_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SensitiveSampleGenerator(**kwargs)


def test_bad_seeds_and_params(model) -> None:
    with pytest.raises(ValueError, match="box"):
        SensitiveSampleGenerator(steps=1).generate(model, np.full((2, 1, 8, 8), 2.0, np.float32))
    with pytest.raises(ValueError, match="unknown parameter"):
        SensitiveSampleGenerator(steps=1, params=["nope.weight"]).generate(
            model, np.zeros((2, 1, 8, 8), np.float32)
        )


def test_any_layer_path_is_chunked_without_changing_results(model, digits) -> None:
    from nnseal.methods import sensitive as mod

    x = digits[1].x[: 2 * mod.FUNCTIONAL_CHUNK + 3]
    whole = sensitivity(model, x, ANY_LAYER, batch_size=len(x))
    pieces = np.concatenate([sensitivity(model, x[i : i + 5], ANY_LAYER) for i in range(0, len(x), 5)])
    np.testing.assert_allclose(whole, pieces, rtol=1e-5)
