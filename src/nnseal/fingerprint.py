"""The fingerprint artifact: queries, expected answers and provenance in one signed file.

Format: a safetensors file (no pickle; loading runs no code). Tensors hold the queries, the source
model's probabilities on them (every output spec's expected answer derives from these) and,
optionally, the natural seeds and the queries' reference labels (a watermark key: the labels the
key must get, which may differ from the recorded probabilities' argmax). The metadata entry
``nnseal`` holds a JSON header (schema version, method and parameters, model identity, valid
output specs, the serving environments it was made for — see :mod:`nnseal.numerics`, default
``["cpu-fp32"]`` for files without the field — provenance); the entry ``signature`` holds
HMAC-SHA256 and/or Ed25519 signatures over a digest of the header string and every tensor (see
:mod:`nnseal.signing`).

Loading checks, in order: the container's outer header parses within size and depth limits; the
signature, against the trusted keys, over the raw header string and the tensors — before the header
is even parsed; then the schema version and every field (finite probabilities that sum to 1, …).
A file no trusted key signed is refused unless unsigned files are explicitly allowed. Every failure
is a :class:`FingerprintError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from nnseal._io import atomic_write_bytes, parse_json, safetensors_metadata
from nnseal.errors import FingerprintError
from nnseal.grid import DEFAULT_LEVELS, check_levels
from nnseal.outputs import OutputSpec
from nnseal.signing import NOT_LOADED, Signature, SigningKeys, Trust, signature_block_json

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""Largest safetensors header of a fingerprint file (nnseal writes a few kB)."""


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
    serving: list[str] = field(default_factory=lambda: ["cpu-fp32"])
    """The serving environments the answers were checked to survive (:mod:`nnseal.numerics`)."""
    levels: int = DEFAULT_LEVELS
    """The pixel grid of the data the queries were made from (values k / levels; :mod:`nnseal.grid`)."""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    signature: Signature = field(default=NOT_LOADED, compare=False)
    """What the signature check found when this fingerprint was loaded (not part of the file)."""

    def __post_init__(self) -> None:
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        self.probabilities = np.ascontiguousarray(self.probabilities, dtype=np.float32)
        if self.queries.ndim < 2 or len(self.queries) == 0:
            raise FingerprintError(
                f"a fingerprint needs a non-empty batch of queries, got shape {self.queries.shape}"
            )
        if not np.isfinite(self.queries).all():
            raise FingerprintError("queries must be finite")
        p = self.probabilities
        if p.shape[0] != len(self.queries) or p.ndim != 2 or p.shape[1] < 2:
            raise FingerprintError("probabilities must be (n_queries, n_classes >= 2)")
        if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any() or np.abs(p.sum(1) - 1).max() > 1e-3:
            raise FingerprintError("probabilities must be finite, in [0, 1], and sum to 1 per query")
        if self.seeds is not None:
            self.seeds = np.ascontiguousarray(self.seeds, dtype=np.float32)
            if self.seeds.shape != self.queries.shape or not np.isfinite(self.seeds).all():
                raise FingerprintError("seeds must be finite and have the same shape as queries")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            n_classes = self.probabilities.shape[1]
            if labels.shape != (len(self.queries),) or not np.issubdtype(labels.dtype, np.integer):
                raise FingerprintError(f"labels must be {len(self.queries)} integers, one per query")
            if labels.min() < 0 or labels.max() >= n_classes:
                raise FingerprintError(f"labels must lie in 0..{n_classes - 1}")
            self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        try:
            specs = [OutputSpec.parse(s) for s in self.specs]
        except ValueError as e:
            raise FingerprintError(str(e)) from None
        if not specs:
            raise FingerprintError("a fingerprint must be valid for at least one output spec")
        if any(s.k > p.shape[1] for s in specs):
            raise FingerprintError(f"an output spec compares more labels than the {p.shape[1]} classes")
        self.specs = [str(s) for s in specs]
        self.serving = _check_serving(self.serving)
        try:
            self.levels = check_levels(self.levels)
        except ValueError as e:
            raise FingerprintError(str(e)) from None

    @property
    def id(self) -> str:
        """A content id (SHA-256 prefix of the queries): the same fingerprint however it is saved."""
        return hashlib.sha256(np.ascontiguousarray(self.queries).tobytes()).hexdigest()[:32]

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
            "serving": self.serving,
            "levels": self.levels,
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
        """Write atomically, signing with whichever keys are given (an unsigned file is only accepted
        by a verifier that explicitly allows unsigned files)."""
        header_json = _canonical(self.header())
        tensors = self._tensors()
        block = SigningKeys(hmac_key, ed25519_key).sign(_digest(header_json, tensors))
        meta = {"nnseal": header_json, "signature": signature_block_json(block)}
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        hmac_key: bytes | None = None,
        public_keys: Sequence[Ed25519PublicKey] = (),
        allow_unsigned: bool = False,
        trust: Trust | None = None,
    ) -> Fingerprint:
        """Read and check a fingerprint file; see the module docstring for the order of checks.

        The signature must verify with ``hmac_key`` or one of ``public_keys`` when given, else with a
        key of the user's key folder (:func:`nnseal.signing.key_dir`); ``trust`` overrides all three.
        """
        path = Path(path)
        trust = trust or Trust.resolve(
            hmac_key=hmac_key, public_keys=public_keys, allow_unsigned=allow_unsigned
        )
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise FingerprintError(f"cannot read fingerprint {path}: {e.strerror or e}") from None
        return cls.from_bytes(raw, trust, name=str(path))

    @classmethod
    def from_bytes(cls, raw: bytes, trust: Trust, *, name: str = "fingerprint") -> Fingerprint:
        """Parse and check a fingerprint file's bytes against ``trust`` (``name`` labels errors)."""
        path = name
        meta, tensors = _parse_container(raw, path)
        header_json = meta.get("nnseal")
        if not isinstance(header_json, str):
            raise FingerprintError(f"{path}: not an nnseal fingerprint (no nnseal header)")
        signature = trust.check(path, meta.get("signature", "{}"), _digest(header_json, tensors))
        try:
            h = parse_json(header_json, max_bytes=MAX_HEADER_BYTES, what="header")
        except ValueError as e:
            raise FingerprintError(f"{path}: {e}") from None
        if not isinstance(h, dict):
            raise FingerprintError(f"{path}: header must be a JSON object")
        version = h.get("schema_version")
        if type(version) is not int or version < 1:
            raise FingerprintError(f"{path}: missing or invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise FingerprintError(
                f"{path}: schema version {version} is newer than this nnseal supports "
                f"({SCHEMA_VERSION}); upgrade nnseal"
            )
        fields = {
            "specs": list,
            "serving": list,
            "model_id": str,
            "method": str,
            "params": dict,
            "provenance": dict,
        }
        for name, kind in fields.items():
            if not isinstance(h.get(name, kind()), kind):
                raise FingerprintError(f"{path}: header field {name!r} must be a {kind.__name__}")
        if not all(isinstance(s, str) for s in h.get("specs", [])):
            raise FingerprintError(f"{path}: header field 'specs' must list strings")
        try:
            fp = cls(
                queries=tensors["queries"],
                probabilities=tensors["probabilities"],
                specs=h["specs"],
                model_id=h["model_id"],
                method=h["method"],
                params=h.get("params", {}),
                provenance=h.get("provenance", {}),
                seeds=tensors.get("seeds"),
                labels=tensors.get("labels"),
                serving=h.get("serving", ["cpu-fp32"]),
                levels=h.get("levels", DEFAULT_LEVELS),
                created=str(h.get("created", "")),
                schema_version=version,
                signature=signature,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FingerprintError(f"{path}: missing or invalid field {e}") from None
        counts = (h.get("n_queries"), h.get("n_classes"))
        if counts != (len(fp), fp.probabilities.shape[1]) or any(type(c) is not int for c in counts):
            raise FingerprintError(f"{path}: header counts do not match the stored tensors")
        return fp


def _check_serving(serving: Any) -> list[str]:
    """The declared serving environments: a non-empty list of distinct known names."""
    from nnseal.numerics import ENVIRONMENTS

    valid = ", ".join(ENVIRONMENTS)
    if not isinstance(serving, (list, tuple)) or not serving or not all(isinstance(s, str) for s in serving):
        raise FingerprintError(f"serving must be a non-empty list of environment names ({valid})")
    unknown = [s for s in serving if s not in ENVIRONMENTS]
    if unknown:
        shown = ", ".join(repr(s[:40]) for s in unknown[:3])
        raise FingerprintError(f"unknown serving environment {shown}; valid: {valid}")
    if len(set(serving)) != len(serving):
        raise FingerprintError("serving lists an environment more than once")
    return list(serving)


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


def _parse_container(raw: bytes, path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    try:
        meta = safetensors_metadata(raw, max_header=MAX_HEADER_BYTES)
        tensors = st_load(raw)
    except ValueError as e:
        raise FingerprintError(f"{path}: truncated or not a fingerprint file: {e}") from None
    except SafetensorError as e:
        raise FingerprintError(f"{path}: corrupt fingerprint file ({str(e).splitlines()[0][:120]})") from None
    return meta, tensors
