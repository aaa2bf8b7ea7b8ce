"""``nnseal watch --fleet``: the fleet file (errors named before any run, credentials from environment
variables and never shown), the runner (bounded parallelism, schedules, backoff, a failing or hanging
target not stopping the others), the exit-code policy and per-target Prometheus metrics."""

from __future__ import annotations

import json
import string
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fake_server import FakeServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlserver_rig import free_port

from nnseal.attacks import run_attack
from nnseal.cli import main
from nnseal.cli.fleet import KEYS, load_fleet
from nnseal.cli.options import load_signed
from nnseal.errors import NnsealError, TargetError
from nnseal.fleet import BACKOFF_CAP, FleetTarget, backoff_delay, fleet_status, watch_fleet
from nnseal.targets import Target, TorchTarget
from nnseal.verification import Status
from nnseal.watch import WatchMetrics

NAMES = [str(i) for i in range(10)]
COMMON = 'model_name = "digits"\nreturns = "logits"\nretries = 0\ntimeout = 2\ninterval = 0\n'
SECRETS = ("tok-3f9a1c7e5b", "key-8d2e6a4f0c")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fingerprint) -> Path:
    """A folder holding the fingerprint, unsigned, as ``fp.nnseal``."""
    d = tmp_path_factory.mktemp("fleet")
    fingerprint.save(d / "fp.nnseal")
    return d


@pytest.fixture(scope="module")
def tampered(model) -> Target:
    return run_attack("modify-weights", model, {"index": -2, "relative": 0.5}).target()


def _unsigned_ok(path: Path):
    return load_signed(path, None, (), True)


