"""Where a sweep's independent units run, and the on-disk cache that lets a killed run resume.

A unit is one method's pool, one serving setup's false-alarm check, or one attacked model: an
attack run with one seed, then its answers on every pool. Units run in this process (the default)
or as Dask tasks — ``local:N`` starts N worker processes on this machine, ``tcp://HOST:PORT`` uses
a running Dask scheduler. A unit's only randomness is its own seed and it computes with the same
number of torch threads wherever it runs, so where it ran never changes the results. Attacked
models are cached under ``out/cache``, one file per unit named by a hash of everything that
determines it: a rerun computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import torch
from tqdm.auto import tqdm

import nnseal
from nnseal._io import atomic_write_bytes
from nnseal.attacks import run_attack
from nnseal.errors import NnsealError
from nnseal.methods import Method, Pool
from nnseal.models import model_id

if TYPE_CHECKING:
    from dask.distributed import Client, Future
    from torch import nn

    from nnseal.data import Dataset

SCHEDULERS = "local:N (N worker processes on this machine) or tcp://HOST:PORT (a running Dask scheduler)"
CHUNK = 32
"""Most attacked models per Dask task: thousands of units would otherwise cost a task each."""
RETRIES = 2
"""Times Dask reruns a failed task before its units are reported as failed."""
SHOWN_FAILURES = 5
"""Failed units named in the error (a broken attack fails every one of its seeds)."""
WORKER_ENVIRONMENT = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
"""Dask's default (65536) returns freed memory to the kernel at once: torch's buffers then cost
system time, and sensitive samples took twice as long (measured on digits)."""


class UnitFailed(NnsealError):
    """Units that still failed after their retries; the finished ones are in the cache."""


def parse_scheduler(text: str) -> int | str:
    """``local:N`` → N, the workers to start here; ``tcp://HOST:PORT`` → that address."""
    local = re.fullmatch(r"local:([0-9]+)", text)
    if local and int(local[1]) >= 1:
        return int(local[1])
    url = urlsplit(text)
    try:
        port = url.port
    except ValueError:  # not a number, or out of range
        port = None
    if url.scheme == "tcp" and url.hostname and port and not (url.path or url.query or url.username):
        return text
    raise NnsealError(f"scheduler {text!r}: expected {SCHEDULERS}")


