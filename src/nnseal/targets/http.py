"""A model behind an HTTP prediction API, queried through httpx with the care a flaky network needs
and the suspicion a hostile server deserves.

Batches go out in requests of at most ``max_batch_size`` inputs, ``concurrency`` at a time.
Connection errors, timeouts and 5xx answers are retried with exponential backoff and jitter; a 429
waits as long as its ``Retry-After`` asks (up to ``max_retry_after``). A request that still fails,
or answers with malformed JSON, raises :class:`~nnseal.errors.TargetError` with a ``kind``, which
``verify`` turns into *inconclusive* — never *intact*.

The server being verified may be the adversary, so every answer is bounded:

- **time**: each attempt (connect, send, the whole answer) gets ``timeout`` seconds in all, not per
  read, so a server trickling bytes cannot stretch it (``timeout``);
- **bytes**: at most ``max_response_bytes`` as received and again after decompression (default:
  :func:`response_limit`, 1 MiB + 256 bytes per expected value); a larger ``Content-Length`` is
  refused before reading (``response-too-large``). Only gzip and deflate are accepted, inflated here
  in bounded steps; any other ``Content-Encoding`` is ``unsupported-encoding``, a corrupt stream
  ``bad-encoding``;
- **JSON**: parsed by :func:`nnseal._io.parse_json` (size and 64-deep nesting limits), and every
  shape, type or number a protocol cannot use is a ``TargetError`` (``malformed-json``,
  ``malformed-response``, ``wrong-shape``, ``nan``), never another exception.

So memory stays near ``concurrency × max_response_bytes`` (times the JSON objects' overhead) whatever
the server sends.

``queries`` counts every input sent over the wire, retries included, so it is what the server saw;
``max_queries`` caps it. Credentials (token, headers, client key) never appear in ``describe``,
``repr``, ``stats`` or error messages; two sources of credentials at once (a bearer token, user info
in the URL, an ``Authorization`` header) are refused rather than one silently winning.

Example::

    from nnseal.targets.http import HttpTarget, V2Protocol
    target = HttpTarget("http://127.0.0.1:8080", V2Protocol("digits"), returns="logits")
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
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpcore
import httpx
import numpy as np

from nnseal._io import parse_json
from nnseal.errors import TargetError
from nnseal.targets.base import Target
from nnseal.targets.protocols import (
    AnswerAdapter,
    AnswerKind,
    JsonProtocol,
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

RESPONSE_BASE_BYTES = 1 << 20
"""Room in every answer for what surrounds the values: V2's verbose metadata and extra outputs, a
JSON API's envelope (real ones take a few hundred bytes)."""
BYTES_PER_VALUE = 256
"""Room per expected value (input × class): a float64 prints in at most 24 characters plus a
separator, a TorchServe ``"label": score`` entry with a 200-character label in about 230."""
DEFAULT_CLASSES = 1000
"""Classes assumed per answer when neither ``num_classes`` nor class names say (ImageNet's count)."""
ENCODINGS = {"identity": None, "gzip": 31, "x-gzip": 31, "deflate": 15}
"""The ``Content-Encoding`` values accepted, with their zlib ``wbits`` (deflate is the zlib format)."""


def response_limit(n_inputs: int, n_classes: int = DEFAULT_CLASSES) -> int:
    """Default cap on one answer's bytes: 1 MiB plus 256 bytes per expected value — e.g. 1.05 MiB for
    20 digits inputs, 17 MiB for 64 ImageNet ones: ten times what an honest answer takes."""
    return RESPONSE_BASE_BYTES + BYTES_PER_VALUE * n_inputs * n_classes


def _too_large(where: str, what: str, limit: int) -> TargetError:
    return TargetError(
        f"{where}: answer {what} more than the {limit} bytes accepted (max_response_bytes)",
        "response-too-large",
    )


class _Inflater:
    """Undoes a ``Content-Encoding`` chunk by chunk, holding at most ``limit`` decoded bytes: zlib's
    ``max_length`` stops a bomb at the limit, where a whole-chunk decoder would inflate 64 KiB of it
    to 64 MB in one go."""

    def __init__(self, encoding: str, limit: int, where: str) -> None:
        name = encoding.strip().lower() or "identity"
        if name not in ENCODINGS:
            raise TargetError(
                f"{where}: answer has unsupported Content-Encoding {encoding[:40]!r}", "unsupported-encoding"
            )
        wbits = ENCODINGS[name]
        self._z = None if wbits is None else zlib.decompressobj(wbits)
        self.room, self.where, self.limit = limit, where, limit
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        try:
            out = data if self._z is None else self._z.decompress(data, self.room + 1)
        except zlib.error:
            raise TargetError(f"{self.where}: answer's compressed data is corrupt", "bad-encoding") from None
        if len(out) > self.room:
            raise _too_large(self.where, "inflates to", self.limit)
        self.room -= len(out)
        self.parts.append(out)

    def finish(self) -> bytes:
        if self._z is not None and (not self._z.eof or self._z.unused_data):
            raise TargetError(
                f"{self.where}: answer's compressed data is truncated or padded", "bad-encoding"
            )
        return b"".join(self.parts)


