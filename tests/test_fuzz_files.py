"""Property-based fuzzing of the files a verifier reads: fingerprints, watermark keys, model files.

Whoever is checked may have touched them. For every mutation: no exception escapes but nnseal's own
one-line errors, and a signed file is accepted only if its content is exactly what was signed — so a
mutated fingerprint can never verify *intact* nor a mutated key *watermarked*. Counts per test are in
``EXAMPLES``; the README reports their sum.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnseal.cli import main
from nnseal.errors import FingerprintError, ModelError
from nnseal.fingerprint import Fingerprint
from nnseal.models import load_model, save_model
from nnseal.signing import Trust

HMAC_KEY = b"fuzz-key"
EXAMPLES = {
    "fingerprint_bytes": 2000,
    "fingerprint_header": 1000,
    "cli_fingerprint": 300,
    "cli_watermark_key": 200,
    "model_bytes": 800,
    "cli_model": 200,
}
SIGNED = Trust(hmac_keys=(HMAC_KEY,))
UNSIGNED = Trust(allow_unsigned=True)


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,  # the same cases in every CI run
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@st.composite
def byte_mutation(draw: st.DrawFn, raw: bytes) -> bytes:
    """One to three edits — bit flips, byte overwrites, insertions, deletions, truncation, a new
    header length — mostly inside the JSON header, where structure lives, and mostly keeping the
    header's length prefix consistent so that the edit reaches the parsers behind the first check."""
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        header_end = 8 + int.from_bytes(out[:8], "little") if len(out) >= 8 else len(out)
        if len(out) <= 8 or header_end > len(out):
            break
        in_header = header_end > 8 and draw(st.integers(0, 3)) > 0
        i = draw(st.integers(8, header_end - 1) if in_header else st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "set", "set", "insert", "delete", "truncate", "length"]))
        before = len(out)
        if kind == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[i] = draw(st.sampled_from(b'{}[]",:0123456789 \\eEnNtf-.\x00\xff'))
        elif kind == "insert":
            out[i:i] = draw(
                st.binary(min_size=1, max_size=16) | st.sampled_from([b"[", b"{", b'"a":1,', b"1e999"])
            )
        elif kind == "delete":
            del out[i : i + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del out[i:]
        else:
            out[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        if kind in ("insert", "delete") and in_header and draw(st.integers(0, 3)) > 0 and len(out) >= 8:
            out[:8] = (header_end - 8 + len(out) - before).to_bytes(8, "little")
    return bytes(out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Fingerprint, b: Fingerprint) -> bool:
    return (
        a.header() == b.header()
        and np.array_equal(a.queries, b.queries)
        and np.array_equal(a.probabilities, b.probabilities)
        and (a.labels is None) == (b.labels is None)
        and (a.labels is None or np.array_equal(a.labels, b.labels))
    )


@pytest.fixture(scope="module")
def signed(fingerprint, tmp_path_factory) -> tuple[Fingerprint, bytes]:
    path = fingerprint.save(tmp_path_factory.mktemp("fuzz") / "fp.nnseal", hmac_key=HMAC_KEY)
    return Fingerprint.load(path, hmac_key=HMAC_KEY), path.read_bytes()


def test_mutated_signed_fingerprint_is_refused_or_unchanged(signed) -> None:
    original, raw = signed

    @_settings("fingerprint_bytes")
    @given(st.data())
    def run(data: st.DataObject) -> None:
        mutated = data.draw(byte_mutation(raw))
        try:
            fp = Fingerprint.from_bytes(mutated, SIGNED)
        except FingerprintError as e:
            assert "\n" not in str(e)
            return
        assert _same(fp, original), "a mutated fingerprint was accepted with different content"
        try:  # unsigned files allowed: still only one-line errors or a valid fingerprint
            Fingerprint.from_bytes(mutated, UNSIGNED)
        except FingerprintError:
            pass

    run()


def _with_header(raw: bytes, edit_nnseal=None, edit_outer=None) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    outer = json.loads(raw[8 : 8 + n])
    if edit_nnseal is not None:
        header = json.loads(outer["__metadata__"]["nnseal"])
        edit_nnseal(header)
        outer["__metadata__"]["nnseal"] = json.dumps(header)
    if edit_outer is not None:
        edit_outer(outer)
    new = json.dumps(outer).encode()
    new += b" " * (-len(new) % 8)
    return len(new).to_bytes(8, "little") + new + raw[8 + n :]


def _edit(field: str, value: object, drop: bool):
    def edit(d: dict) -> None:
        if drop:
            d.pop(field, None)
        else:
            d[field] = value

    return edit


def test_structurally_mutated_header_is_a_clear_error_or_valid(signed) -> None:
    """Any JSON in any field of the nnseal header, or of a tensor's entry in the container header
    (dtype, shape, offsets — what the safetensors parser reads): never a crash. Unsigned files
    (explicitly allowed) reach the field checks; with the key every edit is refused."""
    original, raw = signed
    fields = [*original.header(), "extra"]
    tensor_fields = [
        (t, f) for t in ("queries", "probabilities", "seeds") for f in ("dtype", "shape", "data_offsets")
    ]
    dtypes = st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "X"])

    @_settings("fingerprint_header")
    @given(
        st.sampled_from(fields),
        st.sampled_from(tensor_fields),
        json_values | dtypes | st.lists(st.integers(-2, 2**40), max_size=5),
        st.booleans(),
        st.booleans(),
    )
    def run(field: str, tensor: tuple[str, str], value: object, drop: bool, outer: bool) -> None:
        if outer:
            name, key = tensor
            mutated = _with_header(raw, edit_outer=lambda h: _edit(key, value, drop)(h[name]))
        else:
            mutated = _with_header(raw, edit_nnseal=_edit(field, value, drop))
        try:
            fp = Fingerprint.from_bytes(mutated, SIGNED)
        except FingerprintError:
            pass
        else:
            assert _same(fp, original)  # only an edit that changed nothing (same value) may pass
        try:
            fp = Fingerprint.from_bytes(mutated, UNSIGNED)
        except FingerprintError as e:
            assert "\n" not in str(e)
            return
        for spec in fp.specs:
            fp.expected(spec)

    run()


