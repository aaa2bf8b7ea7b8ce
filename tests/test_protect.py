"""Parasitic layers (nnseal.protect, ``nnseal protect``): accuracy kept, files and exports work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from nnseal.cli import main
from nnseal.data import Dataset
from nnseal.errors import ModelError
from nnseal.methods import SensitiveSampleFingerprinter
from nnseal.models import Classifier, ModelConfig, build_model, export_onnx, load_model, save_model
from nnseal.models.train import config_for, fit, predict_logits
from nnseal.protect import protect
from nnseal.targets import TorchTarget
from nnseal.verification import Status, verify


@pytest.fixture(scope="module")
def mlp(digits: tuple[Dataset, Dataset]) -> Classifier:
    torch.manual_seed(0)
    model = build_model(config_for(digits[0], "mlp", hidden=(32,)))
    fit(model, digits[0].x, digits[0].y, epochs=10, seed=0)
    return model  # type: ignore[return-value]


@pytest.fixture(scope="module")
def protected(mlp: Classifier, digits: tuple[Dataset, Dataset]) -> Classifier:
    return protect(mlp, digits[0], at=(0, 1), epochs=30, seed=0)


def _top1(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return predict_logits(model, x).argmax(1).numpy()


def test_protected_model_agrees_and_is_larger(mlp: Classifier, protected: Classifier, digits: tuple) -> None:
    test = digits[1]
    assert protected.config.parasitic == ((0, 128), (1, 64))
    # two layers trained for only 30 epochs here; the benchmark measures the default (100 epochs)
    assert (_top1(mlp, test.x) == _top1(protected, test.x)).mean() >= 0.95
    assert sum(p.numel() for p in protected.parameters()) > sum(p.numel() for p in mlp.parameters())
    # the host layers are the source's, untouched; the source is not modified
    host = [m for m in protected.features.children() if isinstance(m, torch.nn.Linear)]
    assert torch.equal(host[0].weight, mlp.features[1].weight)
    assert torch.equal(protected.head.weight, mlp.head.weight)
    assert not mlp.config.parasitic


def test_save_load_and_onnx_round_trip(protected: Classifier, digits: tuple, tmp_path: Path) -> None:
    path = save_model(protected, tmp_path / "p.safetensors")
    back = load_model(path)
    assert back.config == protected.config
    x = digits[1].x[:50]
    assert torch.equal(predict_logits(back, x), predict_logits(protected, x))
    assert back.lineage[-1]["attack"] == "protect"
    onnx_path = export_onnx(back, tmp_path / "p.onnx", back.config.input_shape)
    out = ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, predict_logits(back, x).numpy(), atol=1e-4)


def test_unprotected_config_json_is_unchanged(mlp: Classifier) -> None:
    assert "parasitic" not in mlp.config.to_dict()
    with pytest.raises(ModelError, match="parasitic layers need arch mlp"):
        ModelConfig("lenet", (1, 8, 8), tuple("0123456789"), parasitic=((0, 4),)).check()
    with pytest.raises(ModelError, match=r"positions in 0\.\.1"):
        ModelConfig("mlp", (1, 8, 8), tuple("0123456789"), hidden=(8,), parasitic=((2, 4),)).check()
    with pytest.raises(ModelError, match="integer pairs"):
        ModelConfig.from_dict(
            {"arch": "mlp", "input_shape": [1, 8, 8], "classes": ["a", "b"], "parasitic": [[1]]}
        )


def test_bad_protect_arguments(mlp: Classifier, protected: Classifier, digits: tuple) -> None:
    with pytest.raises(ModelError, match=r"at: want positions in 0\.\.1"):
        protect(mlp, digits[0], at=(3,))
    with pytest.raises(ModelError, match="already has parasitic"):
        protect(protected, digits[0])
    with pytest.raises(ModelError, match="nnseal mlp"):
        protect(build_model(config_for(digits[0], "lenet")), digits[0])


def test_fingerprints_on_a_protected_model(mlp: Classifier, protected: Classifier, digits: tuple) -> None:
    method = SensitiveSampleFingerprinter(n_queries=20, pool_size=60, steps=50, seed=0)
    own = method.fingerprint(protected, digits[1])
    assert verify(own, TorchTarget(protected)).status is Status.INTACT
    source = method.fingerprint(mlp, digits[1])
    # the source's boundary-hugging samples see the parasitic layers' small changes
    assert verify(source, TorchTarget(protected)).status is Status.TAMPERED


def test_cli_protect(mlp: Classifier, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["protect", "--help"])
    assert r.exit_code == 0 and "--at" in r.output and "--noise" in r.output
    save_model(mlp, tmp_path / "m.safetensors")
    out = tmp_path / "p.safetensors"
    args = ["protect", str(tmp_path / "m.safetensors"), "--out", str(out), "--epochs", "5", "--width", "40"]
    r = runner.invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["parasitic"] == [[1, 40]] and info["parameters_after"] > info["parameters_before"]
    assert load_model(out).config.parasitic == ((1, 40),)
    r = runner.invoke(main, [*args, "--at", "7"])
    assert r.exit_code == 2 and "at: want positions in 0..1" in r.output
    r = runner.invoke(main, [*args, "--noise", "-1"])
    assert r.exit_code == 2 and "--noise" in r.output
    r = runner.invoke(main, ["protect", str(tmp_path / "missing.safetensors"), "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
