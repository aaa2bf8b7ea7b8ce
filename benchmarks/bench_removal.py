"""Benchmark: the WRT / BIVBench removal and extraction attacks (``nnseal.attacks.removal``) on the
digits LeNet, each at two strengths, against the owner's Frontier-Stitching watermark.

1. Trains the digits LeNet (scikit-learn digits, 1,437 training / 360 test images, 20 epochs, as the
   test fixtures do) and measures its test accuracy.
2. The owner embeds a Frontier-Stitching watermark (the ``watermark`` attack: 100 keys at
   epsilon 0.2 — 0.25 flips almost every 8x8 digit — owner seed ``--seed``) and checks it with
   ``verify_watermark`` (alpha 0.05, the paper's 50 % null) on the watermarked model, on the
   unmarked one and on three independently trained LeNets (seeds ``--seed`` + 2..4: the key
   accuracy an unrelated model reaches, which on digits is far from the paper's 50 %, so the
   verdict column must be read against it). The watermarked model is the victim.
3. Runs every attack of :data:`nnseal.attacks.removal.STRENGTHS` at its light (the defaults) and
   strong settings on the victim with the attacker's seed (``--seed`` + 1), plus three variants:
   distillation into an MLP, label-only extraction from uniform noise, and from MNIST images resized
   to 8x8 (skipped when ``--mnist`` is missing). Each row: test accuracy after, fidelity (top-1
   agreement with the victim on the test set), queries to the victim, the owner key's accuracy
   and ``verify_watermark`` verdict on the result, and the wall time of ``run_attack``.

Prints an aligned table and writes everything to ``benchmarks/results/bench_removal.json``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_removal.py        # about 40 s on 2 idle cores (minutes when busy)

Results are deterministic for a given ``--seed`` (the seconds are not). Options: ``--seed``
(default 0), ``--threads`` (default 2), ``--mnist PATH`` (default ``../shared/data/mnist``),
``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path
from typing import Any

import torch
from _machine import machine_info, write_report

from nnseal.attacks import ATTACKS, run_attack
from nnseal.attacks.removal import STRENGTHS
from nnseal.data import load_dataset
from nnseal.methods.frontier import key_accuracy
from nnseal.models.train import evaluate_accuracy, train_model
from nnseal.targets import TorchTarget
from nnseal.watermark import PAPER_NULL, verify_watermark

REPO = Path(__file__).resolve().parents[1]
TRAIN_EPOCHS = 20
OWNER_WATERMARK = {"key_size": 100, "epsilon": 0.2}
INDEPENDENT = 3  # LeNets trained from other seeds: what an unrelated model scores on the key


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="owner seed; the attacker uses seed + 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_removal.json")
    return p.parse_args()


def cases(mnist: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(label, attack, strength, parameters) of every row."""
    out = [
        (f"{name} {s}", name, s, params) for name, levels in STRENGTHS.items() for s, params in levels.items()
    ]
    out += [
        ("distill → mlp", "distill", "variant", {"arch": "mlp"}),
        ("extract-labels noise", "extract-labels", "variant", {"source": "noise", "budget": 5000}),
    ]
    if mnist.is_dir():
        out.append(
            (
                "extract-labels mnist",
                "extract-labels",
                "variant",
                {"source": "mnist", "root": str(mnist), "budget": 5000},
            )
        )
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["attack", "test acc %", "fidelity %", "queries", "owner key acc %", "owner WM", "time s"]
    lines = [header]
    for r in rows:
        lines.append(
            [
                r["label"],
                f"{100 * r['accuracy_after']:.1f}",
                f"{100 * r['fidelity']:.1f}",
                str(r["queries"]),
                f"{100 * r['owner_key_accuracy']:.0f}",
                r["owner_watermark"],
                f"{r['seconds']:.2f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    attacker_seed = args.seed + 1

    t = time.perf_counter()
    model = train_model(train, "lenet", epochs=TRAIN_EPOCHS, seed=args.seed, progress=False)
    train_s = time.perf_counter() - t
    clean_acc = evaluate_accuracy(model, test)
    print(
        f"digits LeNet, {TRAIN_EPOCHS} epochs on {len(train)} images ({train_s:.1f} s): "
        f"test accuracy {100 * clean_acc:.1f}%"
    )

    t = time.perf_counter()
    marked = run_attack("watermark", model, OWNER_WATERMARK, train=train, test=test, seed=args.seed)
    wm_s = time.perf_counter() - t
    key, victim = marked.artifacts["key"], marked.model
    assert victim is not None
    own = verify_watermark(key, TorchTarget(victim), null=PAPER_NULL)
    unmarked = verify_watermark(key, TorchTarget(model), null=PAPER_NULL)
    unrelated = []
    for k in range(INDEPENDENT):
        other = train_model(train, "lenet", epochs=TRAIN_EPOCHS, seed=args.seed + 2 + k, progress=False)
        v = verify_watermark(key, TorchTarget(other), null=PAPER_NULL)
        unrelated.append({"seed": args.seed + 2 + k, "key_accuracy": key_accuracy(other, key), **v.to_dict()})
    victim_acc = marked.record["metrics"]["accuracy_after"]
    print(
        f"owner watermark ({len(key)} keys, epsilon {OWNER_WATERMARK['epsilon']}, {wm_s:.1f} s): "
        f"test accuracy {100 * victim_acc:.1f}%, verify on the victim: {own.status.value} "
        f"({own.errors} errors, theta {own.theta}); on the unmarked model: "
        f"{unmarked.status.value} ({unmarked.errors} errors)"
    )
    print(
        f"independent LeNets (seeds {args.seed + 2}..{args.seed + 1 + INDEPENDENT}, same data, "
        "no watermark): "
        + ", ".join(f"key accuracy {100 * u['key_accuracy']:.0f}% ({u['status']})" for u in unrelated)
    )

    rows: list[dict[str, Any]] = []
    for label, name, strength, params in cases(args.mnist):
        t = time.perf_counter()
        res = run_attack(name, victim, params, train=train, test=test, seed=attacker_seed)
        seconds = time.perf_counter() - t
        assert res.model is not None
        metrics = dict(res.record["metrics"])
        verdict = verify_watermark(key, TorchTarget(res.model), null=PAPER_NULL)
        row = {
            "label": label,
            "attack": name,
            "strength": strength,
            "params": params,
            "all_params": res.record["params"],
            "lineage": res.lineage_str,
            "accuracy_before": metrics.pop("accuracy_before"),
            "accuracy_after": metrics.pop("accuracy_after"),
            "fidelity": metrics.pop("fidelity"),
            "queries": metrics.pop("queries"),
            "owner_key_accuracy": key_accuracy(res.model, key),
            "owner_watermark": verdict.status.value,
            "owner_key_errors": verdict.errors,
            "metrics": metrics,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"  {label}: acc {100 * row['accuracy_after']:.1f}%, fidelity {100 * row['fidelity']:.1f}%, "
            f"queries {row['queries']}, owner key {100 * row['owner_key_accuracy']:.0f}% "
            f"({row['owner_watermark']}), {seconds:.2f} s",
            flush=True,
        )

    print()
    print_table(rows)
    removed = [r["label"] for r in rows if r["owner_watermark"] != "watermarked"]
    print(f"\nowner watermark no longer verified after: {', '.join(removed) or 'none'}")
    best = max(u["key_accuracy"] for u in unrelated)
    below = [r["label"] for r in rows if r["owner_key_accuracy"] <= best]
    print(
        f"owner key accuracy at or below the best independent model's ({100 * best:.0f}%): "
        f"{', '.join(below) or 'none'}"
    )
    total_s = time.perf_counter() - t_start
    print(
        f"total {total_s:.0f} s (1-min load average at start {load_start[0]:.1f}, "
        f"end {os.getloadavg()[0]:.1f})"
    )

    report = {
        "config": {
            "dataset": "digits",
            "arch": "lenet",
            "train_epochs": TRAIN_EPOCHS,
            "train_inputs": len(train),
            "test_inputs": len(test),
            "owner_seed": args.seed,
            "attacker_seed": attacker_seed,
            "threads": args.threads,
            "owner_watermark": OWNER_WATERMARK,
            "strengths": STRENGTHS,
            "defaults": {name: ATTACKS[name].defaults() for name in STRENGTHS},
            "mnist": str(args.mnist) if args.mnist.is_dir() else None,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
        },
        "model": {"test_accuracy": clean_acc, "train_seconds": train_s},
        "owner_watermark": {
            "seconds": wm_s,
            "test_accuracy": victim_acc,
            "metrics": marked.record["metrics"],
            "verify_victim": own.to_dict(),
            "verify_unmarked": unmarked.to_dict(),
            "verify_independent": unrelated,
        },
        "rows": rows,
        "summary": {
            "owner_watermark_removed_by": removed,
            "independent_best_key_accuracy": best,
            "owner_key_at_or_below_independent": below,
        },
        "total_seconds": total_s,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
