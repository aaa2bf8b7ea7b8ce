from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nnseal.errors import FingerprintError
from nnseal.fingerprint import (
    SCHEMA_VERSION,
    Fingerprint,
    generate_keypair,
    hmac_key_from,
    load_private_key,
    load_public_key,
)

KEY = b"correct horse battery staple"


def test_round_trip_keeps_everything(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")
    loaded = Fingerprint.load(path)
    np.testing.assert_array_equal(loaded.queries, fingerprint.queries)
    np.testing.assert_array_equal(loaded.probabilities, fingerprint.probabilities)
    np.testing.assert_array_equal(loaded.seeds, fingerprint.seeds)
    assert loaded.header() == fingerprint.header()
    for spec in fingerprint.specs:
        np.testing.assert_array_equal(loaded.expected(spec), fingerprint.expected(spec))
    assert loaded.method == "sensitive-sample" and loaded.params["selection"] == "manc"
    assert loaded.provenance["dataset"] == "digits" and len(loaded.provenance["seed_indices"]) == len(loaded)
    assert not any(p.suffix == ".tmp" for p in tmp_path.iterdir())


def test_hmac_signature(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal", hmac_key=KEY)
    assert len(Fingerprint.load(path, hmac_key=KEY, require_signature=True)) == len(fingerprint)
    with pytest.raises(FingerprintError, match="HMAC signature does not match"):
        Fingerprint.load(path, hmac_key=b"wrong key")


def test_ed25519_signature(fingerprint, tmp_path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0, "private key must not be group/world readable"
    path = fingerprint.save(tmp_path / "fp.nnseal", ed25519_key=load_private_key(tmp_path / "k.pem"))
    Fingerprint.load(path, ed25519_public_key=load_public_key(tmp_path / "k.pub"), require_signature=True)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(FingerprintError, match="Ed25519 signature does not verify"):
        Fingerprint.load(path, ed25519_public_key=other)
    with pytest.raises(FingerprintError, match=r"not an Ed25519 private key|not a PEM key"):
        load_private_key(tmp_path / "k.pub")


def test_unsigned_file_rejected_when_signature_required(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")
    with pytest.raises(FingerprintError, match="not HMAC-signed"):
        Fingerprint.load(path, hmac_key=KEY, require_signature=True)
    with pytest.raises(FingerprintError, match="no key was given"):
        Fingerprint.load(path, require_signature=True)


def _flip_byte(path: Path, offset_from_end: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(raw))


def test_edited_query_detected_by_signature(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal", hmac_key=KEY)
    _flip_byte(path, 100)  # inside the tensor data
    with pytest.raises(FingerprintError, match="HMAC signature does not match"):
        Fingerprint.load(path, hmac_key=KEY)


def _rewrite_header(path: Path, edit) -> None:
    """Edit the JSON header of the container in place, keeping the file well-formed."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])


def test_edited_expected_answer_detected_by_signature(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal", hmac_key=KEY)

    def claim_other_model(h: dict) -> None:
        meta = json.loads(h["__metadata__"]["nnseal"])
        meta["model_id"] = "0" * 64
        h["__metadata__"]["nnseal"] = json.dumps(meta)

    _rewrite_header(path, claim_other_model)
    Fingerprint.load(path)  # without a key the edit is not detectable ...
    with pytest.raises(FingerprintError, match="HMAC signature does not match"):
        Fingerprint.load(path, hmac_key=KEY)  # ... with one it is


def test_future_schema_version(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")

    def bump(h: dict) -> None:
        meta = json.loads(h["__metadata__"]["nnseal"])
        meta["schema_version"] = SCHEMA_VERSION + 1
        h["__metadata__"]["nnseal"] = json.dumps(meta)

    _rewrite_header(path, bump)
    with pytest.raises(FingerprintError, match="newer than this nnseal supports"):
        Fingerprint.load(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "truncated"),
        (b"\x00" * 4, "truncated"),
        (b"\xff" * 64, "truncated"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "bad header"),
    ],
)
def test_corrupt_files(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.nnseal"
    path.write_bytes(content)
    with pytest.raises(FingerprintError, match=match):
        Fingerprint.load(path)


def test_truncated_real_file(fingerprint, tmp_path) -> None:
    raw = fingerprint.save(tmp_path / "fp.nnseal").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        (tmp_path / "cut.nnseal").write_bytes(raw[:cut])
        with pytest.raises(FingerprintError):
            Fingerprint.load(tmp_path / "cut.nnseal")


def test_model_file_is_not_a_fingerprint(model, tmp_path) -> None:
    from nnseal.models import save_model

    save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(FingerprintError, match="not an nnseal fingerprint"):
        Fingerprint.load(tmp_path / "m.safetensors")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FingerprintError, match="cannot read fingerprint"):
        Fingerprint.load(tmp_path / "nope.nnseal")


def test_spec_not_recorded(fingerprint) -> None:
    with pytest.raises(FingerprintError, match="not valid for output spec top5"):
        fingerprint.expected("top5")


def test_hmac_key_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NNSEAL_HMAC_KEY", "from-env")
    assert hmac_key_from() == b"from-env"
    (tmp_path / "key").write_bytes(b"from-file\n")
    assert hmac_key_from(file=tmp_path / "key") == b"from-file"
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(FingerprintError, match="empty"):
        hmac_key_from(file=tmp_path / "empty")
    monkeypatch.delenv("NNSEAL_HMAC_KEY")
    assert hmac_key_from() is None
