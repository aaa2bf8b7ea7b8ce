"""One-time queries against a server that records answers while honest and replays them later."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from nnseal.attacks import run_attack
from nnseal.cli import main
from nnseal.errors import NnsealError
from nnseal.ledger import Ledger
from nnseal.models import save_model
from nnseal.targets import Target, TorchTarget
from nnseal.verification import Status, verify


class Replayer(Target):
    """A dishonest server: answers with the original model and records every answer while
    ``honest``; afterwards serves ``tampered`` to inputs it has not seen and replays the rest."""

    def __init__(self, original, tampered) -> None:
        super().__init__()
        self.original, self.tampered, self.honest = TorchTarget(original), TorchTarget(tampered), True
        self.seen: dict[bytes, np.ndarray] = {}
        self.input_shape, self.num_classes = self.original.input_shape, self.original.num_classes

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if self.honest:
            out = self.original.predict(x)
            self.seen.update({xi.tobytes(): oi for xi, oi in zip(x, out, strict=True)})
            return out
        fresh = self.tampered.predict(x)
        return np.stack([self.seen.get(xi.tobytes(), fi) for xi, fi in zip(x, fresh, strict=True)])

    def describe(self) -> str:
        return "replayer"


@pytest.fixture(scope="module")
def tampered(model):
    return run_attack("quantize-bits", model, {"bits": 4}).model


def test_a_replaying_server_passes_fixed_queries_but_not_one_time_ones(
    model, fingerprint, tampered, tmp_path
):
    server = Replayer(model, tampered)
    assert verify(fingerprint, server, "top1-p4").status is Status.INTACT  # recorded while honest
    server.honest = False
    assert verify(fingerprint, server, "top1-p4").status is Status.INTACT  # replay: the old weakness

    ledger, server = Ledger(tmp_path), Replayer(model, tampered)
    first = verify(fingerprint, server, "top1-p4", indices=ledger.draw(fingerprint, 10))
    assert first.status is Status.INTACT and first.queries_total == 10
    server.honest = False
    second = verify(fingerprint, server, "top1-p4", indices=ledger.draw(fingerprint, 10))
    assert second.status is Status.TAMPERED  # every query of the second run is one it never saw
    assert ledger.remaining(fingerprint) == 0


def test_draws_never_repeat(fingerprint, tmp_path) -> None:
    ledger = Ledger(tmp_path)
    a, b = ledger.draw(fingerprint, 7), ledger.draw(fingerprint, 7)
    assert not set(a) & set(b) and ledger.remaining(fingerprint) == 6
    assert not set(Ledger(tmp_path / "other").draw(fingerprint, 7)) <= set()  # a new ledger starts fresh
    assert Ledger(tmp_path).sent(fingerprint).tolist() == sorted({*a, *b})  # persisted, atomically


def test_exhaustion_needs_reuse(fingerprint, tmp_path) -> None:
    ledger = Ledger(tmp_path)
    ledger.draw(fingerprint, 15)
    with pytest.raises(NnsealError, match="only 5 of the fingerprint's 20 queries were never sent"):
        ledger.draw(fingerprint, 8)
    again = ledger.draw(fingerprint, 8, reuse=True)
    assert len(set(again)) == 8 and ledger.remaining(fingerprint) == 0
    with pytest.raises(ValueError, match=r"1\.\.20"):
        ledger.draw(fingerprint, 21)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300) | st.sampled_from([b"{}", b'{"sent": [1, 2]}', b"[]", b'{"sent": "x"}']))
def test_a_damaged_ledger_is_refused_not_trusted(fingerprint, tmp_path_factory, raw) -> None:
    ledger = Ledger(tmp_path_factory.mktemp("ledger"))
    ledger.path(fingerprint).write_bytes(raw)
    with pytest.raises((NnsealError, ValueError)):
        ledger.draw(fingerprint, 1)


def test_damaged_entries_are_refused(fingerprint, tmp_path) -> None:
    ledger = Ledger(tmp_path)
    for sent in ([25], [-1], [True], [1.5]):
        ledger.path(fingerprint).write_text(json.dumps({"fingerprint": fingerprint.id, "sent": sent}))
        with pytest.raises(NnsealError, match="damaged"):
            ledger.sent(fingerprint)


def test_cli_one_time_verification(model, fingerprint, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NNSEAL_HOME", str(tmp_path / "home"))
    fingerprint.save(tmp_path / "fp.nnseal")
    save_model(model, tmp_path / "m.safetensors")
    args = ["verify", str(tmp_path / "fp.nnseal"), str(tmp_path / "m.safetensors"), "--allow-unsigned"]
    runs = [CliRunner().invoke(main, [*args, "--one-time", "8", "--json"]) for _ in range(2)]
    verdicts = [json.loads(r.stdout) for r in runs]
    assert [v["fresh_remaining"] for v in verdicts] == [12, 4] and all(r.exit_code == 0 for r in runs)
    assert [v["queries_used"] for v in verdicts] == [8, 8]
    out = CliRunner().invoke(main, [*args, "--one-time", "8"])
    assert out.exit_code == 2 and "--reuse" in out.stderr
    out = CliRunner().invoke(main, [*args, "--one-time", "8", "--reuse"])
    assert out.exit_code == 0 and "0 of 20 never sent remain" in out.stdout
    assert CliRunner().invoke(main, [*args, "--reuse"]).exit_code == 2