@pytest.fixture(scope="module")
def cli_files(model, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz-cli")
    save_model(model, d / "model.safetensors")
    return {"dir": d, "model": d / "model.safetensors"}


def _exit_code(*args: str) -> tuple[int, str]:
    r = CliRunner(env={"NNSEAL_HMAC_KEY": HMAC_KEY.decode()}).invoke(main, list(args))
    assert "Traceback" not in r.output and r.exit_code in (0, 1, 2, 3), (r.exit_code, r.output)
    if r.exit_code == 2:
        assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    return r.exit_code, r.stdout


def test_cli_never_says_intact_for_a_mutated_fingerprint(signed, cli_files) -> None:
    original, raw = signed
    path = cli_files["dir"] / "mutated.nnseal"

    @_settings("cli_fingerprint")
    @given(st.data())
    def run(data: st.DataObject) -> None:
        mutated = data.draw(byte_mutation(raw))
        path.write_bytes(mutated)
        code, _ = _exit_code("verify", str(path), str(cli_files["model"]))
        if code != 2:  # a decision (0/1/3) was made: only possible on exactly the signed content
            assert _same(Fingerprint.from_bytes(mutated, SIGNED), original)

    run()


def test_cli_never_says_watermarked_for_a_mutated_key(model, digits, cli_files) -> None:
    from nnseal.methods import FrontierStitching

    marked, key, _ = FrontierStitching(key_size=20, epsilon=0.1, seed=0).embed(model, digits[0])
    save_model(marked, cli_files["dir"] / "marked.safetensors")
    raw = key.save(cli_files["dir"] / "key.nnseal", hmac_key=HMAC_KEY).read_bytes()
    path = cli_files["dir"] / "mutated-key.nnseal"

    @_settings("cli_watermark_key")
    @given(st.data())
    def run(data: st.DataObject) -> None:
        mutated = data.draw(byte_mutation(raw))
        path.write_bytes(mutated)
        code, _ = _exit_code("watermark", "verify", str(path), str(cli_files["dir"] / "marked.safetensors"))
        if code != 2:
            assert _same(Fingerprint.from_bytes(mutated, SIGNED), key)

    run()


def test_mutated_model_file_loads_or_is_a_model_error(model, cli_files) -> None:
    raw = cli_files["model"].read_bytes()
    path = cli_files["dir"] / "mutated.safetensors"

    @_settings("model_bytes")
    @given(st.data())
    def run(data: st.DataObject) -> None:
        path.write_bytes(data.draw(byte_mutation(raw)))
        try:
            m = load_model(path)
        except ModelError as e:
            assert "\n" not in str(e)
            return
        m(_zeros(m))  # a model that loads also runs

    run()


def _zeros(m):
    import torch

    return torch.zeros((1, *m.config.input_shape), dtype=next(m.parameters()).dtype)


def test_cli_verify_of_a_mutated_model_is_a_decision_or_a_clear_error(fingerprint, model, cli_files) -> None:
    """The suspect model is the adversary's file: verify gives a verdict or a one-line error."""
    raw = cli_files["model"].read_bytes()
    fp_path = fingerprint.save(cli_files["dir"] / "fp.nnseal", hmac_key=HMAC_KEY)
    path = cli_files["dir"] / "mutated-model.safetensors"

    @_settings("cli_model")
    @given(st.data())
    def run(data: st.DataObject) -> None:
        path.write_bytes(data.draw(byte_mutation(raw)))
        _exit_code("verify", str(fp_path), str(path))

    run()
