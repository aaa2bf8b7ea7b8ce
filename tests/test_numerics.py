"""Declared serving numerics (nnseal.numerics): rounding, the CPU emulation of GPU formats, the stable
filter of every method under a declared environment, and the fingerprint's ``serving`` field."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nnseal.errors import FingerprintError, NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods import MarkerFingerprinter, NaturalInputs, Pool, SensitiveSampleFingerprinter
from nnseal.numerics import (
    ENVIRONMENTS,
    ServingWarning,
    check_serving,
    emulate,
    environment_target,
    measure,
    measure_noise,
    round_mantissa,
    to_bf16,
    to_fp16,
    to_tf32,
)
from nnseal.verification import Status, verify


def f32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(torch.int32).numpy()


SPECIAL = [0.0, -0.0, math.inf, -math.inf, 1.0, -1.0, 2.0**-149, -(2.0**-149), 2.0**-130, 1.17549435e-38,
           3.4028235e38, -3.4028235e38, 65504.0, 1e5, 1.0 + 2**-8, 1.0 + 2**-9 + 2**-23]  # fmt: skip


def test_bf16_rounding_is_bitwise_torchs_cast() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            f32(SPECIAL),
            torch.randn(20000, generator=g) * 10 ** torch.randint(-40, 38, (20000,), generator=g).float(),
            (torch.randint(-(2**31), 2**31 - 1, (20000,), generator=g, dtype=torch.int64))
            .to(torch.int32)
            .view(torch.float32),
        ]
    )
    mine, torchs = to_bf16(x), x.to(torch.bfloat16).float()
    nan = torch.isnan(x)
    assert torch.equal(torch.isnan(mine), nan)
    assert np.array_equal(bits(mine[~nan]), bits(torchs[~nan]))
    assert torch.equal(to_fp16(x)[~nan], x.to(torch.float16).float()[~nan])
    assert to_fp16(f32([1e5])).item() == math.inf  # fp16's range, not float32's


def test_tf32_rounding_on_hand_values() -> None:
    x = f32([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-23, -(1 + 3 * 2**-11), 1 + 2**-10, 2.0**-130])
    assert to_tf32(x).tolist() == [1.0, 1 + 2**-9, 1 + 2**-10, -(1 + 2**-9), 1 + 2**-10, 2.0**-130]
    tiny = to_tf32(f32([2.0**-149, -(2.0**-149), 3.4028235e38, math.nan, -0.0]))
    assert bits(tiny[:2]).tolist() == [0, -(2**31)]  # below half the TF32 subnormal step: ±0, sign kept
    assert tiny[2].item() == math.inf and math.isnan(tiny[3].item()) and math.copysign(1, tiny[4].item()) < 0
    with pytest.raises(ValueError, match="bits"):
        round_mantissa(x, 23)


def _reference_tf32(v: float) -> float:
    """Round to 11 significant bits, ties to even, in float64 (normal numbers only)."""
    m, e = math.frexp(v)
    return float(np.round(m * 2**11)) / 2**11 * 2.0**e


@settings(max_examples=400, deadline=None)
@given(st.floats(width=32, allow_nan=True, allow_infinity=True))
def test_tf32_rounding_properties(v: float) -> None:
    x = f32([v])
    r = to_tf32(x)
    if math.isnan(v):
        assert math.isnan(r.item())
        return
    assert bits(to_tf32(r)) == bits(r)  # idempotent
    assert math.copysign(1, r.item()) == math.copysign(1, v)  # sign, zeros included
    if math.isinf(v) or v == 0:
        assert r.item() == v
    elif abs(v) >= 2.0**-126 and math.isfinite(r.item()):
        assert abs(r.item() - v) <= 2.0**-11 * abs(v)
        assert r.item() == _reference_tf32(v)
    elif abs(v) < 2.0**-126:  # subnormal: the TF32 grid's step there is 2^-136
        assert abs(r.item() - v) <= 2.0**-137
    assert bits(to_bf16(x)) == bits(x.to(torch.bfloat16).float())


def test_emulation_rounds_operands_and_restores_after_errors() -> None:
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(4, 30, generator=g), torch.randn(5, 30, generator=g), torch.randn(5, generator=g)
    plain = F.linear(x, w, b)
    linear, conv2d = F.linear, F.conv2d
    with emulate("tf32"):
        y = F.linear(x, w, b)
        yc = F.conv2d(x.reshape(1, 1, 4, 30), w[:1, :9].reshape(1, 1, 3, 3))
    expected = (to_tf32(x).double() @ to_tf32(w).double().T + b.double()).float()
    assert torch.equal(y, expected) and not torch.equal(y, plain) and y.dtype == torch.float32
    ref_c = F.conv2d(
        to_tf32(x).double().reshape(1, 1, 4, 30), to_tf32(w[:1, :9]).double().reshape(1, 1, 3, 3)
    )
    assert torch.equal(yc, ref_c.float())
    with emulate("fp16", round_output=True):  # autocast: bias and output in the format too
        y16 = F.linear(x, w, b)
    assert torch.equal(
        y16, to_fp16((to_fp16(x).double() @ to_fp16(w).double().T + to_fp16(b).double()).float())
    )
    with pytest.raises(RuntimeError, match="boom"), emulate("bf16", round_output=True):
        assert not torch.equal(F.linear(x, w, b), plain)
        raise RuntimeError("boom")
    assert F.linear is linear and F.conv2d is conv2d and torch.equal(F.linear(x, w, b), plain)
    with pytest.raises(ValueError, match="unknown number format"), emulate("fp8"):
        pass


def test_environments_leave_the_model_alone_and_measure_noise(model, digits) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = digits[1].x[:40]
    noise = measure_noise(model, x, ["cpu-fp32", "gpu-fp32", "gpu-tf32", "bf16"])
    assert all(v.shape == (40,) for v in noise.values())
    assert noise["cpu-fp32"].max() < 1e-4 and noise["gpu-fp32"].max() < 1e-4
    assert noise["gpu-tf32"].max() > 1e-4 and noise["bf16"].max() > noise["gpu-tf32"].max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert environment_target(model, "gpu-tf32").predict(x).shape == (40, 10)
    with pytest.raises(
        NnsealError, match=r"unknown serving environment.*'tpu'.*valid: cpu-fp32, onnxruntime"
    ):
        check_serving(["tpu"])
    with pytest.raises(NnsealError, match="unknown serving environment"):
        NaturalInputs(serving="gpu-tf32,tpu")
    assert check_serving("gpu-tf32, cpu-fp32") == ["cpu-fp32", "gpu-tf32"] and set(ENVIRONMENTS) >= {"fp16"}
    with pytest.warns(ServingWarning, match=r"cast to fp16 .* will verify as intact"):
        NaturalInputs(serving=["cpu-fp32", "fp16"])


FAST = {
    "natural": (NaturalInputs, {"pool_size": 120}),
    "sensitive-sample": (SensitiveSampleFingerprinter, {"pool_size": 60, "steps": 60}),
    "tampernn-markers": (MarkerFingerprinter, {"pool_size": 80, "noise_onnx": False}),
}


@pytest.fixture(scope="module")
def candidates(model, digits) -> dict[str, Pool]:
    """Each method's raw candidates, made once: the stable filter is what differs per declaration."""
    return {
        name: cls(**params).candidates(model.eval(), digits[1], np.random.default_rng(0))
        for name, (cls, params) in FAST.items()
    }


