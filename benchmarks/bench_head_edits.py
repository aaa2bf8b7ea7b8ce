"""Benchmark: how many single-weight +1 % head edits a labels-only fingerprint can catch, and why not more.

A +1 % edit of head weight (c, j) moves logit c by 0.01·w_cj·h_j(x): no answer changes unless some
query switches penultimate unit j on *and* sits close enough to a boundary of class c. On the digits
LeNet (seed 0, 20 epochs, the tests' model) this script measures, exactly (``head_edit_flips``):

1. how many penultimate units the training data never switches on, and whether each can be switched
   on at all inside the pixel box (an Adam ascent of its pre-activation from ``--starts`` seeds);
2. how many of those units one input can switch on *together* (the ascent of a hinge on the
   pre-activations of all of them, and of random subsets of ``--subset``);
3. the share of all edits, and of the edits on units the data switches on, that the default
   20-query ``boundary-sensitive`` fingerprint and its whole candidate pool catch.

If one input can hold only about one of the units the data leaves off, N queries cannot reach the edits
of more than N of them. Prints a table; writes ``benchmarks/results/bench_head_edits.json``::

    .venv/bin/python benchmarks/bench_head_edits.py          # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _machine import finish, print_table

from nnseal.data import load_dataset
from nnseal.methods.boundary import BoundarySensitive
from nnseal.models import train_model
from nnseal.simulation import head_edit_flips

REPO = Path(__file__).resolve().parents[1]


def pre_activations(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate units' pre-activations (the LeNet's features end Linear → ReLU)."""
    return model.features[:-1](model.normalize(x))


def ascend(
    model: torch.nn.Module, x: np.ndarray, units: torch.Tensor, floor: float, steps: int
) -> torch.Tensor:
    """Adam ascent, inside [0, 1], of Σ min(pre_u, floor) over each input's ``units`` (rows)."""
    z = torch.as_tensor(x).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.relu(floor - pre_activations(model, z).gather(1, units)).sum().backward()
        opt.step()
        with torch.no_grad():
            z.clamp_(0, 1)
    with torch.no_grad():
        return pre_activations(model, z).gather(1, units) > 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=60, help="seeds per ascent")
    p.add_argument("--subset", type=int, default=8, help="units woken together in the subset ascent")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_head_edits.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t0 = os.getloadavg(), time.perf_counter()
    train = load_dataset("digits", split="train")
    model = train_model(train, "lenet", epochs=20, seed=args.seed, progress=False).eval()
    rng = np.random.default_rng(args.seed)
    with torch.no_grad():
        off = np.flatnonzero(~(pre_activations(model, torch.as_tensor(train.x)) > 0).any(0).numpy())
    n_units = model.head.weight.shape[1]
    seeds = train.x[rng.choice(len(train), args.starts)]

    alone = set()  # each unit alone, from every seed
    for u in off:
        on = ascend(model, seeds, torch.full((len(seeds), 1), int(u)), 0.1, args.steps)
        alone |= {int(u)} if bool(on.any()) else set()
    together = {}
    for floor in (0.1, 0.5):
        all_off = torch.as_tensor(off).repeat(len(seeds), 1)
        subsets = torch.as_tensor(np.stack([rng.choice(off, args.subset, replace=False) for _ in seeds]))
        together[floor] = {
            "all": float(ascend(model, seeds, all_off, floor, args.steps).sum(1).float().mean()),
            "subset": float(ascend(model, seeds, subsets, floor, args.steps).sum(1).float().mean()),
        }

    method = BoundarySensitive(seed=args.seed)
    pool = method.stable(model, method.candidates(model, train, np.random.default_rng(args.seed)))
    fp = method.fingerprint(model, train)
    alive = np.setdiff1d(np.arange(n_units), off)
    coverage = {}
    for name, x in (("fingerprint (20)", fp.queries), (f"pool ({len(pool.x)})", pool.x)):
        caught = head_edit_flips(model, x, 0.01)[:, : model.head.weight.numel()].any(0)
        caught = caught.reshape(model.head.weight.shape)
        coverage[name] = {"all": float(caught.mean()), "alive": float(caught[:, alive].mean())}

    print(
        f"digits LeNet: {len(off)} of {n_units} penultimate units never on over {len(train)} training "
        f"images; {len(alone)} of them switched on alone by the ascent"
    )
    print_table(
        ["hinge floor", f"woken together: all {len(off)} targeted", f"{args.subset} targeted"],
        [[f, f"{v['all']:.2f}", f"{v['subset']:.2f}"] for f, v in together.items()],
    )
    print_table(
        ["queries", "+1 % edits caught: all entries", "entries on units the data switches on"],
        [[k, f"{v['all']:.1%}", f"{v['alive']:.1%}"] for k, v in coverage.items()],
    )
    finish(
        args,
        load_start,
        t0,
        {
            "model": {"data": "digits", "arch": "lenet", "epochs": 20, "seed": args.seed},
            "method": method.get_params(),
        },
        units=n_units,
        off_on_data=off.tolist(),
        woken_alone=sorted(alone),
        woken_together={str(k): v for k, v in together.items()},
        coverage=coverage,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
