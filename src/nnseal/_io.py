"""Atomic file writes, and defensive parsing of JSON that may come from an adversary.

Files the verifier reads (fingerprints, model files) and every HTTP answer may be hostile: parsing
is bounded in size and nesting depth, and every failure is a ``ValueError`` naming the problem, so
no input can crash the caller with a ``RecursionError`` or exhaust its memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in any JSON nnseal reads (its own files nest 4 deep at most)."""


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    The file gets ``mode`` (default: what ``open`` would give under the current umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def parse_json(
    data: str | bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, what: str = "JSON"
) -> Any:
    """``json.loads`` bounded in size and nesting; ``ValueError`` (naming ``what``) on any failure."""
    if len(data) > max_bytes:
        raise ValueError(f"{what} is {len(data)} bytes, more than the {max_bytes} accepted")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"{what} is nested more than {max_depth} deep") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, over-long integers, bad UTF-8
        raise ValueError(f"{what} is not valid JSON ({str(e)[:80]})") from None
    if json_depth(value) > max_depth:
        raise ValueError(f"{what} is nested more than {max_depth} deep")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


SAFETENSORS_MAX_HEADER = 16 << 20
"""Largest safetensors header accepted (nnseal's own are a few kB; a model's lineage can grow)."""


def safetensors_metadata(raw: bytes, max_header: int = SAFETENSORS_MAX_HEADER) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes; ValueError says what is wrong."""
    if len(raw) < 8:
        raise ValueError(f"truncated ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("truncated (header runs past end of file)")
    header = parse_json(raw[8 : 8 + n], max_bytes=max_header, max_depth=4, what="safetensors header")
    if not isinstance(header, dict):
        raise ValueError("bad header, not a safetensors file")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("bad metadata, not a safetensors file")
    return meta
