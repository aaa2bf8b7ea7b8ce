"""Who may have made a fingerprint: signing keys, the keys a verifier trusts, and the signature check.

A fingerprint or watermark key tells the verifier what the honest model answers; whoever can edit it
can make a tampered model look intact. So loading refuses a file that no trusted key has signed,
unless the caller explicitly allows unsigned files. Two schemes:

- **Ed25519** (the default): the owner signs with a private key; anyone holding the public key can
  check. ``nnseal fingerprint`` signs with the user's own key, created on first use in the key folder
  (``$NNSEAL_HOME``, else ``$XDG_CONFIG_HOME/nnseal``, else ``~/.config/nnseal``; private key mode
  0600, folder 0700, like ssh). Public keys of other owners go in its ``trusted/`` folder (``*.pub``).
- **HMAC-SHA256**: a shared secret (``NNSEAL_HMAC_KEY`` or a key file), for a verifier that is also
  the owner.

Any key given explicitly replaces the key folder: a file then needs a valid signature by *that* key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nnseal._io import atomic_write_bytes, parse_json
from nnseal.errors import FingerprintError

HOME_ENV = "NNSEAL_HOME"
HMAC_KEY_ENV = "NNSEAL_HMAC_KEY"
PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub"
TRUSTED_DIR = "trusted"
HMAC = "hmac-sha256"
ED25519 = "ed25519"


def key_dir() -> Path:
    """The folder holding the user's signing key and trusted public keys."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "nnseal"


def key_id(key: Ed25519PublicKey | bytes) -> str:
    """A short, stable name for a key: a hash prefix (of the public key, or of the HMAC secret)."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"{ED25519}:{hashlib.sha256(raw).hexdigest()[:16]}"
    digest = hashlib.sha256(b"nnseal-hmac-key-id\0" + key).hexdigest()
    return f"hmac:{digest[:16]}"


@dataclass(frozen=True)
class Signature:
    """What the signature check of a loaded file found; every verdict reports it."""

    scheme: str | None
    verified: bool
    key_id: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if self.verified:
            return f"{self.scheme} signature verified (key {self.key_id})"
        return f"signature NOT verified: {self.note}"


NOT_LOADED = Signature(None, False, None, "fingerprint made in this process, not loaded from a file")


@dataclass(frozen=True)
class SigningKeys:
    """The keys a file is signed with when saved (either or both)."""

    hmac_key: bytes | None = None
    ed25519: Ed25519PrivateKey | None = None

    def sign(self, digest: bytes) -> dict[str, Any]:
        """The signature block: one signature per scheme, and (unprotected, for messages) the key ids."""
        block: dict[str, Any] = {}
        ids = {}
        if self.hmac_key is not None:
            block[HMAC] = hmac.new(self.hmac_key, digest, hashlib.sha256).hexdigest()
            ids[HMAC] = key_id(self.hmac_key)
        if self.ed25519 is not None:
            block[ED25519] = self.ed25519.sign(digest).hex()
            ids[ED25519] = key_id(self.ed25519.public_key())
        if ids:
            block["key_ids"] = ids
        return block

    @property
    def schemes(self) -> list[str]:
        return [s for s, k in ((HMAC, self.hmac_key), (ED25519, self.ed25519)) if k is not None]


@dataclass(frozen=True)
class Trust:
    """The keys a loaded file's signature is checked against, and whether unsigned files pass."""

    hmac_keys: tuple[bytes, ...] = ()
    public_keys: tuple[Ed25519PublicKey, ...] = ()
    allow_unsigned: bool = False
    source: str = "given keys"

    @classmethod
    def resolve(
        cls,
        *,
        hmac_key: bytes | None = None,
        public_keys: Sequence[Ed25519PublicKey] = (),
        allow_unsigned: bool = False,
    ) -> Trust:
        """The given keys if any, else the key folder's (own public key and ``trusted/*.pub``)."""
        if hmac_key is not None or public_keys:
            keys = (hmac_key,) if hmac_key is not None else ()
            return cls(keys, tuple(public_keys), allow_unsigned)
        return cls((), keyring_public_keys(), allow_unsigned, f"key folder {key_dir()}")

    def check(self, where: str, block_json: str, digest: bytes) -> Signature:
        """Check the signature block against the trusted keys; raise unless verified or allowed."""
        try:
            block = parse_json(block_json, max_bytes=1 << 16, max_depth=2, what="signature block")
            assert isinstance(block, dict)
        except (ValueError, AssertionError):
            raise FingerprintError(f"{where}: malformed signature block") from None
        for key in self.public_keys:
            if _ed25519_ok(key, block.get(ED25519), digest):
                return Signature(ED25519, True, key_id(key))
        for secret in self.hmac_keys:
            want = hmac.new(secret, digest, hashlib.sha256).hexdigest()
            got = block.get(HMAC)
            if isinstance(got, str) and hmac.compare_digest(want, got):
                return Signature(HMAC, True, key_id(secret))
        schemes = [s for s in (ED25519, HMAC) if s in block]
        if not schemes:
            problem = "not signed"
        else:
            ids = block.get("key_ids") if isinstance(block.get("key_ids"), dict) else {}
            signer = ", ".join(f"{s} by {ids.get(s, 'an unnamed key')}" for s in schemes)
            problem = f"signed ({signer}) but not by a trusted key, or edited after signing"
        if self.allow_unsigned:
            return Signature(schemes[0] if schemes else None, False, None, f"{problem}; accepted unverified")
        trusted = [key_id(k) for k in self.public_keys] + [key_id(k) for k in self.hmac_keys]
        have = f"trusted: {', '.join(trusted)}" if trusted else "no trusted key"
        raise FingerprintError(
            f"{where}: {problem}; {have} ({self.source}). Give the signer's key (--public-key, "
            f"--hmac-key-file, or a .pub in {key_dir() / TRUSTED_DIR}) or accept it unverified with "
            f"--allow-unsigned"
        )


