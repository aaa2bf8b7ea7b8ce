from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.grad import conv2d_weight

from nnseal.methods import sensitive as mod
from nnseal.methods.sensitive import (
    SensitiveSampleGenerator,
    project,
    resolve_params,
    sensitivity,
    sensitivity_plan,
    sensitivity_reference,
)
from nnseal.models.architectures import ModelConfig, build_model

ANY_LAYER = ["features.3.weight", "features.7.weight", "head.weight"]


@pytest.mark.parametrize("of", ["probs", "logits"])
@pytest.mark.parametrize("params", [None, ["head.weight"], ANY_LAYER])
def test_sensitivity_and_gradient_equal_algorithm_1_as_written(model, digits, params, of) -> None:
    """The closed-form last-layer path and the torch.func path compute the paper's S(x) and ∂S/∂x.

    Compared in float64 so that the reference's own float32 rounding doesn't blur the check.
    """
    model64 = copy.deepcopy(model).double()
    x = torch.from_numpy(digits[1].x[:4]).double()
    names = resolve_params(model64, params)
    s, grad_log = SensitiveSampleGenerator(params=params, of=of)._value_and_grad(model64, x, names)
    for i in range(len(x)):
        s_ref, g_ref = sensitivity_reference(model64, x[i], params, of)
        assert s[i].item() == pytest.approx(s_ref.item(), rel=1e-9)
        torch.testing.assert_close(grad_log[i], g_ref / s_ref, rtol=1e-6, atol=1e-9)
    # the public float32 helper agrees to float32 precision
    np.testing.assert_allclose(sensitivity(model, x.float(), params, of), s.numpy(), rtol=1e-3)


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
        ({"of": "softmax"}, "of must be"),
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
    x = digits[1].x[:35]
    whole = sensitivity(model, x, ANY_LAYER, batch_size=len(x))
    pieces = np.concatenate([sensitivity(model, x[i : i + 5], ANY_LAYER) for i in range(0, len(x), 5)])
    np.testing.assert_allclose(whole, pieces, rtol=1e-5)


def _assert_equals_algorithm_1(
    model64: nn.Module, x: torch.Tensor, params: list[str] | None, of: str
) -> None:
    """S and ∂S/∂x of the default path equal Algorithm 1 as written to 1e-9 relative (float64)."""
    s, g = mod._sensitivity_and_grad(model64, x, resolve_params(model64, params), of)  # type: ignore[arg-type]
    assert g is not None
    for i in range(len(x)):
        s_ref, g_ref = sensitivity_reference(model64, x[i], params, of)  # type: ignore[arg-type]
        assert s[i].item() == pytest.approx(s_ref.item(), rel=1e-9)
        assert (g[i] - g_ref).abs().max().item() <= 1e-9 * g_ref.abs().max().item()


