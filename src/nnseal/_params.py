"""``key=value`` parameters from the command line, typed by the defaults of the function they are for
(attacks and fingerprinting methods declare their parameters as keyword arguments)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def parse_pairs(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameters are KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def typed_params(pairs: dict[str, str], defaults: dict[str, Any], owner: str) -> dict[str, Any]:
    """Convert each value to its default's type (bool, int, float; else the string); dashes in keys
    become underscores; an unknown key is an error naming the accepted ones."""
    out: dict[str, Any] = {}
    for key, raw in pairs.items():
        key = key.replace("-", "_")
        check_known(key, defaults, owner)
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                out[key] = int(raw)
            elif isinstance(default, float):
                out[key] = float(raw)
            else:
                out[key] = raw
        except ValueError:
            kind = type(default).__name__
            raise ValueError(f"parameter {key} of {owner} expects {kind}, got {raw!r}") from None
    return out


def check_known(key: str, defaults: dict[str, Any], owner: str) -> None:
    if key not in defaults:
        known = ", ".join(defaults) or "none"
        raise ValueError(f"unknown parameter {key!r} for {owner}; it accepts: {known}")
