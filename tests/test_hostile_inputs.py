"""Files and processes an adversary controls: hostile model files, models of another shape, internal
errors and signals. Each case crashed with a traceback or exited with a verdict's code before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fake_server import FakeServer
from safetensors.torch import save as st_save

from nnseal.cli import main
from nnseal.errors import ModelError
from nnseal.models import load_model, save_model, train_model
from nnseal.models.io import MODEL_FORMAT
from nnseal.targets import TorchTarget
from nnseal.watermark import PAPER_NULL, verify_watermark

NAMES = [f"class-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, fingerprint) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    save_model(model, d / "model.safetensors")
    fingerprint.save(d / "fp.nnseal", hmac_key=b"k")
    return {"dir": d, "model": d / "model.safetensors", "fp": d / "fp.nnseal"}


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env={"NNSEAL_HMAC_KEY": "k", **(env or {})}).invoke(main, list(args))


def _one_line_error(r, code: int = 2) -> None:
    assert r.exit_code == code, r.output
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.output, r.stderr


def _model_file(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    path.write_bytes(st_save(tensors or {"w": torch.zeros(1)}, metadata={"format": MODEL_FORMAT, **meta}))
    return path


def _config(**change: object) -> str:
    base = {"arch": "lenet", "input_shape": [1, 8, 8], "classes": list("0123456789")}
    return json.dumps({**base, **change})


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"config": _config(width=-3)}, r"width -3"),
        ({"config": _config(width=10**9)}, r"width 1000000000"),
        ({"config": _config(hidden=[10**12])}, r"hidden"),
        ({"config": _config(input_shape=[1, "8", 8])}, r"input_shape must be a list of integers"),
        ({"config": _config(input_shape=[1, 8])}, r"input_shape"),
        ({"config": _config(classes="0123")}, r"classes must be a list"),
        ({"config": _config(std=[0.0])}, r"std must be > 0"),
        ({"config": _config(mean=[float("nan")]).replace("NaN", "NaN")}, r"mean must be"),
        ({"config": _config(width=True)}, r"width must be a int"),
        ({"config": "[" * 100_000}, r"nested more than"),
        ({"config": "{}"}, r"missing 'arch'"),
        ({"config": "[]"}, r"not a JSON object"),
        ({"config": _config(), "lineage": "{}"}, r"'lineage' must be a list"),
        ({"config": _config(), "quantized": "[1]"}, r"'quantized' must list layer names"),
        ({"config": _config(), "dtype": "int4"}, r"corrupt model file"),
        ({"config": _config()}, r"weights do not match"),
        ({"config": _config(), "quantized": '["head"]'}, r"weights do not match"),
    ],
)
def test_hostile_model_config_is_a_model_error(tmp_path, files, meta, match: str) -> None:
    path = _model_file(tmp_path / "bad.safetensors", meta)
    with pytest.raises(ModelError, match=match):
        load_model(path)
    _one_line_error(_cli("verify", str(files["fp"]), str(path)))


def test_deep_safetensors_header_is_a_model_error(tmp_path, files) -> None:
    deep = b"[" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(deep).to_bytes(8, "little") + deep)
    with pytest.raises(ModelError, match="nested more than"):
        load_model(path)
    _one_line_error(_cli("verify", str(files["fp"]), str(path)))


def test_config_asking_for_a_huge_model_allocates_nothing(model, tmp_path) -> None:
    """Weights that do not fit the config are found on the meta device, before any allocation."""
    path = _model_file(tmp_path / "big.safetensors", {"config": _config(width=64, hidden=[65536])})
    with pytest.raises(ModelError, match="weights do not match"):
        load_model(path)


@pytest.fixture(scope="module")
def mnist_shaped(tmp_path_factory) -> Path:
    """A model taking 28×28 inputs: not what a digits (8×8) fingerprint was made for."""
    from nnseal.data import Dataset
    from nnseal.models import export_onnx

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=g).numpy()
    data = Dataset("noise", x, torch.randint(0, 10, (64,), generator=g).numpy(), tuple("0123456789"))
    m = train_model(data, "mlp", epochs=1, seed=0, progress=False)
    d = tmp_path_factory.mktemp("mnist-shaped")
    save_model(m, d / "m.safetensors")
    export_onnx(m, d / "m.onnx", (1, 28, 28))
    return d


@pytest.mark.parametrize("suffix", ["safetensors", "onnx"])
def test_model_of_another_shape_is_refused_before_querying(files, mnist_shaped, suffix: str) -> None:
    r = _cli("verify", str(files["fp"]), str(mnist_shaped / f"m.{suffix}"))
    _one_line_error(r)
    assert "queries are 1×8×8 inputs but" in r.stderr and "takes 1×28×28" in r.stderr


def test_attack_and_watermark_on_another_shape_are_usage_errors(tmp_path, mnist_shaped) -> None:
    out = tmp_path / "a.safetensors"
    r = _cli("attack", str(mnist_shaped / "m.safetensors"), "finetune", "--out", str(out))
    _one_line_error(r)
    assert "data inputs are 1×8×8 but the model takes 1×28×28" in r.stderr and not out.exists()
    r = _cli(
        "watermark",
        "embed",
        str(mnist_shaped / "m.safetensors"),
        "--out",
        str(out),
        "--key",
        str(tmp_path / "k"),
    )
    _one_line_error(r)
    assert "takes 1×28×28" in r.stderr and not out.exists()


def test_watermark_verify_on_another_shape_is_a_usage_error(model, digits, mnist_shaped, tmp_path) -> None:
    from nnseal.methods import FrontierStitching

    _, key, _ = FrontierStitching(key_size=10, epsilon=0.1, seed=0, epochs=1).embed(model, digits[0])
    key.save(tmp_path / "k.nnseal", hmac_key=b"k")
    r = _cli("watermark", "verify", str(tmp_path / "k.nnseal"), str(mnist_shaped / "m.onnx"))
    _one_line_error(r)
    assert "watermark key's queries are 1×8×8" in r.stderr
    with pytest.raises(Exception, match="takes 1×28×28"):
        verify_watermark(key, TorchTarget(load_model(mnist_shaped / "m.safetensors")), null=PAPER_NULL)


def test_unexpected_error_is_exit_4_with_one_line(files, monkeypatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(sys.modules["nnseal.verification"], "verify", boom)
    r = _cli("verify", str(files["fp"]), str(files["model"]))
    _one_line_error(r, 4)
    assert "internal error (RuntimeError: something nobody planned for); please report" in r.stderr
    r = _cli("--debug", "verify", str(files["fp"]), str(files["model"]))
    assert r.exit_code == 4 and "Traceback" in r.stderr


def test_ctrl_c_is_exit_130(files, monkeypatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["nnseal.verification"], "verify", interrupted)
    r = _cli("verify", str(files["fp"]), str(files["model"]))
    _one_line_error(r, 130)
    assert "interrupted (SIGINT)" in r.stderr and "Aborted" not in r.output


def test_click_usage_errors_are_exit_2() -> None:
    assert _cli("verify").exit_code == 2
    assert _cli("no-such-command").exit_code == 2
    assert _cli("--help").exit_code == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watch_stops_cleanly_on_signals(model, files, signum: int) -> None:
    with FakeServer(TorchTarget(model), NAMES) as server:
        args = ["watch", str(files["fp"]), "--url", server.url, "--model-name", "digits"]
        args += ["--returns", "logits", "--interval", "60"]
        env = {**os.environ, "NNSEAL_HMAC_KEY": "k"}
        p = subprocess.Popen(
            [sys.executable, "-m", "nnseal", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # as from a terminal: a suite run in the background inherits SIGINT ignored, so would the CLI
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            first = json.loads(p.stdout.readline())  # type: ignore[union-attr]
            assert first["status"] == "intact" and first["signature"]["verified"]
            time.sleep(0.2)
            p.send_signal(signum)
            _, err = p.communicate(timeout=20)
        finally:
            p.kill()
    assert p.returncode == 128 + signum, err
    assert (
        err.decode().strip()
        == f"interrupted ({signal.Signals(signum).name}): watch stopped after 1 runs (intact 1)"
    )
