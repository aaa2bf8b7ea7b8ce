"""HTTP targets against an in-process server: protocols, output adapters, client behaviour (batching,
concurrency, retries, 429, budget), malformed answers, secrets, TLS, stealth, and the CLI."""

from __future__ import annotations

import base64
import datetime
import json
import math
import ssl
import threading
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fake_server import FakeServer

from nnseal.attacks import run_attack
from nnseal.cli import main
from nnseal.errors import TargetError
from nnseal.targets import (
    AnswerAdapter,
    HttpTarget,
    JsonProtocol,
    StealthTarget,
    Target,
    TFServingProtocol,
    TorchServeProtocol,
    TorchTarget,
    V2Protocol,
    make_protocol,
)
from nnseal.targets.http import TOKEN_ENV, redact_url, retry_after_seconds
from nnseal.verification import Status, verify
from nnseal.watch import WatchMetrics, watch

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FAST = {"backoff": 0.001, "max_backoff": 0.005, "timeout": 2.0}


@pytest.fixture(scope="module")
def tampered(model) -> Target:
    return run_attack("modify-weights", model, {"index": -2, "relative": 0.5}).target()


def _v2(url: str, **kw) -> HttpTarget:
    return HttpTarget(url, V2Protocol("digits"), **{"returns": "logits", **FAST, **kw})


@pytest.mark.parametrize(
    ("protocol", "output", "v2_output", "spec"),
    [
        (V2Protocol("digits", version="3"), "logits", "logits", "top1-p4"),
        (V2Protocol("digits"), "probabilities", "probabilities", "top1-p4"),
        (V2Protocol("digits", output_name="label"), "label-names", "label-names", "top1"),
        (TFServingProtocol("digits"), "probabilities", "logits", "top1-p4"),
        (TorchServeProtocol("digits"), "label-names", "logits", "top3"),
        (
            JsonProtocol("/custom", template='{"batch": "$inputs"}', response_path="result.*.probs"),
            "probabilities",
            "logits",
            "top1-p4",
        ),
    ],
)
def test_every_protocol_verifies_an_intact_model(
    model, fingerprint, protocol, output, v2_output, spec
) -> None:
    with FakeServer(TorchTarget(model), NAMES, v2_output=v2_output) as server:
        target = HttpTarget(server.url, protocol, returns=output, class_names=NAMES, **FAST)
        v = verify(fingerprint, target, spec)
    assert v.status is Status.INTACT, v.reason
    assert v.queries_used == v.answered == len(fingerprint)
    assert v.target_stats["requests"] == (len(fingerprint) if protocol.name == "torchserve" else 1)


def test_tampered_model_over_http_is_tampered(tampered, fingerprint) -> None:
    with FakeServer(tampered, NAMES) as server:
        v = verify(fingerprint, _v2(server.url), "top1-p4")
    assert v.status is Status.TAMPERED and v.mismatches


def test_batching_and_bounded_concurrency(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES, slow_sleep=0.1) as server:
        server.fault = lambda: "slow"
        v = verify(fingerprint, _v2(server.url, max_batch_size=3, concurrency=3), "top1-p4")
    assert v.status is Status.INTACT
    assert v.target_stats == {"inputs_sent": 20, "requests": 7, "retries": 0, "rate_limited": 0}
    assert 2 <= server.max_in_flight <= 3


def _faults(*faults: str | None):
    """A fault plan: the given faults for the first requests, then none."""
    it = iter(faults)
    lock = threading.Lock()

    def next_fault() -> str | None:
        with lock:
            return next(it, None)

    return next_fault


def test_5xx_and_dropped_connections_are_retried(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES) as server:
        server.fault = _faults("http-503", "drop", "http-500")
        v = verify(fingerprint, _v2(server.url, max_batch_size=5), "top1-p4")
    assert v.status is Status.INTACT
    assert v.target_stats["retries"] == 3 and v.target_stats["requests"] == 4 + 3
    assert v.queries_used == len(fingerprint) + 3 * 5  # every input sent counts, retries too


