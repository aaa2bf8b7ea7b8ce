"""Watching a fleet of deployed models: each target on its own schedule, at most ``parallel`` of them
verified at a time, one JSON-ready record per run.

Policy, per target (as :func:`nnseal.watch.watch`) and for the whole fleet:

- a target is verified every ``interval`` seconds, start to start;
- after ``n`` inconclusive runs in a row (server down, timeouts, malformed answers, a run that raised)
  the next one starts ``interval × 2**n`` after the last, at most ``BACKOFF_CAP × interval``, so a
  failing server is not hammered; its first conclusive run puts it back on its interval;
- a *tampered* target is no longer verified: a swapped model stays swapped, and the operator must act;
- a run that raises is an inconclusive verdict naming the exception, and a hanging one holds only its
  own worker (the HTTP timeouts bound it), so no target stops the others.

:func:`fleet_status` sums a fleet up: tampered if any target ever was, else inconclusive if any
target's latest run was, else intact.

Example::

    targets = [FleetTarget("shop", fp, lambda: HttpTarget(url, V2Protocol("digits")), interval=300)]
    for record in watch_fleet(targets, parallel=8):
        print(json.dumps(record))
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from nnseal.fingerprint import Fingerprint
from nnseal.targets.base import Target
from nnseal.verification import IntegrityVerdict, Status
from nnseal.watch import WatchMetrics, run_record, verify_fresh

BACKOFF_CAP = 8.0
"""Longest wait between the starts of two runs of a failing target, in intervals."""


@dataclass(frozen=True)
class FleetTarget:
    """One target of a fleet: its name (unique; the ``target`` label of its metrics), the fingerprint
    it must match, how to reach it (a fresh target per run), and how often and how much to query it."""

    name: str
    fingerprint: Fingerprint
    make_target: Callable[[], Target]
    interval: float = 60.0
    spec: str | None = None
    budget: int | None = None
    batch_size: int | None = None


def backoff_delay(interval: float, failures: int) -> float:
    """Seconds from a run's start to the next one's, after ``failures`` inconclusive runs in a row."""
    return interval * min(2.0**failures, BACKOFF_CAP)


def fleet_status(latest: Iterable[Status]) -> Status:
    """The fleet's verdict from each target's latest: tampered if any, else inconclusive if any, else
    intact (a tampered target is never run again, so its latest stays tampered)."""
    seen = set(latest)
    return next((s for s in (Status.TAMPERED, Status.INCONCLUSIVE) if s in seen), Status.INTACT)


def watch_fleet(
    targets: Sequence[FleetTarget],
    *,
    parallel: int = 8,
    max_runs: int | None = None,
    metrics: WatchMetrics | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"name", "run", "time", "duration_s", **verdict}`` per run, as runs end; stop once
    every target is tampered or has had ``max_runs`` runs (without ``max_runs``: once all are tampered).

    ``metrics`` (made with ``per_target=True``) records every run under its target's name.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")
    if len({t.name for t in targets}) < len(targets):
        raise ValueError("fleet target names must be unique")
    for t in targets:
        if not (0 <= t.interval < math.inf):
            raise ValueError(f"target {t.name!r}: interval must be a finite number >= 0, got {t.interval}")
    now = time.monotonic()
    due = [(now, i) for i in range(len(targets))]  # a heap of (when the next run may start, target)
    runs, failures = [0] * len(targets), [0] * len(targets)
    running: dict[Future[tuple[IntegrityVerdict, float, float]], int] = {}
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="nnseal-fleet")
    try:
        while due or running:
            while due and len(running) < parallel and due[0][0] <= time.monotonic():
                i = heapq.heappop(due)[1]
                runs[i] += 1
                running[pool.submit(_run, targets[i])] = i
            room = len(running) < parallel
            timeout = max(0.0, due[0][0] - time.monotonic()) if due and room else None
            if not running:  # wait() returns at once on no futures: sleep until the next is due
                time.sleep(timeout or 0.0)
                continue
            for future in wait(running, timeout, FIRST_COMPLETED).done:
                i = running.pop(future)
                t, (verdict, started, seconds) = targets[i], future.result()
                if metrics is not None:
                    metrics.record(verdict, seconds, t.name)
                yield {"name": t.name, **run_record(runs[i], verdict, seconds)}
                if verdict.status is Status.TAMPERED or (max_runs is not None and runs[i] >= max_runs):
                    continue
                failures[i] = failures[i] + 1 if verdict.status is Status.INCONCLUSIVE else 0
                heapq.heappush(due, (started + backoff_delay(t.interval, failures[i]), i))
    finally:  # on an interrupt, runs in flight end within their timeouts; none starts
        pool.shutdown(wait=False, cancel_futures=True)


def _run(t: FleetTarget) -> tuple[IntegrityVerdict, float, float]:
    """One verification of ``t``: its verdict, when it started and its wall seconds; never raises."""
    start = time.monotonic()
    try:
        verdict = verify_fresh(t.fingerprint, t.make_target, t.spec, budget=t.budget, batch_size=t.batch_size)
    except Exception as e:  # whatever one target does must not stop the others
        verdict = _failed(t, e)
    return verdict, start, time.monotonic() - start


def _failed(t: FleetTarget, error: Exception) -> IntegrityVerdict:
    """The inconclusive verdict of a run that raised before any answer was compared."""
    fp = t.fingerprint
    message = " ".join(str(error).split())[:300]
    return IntegrityVerdict(
        status=Status.INCONCLUSIVE,
        reason=f"run failed ({type(error).__name__}: {message})",
        spec=t.spec or fp.specs[0],
        model_id=fp.model_id,
        target=t.name,
        queries_total=len(fp),
        queries_used=0,
        answered=0,
        problems={"error": len(fp)},
        signature=fp.signature.to_dict(),
        serving=list(fp.serving),
    )
