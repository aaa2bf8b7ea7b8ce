"""Integration with a real inference server: MLServer 1.7.1 (V2 protocol) on 127.0.0.1 serving the
exported ONNX model, an ONNX Runtime int8 copy, a Frontier-Stitching watermarked copy and an
independently trained model through nnseal's custom runtime.

MLServer lives in ``.venv-mlserver`` (``scripts/setup-mlserver.sh``). Without it these tests skip,
unless ``NNSEAL_REQUIRE_MLSERVER=1`` (set by CI), which turns a missing server into a failure.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from mlserver_rig import MLServer, mlserver_executable
from server_rig import StopServerAfter, onnx_copies, require_server

from nnseal.cli import main
from nnseal.methods.frontier import FrontierStitching
from nnseal.models import export_onnx, train_model
from nnseal.signing import default_signing_key
from nnseal.targets import HttpTarget, OnnxTarget, V2Protocol
from nnseal.verification import Status, verify
from nnseal.watermark import Ownership, calibrate_key

SPEC = "top1-p4"  # the int8 copy keeps every top-1 label of this fingerprint; its probabilities move


@pytest.fixture(scope="module")
def ownership(model, digits):
    """A 100-key watermark of the session model with a null calibrated on 6 references (its default
    kind: stored in the key), the watermarked model and an independent LeNet never used to calibrate."""
    marked, key, _ = FrontierStitching(key_size=100, seed=0).embed(model, digits[0])
    key, _ = calibrate_key(key, digits[0], count=6)
    return key, marked, train_model(digits[0], "lenet", epochs=20, seed=77, progress=False)


@pytest.fixture(scope="module")
def onnx_models(model, ownership, tmp_path_factory) -> dict[str, str]:
    require_server("MLServer", mlserver_executable() is not None)
    folder = tmp_path_factory.mktemp("onnx")
    _, marked, independent = ownership
    return {
        **onnx_copies(model, folder),
        "watermarked": str(export_onnx(marked, folder / "watermarked.onnx", marked.config.input_shape)),
        "independent": str(export_onnx(independent, folder / "independent.onnx", model.config.input_shape)),
    }


@pytest.fixture(scope="module")
def mlserver(onnx_models, tmp_path_factory):
    with MLServer(onnx_models, tmp_path_factory.mktemp("mlserver")) as server:
        print(f"\nMLServer ready in {server.startup_s:.1f} s")
        yield server


def _target(server: MLServer, name: str, **kw) -> HttpTarget:
    return HttpTarget(server.url, V2Protocol(name), returns="logits", max_batch_size=8, **kw)


def test_served_models_answer_like_onnx_runtime(mlserver, onnx_models, fingerprint) -> None:
    for name, path in onnx_models.items():
        remote = _target(mlserver, name).predict(fingerprint.queries)
        # same batches: int8 dynamic quantization scales activations per batch, so answers depend on it
        assert np.array_equal(remote, OnnxTarget(path, batch_size=8).predict(fingerprint.queries)), name


def test_intact_model_served_is_intact(mlserver, fingerprint, tmp_path) -> None:
    v = verify(fingerprint, _target(mlserver, "intact", concurrency=2), SPEC)
    assert v.status is Status.INTACT and v.queries_used == len(fingerprint), v.reason
    assert v.target_stats["requests"] == 3
    fingerprint.save(tmp_path / "fp.nnseal", ed25519_key=default_signing_key()[0])
    args = ["verify", str(tmp_path / "fp.nnseal"), "--url", mlserver.url, "--protocol", "v2"]
    r = CliRunner().invoke(
        main, [*args, "--model-name", "intact", "--returns", "logits", "--spec", SPEC, "--json"]
    )
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "intact", r.output


def test_tampered_model_served_is_tampered(mlserver, onnx_models, fingerprint) -> None:
    assert verify(fingerprint, OnnxTarget(onnx_models["tampered"]), SPEC).status is Status.TAMPERED
    v = verify(fingerprint, _target(mlserver, "tampered"), SPEC)
    assert v.status is Status.TAMPERED and v.mismatches, v.reason


def test_ownership_of_served_models_is_decided_on_the_keys_null(mlserver, ownership, tmp_path) -> None:
    key, _, _ = ownership
    key.save(tmp_path / "owner.key.nnseal", ed25519_key=default_signing_key()[0])
    runs = {}
    for name in ("watermarked", "independent"):
        args = ["watermark", "verify", str(tmp_path / "owner.key.nnseal"), "--url", mlserver.url]
        r = CliRunner().invoke(
            main, [*args, "--protocol", "v2", "--model-name", name, "--returns", "logits", "--json"]
        )
        runs[name] = (r.exit_code, json.loads(r.output) if r.output.startswith("{") else r.output)
    code, out = runs["watermarked"]
    assert code == Ownership.WATERMARKED.exit_code == 0 and out["status"] == "watermarked", out
    assert out["null_source"] == "key" and out["queries_used"] == 100 and out["target_stats"]["requests"] >= 1
    code, out = runs["independent"]
    assert code == Ownership.NOT_WATERMARKED.exit_code == 1 and out["status"] == "not-watermarked", out
    assert out["key_accuracy"] < out["claim_accuracy"]


def test_server_stopped_mid_run_is_inconclusive(onnx_models, fingerprint, tmp_path) -> None:
    with MLServer({"intact": onnx_models["intact"]}, tmp_path) as server:
        t = time.perf_counter()
        inner = _target(server, "intact", retries=2, backoff=0.01)
        v = verify(fingerprint, StopServerAfter(inner, server, calls=2), SPEC, batch_size=5)
        seconds = time.perf_counter() - t
    assert server.proc is not None and server.proc.poll() is not None
    assert v.status is Status.INCONCLUSIVE, v.reason
    assert v.answered == 10 and v.failed == list(range(10, 20)) and v.problems == {"connection": 10}
    assert v.target_stats["inputs_sent"] == 10 + 2 * 3 * 5  # two failed batches, three attempts each
    assert seconds < 10