_current = threading.local()
"""``deadline``: the monotonic time by which the request attempt running in this thread must end."""


def _capped(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of this thread's attempt; ``late`` once nothing is."""
    deadline = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late("request attempt past its deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes wait at most until the attempt's deadline — even while a
    server trickles its headers, so an abandoned attempt ends then, not when the server relents."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = _capped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _capped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(super().connect_tcp(host, port, timeout, local_address, socket_options))


class _Transport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose network calls keep to the attempt's deadline
    (httpx offers no public way to choose the pool's network backend)."""

    def __init__(self, tls: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=tls, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            network_backend=_DeadlineBackend(),
        )


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

    It counts every input it sends, retries included (``counts_sent``).

    Args:
        url: base URL (``http://host:port``), without the protocol's path; user info in it is sent as
            basic auth and its query string with every request (both kept out of reports).
        protocol: a :class:`~nnseal.targets.protocols.Protocol` (V2, TorchServe, TF Serving, JSON).
        returns: what the answer rows are: probabilities, logits, labels or label-names.
        class_names: class names in index order, for ``label-names``.
        max_batch_size: most inputs per request (default 64; the protocol may force fewer).
        concurrency: requests in flight at once.
        timeout: seconds per request attempt in all: connect, send and the whole answer.
        retries: extra attempts after a connection error, timeout, 5xx or 429.
        backoff, max_backoff: first and largest retry delay in seconds; each delay doubles, with jitter.
        max_retry_after: a 429 asking for a longer wait than this fails the request.
        max_queries: most inputs to send in total (retries included); beyond it requests fail.
        max_response_bytes: most bytes of one answer, as received and decompressed (default:
            :func:`response_limit` of the request's inputs and ``num_classes``).
        num_classes: classes per answer, to size the default byte cap (default: the number of class
            names, else 1000).
        token: bearer token (default: the ``NNSEAL_HTTP_TOKEN`` environment variable); not together
            with user info in the URL or an ``Authorization`` header.
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
        returns: AnswerKind = "probabilities",
        class_names: Sequence[str] | None = None,
        max_batch_size: int = 64,
        concurrency: int = 1,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_retry_after: float = 30.0,
        max_queries: int | None = None,
        max_response_bytes: int | None = None,
        num_classes: int | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(max_queries=max_queries)
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
        if max_response_bytes is not None and max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        given = [
            what
            for what, present in (
                ("a bearer token", bool(token)),
                ("user:password in the URL", bool(base.username or base.password)),
                ("an Authorization header", any(k.lower() == "authorization" for k in headers or {})),
            )
            if present
        ]
        if len(given) > 1:  # one would silently replace the other
            names = f"{', '.join(given[:-1])} or {given[-1]}"
            raise ValueError(f"give {names}, not {'both' if len(given) == 2 else 'several'}")
        self.url, self.protocol = redact_url(base), protocol
        self.adapter = AnswerAdapter(returns, class_names)
        self.provides = self.adapter.provides
        self.max_batch_size = min(max_batch_size, protocol.max_batch or max_batch_size)
        self.concurrency, self.retries = concurrency, retries
        self.backoff, self.max_backoff, self.max_retry_after = backoff, max_backoff, max_retry_after
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.num_classes = num_classes or (len(class_names) if class_names else None)
        self.requests = self.retried = self.rate_limited = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        # gzip and deflate are inflated here under the byte cap; anything else is refused
        all_headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip, deflate",
            **(headers or {}),
        }
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        tls = _ssl_context(
            verify_tls,
            ca_bundle or os.environ.get(CA_BUNDLE_ENV),
            client_cert or os.environ.get(CLIENT_CERT_ENV),
            client_key or os.environ.get(CLIENT_KEY_ENV),
        )
        # room for an abandoned attempt per slot, which holds its connection until it stops
        limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(
            base_url=httpx.URL(self.url),
            params=base.params,  # an API key in the query string goes with every request
            auth=(base.username, base.password) if base.username else None,
            headers=all_headers,
            timeout=timeout,
            verify=tls,  # for proxies from the environment, which get httpx's own transport
            limits=limits,
            transport=_Transport(tls, limits),
        )

    counts_sent = True

    def __repr__(self) -> str:
        return (
            f"HttpTarget({self.url!r}, {self.protocol.name}, returns={self.adapter.kind!r}, "
            f"max_batch_size={self.max_batch_size}, concurrency={self.concurrency}, retries={self.retries})"
        )

    def describe(self) -> str:
        return f"{self.protocol.name} {self.url.rstrip('/')}{self.protocol.path()} ({self.adapter.kind})"

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
        if len({p.shape[1:] for p in parts}) > 1:
            raise TargetError("requests of one batch were answered with different widths", "wrong-shape")
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _request(self, x: np.ndarray) -> np.ndarray:
        body = self._post(self.protocol.encode(x), len(x))
        return self.adapter(self.protocol.decode(body, len(x)))

    def _reserve(self, n: int) -> None:
        """Count ``n`` inputs about to be sent (each attempt: the server sees retries too)."""
        self.count(n)
        with self._lock:
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
        limit = self.max_response_bytes or response_limit(n, self.num_classes or DEFAULT_CLASSES)
        error = TargetError(f"{where}: no attempt made", "error")
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
            self._reserve(n)
            wait = self._delay(attempt)
            try:
                status, headers, data = self._attempt(path, payload, limit, where)
            except httpx.TimeoutException:
                error = TargetError(f"{where}: no answer within the timeout", "timeout")
            except httpx.TransportError as e:
                error = TargetError(f"{where}: connection failed ({e.__class__.__name__})", "connection")
            else:
                if 200 <= status < 300:
                    try:
                        return parse_json(data, max_bytes=limit, what="response")
                    except ValueError as e:
                        raise TargetError(f"{where}: {e}", "malformed-json") from None
                if status == 429:
                    with self._lock:
                        self.rate_limited += 1
                    asked = retry_after_seconds(headers.get("Retry-After"))
                    if asked is not None and asked > self.max_retry_after:
                        raise TargetError(
                            f"{where}: rate limited, asked to wait {asked:.0f} s > {self.max_retry_after:g}",
                            "rate-limited",
                        )
                    error = TargetError(f"{where}: rate limited (HTTP 429)", "rate-limited")
                    wait = max(wait, asked or 0.0)
                elif status >= 500:
                    error = TargetError(f"{where}: server error HTTP {status}", f"http-{status}")
                else:
                    raise TargetError(f"{where}: HTTP {status}", f"http-{status}")
            if attempt < self.retries:
                time.sleep(wait)
        raise TargetError(f"{error} (after {self.retries + 1} attempts)", error.kind)

    def _attempt(self, path: str, payload: bytes, limit: int, where: str) -> tuple[int, httpx.Headers, bytes]:
        """One request, answered in full within ``timeout`` or given up (``httpx.TimeoutException``).

        httpx's timeouts bound each read, not the exchange, so a server sending a byte now and then
        could hold a request for ever. Here every network call of the attempt waits at most until its
        deadline (:class:`_DeadlineStream`), and the attempt runs in a daemon thread (a pool's workers
        would be joined at exit) that we stop waiting for at the deadline, which also covers what no
        socket timeout bounds: name resolution, a TLS handshake fed a byte at a time. An abandoned
        attempt ends at its next network call, holding at most ``limit`` bytes; what it got is dropped.
        """
        deadline = time.monotonic() + self.timeout
        outcome: list[Any] = []

        def run() -> None:
            _current.deadline = deadline
            try:
                outcome.append(self._fetch(path, payload, limit, where, deadline))
            except Exception as e:  # handed to the caller, or dropped with an abandoned attempt
                outcome.append(e)

        worker = threading.Thread(target=run, name="nnseal-http", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if not outcome:
            raise httpx.TimeoutException("no complete answer by the deadline")
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]  # type: ignore[no-any-return]

    def _fetch(
        self, path: str, payload: bytes, limit: int, where: str, deadline: float
    ) -> tuple[int, httpx.Headers, bytes]:
        """Send, and read the answer as raw bytes under the cap (the body only of a 2xx answer)."""
        with self._client.stream("POST", path, content=payload) as r:
            if not r.is_success:
                return r.status_code, r.headers, b""
            declared = r.headers.get("Content-Length", "")
            if len(declared) > 18 or (declared.isdigit() and int(declared) > limit):
                raise _too_large(where, f"announces {declared[:40]} bytes,", limit)
            inflater = _Inflater(r.headers.get("Content-Encoding", ""), limit, where)
            received = 0
            for chunk in r.iter_raw():
                received += len(chunk)
                if received > limit:
                    raise _too_large(where, "runs to", limit)
                if time.monotonic() > deadline:  # for proxies from the environment, not on _Transport
                    raise httpx.TimeoutException("answer still coming at the deadline")
                inflater.feed(chunk)
            return r.status_code, r.headers, inflater.finish()


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
