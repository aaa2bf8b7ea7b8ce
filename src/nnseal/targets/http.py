"""A model behind an HTTP prediction API, queried through httpx with the care a flaky network needs.

Batches go out in requests of at most ``max_batch_size`` inputs, ``concurrency`` at a time.
Connection errors, timeouts and 5xx answers are retried with exponential backoff and jitter; a 429
waits as long as its ``Retry-After`` asks (up to ``max_retry_after``). A request that still fails,
or answers with malformed JSON, raises :class:`~nnseal.errors.TargetError` with a ``kind``, which
``verify`` turns into *inconclusive* — never *intact*.

``queries`` counts every input sent over the wire, retries included, so it is what the server saw;
``max_queries`` caps it. Credentials (token, headers, client key) never appear in ``describe``,
``repr``, ``stats`` or error messages.

Example::

    from nnseal.targets.http import HttpTarget, V2Protocol
    target = HttpTarget("http://127.0.0.1:8080", V2Protocol("digits"), output="logits")
    verdict = verify(fingerprint, target)
"""

from __future__ import annotations

import email.utils
import functools
import json
import os
import random
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from nnseal.errors import TargetError
from nnseal.targets.base import Target
from nnseal.targets.protocols import (
    JsonProtocol,
    Output,
    OutputAdapter,
    Protocol,
    TFServingProtocol,
    TorchServeProtocol,
    V2Protocol,
)

