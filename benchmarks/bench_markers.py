"""TamperNN boundary markers vs Sensitive-Sample fingerprints on MNIST: three architectures × five attacks.

    .venv/bin/python benchmarks/bench_markers.py              # mlp, lenet, vgg (see README for timing)
    .venv/bin/python benchmarks/bench_markers.py --quick      # smaller pools, 1 attack seed
    .venv/bin/python benchmarks/bench_markers.py --arch mlp   # one architecture

Runs the evaluation harness (``nnseal evaluate``) once per architecture with every marker strategy
beside natural samples, SS + random and SS + MANC; the attacks are the TamperNN paper's five:
trojaning, quantization, fine-tuning, compression (pruning) and watermarking (Frontier Stitching).
Prints queries needed at α = 1e-4 and 1e-8 (top-1 labels), the best strategy per attack against SS +
MANC, and false alarms on the intact model; writes each harness report under
benchmarks/results/markers-<arch>[-quick] and a summary to benchmarks/results/bench_markers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nnseal._io import atomic_write_text
from nnseal.evaluation import config_from_dict, evaluate
from nnseal.report import markdown_table

HERE = Path(__file__).resolve().parent
STRATEGIES = ["adversarial", "bisection", "flip-rate", "hybrid"]
ATTACKS = [
    {"name": "trojan", "kind": "trojan", "params": {"epochs": 0.5}},
    {"name": "quantization", "kind": "quantize-int8", "params": {}},
    {"name": "fine-tuning", "kind": "finetune", "params": {"steps": 200, "lr": 1e-4}},
    {"name": "compression", "kind": "prune", "params": {"amount": 0.5}},
    {"name": "watermarking", "kind": "watermark", "params": {"key_size": 100, "epsilon": 0.1, "epochs": 1.0}},
]
ALPHAS = ("0.0001", "1e-08")


def config(arch: str, root: str, quick: bool) -> dict:
    return {
        "name": f"markers-mnist-{arch}" + ("-quick" if quick else ""),
        "seed": 0,
        "out": str(HERE / "results" / (f"markers-{arch}" + ("-quick" if quick else ""))),
        "data": {"name": "mnist", "root": root, "train_subset": 10000 if quick else 20000},
        "model": {"arch": arch, "epochs": 2 if quick else 3},
        "fingerprint": {
            "pool": 150 if quick else 300,
            "bag": 100,
            "steps": 200 if quick else 500,
            "natural_pool": 500 if quick else 1000,
        },
        "markers": {
            "strategies": STRATEGIES,
            "pool": 150 if quick else 300,
            "ss_steps": 200 if quick else 300,
        },
        "evaluation": {
            "specs": ["top1", "top1-p2"],
            "n_max": 100,
            "alphas": [1e-2, 1e-4, 1e-8],
            "manc_bags": 10 if quick else 20,
            "seeds_per_attack": 1 if quick else 2,
            "false_alarm_fingerprints": 10 if quick else 30,
        },
        "attacks": ATTACKS,
    }


def summarise(arch: str, results) -> tuple[list[list[str]], list[dict]]:
    """Rows of the queries-needed table and, per attack, the best marker strategy vs SS + MANC."""
    rows, best = [], []
    for attack, by_sel in results.needed.items():
        for sel, by_spec in by_sel.items():
            rows.append([arch, attack, sel, *[str(by_spec["top1"][a] or "—") for a in ALPHAS]])
        for a in ALPHAS:
            manc = by_sel["ss-manc"]["top1"][a]
            markers = {s: v["top1"][a] for s, v in by_sel.items() if s.startswith("marker-")}
            reached = {s: q for s, q in markers.items() if q is not None}
            winner = min(reached, key=reached.get) if reached else None  # type: ignore[arg-type]
            best.append(
                {
                    "arch": arch,
                    "attack": attack,
                    "alpha": a,
                    "best_marker": winner,
                    "best_marker_queries": reached.get(winner) if winner else None,
                    "ss_manc_queries": manc,
                    "natural_queries": by_sel["natural"]["top1"][a],
                }
            )
    return rows, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=["mlp", "lenet", "vgg"])
    parser.add_argument("--root", default=str(HERE.parent.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archs = args.arch or ["mlp", "lenet", "vgg"]
    rows, best, false_alarms, pools, runs = [], [], [], [], {}
    t0 = time.perf_counter()
    for arch in archs:
        t = time.perf_counter()
        cfg = config_from_dict(config(arch, args.root, args.quick))
        results = evaluate(cfg)
        r, b = summarise(arch, results)
        rows += r
        best += b
        for x in results.false_alarms:
            false_alarms.append({"arch": arch, **x})
        for name, m in results.markers.items():
            pools.append({"arch": arch, "strategy": name, **m})
        runs[arch] = {
            "accuracy": results.model_accuracy,
            "seconds": time.perf_counter() - t,
            "attacks": results.attacks,
            "report": str(Path(cfg.out) / "report.md"),
        }

    print(markdown_table(["arch", "attack", "selection", *(f"N @ α={a}" for a in ALPHAS)], rows))
    print()
    print(
        markdown_table(
            ["arch", "attack", "α", "best marker strategy", "its N", "SS + MANC N", "natural N"],
            [
                [
                    b["arch"],
                    b["attack"],
                    b["alpha"],
                    b["best_marker"] or "none reaches α",
                    b["best_marker_queries"] or "—",
                    b["ss_manc_queries"] or "—",
                    b["natural_queries"] or "—",
                ]
                for b in best
            ],
        )
    )
    print()
    by_pool: dict[str, list[int]] = {}
    for x in false_alarms:
        acc = by_pool.setdefault(x["pool"], [0, 0, 0, 0])
        acc[0] += x["comparisons"]
        acc[1] += x["changed_answers"]
        acc[2] += x["verifications"]
        acc[3] += x["not_intact"]
    setups = sorted({x["target"] for x in false_alarms})
    print(f"False alarms on the intact models, {len(setups)} serving setups: {', '.join(setups)}")
    print(
        markdown_table(
            ["pool", "comparisons", "changed answers", "verifications", "not intact"],
            [[p, *v] for p, v in by_pool.items()],
        )
    )
    print()
    print(
        markdown_table(
            ["arch", "strategy", "candidates", "kept", "measured noise", "margin", "generation (s)"],
            [
                [
                    p["arch"],
                    p["strategy"],
                    p["candidates"],
                    p["pool"],
                    f"{p['max_noise']:.2g}",
                    f"{p['margin']:.2g}",
                    f"{p['generation_s']:.1f}",
                ]
                for p in pools
            ],
        )
    )
    for arch, run in runs.items():
        print(f"{arch}: test accuracy {run['accuracy']:.2%}, {run['seconds']:.0f} s; report {run['report']}")
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s on {args.threads} threads")
    out = HERE / "results" / ("bench_markers-quick.json" if args.quick else "bench_markers.json")
    summary = {
        "config": {arch: config(arch, args.root, args.quick) for arch in archs},
        "queries_needed": rows,
        "best": best,
        "false_alarms": false_alarms,
        "pools": pools,
        "runs": runs,
        "seconds": total,
        "threads": args.threads,
    }
    atomic_write_text(out, json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
