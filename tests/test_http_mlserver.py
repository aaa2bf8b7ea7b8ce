"""Integration with a real inference server: MLServer 1.7.1 (V2 protocol) on 127.0.0.1 serving the
exported ONNX model and an ONNX Runtime int8 copy through nnseal's custom runtime.

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
from nnseal.signing import default_signing_key
from nnseal.targets import HttpTarget, OnnxTarget, V2Protocol
from nnseal.verification import Status, verify

SPEC = "top1-p4"  # the int8 copy keeps every top-1 label of this fingerprint; its probabilities move


@pytest.fixture(scope="module")
def onnx_models(model, tmp_path_factory) -> dict[str, str]:
    require_server("MLServer", mlserver_executable() is not None)
    return onnx_copies(model, tmp_path_factory.mktemp("onnx"))


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
