"""The Method protocol: every registered method goes through the same shared steps, and a new one is
picked up by the CLI and the evaluation harness from its registry line alone."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from nnseal.cli import main
from nnseal.evaluation import config_from_dict, evaluate
from nnseal.methods import METHODS, Method, Pool
from nnseal.methods.base import answers
from nnseal.models import save_model
from nnseal.targets import OnnxTarget, TorchTarget
from nnseal.verification import Status, verify

FAST = {  # each method's own parameters, shrunk so the whole registry runs in seconds
    "sensitive-sample": {"steps": 100},
    "tampernn-markers": {"ss_steps": 50, "noise_onnx": False},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_is_intact_on_its_model(name, model, digits, tmp_path) -> None:
    method = METHODS[name](n_queries=5, pool_size=60, specs=["top1", "top1-p2"], **FAST.get(name, {}))
    fp = method.fingerprint(model, digits[1])
    assert fp.method == name and len(fp) == 5 and fp.params == method.get_params()
    assert set(method.own_defaults()) <= set(fp.params) and "seed_indices" in fp.provenance
    from nnseal.models import export_onnx

    onnx = OnnxTarget(export_onnx(model, tmp_path / "m.onnx", model.config.input_shape))
    for target in (TorchTarget(model, batch_size=1), TorchTarget(model, batch_size=7, threads=1), onnx):
        for spec in fp.specs:
            assert verify(fp, target, spec).status is Status.INTACT


@pytest.mark.parametrize("name", sorted(METHODS))
def test_defaults_are_read_from_the_signature(name) -> None:
    cls = METHODS[name]
    defaults = cls.defaults()
    assert {"n_queries", "pool_size", "specs", "min_margin", "seed"} <= set(defaults)
    assert cls().get_params()["pool_size"] == defaults["pool_size"]
    help_text = CliRunner().invoke(main, ["fingerprint", "--help"]).output
    for key, value in cls.own_defaults().items():
        assert f"{key}={value}" in " ".join(help_text.split()), key


class Mirrored(Method):
    """Natural inputs mirrored left to right (a method made up for this test)."""

    name = "mirrored"

    def __init__(self, *, flip_rows: bool = False, **common: Any) -> None:
        super().__init__(**common)
        self.flip_rows = flip_rows

    def own_params(self) -> dict[str, Any]:
        return {"flip_rows": self.flip_rows}

    def candidates(self, model, data, rng) -> Pool:
        idx = self.draw_seeds(data, rng)
        x = np.ascontiguousarray(data.x[idx][..., ::-1, :] if self.flip_rows else data.x[idx][..., ::-1])
        return Pool(x, answers(model, x), seeds=data.x[idx], details={"seed_indices": idx})


def test_a_new_method_needs_only_its_registry_line(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(METHODS, Mirrored.name, Mirrored)
    save_model(model, tmp_path / "m.safetensors")
    r = CliRunner().invoke(main, ["fingerprint", "--help"])
    assert "mirrored: Natural inputs mirrored left to right" in r.output and "flip_rows=False" in r.output
    out = tmp_path / "fp.nnseal"
    args = ["fingerprint", str(tmp_path / "m.safetensors"), "--method", "mirrored", "-p", "flip_rows=true"]
    r = CliRunner().invoke(main, [*args, "-n", "4", "--pool-size", "30", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"]["flip_rows"] is True
    r = CliRunner().invoke(main, ["verify", str(out), str(tmp_path / "m.safetensors")])
    assert r.exit_code == 0, r.output
    cfg = config_from_dict(
        {
            "out": str(tmp_path / "eval"),
            "model": {"epochs": 2},
            "fingerprint": {"pool": 40, "bag": 20, "steps": 20, "natural_pool": 40},
            "evaluation": {"specs": ["top1"], "n_max": 10, "manc_bags": 2, "seeds_per_attack": 1,
                           "false_alarm_batch_sizes": [1], "false_alarm_threads": [1],
                           "false_alarm_fingerprints": 1},
            "methods": [{"label": "mirror", "name": "mirrored", "params": {"flip_rows": True}}],
            "attacks": [{"name": "4bit", "kind": "quantize-bits", "params": {"bits": 4}}],
        }
    )  # fmt: skip
    results = evaluate(cfg, progress=False)
    assert "mirror" in results.curves["4bit"] and results.pools["mirror"]["pool"] > 0


def test_unknown_or_mistyped_method_parameters_are_clear_errors(model, tmp_path) -> None:
    save_model(model, tmp_path / "m.safetensors")
    base = ["fingerprint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "x.nnseal")]
    r = CliRunner().invoke(main, [*base, "--method", "tampernn-markers", "-p", "selection=manc"])
    assert r.exit_code == 2 and "unknown parameter 'selection' for method tampernn-markers" in r.stderr
    r = CliRunner().invoke(main, [*base, "-p", "steps=many"])
    assert r.exit_code == 2 and "parameter steps of method sensitive-sample expects int" in r.stderr
    r = CliRunner().invoke(main, [*base, "--method", "nope"])
    assert r.exit_code == 2 and "unknown method 'nope'" in r.stderr
    with pytest.raises(Exception, match="unknown method"):
        config_from_dict(
            {"methods": [{"label": "x", "name": "nope"}], "attacks": [{"name": "a", "kind": "prune"}]}
        )
    assert not (tmp_path / "x.nnseal").exists()


def test_white_box_methods_say_what_they_need(digits) -> None:
    from torch import nn

    from nnseal.errors import ModelError

    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for name, cls in METHODS.items():
        if cls.white_box:
            with pytest.raises(ModelError, match=f"method {name} needs an nnseal model"):
                cls(n_queries=2, pool_size=4).pool(plain, digits[1])
    assert not METHODS["natural"].white_box
