"""Property-based tests: valid answers of every protocol (V2 numbers and names, TorchServe list and map,
TF Serving, a JSON API), mutated in structure (swapped types, dropped keys, nesting, huge numbers,
NaN) or in bytes (flips, truncations, insertions, over-long numbers, corrupt gzip), must give a
``TargetError`` with a kind — never another exception — and *intact* only when the decoded answers
equal the recorded ones under the spec. Seeded (``derandomize``): the same examples in every run."""

from __future__ import annotations

import copy
import gzip
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fake_server import HostileServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnseal._io import parse_json
from nnseal.errors import TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.outputs import OutputSpec
from nnseal.query import validate_answers
from nnseal.targets import (
    HttpTarget,
    JsonProtocol,
    Protocol,
    TFServingProtocol,
    TorchServeProtocol,
    V2Protocol,
)
from nnseal.targets.protocols import AnswerAdapter
from nnseal.verification import Status, verify

CLASSES = 4
NAMES = ["cat", "dog", "emu", "yak"]
STRUCTURAL_EXAMPLES = 400  # per case, x 6 cases
BYTE_EXAMPLES = 200  # per case, x 6 cases
CHANGED_EXAMPLES = 9  # per case, x 4 cases: every row and shift; 3,636 examples in all
KINDS = {
    "malformed-json",
    "malformed-response",
    "wrong-shape",
    "nan",
    "unknown-label",
    "not-probabilities",
    "response-too-large",
    "unsupported-encoding",
    "bad-encoding",
}


def _settings(examples: int) -> settings:
    """Seeded, no example database on disk, no deadline (a busy CI box is no bug)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _fingerprint(n: int) -> Fingerprint:
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(CLASSES), n).astype(np.float32)
    return Fingerprint(rng.random((n, 1, 4, 4)), p, ["top1", "top2", "top1-p2"], "synthetic", "test")


@dataclass
class Case:
    protocol: Protocol
    output: str
    spec: str
    fp: Fingerprint

    def answer(self) -> Any:
        """The honest answer to the whole fingerprint, in this protocol's JSON."""
        p = self.fp.probabilities
        ranked = [[NAMES[i] for i in np.argsort(-row, kind="stable")[:2]] for row in p]
        if isinstance(self.protocol, V2Protocol):
            if self.output == "label-names":
                return {"outputs": [{"name": "l", "shape": [len(p), 2], "datatype": "BYTES", "data": ranked}]}
            return {
                "model_name": "m",
                "outputs": [{"name": "o", "shape": list(p.shape), "data": p.ravel().tolist()}],
            }
        if isinstance(self.protocol, TorchServeProtocol):
            if self.output == "label-names":
                return {NAMES[i]: float(p[0, i]) for i in np.argsort(-p[0], kind="stable")}
            return p[0].tolist()
        if isinstance(self.protocol, TFServingProtocol):
            return {"predictions": p.tolist()}
        return {"result": [{"probs": row} for row in p.tolist()], "model": "m"}

    def expected(self) -> np.ndarray:
        return self.fp.expected(self.spec)

    def decode(self, body: Any) -> np.ndarray:
        """What verify compares, from a parsed body: protocol, output adapter, answer checks, spec."""
        adapter = AnswerAdapter(self.output, NAMES)  # type: ignore[arg-type]
        n = len(self.fp)
        answers = validate_answers(adapter(self.protocol.decode(body, n)), n, adapter.provides, CLASSES)
        spec = OutputSpec.parse(self.spec)
        return spec.encode(answers) if adapter.provides == "probabilities" else spec.encode_labels(answers)


CASES = {
    "v2": Case(V2Protocol("m"), "probabilities", "top1-p2", _fingerprint(3)),
    "v2-names": Case(V2Protocol("m"), "label-names", "top2", _fingerprint(3)),
    "torchserve-list": Case(TorchServeProtocol("m"), "probabilities", "top1-p2", _fingerprint(1)),
    "torchserve-map": Case(TorchServeProtocol("m"), "label-names", "top2", _fingerprint(1)),
    "tfserving": Case(TFServingProtocol("m"), "probabilities", "top1-p2", _fingerprint(3)),
    "json": Case(JsonProtocol("/p", template={"x": "$inputs"}, response_path="result.*.probs"),
                 "probabilities", "top1-p2", _fingerprint(3)),
}  # fmt: skip