def _fleet(folder: Path, text: str, name: str = "fleet.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _target(name: str, url: str = "http://127.0.0.1:9", **keys: object) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f'[[targets]]\nname = "{name}"\nfingerprint = "fp.nnseal"\nurl = "{url}"\n{extra}'


GOOD = f"[defaults]\n{COMMON}\n{_target('a')}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("targets = [", "fleet.toml: not valid TOML"),
        ("[defaults]\ninterval = 1\n", "no targets"),
        ("targets = 3\n", "no targets"),
        ("targets = [1, 2]\n", "no targets"),
        (f"extra = 1\n{GOOD}", "unknown key 'extra' (a fleet file has [defaults] and [[targets]])"),
        ("defaults = 1\n" + _target("a"), "defaults must be a table"),
        (f"{GOOD}model_nam = 'x'\n", "target 'a': unknown key 'model_nam' (did you mean 'model_name'?)"),
        (f"{GOOD}token = 'x'\n", "target 'a': unknown key 'token' (secrets stay out of the file"),
        (f"{GOOD}header = 'X: y'\n", "target 'a': unknown key 'header' (secrets stay out"),
        (f"[defaults]\nname = 'x'\n{_target('a')}", "[defaults]: unknown key 'name'"),
        (f"{GOOD}{_target('a')}", "target 'a': name: another target has it"),
        ("[[targets]]\nurl = 'http://x'\n", "target 1: name must be a non-empty printable string"),
        ("[[targets]]\nname = ''\n", "target 1: name must be"),
        ("[[targets]]\nname = 'a'\nurl = 'http://x'\n", "target 'a': missing key 'fingerprint'"),
        ("[[targets]]\nname = 'a'\nfingerprint = 'fp.nnseal'\n", "target 'a': missing key 'url'"),
        (GOOD.replace("fp.nnseal", "nope.nnseal"), "target 'a': fingerprint: no such file"),
        (GOOD.replace('"fp.nnseal"', "3"), "target 'a': fingerprint must be a string, got an integer"),
        (f"{GOOD}interval = -1\n", "target 'a': interval: Invalid value: -1.0 is not in the range x>=0"),
        (f"{GOOD}interval = '60'\n", "target 'a': interval must be a number, got a string"),
        (f"{GOOD}interval = nan\n", "target 'a': interval must be a finite number, got nan"),
        (f"{GOOD}interval = inf\n", "target 'a': interval must be a finite number"),
        (f"{GOOD}interval = true\n", "target 'a': interval must be a number, got a boolean"),
        (f"{GOOD}interval = [1]\n", "target 'a': interval must be a number, got an array"),
        (f"{GOOD}budget = 0\n", "target 'a': budget: Invalid value: 0 is not in the range x>=1"),
        (f"{GOOD}budget = 2.5\n", "target 'a': budget must be an integer, got a number"),
        (f"{GOOD}insecure = 1\n", "target 'a': insecure must be a boolean, got an integer"),
        (f"{GOOD}protocol = 'v9'\n", "target 'a': protocol: Invalid value: 'v9' is not one of"),
        (f"{GOOD}spec = 'top9'\n", "target 'a': spec: "),
        (GOOD.replace('model_name = "digits"\n', ""), "target 'a': protocol v2 needs a model name"),
        (GOOD.replace("http://127.0.0.1:9", "ftp://host"), "target 'a': URL must be http(s)://host"),
        (f"{GOOD}token_env = 'NNSEAL_TEST_UNSET'\n", "target 'a': token_env: environment variable"),
        (f"{GOOD}token_env = 'A B'\n", "target 'a': token_env must name an environment variable"),
        (f"{GOOD}header_env = 'KEY'\n", "target 'a': header_env must be a table"),
        (f"{GOOD}header_env = {{'X Key' = 'K'}}\n", "target 'a': header_env: 'X Key' is not an HTTP header"),
        (f"{GOOD}header_env = {{X-Key = 3}}\n", "header_env.X-Key must name an environment variable"),
    ],
)
def test_fleet_file_errors_name_target_and_key(folder, text, message) -> None:
    with pytest.raises(NnsealError) as e:
        load_fleet(_fleet(folder, text), _unsigned_ok)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_fleet_file_defaults_paths_and_signatures(folder, fingerprint, monkeypatch, tmp_path) -> None:
    defaults = COMMON.replace("interval = 0", "interval = 5\nbudget = 10")
    text = f"[defaults]\n{defaults}\n{_target('a')}{_target('b', interval=7)}"
    monkeypatch.chdir(tmp_path)  # relative paths are from the fleet file's folder, not from here
    a, b = load_fleet(_fleet(folder, text), _unsigned_ok)
    assert (a.name, a.interval, a.budget, b.interval, b.budget) == ("a", 5, 10, 7, 10)
    assert a.fingerprint is b.fingerprint  # loaded, and its signature checked, once
    assert a.fingerprint.model_id == fingerprint.model_id
    with pytest.raises(NnsealError, match=r"target 'a': fingerprint: .*unsigned"):
        load_fleet(folder / "fleet.toml", lambda p: load_signed(p, None, (), False))
    monkeypatch.setenv("NNSEAL_HMAC_KEY", "fleet-key")
    fingerprint.save(folder / "signed.nnseal", hmac_key=b"fleet-key")
    signed = load_fleet(_fleet(folder, GOOD.replace("fp.nnseal", "signed.nnseal"), "signed.toml"),
                        lambda p: load_signed(p, None, (), False))  # fmt: skip
    assert signed[0].fingerprint.signature.verified


_KEYS = st.sampled_from([*sorted(KEYS), "", "x", "a.b", "héllo", "model_nam", "token"])
_VALUES = st.one_of(
    st.sampled_from(
        ["'b'", "'fp.nnseal'", "'missing'", "'http://127.0.0.1:9'", "'nonsense'", "'digits'", "'json'",
         "'label-names'", "'@names.txt'", "'missing.pem'", "'top3'", "'NNSEAL_FLEET_KEY'",
         "{X-Key = 'NNSEAL_FLEET_KEY'}", "{'X Key' = 1}", "-1", "0", "0.5", "nan", "inf", "true",
         "1979-05-27", "[[1], {a = 1}]", "[]", "{}"]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.text(max_size=20).map(lambda t: json.dumps(t, ensure_ascii=False)),
)  # fmt: skip
_BASE = {"name": "'a'", "fingerprint": "'fp.nnseal'", "url": "'http://127.0.0.1:9'", "model_name": "'digits'"}
_TABLES = st.builds(  # a target: the keys it needs, perhaps one dropped, and a few more
    lambda dropped, extra: {**{k: v for k, v in _BASE.items() if k not in dropped}, **extra},
    st.lists(st.sampled_from(sorted(_BASE)), max_size=1),
    st.dictionaries(_KEYS, _VALUES, max_size=5),
)


def _toml(defaults: dict | None, targets: list[dict], top: dict) -> str:
    """A fleet file's text from tables of TOML literals (keys quoted, so any text is a key)."""

    def pairs(table: dict) -> str:
        return "".join(f"{json.dumps(k, ensure_ascii=False)} = {v}\n" for k, v in table.items())

    text = pairs(top) + ("" if defaults is None else "[defaults]\n" + pairs(defaults))
    return text + "".join("[[targets]]\n" + pairs(t) for t in targets)


_FLEETS = st.builds(
    _toml,
    st.none() | st.dictionaries(_KEYS, _VALUES, max_size=3),
    st.lists(_TABLES, min_size=1, max_size=3),
    st.sampled_from([{}, {}, {}, {}, {"x": "1"}]),
)
_GARBAGE = st.text(alphabet=string.printable + "[]{}=\"'é\x00", max_size=200)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_FLEETS, _FLEETS, _GARBAGE, st.binary(max_size=100)))
def test_any_fleet_file_gives_targets_or_nnseal_error(folder, monkeypatch, text) -> None:
    monkeypatch.setenv("NNSEAL_FLEET_KEY", SECRETS[1])
    path = folder / "fuzz.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        targets = load_fleet(path, _unsigned_ok)
    except NnsealError as e:
        assert SECRETS[1] not in str(e)
    else:
        assert targets and all(isinstance(t, FleetTarget) for t in targets)


