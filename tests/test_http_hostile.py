"""A hostile server: the verifier must come back in bounded time and memory with *inconclusive* and the
problem named, whatever the server answers (deep JSON, a gzip bomb, a huge body or length, a trickle,
a stall just before the deadline, odd encodings), and never mix up credentials."""

from __future__ import annotations

import gzip
import json
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from fake_server import HostileServer

from nnseal.cli import main
from nnseal.fingerprint import Fingerprint
from nnseal.targets import HttpTarget, V2Protocol
from nnseal.targets.http import TOKEN_ENV, response_limit
from nnseal.verification import Status, verify
from nnseal.watch import watch

N, CLASSES = 20, 10
SPEC = "top1-p2"


@pytest.fixture(scope="module")
def fp() -> Fingerprint:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(CLASSES), N).astype(np.float32)
    return Fingerprint(rng.random((N, 1, 8, 8)), p, ["top1", SPEC], "synthetic", "test")


@pytest.fixture(scope="module")
def answer(fp) -> bytes:
    """The honest V2 answer to the whole fingerprint in one request."""
    p = fp.probabilities
    out = {"name": "out", "shape": list(p.shape), "datatype": "FP32", "data": p.ravel().tolist()}
    return json.dumps({"model_name": "digits", "outputs": [out]}).encode()


def _target(url: str, **kw) -> HttpTarget:
    kw = {"timeout": 2.0, "retries": 0, "backoff": 0.001, **kw}
    return HttpTarget(url, V2Protocol("digits"), returns="probabilities", num_classes=CLASSES, **kw)


def _verify(fp: Fingerprint, server: HostileServer, **kw):
    """The verdict and the seconds it took."""
    t = time.perf_counter()
    v = verify(fp, _target(server.url, **kw), SPEC)
    return v, time.perf_counter() - t


def _nnseal_threads() -> int:
    return sum(t.name == "nnseal-http" for t in threading.enumerate())


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Encoding": "gzip"}, {"Content-Encoding": "deflate"}, {"Content-Encoding": "identity"}],
)
def test_honest_answers_plain_or_compressed_are_intact(fp, answer, headers) -> None:
    coding = headers.get("Content-Encoding")
    body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(coding, bytes)(answer)  # type: ignore[arg-type]
    with HostileServer("honest", body, headers=headers) as server:
        v, _ = _verify(fp, server)
    assert v.status is Status.INTACT, v.reason


