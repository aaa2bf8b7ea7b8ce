"""Command-line options for remote targets (``nnseal verify --url``, ``nnseal watch``) and the
target they configure. Kept apart from :mod:`nnseal.cli` so both commands share one definition."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.targets.base import Target
from nnseal.targets.http import PROTOCOLS, TOKEN_ENV
from nnseal.targets.protocols import OUTPUTS

_OPTIONS = [
    click.option("--url", help="Base URL of a prediction API (instead of a model file)."),
    click.option("--protocol", type=click.Choice(PROTOCOLS), default="v2", show_default=True),
    click.option("--model-name", help="Model name on the server (v2, torchserve, tfserving)."),
    click.option("--model-version", help="Model version (default: the server's)."),
    click.option("--input-name", default="input", show_default=True, help="V2 input tensor name."),
    click.option("--output-name", help="V2 output / TF Serving output key to read (default: the first)."),
    click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True),
    click.option("--path", "api_path", help="json protocol: request path, e.g. /predict."),
    click.option("--request-template", help='json protocol: JSON body with "$inputs" for the batch.'),
    click.option("--response-path", help="json protocol: where the answers are, e.g. predictions.*.probs."),
    click.option("--output", type=click.Choice(OUTPUTS), default="probabilities", show_default=True),
    click.option("--class-names", help="label-names output: comma-separated names, or @FILE (one per line)."),
    click.option("--max-batch", default=64, show_default=True, help="Most inputs per request."),
    click.option("--concurrency", default=1, show_default=True, help="Requests in flight at once."),
    click.option(
        "--timeout",
        default=10.0,
        show_default=True,
        help="Seconds per request attempt, whole answer included.",
    ),
    click.option("--retries", default=3, show_default=True, help="Retries after 5xx, 429, timeouts."),
    click.option(
        "--backoff", default=0.2, show_default=True, help="First retry delay (s); doubles, jittered."
    ),
    click.option("--max-retry-after", default=30.0, show_default=True, help="Longest 429 wait accepted (s)."),
    click.option("--max-queries", type=int, help="Most inputs sent in total, retries and decoys included."),
    click.option(
        "--max-response-bytes",
        type=click.IntRange(min=1),
        help="Largest answer accepted, as received and decompressed (default: 1 MiB + 256 B per value).",
    ),
    click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="Extra request header."),
    click.option(
        "--token-env", default=TOKEN_ENV, show_default=True, help="Environment variable with a bearer token."
    ),
    click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate."),
    click.option("--ca-bundle", type=click.Path(path_type=Path), help="CA bundle (or NNSEAL_CA_BUNDLE)."),
    click.option("--client-cert", type=click.Path(path_type=Path), help="Client certificate (PEM)."),
    click.option("--client-key", type=click.Path(path_type=Path), help="Client key (PEM)."),
    click.option("--stealth", is_flag=True, help="Shuffle queries among decoys and pace them."),
    click.option("--decoys", "decoy_data", help="Dataset for decoys (default: the fingerprint's seeds)."),
    click.option("--decoy-root", type=click.Path(path_type=Path), help="Folder holding the decoy dataset."),
    click.option("--decoy-ratio", default=1.0, show_default=True, help="Decoys per fingerprint query."),
    click.option("--pace", default=0.0, show_default=True, help="Seconds between stealth requests."),
    click.option("--pace-jitter", default=0.0, show_default=True, help="Random ± added to --pace."),
    click.option("--stealth-seed", type=int, help="Seed for shuffling, decoys and jitter."),
]


def http_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the remote-target options to a command; they arrive as keyword arguments."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _class_names(value: str | None) -> list[str] | None:
    if not value:
        return None
    if value.startswith("@"):
        lines = Path(value[1:]).read_text().splitlines()
        return [line.strip() for line in lines if line.strip()]
    return [v.strip() for v in value.split(",")]


def _headers(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise NnsealError("--header takes 'NAME: VALUE'")  # the value may be secret: never echoed
        out[name.strip()] = value.strip()
    return out


def _decoys(fp: Fingerprint, opts: dict[str, Any]) -> np.ndarray:
    if opts["decoy_data"]:
        from nnseal.data import load_dataset

        return load_dataset(opts["decoy_data"], opts["decoy_root"], "test").x
    if fp.seeds is None:
        raise NnsealError("--stealth needs --decoys: this fingerprint stores no seeds")
    return fp.seeds


def remote_target_factory(fp: Fingerprint, opts: dict[str, Any]) -> Callable[[], Target]:
    """A function building the target the options describe (validated now, not at first use)."""
    from nnseal.targets.http import HttpTarget, make_protocol
    from nnseal.targets.stealth import StealthTarget

    protocol = make_protocol(
        opts["protocol"],
        opts["model_name"],
        version=opts["model_version"],
        input_name=opts["input_name"],
        output_name=opts["output_name"],
        layout=opts["layout"],
        path=opts["api_path"],
        template=opts["request_template"],
        response_path=opts["response_path"],
    )
    headers = _headers(opts["headers"])
    decoys = _decoys(fp, opts) if opts["stealth"] else None

    def make() -> Target:
        target: Target = HttpTarget(
            opts["url"],
            protocol,
            output=opts["output"],
            class_names=_class_names(opts["class_names"]),
            max_batch_size=opts["max_batch"],
            concurrency=opts["concurrency"],
            timeout=opts["timeout"],
            retries=opts["retries"],
            backoff=opts["backoff"],
            max_retry_after=opts["max_retry_after"],
            max_queries=opts["max_queries"],
            max_response_bytes=opts["max_response_bytes"],
            num_classes=fp.probabilities.shape[1],
            token=os.environ.get(opts["token_env"]) or None,
            headers=headers,
            verify_tls=not opts["insecure"],
            ca_bundle=str(opts["ca_bundle"]) if opts["ca_bundle"] else None,
            client_cert=str(opts["client_cert"]) if opts["client_cert"] else None,
            client_key=str(opts["client_key"]) if opts["client_key"] else None,
        )
        if decoys is not None:
            target = StealthTarget(
                target,
                decoys,
                decoy_ratio=opts["decoy_ratio"],
                delay=opts["pace"],
                jitter=opts["pace_jitter"],
                seed=opts["stealth_seed"],
            )
        return target

    make().close()  # fail fast on a bad URL, TLS files or class names, before any run
    return make


def open_cli_target(
    fp: Fingerprint, path: Path | None, opts: dict[str, Any], batch_size: int
) -> tuple[Target, int]:
    """The target of ``nnseal verify``: a model file, or the ``--url`` endpoint; and the verify batch
    size (the whole fingerprint under ``--stealth``, so all of it is shuffled together)."""
    from nnseal.targets import open_target

    if opts["url"] and path is not None:
        raise NnsealError("give either TARGET (a model file) or --url, not both")
    if not opts["url"]:
        if path is None:
            raise NnsealError("missing TARGET (a model file) or --url")
        return open_target(path), batch_size
    return remote_target_factory(fp, opts)(), len(fp) if opts["stealth"] else batch_size
