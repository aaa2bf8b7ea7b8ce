"""Integration with a second, independent V2 implementation: NVIDIA Triton Inference Server 2.51.0 (through
PyTriton 0.7.0, on CPU) on 127.0.0.1, serving the exported ONNX model and an ONNX Runtime int8 copy.

Triton lives in ``.venv-triton`` (``scripts/setup-triton.sh``). Without it these tests skip, unless
``NNSEAL_REQUIRE_TRITON=1`` (set by CI), which turns a missing server into a failure. One server serves
the whole module; the last test crashes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from server_rig import StopServerAfter, onnx_copies, require_server
from triton_rig import Triton, triton_python

from nnseal.cli import main
from nnseal.fingerprint import Fingerprint
from nnseal.signing import default_signing_key
from nnseal.targets import HttpTarget, OnnxTarget, V2Protocol
from nnseal.verification import Status, verify

SPEC = "top1-p4"  # the int8 copy keeps every top-1 label of this fingerprint; its probabilities move


@pytest.fixture(scope="module")
def onnx_models(model, tmp_path_factory) -> dict[str, str]:
    require_server("Triton", triton_python() is not None)
    return onnx_copies(model, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def triton(onnx_models, tmp_path_factory):
    with Triton(onnx_models, tmp_path_factory.mktemp("triton")) as server:
        print(f"\nTriton ready in {server.startup_s:.1f} s")
        yield server


def _target(server: Triton, name: str, **kw) -> HttpTarget:
    return HttpTarget(server.url, V2Protocol(name), returns="logits", max_batch_size=8, **kw)


def _cli_verify(server: Triton, name: str, fingerprint: Fingerprint, folder: Path) -> tuple[int, str]:
    """``nnseal verify --url … --protocol v2`` as a user runs it: its exit code and JSON status."""
    fingerprint.save(folder / "fp.nnseal", ed25519_key=default_signing_key()[0])
    args = ["verify", str(folder / "fp.nnseal"), "--url", server.url, "--protocol", "v2", "--json"]
    r = CliRunner().invoke(main, [*args, "--model-name", name, "--returns", "logits", "--spec", SPEC])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.output)["status"]


def test_served_models_answer_like_onnx_runtime(triton, onnx_models, fingerprint) -> None:
    for name, path in onnx_models.items():
        remote = _target(triton, name).predict(fingerprint.queries)
        # same batches: int8 dynamic quantization scales activations per batch, so answers depend on it
        assert np.array_equal(remote, OnnxTarget(path, batch_size=8).predict(fingerprint.queries)), name


def test_intact_model_served_is_intact(triton, fingerprint, tmp_path) -> None:
    v = verify(fingerprint, _target(triton, "intact", concurrency=2), SPEC)
    assert v.status is Status.INTACT and v.queries_used == len(fingerprint), v.reason
    assert v.target_stats["requests"] == 3
    assert _cli_verify(triton, "intact", fingerprint, tmp_path) == (0, "intact")


def test_tampered_model_served_is_tampered(triton, onnx_models, fingerprint, tmp_path) -> None:
    assert verify(fingerprint, OnnxTarget(onnx_models["tampered"]), SPEC).status is Status.TAMPERED
    v = verify(fingerprint, _target(triton, "tampered"), SPEC)
    assert v.status is Status.TAMPERED and v.mismatches, v.reason
    assert _cli_verify(triton, "tampered", fingerprint, tmp_path) == (1, "tampered")


def test_server_crashed_mid_run_is_inconclusive(triton, fingerprint) -> None:
    """Runs last: it crashes the module's server after two of four batches."""
    t = time.perf_counter()
    inner = _target(triton, "intact", retries=2, backoff=0.01)
    v = verify(fingerprint, StopServerAfter(inner, triton, calls=2), SPEC, batch_size=5)
    seconds = time.perf_counter() - t
    assert triton.proc is not None and triton.proc.poll() is not None
    assert v.status is Status.INCONCLUSIVE, v.reason
    assert v.answered == 10 and v.failed == list(range(10, 20)) and v.problems == {"connection": 10}
    assert v.target_stats["inputs_sent"] == 10 + 2 * 3 * 5  # two failed batches, three attempts each
    assert seconds < 15
