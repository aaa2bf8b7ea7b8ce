"""Periodic verification of a deployed model, with optional Prometheus metrics.

:func:`watch` verifies a fresh target every ``interval`` seconds and yields one JSON-ready record
per run; it stops after the first *tampered* verdict (a model that was swapped stays swapped, and
the operator must act) or after ``max_runs``. An *inconclusive* run — server down, malformed
answers — is reported and watching goes on. Many targets at once: :mod:`nnseal.fleet`.

Example::

    for record in watch(fp, lambda: HttpTarget(url, V2Protocol("digits")), interval=300):
        print(json.dumps(record))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from nnseal.fingerprint import Fingerprint
from nnseal.ledger import Ledger
from nnseal.targets.base import Target
from nnseal.verification import IntegrityVerdict, Status, verify


class WatchMetrics:
    """Prometheus metrics of a watch, served on ``127.0.0.1:port`` (never on other interfaces).

    With ``per_target`` (a fleet, :mod:`nnseal.fleet`) every series carries a ``target`` label, so one
    endpoint serves them all; :meth:`record` then needs the target's name.
    """

    def __init__(self, port: int, addr: str = "127.0.0.1", *, per_target: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, start_http_server

        target = ["target"] if per_target else []
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "nnseal_watch_runs", "Verifications run, by verdict", [*target, "status"], registry=self.registry
        )
        self.verdict = Enum(
            "nnseal_watch_verdict",
            "Verdict of the latest verification",
            target,
            states=[s.value for s in Status],
            registry=self.registry,
        )
        self.queries = Counter(
            "nnseal_watch_queries", "Inputs sent to the target", target, registry=self.registry
        )
        self.failed = Counter(
            "nnseal_watch_failed_queries",
            "Queries without a valid answer, by cause",
            [*target, "kind"],
            registry=self.registry,
        )
        self.duration = Gauge(
            "nnseal_watch_last_duration_seconds",
            "Wall time of the latest verification",
            target,
            registry=self.registry,
        )
        self.last = Gauge(
            "nnseal_watch_last_run_timestamp_seconds",
            "Unix time the latest verification ended",
            target,
            registry=self.registry,
        )
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    def record(self, verdict: IntegrityVerdict, seconds: float, target: str | None = None) -> None:
        key = () if target is None else (target,)

        def series(metric: Any) -> Any:  # an unlabelled metric is its own only series
            return metric.labels(*key) if key else metric

        self.runs.labels(*key, verdict.status.value).inc()
        series(self.verdict).state(verdict.status.value)
        series(self.queries).inc(verdict.queries_used)
        for kind, n in verdict.problems.items():
            self.failed.labels(*key, kind).inc(n)
        series(self.duration).set(seconds)
        series(self.last).set_to_current_time()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def verify_fresh(
    fingerprint: Fingerprint, make_target: Callable[[], Target], spec: str | None = None, **verify_kwargs: Any
) -> IntegrityVerdict:
    """Verify a target built for this run alone, so each run's query count and budget stand alone."""
    target = make_target()
    try:
        return verify(fingerprint, target, spec, **verify_kwargs)
    finally:
        target.close()


def run_record(run: int, verdict: IntegrityVerdict, seconds: float) -> dict[str, Any]:
    """The JSON line of one run: its number, the time it ended, its wall seconds and the verdict."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"run": run, "time": now, "duration_s": round(seconds, 3), **verdict.to_dict()}


def watch(
    fingerprint: Fingerprint,
    make_target: Callable[[], Target],
    spec: str | None = None,
    *,
    interval: float = 60.0,
    max_runs: int | None = None,
    metrics: WatchMetrics | None = None,
    sleep: Callable[[float], None] = time.sleep,
    one_time: int | None = None,
    ledger: Ledger | None = None,
    reuse: bool = False,
    **verify_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"run", "time", "duration_s", **verdict}`` per verification, ``interval`` seconds
    apart (start to start); stop after a *tampered* verdict or ``max_runs`` runs.

    ``make_target`` builds a fresh target per run (:func:`verify_fresh`).
    With ``one_time``, each run sends that many queries never sent before (``ledger``, default the
    key folder's); watching stops with an error when too few fresh ones remain, unless ``reuse``.
    ``verify_kwargs`` go to :func:`~nnseal.verification.verify` (budget, batch_size …).
    """
    if interval < 0:
        raise ValueError(f"interval must be >= 0, got {interval}")
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")
    run = 0
    while max_runs is None or run < max_runs:
        run += 1
        start = time.monotonic()
        indices = None
        if one_time is not None:
            ledger = ledger or Ledger()
            indices = ledger.draw(fingerprint, one_time, reuse=reuse)
        verdict = verify_fresh(fingerprint, make_target, spec, indices=indices, **verify_kwargs)
        if ledger is not None:
            verdict.fresh_remaining = ledger.remaining(fingerprint)
        seconds = time.monotonic() - start
        if metrics is not None:
            metrics.record(verdict, seconds)
        yield run_record(run, verdict, seconds)
        if verdict.status is Status.TAMPERED:
            return
        if max_runs is None or run < max_runs:
            sleep(max(0.0, interval - (time.monotonic() - start)))
