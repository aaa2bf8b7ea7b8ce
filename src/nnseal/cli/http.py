"""Remote-target options (``--url`` and the rest) as one :class:`HttpConfig`, shared by every command
that queries a model: ``verify``, ``watch`` and ``watermark verify``."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.targets.base import Target
from nnseal.targets.http import PROTOCOLS, TOKEN_ENV
from nnseal.targets.protocols import ANSWER_KINDS, INPUT_FORMATS


@dataclass(frozen=True)
class HttpConfig:
    """How to reach and query a prediction API; one field per command-line option."""

    url: str | None = None
    protocol: str = "v2"
    model_name: str | None = None
    model_version: str | None = None
    input_name: str = "input"
    output_name: str | None = None
    layout: str = "nchw"
    api_path: str | None = None
    request_template: str | None = None
    response_path: str | None = None
    send: str = "array"
    returns: str = "probabilities"
    class_names: str | None = None
    max_batch: int = 64
    concurrency: int = 1
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.2
    max_retry_after: float = 30.0
    max_queries: int | None = None
    max_response_bytes: int | None = None
    headers: tuple[str, ...] = ()
    token_env: str = TOKEN_ENV
    insecure: bool = False
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    stealth: bool = False
    decoy_data: str | None = None
    decoy_root: Path | None = None
    decoy_ratio: float = 1.0
    pace: float = 0.0
    pace_jitter: float = 0.0
    stealth_seed: int | None = None

    def target_factory(self, fp: Fingerprint) -> Callable[[], Target]:
        """A function building the target these options describe (validated now, not at first use)."""
        from nnseal.targets.http import HttpTarget, make_protocol
        from nnseal.targets.stealth import StealthTarget

        if not self.url:
            raise NnsealError("no --url given")
        protocol = make_protocol(
            self.protocol,
            self.model_name,
            version=self.model_version,
            input_name=self.input_name,
            output_name=self.output_name,
            layout=self.layout,
            path=self.api_path,
            template=self.request_template,
            response_path=self.response_path,
        )
        if self.send == "png":
            protocol.send_png(fp.levels)
        headers, names = _headers(self.headers), _class_names(self.class_names)
        decoys = self._decoys(fp) if self.stealth else None
        url = self.url

        def make() -> Target:
            target: Target = HttpTarget(
                url,
                protocol,
                returns=self.returns,  # type: ignore[arg-type]
                class_names=names,
                max_batch_size=self.max_batch,
                concurrency=self.concurrency,
                timeout=self.timeout,
                retries=self.retries,
                backoff=self.backoff,
                max_retry_after=self.max_retry_after,
                max_queries=self.max_queries,
                max_response_bytes=self.max_response_bytes,
                num_classes=fp.probabilities.shape[1],
                token=os.environ.get(self.token_env) or "",  # "" = none: no fallback to another variable
                headers=headers,
                verify_tls=not self.insecure,
                ca_bundle=str(self.ca_bundle) if self.ca_bundle else None,
                client_cert=str(self.client_cert) if self.client_cert else None,
                client_key=str(self.client_key) if self.client_key else None,
            )
            if decoys is not None:
                target = StealthTarget(
                    target,
                    decoys,
                    decoy_ratio=self.decoy_ratio,
                    delay=self.pace,
                    jitter=self.pace_jitter,
                    seed=self.stealth_seed,
                )
            return target

        make().close()  # fail fast on a bad URL, TLS files or class names, before any run
        return make

    def open(self, fp: Fingerprint, path: Path | None) -> Target:
        """The target of a one-shot command: the model file ``path``, or the ``--url`` endpoint."""
        from nnseal.targets import open_target

        if self.url and path is not None:
            raise NnsealError("give either TARGET (a model file) or --url, not both")
        if self.url:
            return self.target_factory(fp)()
        if path is None:
            raise NnsealError("missing TARGET (a model file) or --url")
        return open_target(path)

    def _decoys(self, fp: Fingerprint) -> np.ndarray:
        if self.decoy_data:
            from nnseal.data import load_dataset

            return load_dataset(self.decoy_data, self.decoy_root, "test").x
        if fp.seeds is None:
            raise NnsealError("--stealth needs --decoys: this file stores no seeds")
        return fp.seeds


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
    click.option(
        "--send",
        type=click.Choice(INPUT_FORMATS),
        default="array",
        show_default=True,
        help="How inputs travel: numbers, or base64 PNG files of the data's integer pixels "
        "(V2 BYTES, TF Serving b64, TorchServe data, json $inputs); lossless, JPEG is not.",
    ),
    click.option(
        "--returns",
        type=click.Choice(ANSWER_KINDS),
        default="probabilities",
        show_default=True,
        help="What the API's answer rows are.",
    ),
    click.option(
        "--class-names", help="--returns label-names: comma-separated names, or @FILE (one per line)."
    ),
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
    click.option("--decoys", "decoy_data", help="Dataset for decoys (default: the file's seeds)."),
    click.option("--decoy-root", type=click.Path(path_type=Path), help="Folder holding the decoy dataset."),
    click.option("--decoy-ratio", default=1.0, show_default=True, help="Decoys per query."),
    click.option("--pace", default=0.0, show_default=True, help="Seconds between stealth requests."),
    click.option("--pace-jitter", default=0.0, show_default=True, help="Random ± added to --pace."),
    click.option("--stealth-seed", type=int, help="Seed for shuffling, decoys and jitter."),
]
_FIELDS = [f.name for f in dataclasses.fields(HttpConfig)]


def http_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the remote-target options to a command; it receives them as ``http: HttpConfig``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        http = HttpConfig(**{name: kwargs.pop(name) for name in _FIELDS})
        return f(*args, http=http, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


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