def _ed25519_ok(key: Ed25519PublicKey, sig: object, digest: bytes) -> bool:
    if not isinstance(sig, str) or len(sig) != 128:
        return False
    try:
        key.verify(bytes.fromhex(sig), digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def signature_block_json(block: dict[str, Any]) -> str:
    return json.dumps(block, sort_keys=True)


def keyring_public_keys() -> tuple[Ed25519PublicKey, ...]:
    """The user's own public key and every ``trusted/*.pub``; unreadable files are errors, not skipped."""
    d = key_dir()
    paths = [d / PUBLIC_KEY_FILE] if (d / PUBLIC_KEY_FILE).is_file() else []
    if (d / TRUSTED_DIR).is_dir():
        paths += sorted((d / TRUSTED_DIR).glob("*.pub"))
    return tuple(load_public_key(p) for p in paths)


def default_signing_key(create: bool = True) -> tuple[Ed25519PrivateKey, bool]:
    """The user's own Ed25519 key, created on first use when ``create``; and whether it was created."""
    d = key_dir()
    private = d / PRIVATE_KEY_FILE
    if private.is_file():
        return load_private_key(private), False
    if not create:
        raise FingerprintError(f"no signing key in {d}; run `nnseal keygen` to create one")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    generate_keypair(private, d / PUBLIC_KEY_FILE)
    return load_private_key(private), True


def hmac_key_from(env: str = HMAC_KEY_ENV, file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The HMAC key from a file (stripped) or the environment variable ``env``; None if neither."""
    if file is not None:
        try:
            key = Path(file).read_bytes().strip()
        except OSError as e:
            raise FingerprintError(f"cannot read HMAC key file {file}: {e.strerror or e}") from None
        if not key:
            raise FingerprintError(f"HMAC key file {file} is empty")
        return key
    value = os.environ.get(env)
    return value.encode() if value else None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (PKCS#8, unencrypted)."""
    key = _load_pem(path, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise FingerprintError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file."""
    key = _load_pem(path, private=False)
    if not isinstance(key, Ed25519PublicKey):
        raise FingerprintError(f"{path}: not an Ed25519 public key")
    return key


def _load_pem(path: str | os.PathLike[str], private: bool) -> object:
    try:
        data = Path(path).read_bytes()
        if len(data) > 1 << 16:
            raise ValueError("file too large for a key")
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except OSError as e:
        raise FingerprintError(f"cannot read key file {path}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise FingerprintError(f"{path}: not a PEM key ({str(e).splitlines()[0]})") from None


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 key pair as PEM files (private key readable by the owner only); its key id."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(private_path, priv, mode=0o600)
    atomic_write_bytes(public_path, pub)
    return key_id(key.public_key())
