"""The fleet file of ``nnseal watch --fleet``: many targets in one TOML file, all of it checked before
any run, so a typo in the fortieth target stops nothing halfway.

::

    [defaults]                  # any target key but name; a target's own value wins
    protocol = "v2"
    model_name = "digits"
    returns = "logits"
    interval = 300
    budget = 20

    [[targets]]
    name = "shop"               # unique: the JSON lines' "name", the metrics' target label
    fingerprint = "shop.nnseal" # relative paths are from this file's folder
    url = "https://shop.example.com"
    token_env = "SHOP_TOKEN"    # credentials: the NAMES of environment variables, never the secrets
    header_env = {"X-Api-Key" = "SHOP_KEY"}

Keys: ``name``, ``fingerprint``, ``url`` (these three required), ``interval``, ``budget``, ``spec``,
``batch_size``, ``header_env``, and every remote-target option of ``nnseal watch`` by its long name with
``_`` for ``-`` (``protocol``, ``model_name``, ``timeout``, ``retries``, ``ca_bundle`` …), validated as
the command line validates them (:class:`~nnseal.cli.http.HttpConfig`) — except ``--header``: header
values are secrets, so they come from ``header_env``. Every problem is an :class:`NnsealError` naming
the target and the key; the values of credentials never appear in one.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import tomllib

from nnseal.cli.http import HttpConfig, http_options
from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.fleet import FleetTarget


def _http_options() -> dict[str, click.Option]:
    """The remote-target options of the command line by fleet key, ``--header`` left out."""
    params = click.command()(http_options(lambda http: None)).params
    return {_key(p): p for p in params if isinstance(p, click.Option) and p.name != "headers"}


def _key(option: click.Parameter) -> str:
    """The fleet-file key of a command-line option: its long name, ``_`` for ``-``."""
    return option.opts[0].removeprefix("--").replace("-", "_")


_HTTP = _http_options()
_KINDS: dict[str, click.ParamType] = {
    "name": click.STRING,
    "fingerprint": click.Path(path_type=Path),
    "interval": click.FloatRange(min=0),
    "budget": click.IntRange(min=1),
    "spec": click.STRING,
    "batch_size": click.IntRange(min=1),
    **{key: option.type for key, option in _HTTP.items()},
}
KEYS = frozenset({*_KINDS, "header_env"})
"""Every key a target (or ``[defaults]``) may have."""
_REQUIRED = ("fingerprint", "url")
_SECRET_KEYS = {"header", "headers", "token"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_TOML_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "list": "an array",
    "dict": "a table",
}


def fleet_key(option: click.Parameter) -> str | None:
    """The fleet-file key standing for a command-line option of ``nnseal watch``, if there is one."""
    key = _key(option) if isinstance(option, click.Option) else None
    return key if key in KEYS else None


def load_fleet(path: Path, load: Callable[[Path], Fingerprint]) -> list[FleetTarget]:
    """The targets of the fleet file ``path``, every one checked — keys, values, the variables its
    credentials come from, its fingerprint (loaded by ``load``, which checks the signature) and its
    remote-target options — before any is returned."""
    doc = _read(path)
    unknown = sorted(set(doc) - {"defaults", "targets"})
    if unknown:
        raise NnsealError(f"{path}: unknown key {unknown[0]!r} (a fleet file has [defaults] and [[targets]])")
    defaults, entries = doc.get("defaults", {}), doc.get("targets")
    if not isinstance(defaults, dict):
        raise NnsealError(f"{path}: defaults must be a table ([defaults])")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise NnsealError(f"{path}: no targets: give each in a [[targets]] table")
    _check_keys(f"{path}: [defaults]", defaults, KEYS - {"name"})
    fingerprints: dict[Path, Fingerprint] = {}
    targets: list[FleetTarget] = []
    for n, entry in enumerate(entries, 1):
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise NnsealError(f"{path}: target {n}: name must be a non-empty printable string")
        where = f"{path}: target {name!r}"
        if any(t.name == name for t in targets):
            raise NnsealError(f"{where}: name: another target has it; names must be unique")
        _check_keys(where, entry, KEYS)
        targets.append(_target(where, {**defaults, **entry}, path.parent, load, fingerprints))
    return targets


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise NnsealError(f"cannot read fleet file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise NnsealError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise NnsealError(f"{path}: not a fleet file (nested too deep)") from None


def _check_keys(where: str, table: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if not unknown:
        return
    key, close = unknown[0], difflib.get_close_matches(unknown[0], allowed, 1)
    if key in _SECRET_KEYS:
        hint = "secrets stay out of the file: name their environment variables in token_env, header_env"
    else:
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(allowed))}"
    raise NnsealError(f"{where}: unknown key {key!r} ({hint})")


def _target(
    where: str,
    table: dict[str, Any],
    folder: Path,
    load: Callable[[Path], Fingerprint],
    fingerprints: dict[Path, Fingerprint],
) -> FleetTarget:
    for key in _REQUIRED:
        if key not in table:
            raise NnsealError(f"{where}: missing key {key!r}")
    values = {k: _value(where, k, v, folder) for k, v in table.items() if k in _KINDS}
    fp = _fingerprint(where, values.pop("fingerprint"), load, fingerprints)
    if "spec" in values:
        try:
            fp.expected(values["spec"])
        except (NnsealError, ValueError) as e:
            raise NnsealError(f"{where}: spec: {e}") from None
    if "token_env" in values:
        _secret(where, "token_env", values["token_env"])  # named, so it must be there
    else:  # no fleet-wide token: one target's credentials never go to another host
        values["token_env"] = ""
    headers = _headers(where, table.get("header_env", {}))
    http = HttpConfig(**{_HTTP[k].name: v for k, v in values.items() if k in _HTTP}, headers=headers)
    try:
        make = http.target_factory(fp)
    except (NnsealError, ValueError, OSError) as e:
        raise NnsealError(f"{where}: {e}") from None
    watch = {k: values[k] for k in ("interval", "spec", "budget", "batch_size") if k in values}
    return FleetTarget(values["name"], fp, make, **watch)


def _value(where: str, key: str, value: Any, folder: Path) -> Any:
    """``value`` checked as the command line checks its option (TOML types kept strict), relative
    paths taken from ``folder``."""
    kind = _KINDS[key]
    wanted = _toml_types(kind)
    if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
        got = _TOML_TYPES.get(type(value).__name__, f"a {type(value).__name__}")
        raise NnsealError(f"{where}: {key} must be {_TOML_TYPES[wanted[-1].__name__]}, got {got}")
    if isinstance(value, float) and not math.isfinite(value):
        raise NnsealError(f"{where}: {key} must be a finite number, got {value}")
    try:
        value = kind.convert(value, None, None)
    except click.BadParameter as e:
        raise NnsealError(f"{where}: {key}: {e.format_message()}") from None
    if isinstance(value, Path):
        return folder / value
    if key == "class_names" and value.startswith("@"):
        return f"@{folder / value[1:]}"
    return value


def _toml_types(kind: click.ParamType) -> tuple[type, ...]:
    """The TOML values an option of this type takes: no "3" for 3, no 1 for true."""
    if isinstance(kind, click.types.BoolParamType):
        return (bool,)
    if isinstance(kind, click.types.IntParamType):
        return (int,)
    if isinstance(kind, click.types.FloatParamType):
        return (int, float)
    return (str,)


def _fingerprint(
    where: str, path: Path, load: Callable[[Path], Fingerprint], fingerprints: dict[Path, Fingerprint]
) -> Fingerprint:
    """The fingerprint at ``path``, loaded (and its signature checked) once for all targets sharing it."""
    if not path.is_file():
        raise NnsealError(f"{where}: fingerprint: no such file {path}")
    key = path.resolve()
    if key not in fingerprints:
        try:
            fingerprints[key] = load(path)
        except (NnsealError, ValueError, OSError) as e:
            raise NnsealError(f"{where}: fingerprint: {e}") from None
    return fingerprints[key]


def _headers(where: str, table: Any) -> tuple[str, ...]:
    """``header_env``'s headers as the command line's ``NAME: VALUE``, each value from its variable."""
    if not isinstance(table, dict):
        raise NnsealError(f'{where}: header_env must be a table: {{"Header-Name" = "ENV_VAR"}}')
    out = []
    for header, var in table.items():
        if not _HEADER_NAME.fullmatch(header):
            raise NnsealError(f"{where}: header_env: {header!r} is not an HTTP header name")
        out.append(f"{header}: {_secret(where, f'header_env.{header}', var)}")
    return tuple(out)


def _secret(where: str, key: str, var: Any) -> str:
    """The value of the environment variable ``var`` (the file's ``key`` names it); never shown."""
    if not isinstance(var, str) or not _ENV_NAME.fullmatch(var):
        raise NnsealError(f"{where}: {key} must name an environment variable (letters, digits, _)")
    value = os.environ.get(var)
    if not value:
        raise NnsealError(f"{where}: {key}: environment variable {var} is not set")
    if not (value.isascii() and value.isprintable()):
        raise NnsealError(f"{where}: {key}: environment variable {var} holds characters HTTP cannot send")
    return value