@contextmanager
def dask_client(scheduler: str) -> Iterator[Client]:
    """A client of ``scheduler``, whose workers must run one thread each (tasks in one process would
    share torch's thread count and the model); ``local:N`` starts N such worker processes that, like
    their scheduler, listen on 127.0.0.1 only — no dashboard; the scheduler's HTTP server (health
    checks, metrics), which always runs, on a free local port — and keep their scratch files (every
    server's, the scheduler's too) in a temporary folder removed afterwards."""
    import dask
    from dask.distributed import Client, LocalCluster

    target = parse_scheduler(scheduler)
    if isinstance(target, str):
        with Client(target) as client:
            threads = max(client.nthreads().values(), default=1)
            if threads > 1:
                raise NnsealError(
                    f"workers of {target} run {threads} threads; each must run one "
                    f"(dask worker {target} --nthreads 1)"
                )
            yield client
        return
    with (
        tempfile.TemporaryDirectory(prefix="nnseal-dask-") as scratch,
        dask.config.set({"temporary-directory": scratch, **WORKER_ENVIRONMENT}),
        LocalCluster(
            n_workers=target, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Compute with ``n`` torch threads inside the block: float results depend on the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Inputs:
    """What every unit reads: the model and the data. One object, so Dask pickles the model whole
    (its generic torch serializer would lose the module's hook tables)."""

    model: nn.Module
    train: Dataset
    test: Dataset


def share(client: Client | None, data: Any) -> Any:
    """``data`` as tasks take it: sent once to every worker (a future, or a container of them), or as is."""
    return data if client is None else client.scatter(data, broadcast=True, hash=False)


def run_tasks(client: Client | None, fn: Callable[..., Any], jobs: list[tuple], *shared: Any) -> list[Any]:
    """``fn(*job, *shared)`` for every job, in order: here, or one Dask task each, computing with
    this process's torch thread count."""
    if client is None:
        return [fn(*job, *shared) for job in jobs]
    threads = torch.get_num_threads()
    return client.gather([client.submit(_on_threads, threads, fn, *j, *shared, pure=False) for j in jobs])


def _on_threads(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    torch.set_num_threads(threads)
    return fn(*args)


def generate_pool(method: Method, split: str, seed: int | None, inputs: Inputs) -> Pool:
    """``method``'s pool from the ``split`` data (its own seed, or a generator from ``seed``), timed."""
    t0 = time.perf_counter()
    rng = None if seed is None else np.random.default_rng(seed)
    pool = method.pool(inputs.model, getattr(inputs, split), rng)
    pool.info["generation_s"] = time.perf_counter() - t0
    return pool


@dataclass
class Unit:
    """One attacked model: attack ``name`` (its ``kind`` and ``params``) run with ``seed``; its test
    accuracy is measured when ``measured``."""

    name: str
    kind: str
    params: dict[str, Any]
    seed: int
    measured: bool

    def label(self) -> str:
        return f"attack {self.name!r} seed {self.seed}"


@dataclass
class Outcome:
    """An attacked model's answers on every pool and its row in the results' ``attacks``."""

    record: dict[str, Any]
    answers: dict[str, np.ndarray]


def attacked_models(units: list[Unit], inputs: Inputs, queries: dict[str, np.ndarray]) -> list[Outcome]:
    """Run ``units`` in order (a Dask task, or one unit of the serial loop)."""
    return [_attacked(u, inputs, queries) for u in units]


def _attacked(unit: Unit, inputs: Inputs, queries: dict[str, np.ndarray]) -> Outcome:
    try:
        result = run_attack(
            unit.kind, inputs.model, unit.params, train=inputs.train,
            test=inputs.test if unit.measured else None, seed=unit.seed,
        )  # fmt: skip
        target = result.target()
        answers = {name: target.predict(x) for name, x in queries.items()}
    except Exception as e:
        raise _failed(unit, e) from e
    record = {"attack": unit.name, "seed": unit.seed, "lineage": result.lineage_str}
    return Outcome({**record, "metrics": result.record["metrics"]}, answers)


def _failed(unit: Unit, e: Exception) -> UnitFailed:
    """``e`` as the failure of ``unit``: named, on one line."""
    if isinstance(e, UnitFailed):
        return e
    return UnitFailed(f"{unit.label()}: {type(e).__name__}: {' '.join(str(e).split())}")


def inputs_digest(inputs: Inputs, queries: dict[str, np.ndarray], threads: int) -> str:
    """Hash of what every attacked model's outcome depends on besides its unit: the model (weights
    and lineage), the data, the queries, the torch thread count, nnseal's code and the versions of
    the libraries that compute."""
    model, train, test = inputs.model, inputs.train, inputs.test
    libraries = [torch.__version__, np.__version__, version("onnxruntime")]
    head = [model_id(model), getattr(model, "lineage", []), list(queries), threads, _code_digest(), libraries]
    h = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for a in (train.x, train.y, test.x, test.y, *queries.values()):
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _code_digest() -> str:
    """Hash of nnseal's source: an edited attack must not be answered from the cache."""
    root = Path(nnseal.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(f"{path.relative_to(root)}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class UnitCache:
    """Attacked models' outcomes, one ``.npz`` per unit named by its key (the unit and the
    :func:`inputs_digest`); written atomically, so a killed run leaves only whole files. Only arrays
    and JSON are read back: nothing in the folder can run code."""

    def __init__(self, folder: str | Path, digest: str) -> None:
        self.folder, self.digest = Path(folder), digest

    def path(self, unit: Unit) -> Path:
        key = [self.digest, unit.name, unit.kind, unit.params, unit.seed, unit.measured]
        return (
            self.folder
            / f"{hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]}.npz"
        )

    def load(self, unit: Unit) -> Outcome | None:
        """The cached outcome; None when missing or unreadable (then it is recomputed)."""
        try:
            with np.load(self.path(unit), allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                return Outcome(meta["record"], {n: f[f"a{i}"] for i, n in enumerate(meta["pools"])})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    def store(self, unit: Unit, outcome: Outcome) -> None:
        buf = io.BytesIO()
        meta = json.dumps({"record": outcome.record, "pools": list(outcome.answers)})
        np.savez(buf, meta=np.array(meta), **{f"a{i}": a for i, a in enumerate(outcome.answers.values())})
        atomic_write_bytes(self.path(unit), buf.getvalue())


def run_units(
    units: list[Unit], inputs: Any, queries: dict[str, np.ndarray], cache: UnitCache,
    client: Client | None, progress: bool = False,
) -> list[Outcome]:  # fmt: skip
    """Every unit's outcome, in order: cached ones read back, the rest computed and cached as they
    finish; units whose task still fails after :data:`RETRIES` are reported together at the end."""
    outcomes = [cache.load(u) for u in units]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    failed: list[str] = []
    with tqdm(
        total=len(units), initial=len(units) - len(todo), desc="attacked models", disable=not progress
    ) as bar:
        for chunk, result in _execute(units, todo, inputs, queries, client):
            if isinstance(result, Exception):
                failed.append(str(result))
                continue
            for i, outcome in zip(chunk, result, strict=True):
                cache.store(units[i], outcome)
                outcomes[i] = outcome
                bar.update()
    if failed:
        done, more = sum(o is not None for o in outcomes), len(failed) - SHOWN_FAILURES
        raise UnitFailed(
            f"{len(failed)} attacked model(s) failed ({done} of {len(units)} finished, cached in "
            f"{cache.folder}: a rerun computes only the rest): {'; '.join(failed[:SHOWN_FAILURES])}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return outcomes  # type: ignore[return-value]


def _execute(
    units: list[Unit], todo: list[int], inputs: Any, queries: dict[str, np.ndarray], client: Client | None
) -> Iterator[tuple[list[int], list[Outcome] | Exception]]:  # fmt: skip
    """(indices into ``units``, their outcomes or the error) as tasks finish: ``todo`` one at a time
    here, or in chunks on Dask."""
    if client is None:
        for i in todo:
            try:
                yield [i], attacked_models([units[i]], inputs, queries)
            except UnitFailed as e:
                yield [i], e
        return
    from dask.distributed import as_completed

    workers = max(1, len(client.scheduler_info()["workers"]))
    size = max(1, min(CHUNK, len(todo) // (4 * workers)))  # ≥ 4 tasks a worker balance uneven attacks
    sent, threads = share(client, queries), torch.get_num_threads()
    pending: dict[Future, list[int]] = {}

    def submit(chunk: list[int]) -> Future:
        args = ([units[i] for i in chunk], inputs, sent)
        task = client.submit(_on_threads, threads, attacked_models, *args, retries=RETRIES, pure=False)
        pending[task] = chunk
        return task

    tasks = as_completed([submit(todo[k : k + size]) for k in range(0, len(todo), size)])
    for task in tasks:
        chunk = pending.pop(task)
        try:
            yield chunk, task.result()
        except Exception as e:
            if len(chunk) > 1:  # keep its good units and name each bad one: one task a unit
                for i in chunk:
                    tasks.add(submit([i]))
            else:  # UnitFailed names the unit; anything else (a lost worker, say) does not
                yield chunk, _failed(units[chunk[0]], e)
