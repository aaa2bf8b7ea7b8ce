from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nnseal.errors import FingerprintError
from nnseal.fingerprint import SCHEMA_VERSION, Fingerprint
from nnseal.signing import (
    PUBLIC_KEY_FILE,
    TRUSTED_DIR,
    default_signing_key,
    generate_keypair,
    hmac_key_from,
    key_dir,
    key_id,
    load_private_key,
    load_public_key,
)

KEY = b"correct horse battery staple"


def test_round_trip_keeps_everything(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal", hmac_key=KEY)
    loaded = Fingerprint.load(path, hmac_key=KEY)
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
    loaded = Fingerprint.load(path, hmac_key=KEY)
    assert loaded.signature.verified and loaded.signature.scheme == "hmac-sha256"
    assert loaded.signature.key_id == key_id(KEY) and KEY.decode() not in loaded.signature.key_id
    with pytest.raises(FingerprintError, match="not by a trusted key"):
        Fingerprint.load(path, hmac_key=b"wrong key")


def test_ed25519_signature(fingerprint, tmp_path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0, "private key must not be group/world readable"
    path = fingerprint.save(tmp_path / "fp.nnseal", ed25519_key=load_private_key(tmp_path / "k.pem"))
    pub = load_public_key(tmp_path / "k.pub")
    loaded = Fingerprint.load(path, public_keys=[pub])
    assert loaded.signature.verified and loaded.signature.key_id == key_id(pub)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(
        FingerprintError, match=rf"signed \(ed25519 by {key_id(pub)}\) but not by a trusted key"
    ):
        Fingerprint.load(path, public_keys=[other])
    assert Fingerprint.load(path, public_keys=[other, pub]).signature.key_id == key_id(pub)
    with pytest.raises(FingerprintError, match=r"not an Ed25519 private key|not a PEM key"):
        load_private_key(tmp_path / "k.pub")


def test_unsigned_file_refused_by_default(fingerprint, tmp_path) -> None:
    """The attack of issue 11: an unsigned file used to load (and verify intact) with no flags."""
    path = fingerprint.save(tmp_path / "fp.nnseal")
    with pytest.raises(FingerprintError, match=r"not signed; .*--allow-unsigned"):
        Fingerprint.load(path)
    with pytest.raises(FingerprintError, match="not signed"):
        Fingerprint.load(path, hmac_key=KEY)
    loaded = Fingerprint.load(path, allow_unsigned=True)
    assert not loaded.signature.verified and "not signed" in loaded.signature.note


def test_a_given_key_requires_its_signature(fingerprint, tmp_path) -> None:
    """A key given means a valid signature by *that* key: an Ed25519-signed file does not pass an
    HMAC check, and the key folder is not consulted when a key is given."""
    own, _ = default_signing_key()
    path = fingerprint.save(tmp_path / "fp.nnseal", ed25519_key=own)
    assert Fingerprint.load(path).signature.verified  # the key folder's own key
    with pytest.raises(FingerprintError, match="not by a trusted key"):
        Fingerprint.load(path, hmac_key=KEY)


def test_key_folder_own_key_and_trusted_keys(fingerprint, tmp_path) -> None:
    own, _ = default_signing_key()
    assert default_signing_key()[0].private_bytes_raw() == own.private_bytes_raw()  # created once
    assert (key_dir() / "signing-key.pem").stat().st_mode & 0o077 == 0
    assert (key_dir() / PUBLIC_KEY_FILE).is_file()
    generate_keypair(tmp_path / "colleague.pem", tmp_path / "colleague.pub")
    theirs = fingerprint.save(
        tmp_path / "fp.nnseal", ed25519_key=load_private_key(tmp_path / "colleague.pem")
    )
    with pytest.raises(FingerprintError, match="not by a trusted key"):
        Fingerprint.load(theirs)
    trusted = key_dir() / TRUSTED_DIR
    trusted.mkdir(exist_ok=True)
    (trusted / "colleague.pub").write_bytes((tmp_path / "colleague.pub").read_bytes())
    try:
        assert Fingerprint.load(theirs).signature.verified
    finally:
        (trusted / "colleague.pub").unlink()


def test_stripped_signature_with_rewritten_answers_is_refused(fingerprint, tmp_path) -> None:
    """Issue 11's forgery: strip the signature block, rewrite the expected answers; refused with
    no flags and with either kind of key given."""
    own, _ = default_signing_key()
    path = fingerprint.save(tmp_path / "fp.nnseal", ed25519_key=own, hmac_key=KEY)
    forged = Fingerprint(
        queries=fingerprint.queries,
        probabilities=np.roll(fingerprint.probabilities, 1, axis=1),
        specs=fingerprint.specs,
        model_id=fingerprint.model_id,
        method=fingerprint.method,
    )
    forged.save(path)
    for kwargs in ({}, {"hmac_key": KEY}, {"public_keys": [own.public_key()]}):
        with pytest.raises(FingerprintError, match="not signed"):
            Fingerprint.load(path, **kwargs)


def _flip_byte(path: Path, offset_from_end: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(raw))


def test_edited_query_detected_by_signature(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal", hmac_key=KEY)
    _flip_byte(path, 100)  # inside the tensor data
    with pytest.raises(FingerprintError, match="edited after signing"):
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
    with pytest.raises(FingerprintError, match="edited after signing"):
        Fingerprint.load(path, hmac_key=KEY)


def test_future_schema_version(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")

    def bump(h: dict) -> None:
        meta = json.loads(h["__metadata__"]["nnseal"])
        meta["schema_version"] = SCHEMA_VERSION + 1
        h["__metadata__"]["nnseal"] = json.dumps(meta)

    _rewrite_header(path, bump)
    with pytest.raises(FingerprintError, match="newer than this nnseal supports"):
        Fingerprint.load(path, allow_unsigned=True)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "truncated"),
        (b"\x00" * 4, "truncated"),
        (b"\xff" * 64, "truncated"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not valid JSON"),
        (len(b"[" * 100_000).to_bytes(8, "little") + b"[" * 100_000, "nested more than"),
    ],
)
def test_corrupt_files(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.nnseal"
    path.write_bytes(content)
    with pytest.raises(FingerprintError, match=match):
        Fingerprint.load(path, allow_unsigned=True)


def test_truncated_real_file(fingerprint, tmp_path) -> None:
    raw = fingerprint.save(tmp_path / "fp.nnseal").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        (tmp_path / "cut.nnseal").write_bytes(raw[:cut])
        with pytest.raises(FingerprintError):
            Fingerprint.load(tmp_path / "cut.nnseal", allow_unsigned=True)


def test_model_file_is_not_a_fingerprint(model, tmp_path) -> None:
    from nnseal.models import save_model

    save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(FingerprintError, match="not an nnseal fingerprint"):
        Fingerprint.load(tmp_path / "m.safetensors", allow_unsigned=True)


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


def _edit_meta(path: Path, edit) -> None:
    def apply(h: dict) -> None:
        meta = json.loads(h["__metadata__"]["nnseal"])
        edit(meta)
        h["__metadata__"]["nnseal"] = json.dumps(meta)

    _rewrite_header(path, apply)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(schema_version=True), "invalid schema_version"),
        (lambda m: m.update(schema_version=1.0), "invalid schema_version"),
        (lambda m: m.update(specs="top1"), "'specs' must be a list"),
        (lambda m: m.update(specs=[1]), "must list strings"),
        (lambda m: m.update(specs=["top99"]), "more labels than"),
        (lambda m: m.update(params=[]), "'params' must be a dict"),
        (lambda m: m.update(n_queries=True), "header counts"),
        (lambda m: m.pop("model_id"), "model_id"),
    ],
)
def test_bad_header_fields_are_one_line_errors(fingerprint, tmp_path, edit, match: str) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")
    _edit_meta(path, edit)
    with pytest.raises(FingerprintError, match=match):
        Fingerprint.load(path, allow_unsigned=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5, 2.0])
def test_non_probabilities_are_refused(fingerprint, bad: float) -> None:
    probs = fingerprint.probabilities.copy()
    probs[0, 0] = bad
    with pytest.raises(FingerprintError, match="probabilities must be finite"):
        Fingerprint(fingerprint.queries, probs, ["top1"], "id", "m")


def test_deep_signature_block_is_refused(fingerprint, tmp_path) -> None:
    path = fingerprint.save(tmp_path / "fp.nnseal")
    _rewrite_header(path, lambda h: h["__metadata__"].update(signature="[" * 50_000))
    with pytest.raises(FingerprintError, match="malformed signature block"):
        Fingerprint.load(path, allow_unsigned=True)
