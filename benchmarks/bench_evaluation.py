"""Regenerate the SSF paper's Tables 3-5 on a real dataset and print them beside the paper's.

    .venv/bin/python benchmarks/bench_evaluation.py mnist            # full (see README for timing)
    .venv/bin/python benchmarks/bench_evaluation.py mnist --quick    # small pool, 1 seed: a fast look
    .venv/bin/python benchmarks/bench_evaluation.py gtsrb [--quick]
    .venv/bin/python benchmarks/bench_evaluation.py cifar10 [--root DEST]   # after scripts/fetch-cifar10.sh

Runs ``nnseal evaluate`` on ``benchmarks/configs/<dataset>.toml`` (CIFAR-10's files are not in
../shared/data: ``bash scripts/fetch-cifar10.sh benchmarks/data`` makes them), prints the report's
tables and writes results.json / curves.csv / report.md / plots under
benchmarks/results/eval-<dataset>[-quick].
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from nnseal.errors import NnsealError
from nnseal.evaluation import evaluate, load_config

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "gtsrb", "cifar10"])
    parser.add_argument("--quick", action="store_true", help="small pool, 1 attack seed, fewer steps")
    parser.add_argument("--root", help="dataset folder (default: the config's, under ../shared/data)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(HERE / "configs" / f"{args.dataset}.toml")
    if args.root:
        cfg.data.root = args.root
    if args.quick:
        cfg.name += " (quick)"
        cfg.out += "-quick"
        cfg.data.train_subset = 10000
        cfg.model.epochs = min(cfg.model.epochs, 2)
        cfg.fingerprint.pool, cfg.fingerprint.bag, cfg.fingerprint.steps = 200, 100, 200
        cfg.fingerprint.natural_pool = 500
        cfg.evaluation.seeds_per_attack, cfg.evaluation.manc_bags = 1, 10
        cfg.evaluation.monte_carlo_repetitions = min(cfg.evaluation.monte_carlo_repetitions, 1_000_000)
    t0 = time.perf_counter()
    try:
        results = evaluate(cfg)
    except NnsealError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = (Path(cfg.out) / "report.md").read_text()
    # print the tables (everything up to the false-alarm details) and the false-alarm summary
    print(report.split("## False alarms")[0])
    print(re.search(r"Every pool sample.*", report).group(0))  # type: ignore[union-attr]
    print(f"\nwrote {cfg.out}/results.json and report.md; {time.perf_counter() - t0:.0f} s on "
          f"{args.threads} threads; timings: {results.timings}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
