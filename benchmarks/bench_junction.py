"""Benchmark: labels-only queries at a five-class junction vs at a two-class boundary.

A query a hair inside a two-class boundary flips under a large weight change only when the change
favours the rival — about half the time; at a point where five classes sit within a hair of each
other the label has to beat all four rivals, so it flips far more often. On the digits LeNet (seed
0, 20 epochs, the labels-only evaluation's model) this script builds two ``boundary-sensitive``
pools from the same seeds — ``junction_classes`` 2 and 5 — and measures, per pool:

1. the median logit gaps from the label to its 2nd…5th class;
2. the share of (query, attacked model) pairs whose top-1 answer flips, for 8-bit rounding and
   float16 (deterministic: the one model each), ``--models`` fine-tuned, generically and
   specifically poisoned and trojaned models (independent attack seeds);
3. the share of single-weight +1 % head edits the 20 queries the method selects catch (exact).

Prints a table; writes ``benchmarks/results/bench_junction.json``::

    .venv/bin/python benchmarks/bench_junction.py     # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _machine import finish, print_table

from nnseal.attacks import ATTACKS, run_attack
from nnseal.data import load_dataset
from nnseal.methods.base import answers
from nnseal.methods.boundary import BoundarySensitive
from nnseal.models import train_model
from nnseal.simulation import head_edit_flips

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {  # label: (registered attack, params); attacks that train get --models seeds, the rest one
    "8-bit rounding": ("quantize-bits", {"bits": 8}),
    "float16": ("cast", {"dtype": "float16"}),
    "finetune": ("finetune", {}),
    "poison-generic": ("poison-generic", {"source": 3}),
    "poison-specific": ("poison-specific", {"source": 3, "target": 8}),
    "trojan": ("trojan", {}),
}


def logit_gaps(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Per query, the top logit minus the 2nd, 3rd, … largest."""
    with torch.no_grad():
        z = -np.sort(-model(torch.as_tensor(x)).double().numpy(), axis=1)
    return z[:, :1] - z[:, 1:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=30, help="attacked models per randomised attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_junction.json")
    args = p.parse_args()
    if args.models < 1:
        p.error("--models must be at least 1")
    torch.set_num_threads(args.threads)
    load_start, t0 = os.getloadavg(), time.perf_counter()
    train = load_dataset("digits", split="train")
    model = train_model(train, "lenet", epochs=20, seed=args.seed, progress=False).eval()
    attacked = {
        name: [
            run_attack(attack, model, params, train=train, seed=1000 + s).model
            for s in range(args.models if ATTACKS[attack].needs_data else 1)
        ]
        for name, (attack, params) in FAMILIES.items()
    }
    results, params = {}, {}
    for classes in (2, 5):
        start = time.perf_counter()
        method = BoundarySensitive(junction_classes=classes, seed=args.seed)
        pool = method.stable(model, method.candidates(model, train, np.random.default_rng(args.seed)))
        chosen = pool.x[method.select(pool, method.n_queries, np.random.default_rng(args.seed))]
        labels = answers(model, pool.x).argmax(1)
        flips = {
            name: float(np.mean([answers(m, pool.x).argmax(1) != labels for m in models]))
            for name, models in attacked.items()
        }
        edits = head_edit_flips(model, chosen, 0.01)[:, : model.head.weight.numel()].any(0)
        results[classes] = {
            "pool": len(pool.x),
            "seconds": time.perf_counter() - start,
            "median_gaps_2_to_5": np.median(logit_gaps(model, pool.x)[:, :4], axis=0).tolist(),
            "flip_share": flips,
            "head_edits_caught_by_20": float(edits.mean()),
        }
        params[classes] = method.get_params()

    header = [
        "junction classes",
        "pool",
        "gaps to 2nd…5th (median)",
        *FAMILIES,
        "+1 % head edits (20 q)",
        "s",
    ]
    rows = [
        [
            c,
            r["pool"],
            " / ".join(f"{g:.3g}" for g in r["median_gaps_2_to_5"]),
            *(f"{r['flip_share'][a]:.2f}" for a in FAMILIES),
            f"{r['head_edits_caught_by_20']:.1%}",
            f"{r['seconds']:.0f}",
        ]
        for c, r in results.items()
    ]
    print(f"digits LeNet, share of (query, attacked model) pairs that flip; {args.models} models per attack")
    print_table(header, rows)
    finish(
        args,
        load_start,
        t0,
        {
            "model": {"data": "digits", "arch": "lenet", "epochs": 20, "seed": args.seed},
            "attacks": {k: {"attack": a, "params": p_} for k, (a, p_) in FAMILIES.items()},
            "methods": {str(k): v for k, v in params.items()},
        },
        results={str(k): v for k, v in results.items()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