TOKEN_ENV = "NNSEAL_HTTP_TOKEN"
"""Bearer token sent as ``Authorization`` when no token is given."""
CA_BUNDLE_ENV = "NNSEAL_CA_BUNDLE"
CLIENT_CERT_ENV = "NNSEAL_CLIENT_CERT"
CLIENT_KEY_ENV = "NNSEAL_CLIENT_KEY"
PROTOCOLS = ("v2", "torchserve", "tfserving", "json")


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without user info and query string, where credentials tend to hide."""
    u = httpx.URL(str(url))
    return str(u.copy_with(username=None, password=None, query=None, fragment=None))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: a number (decimals accepted) or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@functools.lru_cache(maxsize=16)
def _ssl_context(verify: bool, ca_bundle: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Built once per settings: loading a CA bundle takes a noticeable fraction of a second."""
    try:
        ctx = ssl.create_default_context(cafile=ca_bundle)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TargetError(
            f"TLS settings: cannot load certificate or CA bundle ({e.__class__.__name__})"
        ) from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class HttpTarget(Target):
    """A classifier behind ``url`` spoken to through ``protocol``; see the module docstring.

    Args:
        url: base URL (``http://host:port``), without the protocol's path; user info in it is sent as
            basic auth and its query string with every request (both kept out of reports).
        protocol: a :class:`~nnseal.targets.protocols.Protocol` (V2, TorchServe, TF Serving, JSON).
        output: what the answer rows are: probabilities, logits, labels or label-names.
        class_names: class names in index order, for ``label-names``.
        max_batch_size: most inputs per request (default 64; the protocol may force fewer).
        concurrency: requests in flight at once.
        timeout: seconds per request (connect, read and write each).
        retries: extra attempts after a connection error, timeout, 5xx or 429.
        backoff, max_backoff: first and largest retry delay in seconds; each delay doubles, with jitter.
        max_retry_after: a 429 asking for a longer wait than this fails the request.
        max_queries: most inputs to send in total (retries included); beyond it requests fail.
        token: bearer token (default: the ``NNSEAL_HTTP_TOKEN`` environment variable).
        headers: extra request headers (e.g. an API key); never shown.
        verify_tls, ca_bundle, client_cert, client_key: TLS settings (CA bundle and client
            certificate default to ``NNSEAL_CA_BUNDLE``, ``NNSEAL_CLIENT_CERT``, ``NNSEAL_CLIENT_KEY``).
        seed: seeds the retry jitter.
    """

    def __init__(
        self,
        url: str,
        protocol: Protocol,
        *,
        output: Output = "probabilities",
        class_names: Sequence[str] | None = None,
        max_batch_size: int = 64,
        concurrency: int = 1,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_retry_after: float = 30.0,
        max_queries: int | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        try:
            base = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ValueError(f"invalid URL: {e}") from None
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"URL must be http(s)://host[:port], got {redact_url(url)!r}")
        for name, value, low in (
            ("max_batch_size", max_batch_size, 1),
            ("concurrency", concurrency, 1),
            ("retries", retries, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if timeout <= 0 or backoff < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ValueError("timeout must be > 0 and backoff, max_backoff, max_retry_after >= 0")
        if max_queries is not None and max_queries < 0:
            raise ValueError(f"max_queries must be >= 0, got {max_queries}")
        self.url, self.protocol = redact_url(base), protocol
        self.adapter = OutputAdapter(output, class_names)
        self.provides = self.adapter.provides
        self.max_batch_size = min(max_batch_size, protocol.max_batch or max_batch_size)
        self.concurrency, self.retries = concurrency, retries
        self.backoff, self.max_backoff, self.max_retry_after = backoff, max_backoff, max_retry_after
        self.max_queries = max_queries
        self.requests = self.retried = self.rate_limited = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        tls = _ssl_context(
            verify_tls,
            ca_bundle or os.environ.get(CA_BUNDLE_ENV),
            client_cert or os.environ.get(CLIENT_CERT_ENV),
            client_key or os.environ.get(CLIENT_KEY_ENV),
        )
        self._client = httpx.Client(
            base_url=httpx.URL(self.url),
            params=base.params,  # an API key in the query string goes with every request
            auth=(base.username, base.password) if base.username else None,
            headers=all_headers,
            timeout=timeout,
            verify=tls,
            limits=httpx.Limits(max_connections=concurrency),
        )

    def __repr__(self) -> str:
        return (
            f"HttpTarget({self.url!r}, {self.protocol.name}, output={self.adapter.output!r}, "
            f"max_batch_size={self.max_batch_size}, concurrency={self.concurrency}, retries={self.retries})"
        )

    def describe(self) -> str:
        return f"{self.protocol.name} {self.url.rstrip('/')}{self.protocol.path()} ({self.adapter.output})"

    def stats(self) -> dict[str, Any]:
        return {
            "inputs_sent": self.queries,
            "requests": self.requests,
            "retries": self.retried,
            "rate_limited": self.rate_limited,
        }

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, x: np.ndarray) -> np.ndarray:
        # Not the base class's count of len(x): every input actually sent is counted in _post.
        return self._predict(np.ascontiguousarray(x, dtype=np.float32))

    def _predict(self, x: np.ndarray) -> np.ndarray:
        chunks = [x[i : i + self.max_batch_size] for i in range(0, len(x), self.max_batch_size)]
        if self.concurrency == 1 or len(chunks) == 1:
            parts = [self._request(c) for c in chunks]
        else:
            stop = threading.Event()

            def run(c: np.ndarray) -> np.ndarray:
                if stop.is_set():  # another request failed: the whole batch fails, send no more
                    raise TargetError("cancelled after another request failed", "cancelled")
                try:
                    return self._request(c)
                except TargetError:
                    stop.set()
                    raise

            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = [pool.submit(run, c) for c in chunks]
            errors = [f.exception() for f in futures if f.exception() is not None]
            real = [e for e in errors if not (isinstance(e, TargetError) and e.kind == "cancelled")]
            if errors:
                raise (real or errors)[0]  # type: ignore[misc]
            parts = [f.result() for f in futures]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _request(self, x: np.ndarray) -> np.ndarray:
        body = self._post(self.protocol.encode(x), len(x))
        return self.adapter(self.protocol.decode(body, len(x)))

    def _reserve(self, n: int) -> None:
        """Count ``n`` inputs about to be sent, or refuse if that would exceed ``max_queries``."""
        with self._lock:
            if self.max_queries is not None and self.queries + n > self.max_queries:
                raise TargetError(f"query budget of {self.max_queries} inputs exhausted", "budget")
            self.queries += n
            self.requests += 1

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half the capped delay plus a random part up to the other half."""
        cap = min(self.max_backoff, self.backoff * 2**attempt)
        with self._lock:
            return cap / 2 + self._rng.uniform(0, cap / 2)

    def _post(self, body: Any, n: int) -> Any:
        path = self.protocol.path()
        where = f"{self.url.rstrip('/')}{path}"
        payload = json.dumps(body).encode()
        error = TargetError(f"{where}: no attempt made", "error")
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
            self._reserve(n)
            wait = self._delay(attempt)
            try:
                r = self._client.post(path, content=payload)
            except httpx.TimeoutException:
                error = TargetError(f"{where}: no answer within the timeout", "timeout")
            except httpx.TransportError as e:
                error = TargetError(f"{where}: connection failed ({e.__class__.__name__})", "connection")
            else:
                if r.is_success:
                    try:
                        return r.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise TargetError(f"{where}: response is not valid JSON", "malformed-json") from None
                if r.status_code == 429:
                    with self._lock:
                        self.rate_limited += 1
                    asked = retry_after_seconds(r.headers.get("Retry-After"))
                    if asked is not None and asked > self.max_retry_after:
                        raise TargetError(
                            f"{where}: rate limited, asked to wait {asked:.0f} s > {self.max_retry_after:g}",
                            "rate-limited",
                        )
                    error = TargetError(f"{where}: rate limited (HTTP 429)", "rate-limited")
                    wait = max(wait, asked or 0.0)
                elif r.status_code >= 500:
                    error = TargetError(
                        f"{where}: server error HTTP {r.status_code}", f"http-{r.status_code}"
                    )
                else:
                    raise TargetError(f"{where}: HTTP {r.status_code}", f"http-{r.status_code}")
            if attempt < self.retries:
                time.sleep(wait)
        raise TargetError(f"{error} (after {self.retries + 1} attempts)", error.kind)


def make_protocol(
    name: str,
    model: str | None = None,
    *,
    version: str | None = None,
    input_name: str = "input",
    output_name: str | None = None,
    layout: str = "nchw",
    path: str | None = None,
    template: str | None = None,
    response_path: str | None = None,
) -> Protocol:
    """The protocol called ``name`` (v2, torchserve, tfserving, json) configured from flat options."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    if name == "json":
        if template is None or response_path is None:
            raise ValueError("protocol json needs a request template and a response path")
        return JsonProtocol(path or "/", template=template, response_path=response_path)
    if not model:
        raise ValueError(f"protocol {name} needs a model name")
    if name == "v2":
        return V2Protocol(model, version=version, input_name=input_name, output_name=output_name)
    if name == "torchserve":
        return TorchServeProtocol(model, version=version)
    return TFServingProtocol(model, version=version, layout=layout, output_name=output_name)  # type: ignore[arg-type]