def _model64(arch: str, shape: tuple[int, int, int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model(ModelConfig(arch, shape, tuple("0123456789"), hidden=(32, 16) if arch == "mlp" else ()))
    for bn in m.modules():  # non-trivial running statistics, so eval batch norm is a real affine map
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.2, 0.2)
    return m.double().eval()


LENET_SETS = {
    "last layer": ["head.weight", "head.bias"],
    "one conv": ["features.3.weight", "features.3.bias"],
    "first conv": ["features.0.weight"],
    "hidden FC + head": ["features.7.weight", "features.7.bias", "head.weight"],
    "all": None,
}


@pytest.mark.parametrize("of", ["probs", "logits"])
@pytest.mark.parametrize("which", list(LENET_SETS))
def test_factored_path_equals_algorithm_1_on_trained_lenet(model, digits, which, of) -> None:
    model64 = copy.deepcopy(model).double()
    params = LENET_SETS[which] or [n for n, _ in model64.named_parameters()]
    x = torch.from_numpy(digits[1].x[:3]).double()
    expected = "last layer" if which == "last layer" else "factored"
    assert set(sensitivity_plan(model64, x, params).values()) == {expected}
    _assert_equals_algorithm_1(model64, x, params, of)
    if which == "last layer":  # the factored path itself, on the head (not a WhiteBox here)
        wrapped = nn.Sequential(model64)
        _assert_equals_algorithm_1(wrapped, x, ["0.head.weight", "0.head.bias"], of)


@pytest.mark.parametrize("of", ["probs", "logits"])
@pytest.mark.parametrize(
    ("arch", "shape", "params"),
    [
        ("mlp", (1, 8, 8), "all"),
        ("mlp", (1, 8, 8), ["features.1.weight", "features.1.bias"]),
        ("vgg", (3, 8, 8), "all"),
    ],
)
def test_factored_path_equals_algorithm_1_on_mlp_and_vgg(arch, shape, params, of) -> None:
    """VGG covers batch norm (eval) weights and biases, a first conv layer taken one seed at a time
    from its unfolded input, and conv layers through the input Gram matrix."""
    model64 = _model64(arch, shape)
    params = [n for n, _ in model64.named_parameters()] if params == "all" else params
    x = torch.rand(
        1 if arch == "vgg" else 2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    assert set(sensitivity_plan(model64, x, params).values()) == {"factored"}
    _assert_equals_algorithm_1(model64, x, params, of)


class _Geometry(nn.Module):
    """Each way of the factored path: a narrow first conv (strided) one seed at a time, a wider
    dilated conv as one grouped convolution, a small conv through the input Gram matrix, a
    linear layer applied at several positions (a 3-d input), and the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)  # 2×16×16 → 4×8×8, 18 inputs per patch
        self.conv2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2)  # 36 inputs per patch: grouped
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)  # at 4×4: through the Gram matrix
        self.tok = nn.Linear(6, 8)  # per position of conv3's 4×4 output
        self.head = nn.Linear(16 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = torch.relu(self.conv3(nn.functional.max_pool2d(h, 2)))
        h = torch.relu(self.tok(h.flatten(2).transpose(1, 2)))  # (N, 16, 6) → (N, 16, 8)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("of", ["probs", "logits"])
@pytest.mark.parametrize("which", ["all", "weights", "biases"])
def test_factored_path_equals_algorithm_1_for_each_way(which, of, monkeypatch) -> None:
    torch.manual_seed(0)
    model64 = _Geometry().double().eval()
    names = [n for n, _ in model64.named_parameters()]
    params = {"all": names, "weights": [n for n in names if n.endswith("weight")]}.get(
        which, [n for n in names if n.endswith("bias")]
    )
    x = torch.rand(2, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert set(sensitivity_plan(model64, x, params).values()) == {"factored"}
    grouped = []
    monkeypatch.setattr(mod, "conv2d_weight", lambda *a, **k: grouped.append(1) or conv2d_weight(*a, **k))
    _assert_equals_algorithm_1(model64, x, params, of)
    assert bool(grouped) == (which != "biases")  # conv2's weight took the grouped convolution


class _Odd(nn.Module):
    """A model with layers the factored path does not take, beside ones it does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.fc = nn.Linear(4 * 6 * 6, 16)
        self.tied = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.twice = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.grouped(torch.relu(self.conv(x))))
        h = torch.tanh(self.fc(h.flatten(1)))
        h = self.norm(torch.relu(self.tied(h)))
        h = torch.relu(self.twice(torch.relu(self.twice(h))))
        return self.head(h)


def test_unsupported_layers_fall_back_to_per_sample_backprop_and_stay_exact() -> None:
    torch.manual_seed(0)
    model64 = _Odd().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    params = [n for n, _ in model64.named_parameters()]
    plan = sensitivity_plan(model64, x, params)
    assert plan["head.weight"] == plan["head.bias"] == "factored"
    assert "not piecewise linear after the layer" in plan["conv.weight"]  # tanh and layer norm after it
    assert "not piecewise linear" in plan["tied.weight"]
    assert "groups" in plan["grouped.weight"]
    assert "LayerNorm layers are not factored" in plan["norm.weight"]
    assert "runs 2 times" in plan["twice.weight"]
    for of in ("probs", "logits"):
        _assert_equals_algorithm_1(model64, x, params, of)
        _assert_equals_algorithm_1(model64, x, ["head.weight", "conv.weight"], of)  # mixed paths


def test_shared_parameter_and_in_place_output_fall_back() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8), nn.Linear(8, 3)
    shared = nn.Sequential(nn.Flatten(), a, nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), b).double()
    shared[3].weight = a.weight
    x = torch.rand(2, 1, 2, 4, dtype=torch.float64)
    assert "shared" in sensitivity_plan(shared, x, ["1.weight"])["1.weight"]
    in_place = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double()
    assert "in place" in sensitivity_plan(in_place, x, ["1.weight"])["1.weight"]
    for m, ps in ((shared, ["1.weight", "5.weight"]), (in_place, ["1.weight", "3.weight"])):
        _assert_equals_algorithm_1(m, x, ps, "probs")


def test_factored_path_is_chunked_without_changing_results(model, digits, monkeypatch) -> None:
    x = torch.from_numpy(digits[1].x[:7])
    names = resolve_params(model, ANY_LAYER)
    whole, g_whole = mod._sensitivity_and_grad(model, x, names, "probs")
    monkeypatch.setattr(mod, "FACTORED_CHUNK_ELEMENTS", 1)  # one sample per chunk
    assert mod._plan(model, x, names).chunk == 1
    pieces, g_pieces = mod._sensitivity_and_grad(model, x, names, "probs")
    torch.testing.assert_close(whole, pieces, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_whole, g_pieces, rtol=1e-4, atol=1e-6 * g_whole.abs().max().item())
    assert model.features[3].weight.requires_grad  # the probe restores requires_grad flags