def test_timeouts_are_retried_then_inconclusive(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES, timeout_sleep=0.3) as server:
        server.fault = _faults("timeout")
        ok = verify(fingerprint, _v2(server.url, timeout=0.1), "top1-p4")
        server.fault = lambda: "timeout"
        bad = verify(fingerprint, _v2(server.url, timeout=0.1, retries=1), "top1-p4")
    assert ok.status is Status.INTACT and ok.target_stats["retries"] == 1
    assert bad.status is Status.INCONCLUSIVE and bad.problems == {"timeout": 20}
    assert "no answer within the timeout (after 2 attempts)" in bad.reason


def test_429_waits_for_retry_after(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES, retry_after="0.3") as server:
        server.fault = _faults("429")
        t = time.perf_counter()
        v = verify(fingerprint, _v2(server.url), "top1-p4")
        waited = time.perf_counter() - t
    assert v.status is Status.INTACT and v.target_stats["rate_limited"] == 1
    assert waited >= 0.3


def test_429_longer_than_allowed_fails_at_once(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES, retry_after="120") as server:
        server.fault = lambda: "429"
        t = time.perf_counter()
        v = verify(fingerprint, _v2(server.url, max_retry_after=5), "top1-p4")
    assert time.perf_counter() - t < 5
    assert v.status is Status.INCONCLUSIVE and v.problems == {"rate-limited": 20}
    assert v.target_stats["requests"] == 1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7 and retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    when = datetime.datetime(2030, 1, 1, 0, 0, 10, tzinfo=datetime.timezone.utc)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(header, now=when.timestamp() - 10) == pytest.approx(10)
    assert retry_after_seconds(header, now=when.timestamp() + 99) == 0


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    t = HttpTarget("http://127.0.0.1:9", V2Protocol("m"), backoff=0.1, max_backoff=0.5, seed=1)
    delays = [t._delay(a) for a in range(5)]
    for attempt, d in enumerate(delays):
        cap = min(0.5, 0.1 * 2**attempt)
        assert cap / 2 <= d <= cap
    assert len(set(delays)) == 5  # jittered, not a fixed schedule
    again = HttpTarget("http://127.0.0.1:9", V2Protocol("m"), backoff=0.1, max_backoff=0.5, seed=1)
    assert [again._delay(a) for a in range(5)] == delays


def test_client_errors_are_not_retried(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES) as server:
        v = verify(fingerprint, HttpTarget(server.url, V2Protocol("nope"), **FAST))
    assert v.status is Status.INCONCLUSIVE and v.problems == {"http-404": 20}
    assert v.target_stats["requests"] == 1 and v.target_stats["retries"] == 0


def test_connection_refused_is_inconclusive(fingerprint) -> None:
    from mlserver_rig import free_port

    target = _v2(f"http://127.0.0.1:{free_port()}", retries=2)
    v = verify(fingerprint, target, "top1", batch_size=10)
    assert v.status is Status.INCONCLUSIVE and v.problems == {"connection": 20}
    assert v.target_stats["requests"] == 2 * 3 and v.queries_used == 60


def test_query_budget_is_exact(model, fingerprint) -> None:
    with FakeServer(TorchTarget(model), NAMES) as server:
        server.fault = _faults("http-503")
        v = verify(fingerprint, _v2(server.url, max_batch_size=5, max_queries=15), "top1-p4", batch_size=5)
    assert v.status is Status.INCONCLUSIVE
    assert v.queries_used == 15 and v.problems == {"budget": 10}  # 5 + 5 retried + 5; then refused


