"""The fingerprint artifact: queries, expected answers and provenance in one signed file.

Format: a safetensors file (no pickle; loading runs no code). Tensors hold the queries, the source
model's probabilities on them (every output spec's expected answer derives from these) and,
optionally, the natural seeds and the queries' reference labels (a watermark key: the labels the
key must get, which may differ from the recorded probabilities' argmax). The metadata entry
``nnseal`` holds a JSON header (schema version, method and parameters, model identity, valid
output specs, provenance); the entry ``signature`` holds HMAC-SHA256 and/or Ed25519 signatures
over a digest of the header and every tensor.

Loading checks, in order: the container parses; the signature (when a key is given or a signature
is required) — before anything else in the file is trusted; the schema version; the fields.
Every failure is a :class:`FingerprintError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from nnseal._io import atomic_write_bytes, safetensors_metadata
from nnseal.errors import FingerprintError
from nnseal.outputs import OutputSpec

SCHEMA_VERSION = 1
HMAC_KEY_ENV = "NNSEAL_HMAC_KEY"


@dataclass
class Fingerprint:
    """Queries with the source model's answers, valid for the listed output specs."""

    queries: np.ndarray
    probabilities: np.ndarray
    specs: list[str]
    model_id: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    seeds: np.ndarray | None = None
    labels: np.ndarray | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        self.probabilities = np.ascontiguousarray(self.probabilities, dtype=np.float32)
        if self.queries.ndim < 2 or len(self.queries) == 0:
            raise FingerprintError(
                f"a fingerprint needs a non-empty batch of queries, got shape {self.queries.shape}"
            )
        if self.probabilities.shape[0] != len(self.queries) or self.probabilities.ndim != 2:
            raise FingerprintError("probabilities must be (n_queries, n_classes)")
        if self.seeds is not None:
            self.seeds = np.ascontiguousarray(self.seeds, dtype=np.float32)
            if self.seeds.shape != self.queries.shape:
                raise FingerprintError("seeds must have the same shape as queries")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            n_classes = self.probabilities.shape[1]
            if labels.shape != (len(self.queries),) or not np.issubdtype(labels.dtype, np.integer):
                raise FingerprintError(f"labels must be {len(self.queries)} integers, one per query")
            if labels.min() < 0 or labels.max() >= n_classes:
                raise FingerprintError(f"labels must lie in 0..{n_classes - 1}")
            self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.specs = [str(OutputSpec.parse(s)) for s in self.specs]
        if not self.specs:
            raise FingerprintError("a fingerprint must be valid for at least one output spec")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.queries.shape[1:])

    def expected(self, spec: str | OutputSpec) -> np.ndarray:
        """The recorded answers, encoded for ``spec`` (which must be one the fingerprint is valid for)."""
        spec = OutputSpec.parse(spec)
        if str(spec) not in self.specs:
            raise FingerprintError(
                f"fingerprint is not valid for output spec {spec}; valid: {', '.join(self.specs)}"
            )
        return spec.encode(self.probabilities)

    def header(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "method": self.method,
            "params": self.params,
            "model_id": self.model_id,
            "specs": self.specs,
            "provenance": self.provenance,
            "created": self.created,
            "n_queries": len(self),
            "n_classes": int(self.probabilities.shape[1]),
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        t = {"queries": self.queries, "probabilities": self.probabilities}
        if self.seeds is not None:
            t["seeds"] = self.seeds
        if self.labels is not None:
            t["labels"] = self.labels
        return t

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        hmac_key: bytes | None = None,
        ed25519_key: Ed25519PrivateKey | None = None,
    ) -> Path:
        """Write atomically, signing with whichever keys are given."""
        header_json = _canonical(self.header())
        tensors = self._tensors()
        digest = _digest(header_json, tensors)
        signature: dict[str, str] = {}
        if hmac_key is not None:
            signature["hmac-sha256"] = hmac.new(hmac_key, digest, hashlib.sha256).hexdigest()
        if ed25519_key is not None:
            signature["ed25519"] = ed25519_key.sign(digest).hex()
        meta = {"nnseal": header_json, "signature": json.dumps(signature, sort_keys=True)}
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        hmac_key: bytes | None = None,
        ed25519_public_key: Ed25519PublicKey | None = None,
        require_signature: bool = False,
    ) -> Fingerprint:
        """Read and check a fingerprint file; see the module docstring for the order of checks."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise FingerprintError(f"cannot read fingerprint {path}: {e.strerror or e}") from None
        meta, tensors = _parse_container(raw, path)
        header_json = meta.get("nnseal")
        if not isinstance(header_json, str):
            raise FingerprintError(f"{path}: not an nnseal fingerprint (no nnseal header)")
        _check_signature(
            path,
            meta.get("signature", "{}"),
            _digest(header_json, tensors),
            hmac_key,
            ed25519_public_key,
            require_signature,
        )
        try:
            h = json.loads(header_json)
        except ValueError:
            raise FingerprintError(f"{path}: header is not valid JSON") from None
        if not isinstance(h, dict):
            raise FingerprintError(f"{path}: header must be a JSON object")
        version = h.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise FingerprintError(f"{path}: missing or invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise FingerprintError(
                f"{path}: schema version {version} is newer than this nnseal supports "
                f"({SCHEMA_VERSION}); upgrade nnseal"
            )
        try:
            fp = cls(
                queries=tensors["queries"],
                probabilities=tensors["probabilities"],
                specs=list(h["specs"]),
                model_id=str(h["model_id"]),
                method=str(h["method"]),
                params=dict(h.get("params", {})),
                provenance=dict(h.get("provenance", {})),
                seeds=tensors.get("seeds"),
                labels=tensors.get("labels"),
                created=str(h.get("created", "")),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FingerprintError(f"{path}: missing or invalid field {e}") from None
        if h.get("n_queries") != len(fp) or h.get("n_classes") != fp.probabilities.shape[1]:
            raise FingerprintError(f"{path}: header counts do not match the stored tensors")
        return fp


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _digest(header_json: str, tensors: dict[str, np.ndarray]) -> bytes:
    """SHA-256 over the header and each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(b"nnseal-fingerprint\0" + header_json.encode())
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}|{t.dtype.str}|{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.digest()


def _parse_container(raw: bytes, path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    try:
        meta = safetensors_metadata(raw)
        tensors = st_load(raw)
    except ValueError as e:
        raise FingerprintError(f"{path}: truncated or not a fingerprint file: {e}") from None
    except SafetensorError as e:
        raise FingerprintError(f"{path}: corrupt fingerprint file ({str(e).splitlines()[0][:120]})") from None
    return meta, tensors


def _check_signature(
    path: Path,
    sig_json: str,
    digest: bytes,
    hmac_key: bytes | None,
    public_key: Ed25519PublicKey | None,
    required: bool,
) -> None:
    try:
        sig = json.loads(sig_json)
        assert isinstance(sig, dict)
    except (ValueError, AssertionError):
        raise FingerprintError(f"{path}: malformed signature block") from None
    if required and hmac_key is None and public_key is None:
        raise FingerprintError(f"{path}: a signature is required but no key was given to check it")
    if hmac_key is not None:
        if "hmac-sha256" not in sig:
            if required:
                raise FingerprintError(f"{path}: fingerprint is not HMAC-signed but a signature is required")
        else:
            want = hmac.new(hmac_key, digest, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, str(sig["hmac-sha256"])):
                raise FingerprintError(f"{path}: HMAC signature does not match (file edited, or wrong key)")
    if public_key is not None:
        if "ed25519" not in sig:
            if required:
                raise FingerprintError(f"{path}: fingerprint has no Ed25519 signature but one is required")
        else:
            try:
                public_key.verify(bytes.fromhex(str(sig["ed25519"])), digest)
            except (InvalidSignature, ValueError):
                raise FingerprintError(
                    f"{path}: Ed25519 signature does not verify (file edited, or wrong key)"
                ) from None


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
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except OSError as e:
        raise FingerprintError(f"cannot read key file {path}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise FingerprintError(f"{path}: not a PEM key ({str(e).splitlines()[0]})") from None


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> None:
    """Write a new Ed25519 key pair as PEM files (private key file readable by the owner only)."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(private_path, priv, mode=0o600)
    atomic_write_bytes(public_path, pub)