def test_credentials_come_from_named_variables_and_are_never_shown(model, folder, monkeypatch) -> None:
    monkeypatch.setenv("SHOP_TOKEN", SECRETS[0])
    monkeypatch.setenv("SHOP_KEY", SECRETS[1])
    with FakeServer(TorchTarget(model), NAMES) as server:
        creds = 'header_env = {"X-Api-Key" = "SHOP_KEY"}\n'
        text = f"[defaults]\n{COMMON}\n" + _target("shop", server.url, token_env="SHOP_TOKEN") + creds
        args = ["watch", "--fleet", str(_fleet(folder, text)), "--runs", "1", "--allow-unsigned"]
        r = CliRunner().invoke(main, args)
        seen = server.seen_headers[0]
        # a credential HTTP cannot carry, and a conflicting one: refused, still unseen
        monkeypatch.setenv("SHOP_KEY", SECRETS[1] + "\n")
        bad_value = CliRunner().invoke(main, args)
        monkeypatch.setenv("SHOP_KEY", SECRETS[1])
        both = CliRunner().invoke(
            main, [*args[:2], str(_fleet(folder, text.replace("X-Api-Key", "Authorization")))]
        )
    assert r.exit_code == 0, r.output
    assert seen["Authorization"] == f"Bearer {SECRETS[0]}" and seen["X-Api-Key"] == SECRETS[1]
    assert json.loads(r.stdout)["name"] == "shop"
    assert bad_value.exit_code == 2 and "SHOP_KEY holds characters HTTP cannot send" in bad_value.output
    assert both.exit_code == 2 and "target 'shop'" in both.output
    for text in (r.output, bad_value.output, both.output, (folder / "fleet.toml").read_text()):
        assert not any(secret in text for secret in SECRETS), text


def test_no_fleet_wide_token_reaches_a_target_that_names_none(model, folder, monkeypatch) -> None:
    monkeypatch.setenv("NNSEAL_HTTP_TOKEN", SECRETS[0])  # honoured by a one-target watch, not a fleet
    with FakeServer(TorchTarget(model), NAMES) as server:
        text = f"[defaults]\n{COMMON}\n" + _target("shop", server.url)
        args = ["watch", "--fleet", str(_fleet(folder, text)), "--runs", "1", "--allow-unsigned"]
        r = CliRunner().invoke(main, args)
        seen = server.seen_headers[0]
    assert r.exit_code == 0, r.output
    assert "Authorization" not in seen and "authorization" not in seen


class _Probe(Target):
    """Answers like ``inner`` after ``delay`` s; ``fail`` raises a TargetError per call instead, ``gate``
    holds every call until set; ``shared`` counts the calls in flight, and the most at once."""

    def __init__(self, inner: Target, shared: dict, *, delay: float = 0.0, fail: bool = False,
                 gate: threading.Event | None = None) -> None:  # fmt: skip
        super().__init__()
        self.inner, self.shared, self.delay, self.fail, self.gate = inner, shared, delay, fail, gate

    def _predict(self, x: np.ndarray) -> np.ndarray:
        with self.shared["lock"]:
            self.shared["now"] += 1
            self.shared["most"] = max(self.shared["most"], self.shared["now"])
        try:
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.delay)
            if self.fail:
                raise TargetError("injected", "http-503")
            return self.inner.predict(x)
        finally:
            with self.shared["lock"]:
                self.shared["now"] -= 1

    def describe(self) -> str:
        return "probe"