@pytest.mark.parametrize(
    ("mode", "kind", "kw"),
    [
        ("deep-json", "malformed-json", {}),
        ("gzip-bomb", "response-too-large", {}),
        ("huge-body", "response-too-large", {"huge_bytes": 100 << 20}),
        ("huge-length", "response-too-large", {}),
    ],
)
def test_hostile_answers_are_inconclusive_in_bounded_memory(fp, mode, kind, kw) -> None:
    with HostileServer(mode, **kw) as server:
        tracemalloc.start()
        try:
            v, seconds = _verify(fp, server, retries=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert v.status is Status.INCONCLUSIVE and v.problems == {kind: N}, v.reason
    assert v.target_stats["requests"] == 1  # evidence of a hostile server, not a blip: no retry
    assert seconds < 2 and peak < 16 << 20, (seconds, peak)  # cap: 1 MiB + 256 B × 20 × 10


@pytest.mark.parametrize(
    ("coding", "kind"),
    [("br", "unsupported-encoding"), ("gzip, gzip", "unsupported-encoding"), ("gzip", "bad-encoding")],
)
def test_encodings_other_than_gzip_deflate_or_corrupt_are_refused(fp, answer, coding, kind) -> None:
    with HostileServer("honest", answer, headers={"Content-Encoding": coding}) as server:
        v, _ = _verify(fp, server)
    assert v.status is Status.INCONCLUSIVE and v.problems == {kind: N}, v.reason


def test_truncated_gzip_is_refused(fp, answer) -> None:
    with HostileServer("honest", gzip.compress(answer)[:-9], headers={"Content-Encoding": "gzip"}) as server:
        v, _ = _verify(fp, server)
    assert v.status is Status.INCONCLUSIVE and v.problems == {"bad-encoding": N}, v.reason


def test_byte_cap_is_configurable_and_sized_from_the_answer(fp, answer) -> None:
    assert response_limit(N, CLASSES) == (1 << 20) + 256 * N * CLASSES
    with HostileServer("honest", answer) as server:
        small, _ = _verify(fp, server, max_response_bytes=len(answer) - 1)
        exact, _ = _verify(fp, server, max_response_bytes=len(answer))
    assert small.status is Status.INCONCLUSIVE and small.problems == {"response-too-large": N}
    assert exact.status is Status.INTACT
    with HostileServer("honest", gzip.compress(answer), headers={"Content-Encoding": "gzip"}) as server:
        inflated, _ = _verify(fp, server, max_response_bytes=len(answer) - 1)  # the wire size fits
    assert inflated.problems == {"response-too-large": N}


def test_trickle_is_cut_at_the_total_timeout(fp, answer) -> None:
    with HostileServer("trickle", answer, interval=1.0) as server:  # one byte a second
        v, seconds = _verify(fp, server, timeout=2.0, retries=0)
    assert v.status is Status.INCONCLUSIVE and v.problems == {"timeout": N}
    assert seconds < (0 + 1) * 2.0 + 2, seconds
    assert v.target_stats == {"inputs_sent": N, "requests": 1, "retries": 0, "rate_limited": 0}


def test_trickle_with_retries_counts_every_attempt(fp, answer) -> None:
    with HostileServer("trickle", answer, interval=0.3) as server:
        v, seconds = _verify(fp, server, timeout=0.8, retries=2)
    assert v.status is Status.INCONCLUSIVE and v.problems == {"timeout": N}
    assert seconds < 3 * 0.8 + 2, seconds
    assert v.target_stats["requests"] == 3 and v.target_stats["retries"] == 2
    assert v.queries_used == 3 * N and server.requests == 3


def test_stall_just_before_the_deadline_is_cut_at_the_deadline(fp, answer) -> None:
    """Per-read timeouts would allow ~2× the timeout here: a byte at 0.9 s, then a whole read timeout."""
    with HostileServer("stall", answer, stall_at=0.9, stall_for=5.0) as server:
        v, seconds = _verify(fp, server, timeout=1.0, retries=0)
        assert v.status is Status.INCONCLUSIVE and v.problems == {"timeout": N}
        assert seconds < 1.0 + 0.4, seconds
        # the abandoned attempt stops on its own, at once: its reads are cut at the deadline too
        end = time.monotonic() + 0.5  # a read of the old kind would run on to 1.9 s
        while _nnseal_threads() and time.monotonic() < end:
            time.sleep(0.05)
        assert _nnseal_threads() == 0


def test_watch_goes_on_over_deep_json(fp) -> None:
    with HostileServer("deep-json") as server:
        records = list(
            watch(fp, lambda: _target(server.url), SPEC, interval=0, max_runs=3, sleep=lambda s: None)
        )
    assert [r["status"] for r in records] == ["inconclusive"] * 3
    assert all(r["problems"] == {"malformed-json": N} for r in records)


SECRETS = ("tok-SECRET-1", "pw-SECRET-2", "hdr-SECRET-3")


@pytest.mark.parametrize(
    ("url", "token", "headers", "env"),
    [
        (f"http://user:{SECRETS[1]}@127.0.0.1:9", SECRETS[0], None, None),
        (f"http://user:{SECRETS[1]}@127.0.0.1:9", None, None, SECRETS[0]),
        ("http://127.0.0.1:9", SECRETS[0], {"authorization": f"Basic {SECRETS[2]}"}, None),
        (f"http://user:{SECRETS[1]}@127.0.0.1:9", SECRETS[0], {"Authorization": SECRETS[2]}, None),
    ],
)
def test_two_sources_of_credentials_are_refused(url, token, headers, env, monkeypatch) -> None:
    if env is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, env)
    with pytest.raises(ValueError, match=r"not (both|several)") as e:
        HttpTarget(url, V2Protocol("m"), token=token, headers=headers)
    assert not any(s in str(e.value) for s in SECRETS)


def test_cli_refuses_token_with_user_info_and_takes_max_response_bytes(
    fp, answer, tmp_path, monkeypatch
) -> None:
    path = fp.save(tmp_path / "fp.nnseal")
    runner = CliRunner()
    args = [
        "verify",
        str(path),
        "--allow-unsigned",
        "--model-name",
        "digits",
        "--spec",
        SPEC,
        "--retries",
        "0",
    ]
    monkeypatch.setenv(TOKEN_ENV, SECRETS[0])
    both = runner.invoke(main, [*args, "--url", f"http://user:{SECRETS[1]}@127.0.0.1:9"])
    monkeypatch.delenv(TOKEN_ENV)
    with HostileServer("honest", answer) as server:
        ok = runner.invoke(main, [*args, "--url", server.url, "--json"])
        capped = runner.invoke(main, [*args, "--url", server.url, "--max-response-bytes", "100", "--json"])
    assert both.exit_code == 2 and both.output.startswith("error: ") and "not both" in both.output
    assert not any(s in both.output for s in SECRETS)
    assert ok.exit_code == 0, ok.output
    assert capped.exit_code == 3 and json.loads(capped.output)["problems"] == {"response-too-large": N}