TEXT = 'aeo09.-"\\\x00é✓' + "".join(NAMES)  # an explicit alphabet: Hypothesis writes no Unicode cache
HUGE = [
    10**4000,
    -(10**4000),
    2**63,
    -(2**63) - 1,
    2**64,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(TEXT, max_size=12),
    st.sampled_from(NAMES),
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(TEXT, max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every location in a parsed JSON document, the root included."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _nest(v: Any, depth: int) -> Any:
    for _ in range(depth):
        v = [v]
    return v


def _first(v: Any) -> Any:
    """A container's first item (itself if empty); a scalar as it is."""
    items = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
    return items[0] if items else v


OPS = {
    "replace": lambda v, draw: draw(VALUES),
    "huge": lambda v, draw: draw(st.sampled_from(HUGE)),
    "wrap-list": lambda v, draw: [v],
    "wrap-dict": lambda v, draw: {draw(st.sampled_from(["x", "data", "outputs"])): v},
    "unwrap": lambda v, draw: _first(v),
    "to-string": lambda v, draw: json.dumps(v, allow_nan=True),
    "to-dict": lambda v, draw: {str(i): x for i, x in enumerate(v)} if isinstance(v, list) else v,
    "to-list": lambda v, draw: list(v.values()) if isinstance(v, dict) else v,
    "duplicate": lambda v, draw: [*v, *v[:1]] if isinstance(v, list) else v,
    "shorten": lambda v, draw: v[:-1] if isinstance(v, list) else v,
    "reverse": lambda v, draw: v[::-1] if isinstance(v, list) else v,
    "scale": lambda v, draw: v * draw(st.sampled_from([-1, 0, 2, 1e300])) if type(v) in (int, float) else v,
    "deep": lambda v, draw: _nest(v, draw(st.sampled_from([8, 60, 64, 65]))),
    "drop": None,  # handled by mutate: removes the location from its parent
}


def mutate(body: Any, draw) -> Any:
    """``body`` with one location changed by one of ``OPS``."""
    path = draw(st.sampled_from(_paths(body)))
    op = draw(st.sampled_from(sorted(OPS)))
    if op == "drop" and path:
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        return body
    if op == "drop":
        return {}
    parent, value = None, body
    for key in path:
        parent, value = value, value[key]
    new = OPS[op](value, draw)
    if parent is None:
        return new
    parent[path[-1]] = new
    return body


def _check_decode(case: Case, body: Any) -> None:
    """Decoding raises nothing but a TargetError with a known kind (or, for ranked labels, the spec's
    ValueError for too few of them, which verify counts as invalid-answer); what it returns has the
    shape of the recorded answers."""
    try:
        got = case.decode(body)
    except TargetError as e:
        assert e.kind in KINDS, e.kind
        return
    except ValueError as e:
        assert case.output == "label-names" and "ranked labels" in str(e), e
        return
    assert got.shape == case.expected().shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_answers_decode_to_the_fingerprint(name) -> None:
    case = CASES[name]
    assert np.array_equal(case.decode(case.answer()), case.expected())


@pytest.mark.parametrize("name", sorted(CASES))
@_settings(STRUCTURAL_EXAMPLES)
@given(data=st.data())
def test_structural_mutations_raise_only_target_errors(name, data) -> None:
    case = CASES[name]
    body = copy.deepcopy(case.answer())
    for _ in range(data.draw(st.integers(1, 3))):
        body = mutate(body, data.draw)
    _check_decode(case, body)


def _byte_mutation(data, raw: bytes) -> tuple[bytes, dict[str, str]]:
    draw = data.draw
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "repeat", "long-number", "gzip", "gzip-flip"]))
    at = draw(st.integers(0, len(raw)))
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw = raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1 :]
    elif kind == "truncate":
        raw = raw[:at]
    elif kind == "insert":
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"[", b"{", b"]", b",", b"NaN", b"-", b"\x00", b"\xff"]))
            + raw[at:]
        )
    elif kind == "repeat":
        raw = raw[:at] + draw(st.sampled_from([b"[" * 100_000, b"[1," * 1000, b"  " * 1000])) + raw[at:]
    elif kind == "long-number":
        raw = raw.replace(b"0.", b"1" * 5000 + b".", 1)  # beyond Python's 4300-digit int limit
    else:
        raw = gzip.compress(raw)
        if kind == "gzip-flip":
            pos = draw(st.integers(0, len(raw) - 1))
            raw = raw[:pos] + bytes([raw[pos] ^ draw(st.integers(1, 255))]) + raw[pos + 1 :]
        return raw, {"Content-Encoding": "gzip"}
    return raw, {}


@pytest.fixture(scope="module")
def server():
    with HostileServer("honest") as server:
        yield server


@pytest.fixture(scope="module")
def targets(server) -> dict[str, HttpTarget]:
    return {
        name: HttpTarget(server.url, case.protocol, returns=case.output, class_names=NAMES, retries=0)
        for name, case in CASES.items()
    }


@pytest.mark.parametrize("name", sorted(CASES))
@_settings(BYTE_EXAMPLES)
@given(data=st.data())
def test_byte_mutations_over_http_give_a_sound_verdict(name, server, targets, data) -> None:
    case = CASES[name]
    server.body, server.headers = _byte_mutation(data, json.dumps(case.answer()).encode())
    v = verify(case.fp, targets[name], case.spec)
    allowed = KINDS | ({"invalid-answer"} if case.output == "label-names" else set())
    assert set(v.problems) <= allowed, v.problems
    if v.status is Status.INTACT:  # then the bytes served really say what was recorded
        body = gzip.decompress(server.body) if server.headers else server.body
        assert np.array_equal(case.decode(parse_json(body, max_bytes=1 << 20)), case.expected())


@pytest.mark.parametrize("name", ["v2", "tfserving", "json", "torchserve-list"])
@_settings(CHANGED_EXAMPLES)
@given(row=st.integers(0, 2), shift=st.integers(1, CLASSES - 1))
def test_a_changed_top_label_is_tampered(name, server, targets, row, shift) -> None:
    """The other direction: a well-formed answer whose top-1 label moved is caught."""
    case = CASES[name]
    row = min(row, len(case.fp) - 1)
    p = case.fp.probabilities.copy()
    top = int(p[row].argmax())
    other = (top + shift) % CLASSES
    p[row, [top, other]] = p[row, [other, top]]
    changed = Case(
        case.protocol, case.output, case.spec, Fingerprint(case.fp.queries, p, case.fp.specs, "x", "x")
    )
    server.body, server.headers = json.dumps(changed.answer()).encode(), {}
    v = verify(case.fp, targets[name], case.spec)
    assert v.status is Status.TAMPERED and row in v.mismatches, v.reason