@pytest.mark.parametrize(
    ("fault", "output", "kind"),
    [
        ("malformed-json", "logits", "malformed-json"),
        ("wrong-shape", "logits", "wrong-shape"),
        ("nan", "logits", "nan"),
        ("nan", "probabilities", "nan"),
        ("unknown-label", "label-names", "unknown-label"),
    ],
)
def test_malformed_answers_are_reported_as_such(model, fingerprint, fault, output, kind) -> None:
    v2_output = "label-names" if output == "label-names" else output
    with FakeServer(TorchTarget(model), NAMES, v2_output=v2_output) as server:
        server.fault = _faults(None, fault)
        target = _v2(server.url, returns=output, class_names=NAMES, max_batch_size=5)
        v = verify(fingerprint, target, "top1", batch_size=5)
    assert v.status is Status.INCONCLUSIVE
    assert v.failed == [5, 6, 7, 8, 9] and v.problems == {kind: 5}
    assert v.target_stats["retries"] == 0  # a malformed answer is evidence, not a network blip
    assert kind in v.reason


def test_protocol_decoding_rejects_malformed_bodies() -> None:
    v2 = V2Protocol("m")
    ok = {"outputs": [{"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    assert v2.decode(ok, 2).shape == (2, 3)
    bad = [
        ({"nope": 1}, "malformed-response"),
        ({"outputs": [{"shape": [2, 3], "data": [1, 2]}]}, "wrong-shape"),
        ({"outputs": [{"shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}]}, "wrong-shape"),
        ({"outputs": [{"shape": "2x3", "data": [1]}]}, "malformed-response"),
    ]
    for body, kind in bad:
        with pytest.raises(TargetError) as e:
            v2.decode(body, 2)
        assert e.value.kind == kind
    with pytest.raises(TargetError, match="no output named 'z'"):
        V2Protocol("m", output_name="z").decode(ok, 2)
    tf = TFServingProtocol("m", output_name="probs")
    assert tf.decode({"predictions": [{"probs": [0.5, 0.5], "x": 1}]}, 1).shape == (1, 2)
    with pytest.raises(TargetError, match="several outputs"):
        TFServingProtocol("m").decode({"predictions": [{"a": [1], "b": [2]}]}, 1)
    with pytest.raises(TargetError, match="ragged"):
        TFServingProtocol("m").decode({"predictions": [[1, 2], [3]]}, 2)
    js = JsonProtocol("p", template={"x": "$inputs"}, response_path="r.0.s")
    assert js.path() == "/p" and js.decode({"r": [{"s": [[0.1, 0.9]]}]}, 1).shape == (1, 2)
    with pytest.raises(TargetError, match="nothing at path element 's'"):
        js.decode({"r": [{"t": 1}]}, 1)
    assert TorchServeProtocol("m").decode({"cat": 0.1, "dog": 0.9}, 1).tolist() == [["dog", "cat"]]
    assert (
        TFServingProtocol("m", layout="nhwc").encode(np.zeros((1, 3, 4, 5)))["instances"][0][0][0]
        == [0.0] * 3
    )


def test_protocol_and_adapter_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match='placeholder "\\$inputs"'):
        JsonProtocol("/p", template='{"x": 1}', response_path="a")
    with pytest.raises(ValueError, match="not JSON"):
        JsonProtocol("/p", template="{x", response_path="a")
    with pytest.raises(ValueError, match="needs a model name"):
        make_protocol("v2")
    with pytest.raises(ValueError, match="unknown protocol 'grpc'"):
        make_protocol("grpc", "m")
    with pytest.raises(ValueError, match="need the class names"):
        AnswerAdapter("label-names")
    with pytest.raises(ValueError, match="must be >= 1"):
        HttpTarget("http://127.0.0.1:1", V2Protocol("m"), concurrency=0)
    with pytest.raises(ValueError, match="http"):
        HttpTarget("ftp://127.0.0.1:1", V2Protocol("m"))


def test_adapters() -> None:
    logits = np.array([[0.0, math.log(3.0)]])
    assert np.allclose(AnswerAdapter("logits")(logits), [[0.25, 0.75]])
    assert AnswerAdapter("label-names", ["a", "b"])(np.array([["b", "a"]])).tolist() == [[1, 0]]
    with pytest.raises(TargetError, match="unknown label 'c'"):
        AnswerAdapter("label-names", ["a", "b"])(np.array([["c"]]))
    assert (
        AnswerAdapter("labels").provides == "labels" and AnswerAdapter("logits").provides == "probabilities"
    )


SECRETS = ("tok-SECRET-123", "key-SECRET-456", "pw-SECRET-789", "q-SECRET-000")


def test_secrets_never_printed_or_written(model, fingerprint, tmp_path, monkeypatch) -> None:
    fp_path = tmp_path / "fp.nnseal"
    fingerprint.save(fp_path)
    monkeypatch.setenv(TOKEN_ENV, SECRETS[0])
    runner = CliRunner()
    with FakeServer(TorchTarget(model), NAMES) as server:
        url = f"{server.url}/?api_key={SECRETS[3]}"
        common = [
            "--allow-unsigned",
            "--url",
            url,
            "--model-name",
            "digits",
            "--returns",
            "logits",
            "--header",
            f"X-Api-Key: {SECRETS[1]}",
        ]
        outputs = [
            runner.invoke(main, ["verify", str(fp_path), *common, "--json"]),
            runner.invoke(main, ["verify", str(fp_path), *common, "--model-name", "nope", "--json"]),
            runner.invoke(main, ["verify", str(fp_path), *common]),
            runner.invoke(main, ["watch", str(fp_path), *common, "--max-runs", "1", "--interval", "0"]),
            runner.invoke(main, ["verify", str(fp_path), *common, "--header", f"bad{SECRETS[1]}"]),
        ]
        seen, query = server.seen_headers[0], server.seen_queries[0]
        url_pw = url.replace("://", f"://user:{SECRETS[2]}@")
        monkeypatch.delenv(TOKEN_ENV)  # with a token as well it is refused (test_http_hostile.py)
        target = _v2(url_pw, headers={"X-Api-Key": SECRETS[1]})
        v = verify(fingerprint, target, "top1")
        basic = server.seen_headers[-1]["Authorization"]
    assert [r.exit_code for r in outputs] == [0, 3, 0, 0, 2]
    assert seen["Authorization"] == f"Bearer {SECRETS[0]}" and seen["X-Api-Key"] == SECRETS[1]
    assert query == f"api_key={SECRETS[3]}"
    assert v.status is Status.INTACT  # user info in the URL goes out as basic auth
    assert basic == "Basic " + base64.b64encode(f"user:{SECRETS[2]}".encode()).decode()
    texts = [r.output for r in outputs] + [repr(target), target.describe(), json.dumps(v.to_dict())]
    for text in texts:
        assert not any(secret in text for secret in SECRETS), text
    assert redact_url(url_pw) == server.url + "/"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d, HOST = tmp_path_factory.mktemp("tls"), "127.0.0.1"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / "cert.pem", d / "key.pem"


def test_tls_ca_bundle_and_insecure(model, fingerprint, tls_files) -> None:
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with FakeServer(TorchTarget(model), NAMES, tls=ctx) as server:
        url = server.url
        trusted = verify(fingerprint, _v2(url, ca_bundle=str(cert)), "top1-p4")
        untrusted = verify(fingerprint, _v2(url, retries=0), "top1-p4")
        insecure = verify(fingerprint, _v2(url, verify_tls=False), "top1-p4")
    assert trusted.status is Status.INTACT and insecure.status is Status.INTACT
    assert untrusted.status is Status.INCONCLUSIVE and untrusted.problems == {"connection": 20}
    with pytest.raises(TargetError, match="cannot load certificate"):
        _v2(url, ca_bundle=str(cert.with_name("missing.pem")))


class _Recorder(Target):
    """Answers like ``inner`` for fingerprint queries, with noise for anything else (decoys);
    fails every call without a fingerprint query when ``fail_decoys``; records what it was sent."""

    def __init__(self, inner: Target, queries: np.ndarray, fail_decoys: bool = False) -> None:
        super().__init__()
        self.inner, self.keys, self.fail_decoys = inner, {q.tobytes() for q in queries}, fail_decoys
        self.sent: list[bytes] = []

    def _predict(self, x: np.ndarray) -> np.ndarray:
        self.sent += [q.tobytes() for q in x]
        real = np.array([q.tobytes() in self.keys for q in x])
        if self.fail_decoys and not real.any():
            raise TargetError("decoy request failed", "http-503")
        out = np.random.default_rng(0).dirichlet(np.ones(10), len(x)).astype(np.float32)
        if real.any():
            out[real] = self.inner.predict(x[real])
        return out

    def describe(self) -> str:
        return "recorder"


@pytest.mark.parametrize("fail_decoys", [False, True])
def test_stealth_hides_queries_among_decoys(model, fingerprint, digits, fail_decoys) -> None:
    inner = _Recorder(TorchTarget(model), fingerprint.queries, fail_decoys)
    pauses: list[float] = []
    target = StealthTarget(
        inner, digits[1].x, decoy_ratio=2, delay=0.5, jitter=0.1, seed=0, sleep=pauses.append
    )
    v = verify(fingerprint, target, "top1-p4", batch_size=len(fingerprint))
    n = len(fingerprint)
    assert v.status is Status.INTACT  # noisy decoy answers are never compared
    assert v.queries_used == 3 * n and len(inner.sent) == 3 * n
    assert v.target_stats["decoys_sent"] == 2 * n
    assert v.target_stats["decoy_requests_failed"] == (2 * n if fail_decoys else 0)
    index = {q.tobytes(): i for i, q in enumerate(fingerprint.queries)}
    order = [index[k] for k in inner.sent if k in index]
    assert sorted(order) == list(range(n)) and order != list(range(n))  # each once, shuffled
    assert [k in index for k in inner.sent] != [True] * n + [False] * 2 * n  # mixed among decoys
    assert len(pauses) == 3 * n - 1 and all(0.4 <= p <= 0.6 for p in pauses)


def test_stealth_arguments_are_checked(model, fingerprint) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StealthTarget(TorchTarget(model), np.zeros((0, 1, 8, 8)))
    target = StealthTarget(TorchTarget(model), np.zeros((3, 1, 4, 4)))
    with pytest.raises(ValueError, match="decoys have shape"):
        target.predict(fingerprint.queries)


def test_cli_verify_url_exit_codes(model, tampered, fingerprint, digits, tmp_path) -> None:
    fp_path = tmp_path / "fp.nnseal"
    fingerprint.save(fp_path)
    runner = CliRunner()
    args = ["verify", str(fp_path), "--allow-unsigned", "--model-name", "digits", "--returns", "logits"]
    args += ["--spec", "top1-p4"]
    with FakeServer(TorchTarget(model), NAMES) as good, FakeServer(tampered, NAMES) as bad:
        intact = runner.invoke(
            main, [*args, "--url", good.url, "--json", "--max-batch", "4", "--concurrency", "2"]
        )
        stealth = runner.invoke(main, [*args, "--url", good.url, "--stealth", "--decoys", "digits", "--json"])
        tamper = runner.invoke(main, [*args, "--url", bad.url])
        down_url = good.url
    down = runner.invoke(main, [*args, "--url", down_url, "--retries", "0"])
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.output)["target_stats"]["requests"] == 5
    assert stealth.exit_code == 0 and json.loads(stealth.output)["target_stats"]["decoys_sent"] == 20
    assert tamper.exit_code == 1 and tamper.output.startswith("TAMPERED")
    assert down.exit_code == 3 and "connection" in down.output
    errors = {
        "both": runner.invoke(main, [*args, str(fp_path), "--url", down_url]),
        "neither": runner.invoke(main, args),
        "json": runner.invoke(main, [*args, "--url", down_url, "--protocol", "json"]),
        "names": runner.invoke(main, [*args, "--url", down_url, "--returns", "label-names"]),
        "watch": runner.invoke(main, ["watch", str(fp_path)]),
    }
    for name, r in errors.items():
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, (
            name,
            r.output,
        )


def test_cli_watch_json_lines_and_first_tampered_exit(model, tampered, fingerprint, tmp_path) -> None:
    fp_path = tmp_path / "fp.nnseal"
    fingerprint.save(fp_path)
    runner = CliRunner()
    args = ["watch", str(fp_path), "--allow-unsigned", "--model-name", "digits", "--returns", "logits"]
    args += ["--spec", "top1-p4"]
    with FakeServer(TorchTarget(model), NAMES) as good, FakeServer(tampered, NAMES) as bad:
        ok = runner.invoke(main, [*args, "--url", good.url, "--max-runs", "2", "--interval", "0"])
        caught = runner.invoke(main, [*args, "--url", bad.url, "--max-runs", "3", "--interval", "0"])
    lines = [json.loads(line) for line in ok.output.splitlines()]
    assert ok.exit_code == 0 and [r["run"] for r in lines] == [1, 2]
    assert all(r["status"] == "intact" and r["queries_used"] == 20 for r in lines)
    assert caught.exit_code == 1 and len(caught.output.splitlines()) == 1
    assert json.loads(caught.output)["status"] == "tampered"


def test_watch_metrics_and_inconclusive_runs(model, fingerprint) -> None:
    from mlserver_rig import free_port

    port = free_port()
    metrics = WatchMetrics(port)
    pauses: list[float] = []
    try:
        with FakeServer(TorchTarget(model), NAMES) as server:
            server.fault = _faults("http-503")
            runs = watch(
                fingerprint,
                lambda: _v2(server.url, retries=0),
                "top1-p4",
                interval=30,
                max_runs=3,
                metrics=metrics,
                sleep=pauses.append,
            )
            records = list(runs)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        metrics.close()
    assert [r["status"] for r in records] == ["inconclusive", "intact", "intact"]
    assert len(pauses) == 2 and all(25 < p <= 30 for p in pauses)
    assert 'nnseal_watch_runs_total{status="intact"} 2.0' in text
    assert 'nnseal_watch_runs_total{status="inconclusive"} 1.0' in text
    assert 'nnseal_watch_verdict{nnseal_watch_verdict="intact"} 1.0' in text
    assert 'nnseal_watch_failed_queries_total{kind="http-503"} 20.0' in text
    assert "nnseal_watch_queries_total 60.0" in text
    with pytest.raises(ValueError, match="max_runs"):
        next(watch(fingerprint, lambda: TorchTarget(model), max_runs=0))


class _Fixed(Target):
    """Returns ``make(n)`` for a batch of n."""

    def __init__(self, make, provides: str = "probabilities") -> None:
        super().__init__()
        self.make, self.provides = make, provides

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.make(len(x))

    def describe(self) -> str:
        return "fixed"


@pytest.mark.parametrize(
    ("make", "provides", "kind"),
    [
        (lambda n: np.full((n, 5), 0.2), "probabilities", "wrong-shape"),
        (lambda n: np.full((n, 10), np.nan), "probabilities", "nan"),
        (lambda n: np.full((n, 10), 2.0), "probabilities", "not-probabilities"),
        (lambda n: np.full((n, 10), 0.5), "probabilities", "not-probabilities"),
        (lambda n: np.full((n, 1), 10), "labels", "unknown-label"),
        (lambda n: np.full((n, 1), np.nan), "labels", "nan"),
    ],
)
def test_verify_names_each_malformed_answer(fingerprint, make, provides, kind) -> None:
    v = verify(fingerprint, _Fixed(make, provides), "top1", batch_size=10)
    assert v.status is Status.INCONCLUSIVE and v.problems == {kind: 20} and f"({kind}: 20)" in v.reason