def _member(name, model, fingerprint, shared, interval=0.0, starts=None, **probe) -> FleetTarget:
    def make() -> Target:
        if starts is not None:
            starts.setdefault(name, []).append(time.monotonic())
        return _Probe(TorchTarget(model), shared, **probe)

    return FleetTarget(name, fingerprint, make, interval=interval, spec="top1")


def _shared() -> dict:
    return {"lock": threading.Lock(), "now": 0, "most": 0}


def test_parallelism_is_bounded(model, fingerprint) -> None:
    shared = _shared()
    fleet = [_member(f"t{i}", model, fingerprint, shared, delay=0.05) for i in range(6)]
    records = list(watch_fleet(fleet, parallel=2, max_runs=2))
    assert shared["most"] == 2
    assert sorted((r["name"], r["run"]) for r in records) == [(f"t{i}", k) for i in range(6) for k in (1, 2)]
    assert all(r["status"] == "intact" for r in records)
    with pytest.raises(ValueError, match="parallel"):
        next(watch_fleet(fleet, parallel=0))
    with pytest.raises(ValueError, match="unique"):
        next(watch_fleet([fleet[0], fleet[0]]))


def test_backoff_after_inconclusive_runs_then_back_on_interval(model, fingerprint) -> None:
    assert [backoff_delay(10, n) for n in (0, 1, 2, 3, 4)] == [10, 20, 40, 80, 80] and BACKOFF_CAP == 8
    interval, shared, starts = 0.1, _shared(), {}
    failing = {"n": 0}
    flaky = _member("flaky", model, fingerprint, shared, interval, starts)

    def make() -> Target:  # the first two runs fail
        failing["n"] += 1
        target = flaky.make_target()
        target.fail = failing["n"] <= 2  # type: ignore[attr-defined]
        return target

    fleet = [FleetTarget("flaky", fingerprint, make, interval=interval, spec="top1"),
             _member("down", model, fingerprint, shared, interval, starts, fail=True)]  # fmt: skip
    cpu = time.thread_time()
    records = list(watch_fleet(fleet, parallel=2, max_runs=5))
    assert time.thread_time() - cpu < 0.5  # ~2 s of waiting for backoff, not of spinning
    statuses = {n: [r["status"] for r in records if r["name"] == n] for n in ("flaky", "down")}
    assert statuses["flaky"] == ["inconclusive"] * 2 + ["intact"] * 3
    assert statuses["down"] == ["inconclusive"] * 5
    gaps = {n: np.diff(starts[n]) for n in starts}
    assert all(gaps["down"] >= 0.95 * interval * np.array([2, 4, 8, 8])), gaps
    assert all(gaps["flaky"][:2] >= 0.95 * interval * np.array([2, 4])), gaps
    assert all(gaps["flaky"][2:] < 6 * interval), gaps  # a conclusive run puts it back on its interval


def test_failing_or_hanging_target_does_not_stop_the_others(model, fingerprint) -> None:
    shared, gate = _shared(), threading.Event()

    def boom() -> Target:
        raise RuntimeError("kaput")

    fleet = [
        _member("hang", model, fingerprint, shared, gate=gate),
        FleetTarget("boom", fingerprint, boom, interval=0),
        _member("ok", model, fingerprint, shared),
    ]
    seen: list[tuple[str, int, str]] = []
    for r in watch_fleet(fleet, parallel=2, max_runs=3):
        seen.append((r["name"], r["run"], r["status"]))
        if sum(n in ("ok", "boom") for n, _, _ in seen) == 6:
            gate.set()  # only now does the hanging target answer
        if r["name"] == "boom":
            assert r["reason"] == "run failed (RuntimeError: kaput)" and r["problems"] == {"error": 20}
    first_hang = next(i for i, s in enumerate(seen) if s[0] == "hang")
    assert first_hang == 6  # the others finished all their runs meanwhile
    assert [s for s in seen if s[0] == "hang"] == [("hang", k, "intact") for k in (1, 2, 3)]
    assert {s[2] for s in seen if s[0] == "boom"} == {"inconclusive"}


