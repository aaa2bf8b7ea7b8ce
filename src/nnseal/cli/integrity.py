"""Tamper detection commands: ``fingerprint``, ``verify``, ``watch``."""

from __future__ import annotations

import functools
import json
import secrets
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from nnseal.cli.app import Interrupted, main
from nnseal.cli.http import HttpConfig, http_options
from nnseal.cli.options import (
    LiveHelp,
    emit,
    json_option,
    load_signed,
    params_help,
    params_option,
    root_option,
    signature_check,
    signing,
    signing_keys,
)
from nnseal.errors import NnsealError

if TYPE_CHECKING:
    from nnseal.fingerprint import Fingerprint
    from nnseal.targets.base import Target
    from nnseal.verification import IntegrityVerdict


def _method_help() -> str:
    from nnseal.methods import METHODS

    def describe(m: Any) -> tuple[str, dict[str, Any]]:
        first = " ".join((m.__doc__ or "").strip().split("\n\n")[0].split())
        return first, m.own_defaults()

    text = params_help(
        "Make a fingerprint of MODEL with --method (set its parameters with -p).", METHODS, describe
    )
    return text.replace("Kinds:", "Methods:")


_batch = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Most queries per call [default: the target's preferred].",
)


_one_time = click.option(
    "--one-time",
    type=click.IntRange(min=1),
    help="Send N queries never sent before (recorded in the key folder's ledger), so a server "
    "replaying recorded answers cannot pass; needs a fingerprint with a larger pool (-n).",
)
_reuse = click.option(
    "--reuse", is_flag=True, help="With --one-time: reuse sent queries when too few are fresh."
)


@main.command(cls=LiveHelp, live_help=_method_help, short_help="Make a fingerprint of a model.")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--method",
    help="Fingerprinting method [default: boundary-sensitive when --specs is top1 alone (labels-only "
    "APIs), else sensitive-sample].",
)
@params_option
@click.option("--data", "dataset", default="digits", show_default=True, help="Dataset the seeds come from.")
@root_option
@click.option("--split", default="test", show_default=True)
@click.option("-n", "--n-queries", type=int, help="Queries in the fingerprint [default: the method's].")
@click.option("--pool-size", type=int, help="Seeds candidates are made from [default: the method's].")
@click.option("--specs", default="top1,top3,top1-p4", show_default=True, help="Output specs to support.")
@click.option("--min-margin", type=float, help="Relative noise every answer must survive [default: 2e-5].")
@click.option(
    "--serving",
    default="cpu-fp32",
    show_default=True,
    help="Where the deployed copy may legitimately run (comma-separated: cpu-fp32, onnxruntime, gpu-fp32, "
    "gpu-tf32, bf16, fp16); answers must survive each. Declaring bf16/fp16 makes a cast to it undetectable.",
)
@click.option("--noise-factor", type=float, help="Margin ≥ this × the noise measured per query [default: 4].")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--fresh",
    is_flag=True,
    help="Seed from OS randomness (recorded in the file): new queries every run, for owners who keep "
    "the model and fingerprint it anew before each verification.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Fingerprint file to write.")