def _declared(name: str, candidates, model, **common):
    cls, params = FAST[name]
    method = cls(**params, **common)
    pool = method.stable(model, copy.deepcopy(candidates[name]))
    method.pool = lambda *_args, **_kw: pool  # fingerprint() ships from this pool
    return method, pool


@pytest.mark.parametrize("name", sorted(FAST))
def test_declared_gpu_tf32_fingerprint_has_no_false_alarm_under_tf32(name, candidates, model, digits) -> None:
    specs = ("top1",) if name == "tampernn-markers" else ("top1", "top1-p2")
    method, pool = _declared(name, candidates, model, n_queries=5, specs=specs, serving=["gpu-tf32"])
    assert len(pool) >= 5 and pool.info["noise_by_environment"]["gpu-tf32"] > 1e-4
    changed = measure(model, pool.x, ["gpu-tf32"], specs, reference=pool.probs).any_changed()
    assert changed.sum() == 0  # the whole stable pool, not just the shipped queries
    fp = method.fingerprint(model, digits[1])
    assert fp.serving == ["gpu-tf32"] and "gpu-tf32" in fp.provenance["noise_by_environment"]
    assert np.shape(fp.provenance["serving_noise"]) == (5, len(specs))
    for spec in specs:
        assert verify(fp, environment_target(model, "gpu-tf32"), spec).status is Status.INTACT