def test_fleet_status() -> None:
    bad, ok, unsure = Status.TAMPERED, Status.INTACT, Status.INCONCLUSIVE
    cases = ([ok, ok], [ok, unsure], [unsure, bad, ok], [])
    assert [fleet_status(s) for s in cases] == [ok, unsure, bad, ok]


def test_cli_exit_codes_and_policy(model, tampered, folder) -> None:
    runner = CliRunner()
    with (
        FakeServer(TorchTarget(model), NAMES) as good,
        FakeServer(tampered, NAMES) as bad,
        FakeServer(TorchTarget(model), NAMES, timeout_sleep=1.0) as hung,
        FakeServer(TorchTarget(model), NAMES) as flaky,
    ):
        hung.fault = lambda: "timeout"
        first = iter(["http-500"])
        flaky.fault = lambda: next(first, None)
        refused = f"http://127.0.0.1:{free_port()}"

        def run(*targets: str, extra: tuple[str, ...] = ()) -> tuple[int, list[dict], str]:
            defaults = COMMON.replace("timeout = 2", "timeout = 0.3")
            path = _fleet(folder, f"[defaults]\n{defaults}\n" + "".join(targets))
            r = runner.invoke(
                main, ["watch", "--fleet", str(path), "--runs", "3", "--allow-unsigned", *extra]
            )
            lines = [json.loads(line) for line in r.stdout.splitlines()]
            return r.exit_code, lines, r.output

        caught = run(_target("good", good.url), _target("bad", bad.url), _target("down", refused))
        unsure = run(_target("good", good.url), _target("hung", hung.url), extra=("--parallel", "1"))
        recovered = run(_target("good", good.url), _target("flaky", flaky.url))
    code, lines, _ = caught
    by_name = {n: [r["status"] for r in lines if r["name"] == n] for n in ("good", "bad", "down")}
    assert code == 1 and by_name == {
        "good": ["intact"] * 3,
        "bad": ["tampered"],
        "down": ["inconclusive"] * 3,
    }
    assert {r["problems"].get("connection") for r in lines if r["name"] == "down"} == {20}
    code, lines, _ = unsure
    assert code == 3 and {r["problems"].get("timeout") for r in lines if r["name"] == "hung"} == {20}
    code, lines, out = recovered
    flaky_runs = [r["status"] for r in lines if r["name"] == "flaky"]
    assert code == 0 and flaky_runs == ["inconclusive", "intact", "intact"], out
    assert all(
        {"name", "run", "time", "duration_s", "status", "reason", "queries_used"} <= set(r) for r in lines
    )


def test_cli_fleet_option_conflicts(folder) -> None:
    path = str(_fleet(folder, GOOD))
    runner = CliRunner()
    cases = {
        ("--fleet", path, "--url", "http://x"): "give --url (one target) or --fleet (a fleet file), not both",
        ("--fleet", path, "--model-name", "m"): "--model-name goes in the fleet file, as model_name",
        ("--fleet", path, "--one-time", "3"): "--one-time does not go with --fleet",
        ("--fleet", path, str(folder / "fp.nnseal")): "drop FINGERPRINT",
        ("--fleet", str(folder / "none.toml")): "cannot read fleet file",
        ("--parallel", "2", "--url", "http://x"): "--parallel goes with --fleet",
        (str(folder / "fp.nnseal"),): "watch needs FINGERPRINT and --url, or --fleet FLEET.toml",
    }
    for args, message in cases.items():
        r = runner.invoke(main, ["watch", *args])
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, (args, r.output)


def test_one_metrics_endpoint_with_a_target_label(model, fingerprint) -> None:
    port, shared = free_port(), _shared()
    metrics = WatchMetrics(port, per_target=True)
    try:
        fleet = [
            _member("a", model, fingerprint, shared),
            _member("b", model, fingerprint, shared, fail=True),
        ]
        list(watch_fleet(fleet, max_runs=2, metrics=metrics))
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        metrics.close()
    series = [line for line in text.splitlines() if line.startswith("nnseal_")]
    assert series and all('target="a"' in s or 'target="b"' in s for s in series), series
    assert 'nnseal_watch_runs_total{status="intact",target="a"} 2.0' in text
    assert 'nnseal_watch_verdict{nnseal_watch_verdict="inconclusive",target="b"} 1.0' in text
    assert 'nnseal_watch_failed_queries_total{kind="http-503",target="b"} 40.0' in text
    assert 'nnseal_watch_queries_total{target="a"} 40.0' in text