@signing
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def fingerprint(
    model: Path,
    method: str | None,
    params: tuple[str, ...],
    dataset: str,
    root: Path | None,
    split: str,
    n_queries: int | None,
    pool_size: int | None,
    specs: str,
    min_margin: float | None,
    serving: str,
    noise_factor: float | None,
    seed: int,
    fresh: bool,
    out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    from nnseal._params import parse_pairs, typed_params
    from nnseal.data import load_dataset
    from nnseal.methods import METHODS
    from nnseal.models import load_model
    from nnseal.numerics import ServingWarning

    if method is None:
        method = "boundary-sensitive" if specs.strip() == "top1" else "sensitive-sample"
    if method not in METHODS:
        raise NnsealError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    if fresh:
        seed = secrets.randbits(32)
    cls = METHODS[method]
    options = typed_params(parse_pairs(params), cls.own_defaults(), f"method {method}")
    common = {
        "n_queries": n_queries,
        "pool_size": pool_size,
        "min_margin": min_margin,
        "noise_factor": noise_factor,
    }
    options.update({k: v for k, v in common.items() if v is not None})
    with warnings.catch_warnings(record=True) as caught:  # the bf16/fp16 trade-off, said plainly
        warnings.simplefilter("always", ServingWarning)
        fingerprinter = cls(
            specs=specs.split(","), serving=serving, seed=seed, progress=not (quiet or as_json), **options
        )
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    keys = signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    data = load_dataset(dataset, root, split)
    fp = fingerprinter.fingerprint(m, data)
    fp.save(out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    signed = keys.schemes
    info = {
        "fingerprint": str(out),
        "method": fp.method,
        "n_queries": len(fp),
        "specs": fp.specs,
        "serving": fp.serving,
        "model_id": fp.model_id,
        "signed": signed,
        "params": fp.params,
    }
    emit(
        info,
        as_json,
        f"wrote {out}: {len(fp)} {method} queries, specs {', '.join(fp.specs)}, "
        f"serving {', '.join(fp.serving)}, signed: {', '.join(signed) or 'no'}",
    )


def _verdict_text(verdict: IntegrityVerdict, fp: Fingerprint, target: Target) -> str:
    text = (
        f"{verdict.status.value.upper()}: {verdict.reason} (spec {verdict.spec}, "
        f"{verdict.queries_used} queries)\n{fp.signature}; answers checked for serving on "
        f"{', '.join(fp.serving)}"
    )
    if verdict.fresh_remaining is not None:
        text += f"\none-time queries: {verdict.fresh_remaining} of {len(fp)} never sent remain"
    if verdict.mismatches:
        text += f"\nmismatching queries: {verdict.mismatches}"
        text += "\n" + _different_model_hint(fp, target)
    return text


def _different_model_hint(fp: Fingerprint, target: Target) -> str:
    """Tampered and *a different model altogether* look alike; say which model the fingerprint is of."""
    from nnseal.models import model_id
    from nnseal.targets.local import TorchTarget

    hint = f"the fingerprint is of model {fp.model_id[:16]}"
    if isinstance(target, TorchTarget):
        hint += f"; the target is model {model_id(target.model)[:16]}"
    return (
        f"note: {hint}. Any other model differs too: if the target was never a copy of it (another "
        "training run, the wrong file or endpoint), this is the wrong fingerprint, not proof of tampering."
    )


@main.command("verify")
@click.argument("fingerprint_file", metavar="FINGERPRINT", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option("--spec", help="Output spec to compare (default: the fingerprint's first).")
@click.option("--budget", type=int, help="Most queries to send (fewer than the fingerprint → inconclusive).")
@click.option("--stop-early", is_flag=True, help="Stop at the first mismatch (batches grow 1, 2, 4 …).")
@_batch
@_one_time
@_reuse
@signature_check
@json_option
@http_options
def verify_cmd(
    fingerprint_file: Path,
    target: Path | None,
    spec: str | None,
    budget: int | None,
    stop_early: bool,
    batch_size: int | None,
    one_time: int | None,
    reuse: bool,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    as_json: bool,
    http: HttpConfig,
) -> None:
    """Verify TARGET (an nnseal model file or an .onnx file), or the prediction API at --url,
    against FINGERPRINT.

    Exit code: 0 intact, 1 tampered, 3 inconclusive, 2 bad input.
    """
    from nnseal.ledger import Ledger
    from nnseal.verification import verify

    fp = load_signed(fingerprint_file, hmac_key_file, public_keys, allow_unsigned)
    if reuse and one_time is None:
        raise NnsealError("--reuse goes with --one-time")
    ledger = Ledger() if one_time is not None else None
    indices = ledger.draw(fp, one_time, reuse=reuse) if ledger is not None and one_time else None
    tgt = http.open(fp, target)
    try:
        verdict = verify(
            fp, tgt, spec, budget=budget, stop_at_first_mismatch=stop_early, batch_size=batch_size,
            indices=indices,
        )  # fmt: skip
    finally:
        tgt.close()
    if ledger is not None:
        verdict.fresh_remaining = ledger.remaining(fp)
    emit(verdict.to_dict(), as_json, _verdict_text(verdict, fp, tgt))
    sys.exit(verdict.exit_code)


_FLEET_WIDE = frozenset(
    {
        "fleet_file",
        "parallel",
        "max_runs",
        "metrics_port",
        "hmac_key_file",
        "public_keys",
        "allow_unsigned",
    }
)
"""The options of ``watch --fleet`` that apply to every target; the fleet file sets the others."""


@main.command()
@click.argument("fingerprint_file", metavar="[FINGERPRINT]", type=click.Path(path_type=Path), required=False)
@click.option(
    "--fleet",
    "fleet_file",
    metavar="FLEET.toml",
    type=click.Path(path_type=Path),
    help="Watch every target of this fleet file (format above) instead of FINGERPRINT at --url.",
)
@click.option(
    "--parallel",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --fleet: most targets verified at once.",
)
@click.option("--interval", default=60.0, show_default=True, help="Seconds from one run's start to the next.")
@click.option(
    "--max-runs",
    "--runs",
    "max_runs",
    type=int,
    help="Stop after this many runs, per target with --fleet (default: run until tampered).",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--spec", help="Output spec to compare (default: the fingerprint's first).")
@click.option("--budget", type=int, help="Most fingerprint queries per run (fewer → inconclusive).")
@_batch
@_one_time
@_reuse
@signature_check
@http_options
def watch(
    fingerprint_file: Path | None,
    fleet_file: Path | None,
    parallel: int,
    interval: float,
    max_runs: int | None,
    metrics_port: int | None,
    spec: str | None,
    budget: int | None,
    batch_size: int | None,
    one_time: int | None,
    reuse: bool,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    http: HttpConfig,
) -> None:
    """Verify the prediction API at --url against FINGERPRINT every --interval seconds, or every
    target of a --fleet file, each on its own schedule.

    Prints one JSON line per run. Exit code: 1 at the first tampered verdict; after --max-runs,
    3 if any run was inconclusive, else 0; 2 bad input.

    --fleet FLEET.toml: a [defaults] table and [[targets]] tables, each with a unique name, a
    fingerprint (relative paths from the file's folder), a url, and optionally interval, budget, spec,
    batch_size and any remote-target option above by its long name with _ for - (model_name, timeout
    …). Credentials only as the names of environment variables: token_env = "VAR", header_env =
    {"X-Api-Key" = "VAR"}. The whole file and every fingerprint's signature (checked as for one
    target) pass before any run. Each JSON line has the target's "name", each metric a target label.
    After n inconclusive runs in a row a target waits interval × 2^n, at most 8 intervals; a tampered
    target is not verified again. Exit code: 1 if any target was tampered, else 3 if any target's
    latest run was inconclusive, else 0; 2 bad input.
    """
    from nnseal.watch import WatchMetrics
    from nnseal.watch import watch as run_watch

    ctx = click.get_current_context()
    given = [
        p for p in ctx.command.params if ctx.get_parameter_source(p.name or "") is ParameterSource.COMMANDLINE
    ]
    if fleet_file is not None:
        for p in given:
            if p.name not in _FLEET_WIDE:
                raise NnsealError(_not_with_fleet(p))
        load = functools.partial(
            load_signed, hmac_key_file=hmac_key_file, public_keys=public_keys, allow_unsigned=allow_unsigned
        )
        sys.exit(_watch_fleet(fleet_file, load, parallel, max_runs, metrics_port))
    if any(p.name == "parallel" for p in given):
        raise NnsealError("--parallel goes with --fleet")
    if fingerprint_file is None or not http.url:
        raise NnsealError("watch needs FINGERPRINT and --url, or --fleet FLEET.toml")
    fp = load_signed(fingerprint_file, hmac_key_file, public_keys, allow_unsigned)
    make = http.target_factory(fp)
    metrics = WatchMetrics(metrics_port) if metrics_port is not None else None
    statuses: list[str] = []
    try:
        for record in run_watch(
            fp, make, spec, interval=interval, max_runs=max_runs, metrics=metrics, budget=budget,
            batch_size=batch_size, one_time=one_time, reuse=reuse,
        ):  # fmt: skip
            click.echo(json.dumps(record))
            statuses.append(record["status"])
    except (KeyboardInterrupt, Interrupted) as e:
        raise _stopped(e, statuses) from None
    finally:
        if metrics is not None:
            metrics.close()
    sys.exit(1 if "tampered" in statuses else 3 if "inconclusive" in statuses else 0)


def _watch_fleet(
    path: Path, load: Callable[[Path], Fingerprint], parallel: int, max_runs: int | None, port: int | None
) -> int:
    """Watch every target of the fleet file ``path``; the fleet's exit code (see ``watch --help``)."""
    from nnseal.cli.fleet import load_fleet
    from nnseal.fleet import fleet_status, watch_fleet
    from nnseal.verification import Status
    from nnseal.watch import WatchMetrics

    targets = load_fleet(path, load)
    metrics = WatchMetrics(port, per_target=True) if port is not None else None
    statuses: list[str] = []
    latest: dict[str, Status] = {}
    try:
        for record in watch_fleet(targets, parallel=parallel, max_runs=max_runs, metrics=metrics):
            click.echo(json.dumps(record))
            statuses.append(record["status"])
            latest[record["name"]] = Status(record["status"])
    except (KeyboardInterrupt, Interrupted) as e:
        raise _stopped(e, statuses) from None
    finally:
        if metrics is not None:
            metrics.close()
    return fleet_status(latest.values()).exit_code


def _not_with_fleet(option: click.Parameter) -> str:
    from nnseal.cli.fleet import fleet_key

    if option.name == "url":
        return "give --url (one target) or --fleet (a fleet file), not both"
    if option.name == "fingerprint_file":
        return "with --fleet, each target's fingerprint is named in the fleet file: drop FINGERPRINT"
    key = fleet_key(option)
    if key is None:
        return f"{option.opts[0]} does not go with --fleet"
    return f"with --fleet, {option.opts[0]} goes in the fleet file, as {key} ([defaults] or a target)"


def _stopped(e: KeyboardInterrupt | Interrupted, statuses: list[str]) -> Interrupted:
    """The interruption of a watch, saying how many runs ended and how."""
    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    counts = ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses))) or "none finished"
    return Interrupted(signum, f"watch stopped after {len(statuses)} runs ({counts})")
