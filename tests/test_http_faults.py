"""Fault injection: 240 seeded random trials of verification over HTTP against an in-process V2 server
that misbehaves (5xx, timeouts, slow answers, dropped connections, malformed JSON, wrong shapes,
NaN, unknown labels, 429 with Retry-After). Half the trials serve the intact model, half a tampered
copy. Every verdict must be correct or *inconclusive* — never a false *intact* — and every failure
must be reported under the fault's own name.

The per-fault table is printed (``pytest -s``) and, with ``NNSEAL_FAULT_REPORT=PATH``, written as JSON.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter

import pytest
from fake_server import FAULTS, FakeServer

from nnseal.attacks import run_attack
from nnseal.targets import HttpTarget, TorchTarget, V2Protocol
from nnseal.verification import Status, verify

NAMES = [f"class-{i}" for i in range(10)]
FAULT_TYPES = ("none", *FAULTS, "429-long")
TRIALS_PER_FAULT = 20  # x 12 fault types = 240 trials
KIND = {  # the verdict's name for each fault when it leaves queries unanswered
    "http-500": {"http-500"},
    "http-503": {"http-503"},
    "timeout": {"timeout"},
    "drop": {"connection"},
    "malformed-json": {"malformed-json"},
    "wrong-shape": {"wrong-shape"},
    "nan": {"nan"},
    "unknown-label": {"unknown-label"},
    "429": {"rate-limited"},
    "429-long": {"rate-limited"},
}
RETRIED = {"http-500", "http-503", "timeout", "drop", "429"}


def _plan(rng: random.Random, fault: str, rate: float):
    lock = threading.Lock()

    def next_fault() -> str | None:
        with lock:
            hit = fault != "none" and rng.random() < rate
        return ("429" if fault == "429-long" else fault) if hit else None

    return next_fault


@pytest.fixture(scope="module")
def servers(model):
    tampered = run_attack("modify-weights", model, {"index": -2, "relative": 0.5}).target()
    kw = {"timeout_sleep": 0.3, "slow_sleep": 0.02}
    with (
        FakeServer(TorchTarget(model), NAMES, **kw) as intact_logits,
        FakeServer(tampered, NAMES, **kw) as tampered_logits,
        FakeServer(TorchTarget(model), NAMES, v2_output="label-names", **kw) as intact_names,
        FakeServer(tampered, NAMES, v2_output="label-names", **kw) as tampered_names,
    ):
        yield {
            (False, "logits"): intact_logits,
            (True, "logits"): tampered_logits,
            (False, "label-names"): intact_names,
            (True, "label-names"): tampered_names,
        }


def test_fault_injection_never_gives_a_false_intact(servers, fingerprint) -> None:
    for tampered in (False, True):  # the fault-free baseline: each served model is told apart
        for output, spec in (("logits", "top1-p4"), ("logits", "top1"), ("label-names", "top1")):
            server = servers[(tampered, output)]
            server.fault = lambda: None
            target = HttpTarget(server.url, V2Protocol("digits"), returns=output, class_names=NAMES)
            assert verify(fingerprint, target, spec).status is (
                Status.TAMPERED if tampered else Status.INTACT
            )

    table: dict[str, Counter[str]] = {f: Counter() for f in FAULT_TYPES}
    for trial in range(TRIALS_PER_FAULT * len(FAULT_TYPES)):
        rng = random.Random(trial)
        fault = FAULT_TYPES[trial % len(FAULT_TYPES)]
        tampered = (trial // len(FAULT_TYPES)) % 2 == 1
        output = "label-names" if fault == "unknown-label" else rng.choice(["logits", "label-names"])
        if fault == "nan":
            output = "logits"
        spec = rng.choice(["top1", "top1-p4"]) if output == "logits" else "top1"
        server = servers[(tampered, output)]
        server.retry_after = "5" if fault == "429-long" else rng.choice(["0", "0.01"])
        server.fault, server.fired = _plan(rng, fault, rng.choice([0.2, 0.5, 1.0])), 0
        target = HttpTarget(
            server.url,
            V2Protocol("digits"),
            returns=output,
            class_names=NAMES,
            max_batch_size=rng.choice([5, 10, 20]),
            concurrency=rng.choice([1, 2]),
            timeout=0.1 if fault == "timeout" else 2.0,  # generous elsewhere: a busy CI box is no fault
            retries=rng.choice([0, 1, 3]),
            backoff=0.002,
            max_backoff=0.01,
            max_retry_after=1.0,
            seed=trial,
        )
        v = verify(fingerprint, target, spec, batch_size=rng.choice([10, 20]))
        table[fault][v.status.value] += 1
        table[fault]["faults fired"] += server.fired
        context = f"trial {trial}: {fault}, tampered={tampered}, {output}/{spec}: {v.status.value} {v.reason}"
        assert v.status is not (Status.INTACT if tampered else Status.TAMPERED), context
        assert set(v.problems) <= KIND.get(fault, set()), context
        if fault in ("none", "slow") or server.fired == 0:
            assert v.status is (Status.TAMPERED if tampered else Status.INTACT), context
        elif not tampered and fault not in RETRIED:
            assert v.status is Status.INCONCLUSIVE, context  # a corrupted answer is never accepted
        assert v.queries_used == v.target_stats["inputs_sent"] >= v.answered

    _report(table)
    total = sum(c[s.value] for c in table.values() for s in Status)
    assert total == TRIALS_PER_FAULT * len(FAULT_TYPES) >= 200
    for fault in RETRIED:  # retries recover from transient faults in some trials
        assert table[fault]["intact"] + table[fault]["tampered"] > 0, fault


def _report(table: dict[str, Counter[str]]) -> None:
    cols = ["intact", "tampered", "inconclusive", "faults fired"]
    print(f"\n{'fault':<16}" + "".join(f"{c:>14}" for c in cols))
    for fault, counts in table.items():
        print(f"{fault:<16}" + "".join(f"{counts[c]:>14}" for c in cols))
    path = os.environ.get("NNSEAL_FAULT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({fault: dict(counts) for fault, counts in table.items()}, f, indent=2)