def test_cpu_declared_pool_false_alarms_under_tf32_and_unsupported_specs_refuse(
    candidates, model, digits
) -> None:
    """What issue 20 is about: a cpu-fp32 fingerprint's top1-p4 answers change under TF32; declared for
    a GPU format such a spec is refused with a clear error instead of shipped."""
    _, cpu = _declared("sensitive-sample", candidates, model, specs=("top1-p4",))
    assert measure(model, cpu.x, ["gpu-tf32"], ["top1-p4"], reference=cpu.probs).any_changed().sum() > 0
    with pytest.warns(ServingWarning):
        fp16, _ = _declared(
            "sensitive-sample", candidates, model, n_queries=20, specs=("top1", "top1-p4"), serving="fp16"
        )
    with pytest.raises(
        NnsealError, match=r"top1-p4 \(\d+ candidates\) cannot be supported under serving fp16"
    ):
        fp16.fingerprint(model, digits[1])


def _saved_with_header(tmp_path, fp: Fingerprint, edit, monkeypatch) -> Fingerprint:
    header = Fingerprint.header

    def patched(self):
        h = header(self)
        edit(h)
        return h

    monkeypatch.setattr(Fingerprint, "header", patched)
    fp.save(tmp_path / "fp.nnseal", hmac_key=b"k")
    monkeypatch.setattr(Fingerprint, "header", header)
    return Fingerprint.load(tmp_path / "fp.nnseal", hmac_key=b"k")


def test_fingerprint_header_round_trips_serving_and_refuses_hostile_values(tmp_path, monkeypatch) -> None:
    probs = np.full((3, 4), 0.25, np.float32)
    fp = Fingerprint(np.zeros((3, 1, 2, 2)), probs, ["top1"], "m", "natural", serving=["gpu-tf32", "fp16"])
    fp.save(tmp_path / "a.nnseal", hmac_key=b"k")
    back = Fingerprint.load(tmp_path / "a.nnseal", hmac_key=b"k")
    assert back.serving == ["gpu-tf32", "fp16"] and back.header() == fp.header()
    old = _saved_with_header(tmp_path, fp, lambda h: h.pop("serving"), monkeypatch)  # files before the field
    assert old.serving == ["cpu-fp32"]
    for hostile, message in [
        (5, "must be a list"),
        ("gpu-tf32", "must be a list"),
        ([], "non-empty list"),
        ([1], "non-empty list"),
        (["tpu" * 100], "unknown serving environment 'tputpu"),
        (["gpu-tf32", "gpu-tf32"], "more than once"),
        ([{"a": 1}], "non-empty list"),
    ]:
        with pytest.raises(FingerprintError, match=message):
            _saved_with_header(tmp_path, fp, lambda h, v=hostile: h.update(serving=v), monkeypatch)
    with pytest.raises(FingerprintError, match="valid: cpu-fp32"):
        Fingerprint(np.zeros((3, 1, 2, 2)), probs, ["top1"], "m", "natural", serving=["GPU"])
    assert json.loads(json.dumps(fp.header()))["serving"] == ["gpu-tf32", "fp16"]
