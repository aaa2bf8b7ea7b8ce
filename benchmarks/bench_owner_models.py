"""Benchmark: how a deterministic tampering's labels-only missing rate varies with the owner's model.

8-bit rounding and a float16 round trip have no randomness of their own: on one owner model the
evaluation's trials are the verifier's random bags, so a missing rate it prints holds for that model.
This script repeats that measurement on several owner models: the model of an evaluation config
(``--config``, default the digits labels-only one: its data, training subset, architecture and epochs)
trained from each ``--seeds``, with the config's ``boundary-sensitive`` method made from the test split
with the owner's seed, as ``nnseal evaluate`` makes it. Per model: the misses of ``--bags`` random bags
of ``[fingerprint] bag`` (20 ordered picks each) at N = 1…5 queries, the one-sided 95 % Clopper–Pearson
bound at N = 3, and the queries needed for a supported ≤ 1 %.

Prints a table; writes ``benchmarks/results/bench_owner_models-<config name>.json``::

    .venv/bin/python benchmarks/bench_owner_models.py    # digits: about a minute per owner model on one core
    .venv/bin/python benchmarks/bench_owner_models.py --config benchmarks/configs/labels-only-mnist.toml \
        --seeds 1,2                                      # MNIST: about 10 minutes per owner model
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _machine import finish, print_table
from torch import nn

from nnseal.attacks import run_attack
from nnseal.data import Dataset
from nnseal.errors import NnsealError
from nnseal.evaluation.config import ExperimentConfig, load_config
from nnseal.evaluation.experiment import load_data, methods_from_config
from nnseal.evaluation.stats import first_detections, upper_bound, upper_curve
from nnseal.methods.base import Method, answers
from nnseal.models import evaluate_accuracy, train_model

REPO = Path(__file__).resolve().parents[1]
ATTACKS = {"8-bit rounding": ("quantize-bits", {"bits": 8}), "float16": ("cast", {"dtype": "float16"})}
N_MAX = 20
METHOD = "boundary-sensitive"


def boundary_method(cfg: ExperimentConfig) -> Method:
    """The config's boundary-sensitive method, as ``nnseal evaluate`` makes it."""
    methods = dict(methods_from_config(cfg))
    if METHOD not in methods:
        raise NnsealError(f"config {cfg.name!r} has no [[methods]] entry labelled {METHOD!r}")
    return methods[METHOD]


def owner(cfg: ExperimentConfig, seed: int) -> tuple[nn.Module, Dataset, Method]:
    """The config's model trained from owner seed ``seed`` (its seeded training subset too), the test
    split and the method with that seed."""
    cfg = dataclasses.replace(cfg, seed=seed)
    train, test = load_data(cfg)
    model = train_model(train, cfg.model.arch, epochs=cfg.model.epochs, seed=seed, progress=False).eval()
    return model, test, boundary_method(cfg)


def measure(cfg: ExperimentConfig, seed: int, bags: int, threads: int) -> dict:
    """One owner model: its pool, ``bags`` ordered bags and the deterministic attacks' misses."""
    torch.set_num_threads(threads)  # also in a worker process, which does not inherit it
    start = time.perf_counter()
    model, test, method = owner(cfg, seed)
    pool = method.pool(model, test, None)
    rng = np.random.default_rng(seed + 1)
    orders = []
    for _ in range(bags):
        members = np.sort(rng.choice(len(pool), min(cfg.fingerprint.bag, len(pool)), replace=False))
        orders.append(members[method.select(pool.subset(members), N_MAX, rng)])
    picks, labels = np.stack(orders), answers(model, pool.x).argmax(1)
    out = {"accuracy": evaluate_accuracy(model, test), "pool": len(pool), "attacks": {}}
    for name, (kind, params) in ATTACKS.items():
        flips = answers(run_attack(kind, model, params).model, pool.x).argmax(1) != labels
        firsts = first_detections(picks, np.repeat(flips[None], len(picks), 0))
        bound = upper_curve(firsts, N_MAX)
        out["attacks"][name] = {
            "misses": [int((firsts >= n).sum()) for n in range(1, 6)],
            "bound_at_3": float(bound[2]),
            "needed_1pct": next((n + 1 for n, b in enumerate(bound) if b <= 1e-2), None),
            "flip_share": float(flips.mean()),
        }
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        type=Path,
        default=REPO / "benchmarks" / "configs" / "labels-only-digits.toml",
        help="evaluation config: its data, model and boundary-sensitive method",
    )
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="owner-model seeds, comma-separated")
    p.add_argument("--bags", type=int, default=1000, help="random bags per owner model")
    p.add_argument("--threads", type=int, default=1, help="torch threads per owner model")
    p.add_argument("--jobs", type=int, default=1, help="owner models measured at once, in worker processes")
    p.add_argument(
        "--out", type=Path, help="JSON path (default: results/bench_owner_models-<config name>.json)"
    )
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.bags < 1:
        p.error("--bags must be at least 1")
    try:
        cfg = load_config(args.config)
    except NnsealError as e:
        p.error(str(e))
    args.out = args.out or REPO / "benchmarks" / "results" / f"bench_owner_models-{cfg.name}.json"
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    load_start, t0 = os.getloadavg(), time.perf_counter()
    if args.jobs == 1:
        measured = [measure(cfg, seed, args.bags, args.threads) for seed in seeds]
    else:
        spawn = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            n = len(seeds)
            measured = list(pool.map(measure, [cfg] * n, seeds, [args.bags] * n, [args.threads] * n))
    results = dict(zip(seeds, measured, strict=True))

    header = ["owner seed", "accuracy", "pool"]
    for name in ATTACKS:
        header += [f"{name}: misses N=1…5 of {args.bags}", "bound N=3", "queries ≤ 1 %"]
    rows = []
    for seed, r in results.items():
        row = [seed, f"{r['accuracy']:.2%}", r["pool"]]
        for name in ATTACKS:
            a = r["attacks"][name]
            row += ["/".join(map(str, a["misses"])), f"{a['bound_at_3']:.2%}", a["needed_1pct"] or "—"]
        rows.append(row)
    print_table(header, rows)
    for name in ATTACKS:
        rates = [r["attacks"][name]["misses"][2] / args.bags for r in results.values()]
        met = sum(r["attacks"][name]["needed_1pct"] in (1, 2, 3) for r in results.values())
        print(
            f"{name}: 3-query missing rate over owner models mean {np.mean(rates):.2%}, max {max(rates):.2%};"
            f" ≤ 3 queries at a supported ≤ 1 % on {met} of {len(results)} models"
            f" (with no miss, {args.bags} bags support ≤ {upper_bound(0, args.bags):.2%})"
        )
    finish(
        args,
        load_start,
        t0,
        {
            "experiment": {
                k: v for k, v in cfg.to_dict().items() if k in ("name", "data", "model", "fingerprint")
            },
            "attacks": {k: {"attack": a, "params": p_} for k, (a, p_) in ATTACKS.items()},
            "method": boundary_method(dataclasses.replace(cfg, seed=seeds[0])).get_params(),
            "n_max": N_MAX,
        },
        results={str(k): v for k, v in results.items()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
