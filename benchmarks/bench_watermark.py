"""Benchmark: Adversarial Frontier Stitching on MNIST with three architectures (mlp, lenet, vgg).

1. Trains a source model per architecture (seed 0) and 20 independent null models (mlp seeds 1-10,
   lenet 1-8, vgg 1-2) on the same MNIST training subset (5k images: mlp 5 epochs, lenet 3, vgg 2);
   test accuracy on the full 10k test set.
2. (a) Accuracy cost: embeds a 100-input key at each ε of the sweep and reports the clean test accuracy
   before/after, the epochs fine-tuning took, and — because short-trained sources still gain from any
   further training — the cost against a control fine-tuned on clean data only for the same steps.
   The null models' accuracy on each key shows whether the paper's 1/2 null holds at that ε.
3. (b) Robustness at ε = 0.25 (the paper's; for an architecture with no key at 0.25, the largest swept
   ε that gives one): runs the removal attacks of the suite through ``run_attack``
   (fine-tuning, pruning 25/50/75/85 %, pruning with recovery, structured pruning, int8 and 4-bit
   quantization, float16, ONNX Runtime int8, an attacker's own watermark on top, SSF adversarial
   fine-tuning) and verifies the key through the attacked model's target (torch or ONNX Runtime),
   at α = 0.05 under the paper's null and under the null calibrated on the 20 null models.
4. (c) False claims: the key accuracy of the 20 null models on each architecture's key, how many the
   paper's binomial null would claim at α = 0.05, and how many a calibrated null would (each null
   model judged with the null fitted on the other 19, leave-one-out).

Prints the three tables and writes ``benchmarks/results/bench_watermark.json``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_watermark.py            # 5k training images
    .venv/bin/python benchmarks/bench_watermark.py --quick    # code-path check: 1k images, 3 null models

Options: ``--data PATH`` (MNIST folder, default ``../shared/data/mnist``), ``--train-size``,
``--seed``, ``--threads`` (default 2), ``--out PATH``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import write_report
from torch import nn

from nnseal.attacks import run_attack
from nnseal.data import Dataset, load_dataset
from nnseal.errors import DataError, NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.frontier import FrontierStitching, key_accuracy
from nnseal.models.train import evaluate_accuracy, fit, train_model
from nnseal.targets import TorchTarget
from nnseal.watermark import PAPER_NULL, NullModel, p_value, threshold, verify_watermark

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("mlp", "lenet", "vgg")
EPOCHS = {"mlp": 5.0, "lenet": 3.0, "vgg": 2.0}  # training of sources and null models
NULL_SEEDS = {"mlp": range(1, 11), "lenet": range(1, 9), "vgg": range(1, 3)}
EPS_SWEEP = (0.05, 0.1, 0.25)
EPS = 0.25  # the paper's; an architecture with no key at 0.25 uses the largest swept ε that gives one
KEY_SIZE = 100
ALPHA = 0.05
USABLE_PP = 5.0  # a removal counts only if the attacked model stays within this of the marked model
ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("finetune 100 steps lr 1e-4", "finetune", {"steps": 100, "lr": 1e-4}),
    ("finetune 500 steps lr 1e-3", "finetune", {"steps": 500, "lr": 1e-3}),
    ("finetune last layer 500 steps", "finetune", {"steps": 500, "lr": 1e-3, "last_layer_only": True}),
    ("prune 25%", "prune", {"amount": 0.25}),
    ("prune 50%", "prune", {"amount": 0.5}),
    ("prune 75%", "prune", {"amount": 0.75}),
    ("prune 85%", "prune", {"amount": 0.85}),
    ("prune 85% + 300 steps", "prune", {"amount": 0.85, "finetune_steps": 300}),
    ("prune 50% structured", "prune", {"amount": 0.5, "structured": True}),
    ("quantize int8 (torch.ao)", "quantize-int8", {}),
    ("quantize 4-bit", "quantize-bits", {"bits": 4}),
    ("cast float16", "cast", {"dtype": "float16"}),
    ("onnx-quantize int8 dynamic", "onnx-quantize", {"mode": "dynamic"}),
    ("overwrite: attacker's watermark", "watermark", {}),
    ("adversarial finetune (SSF)", "adversarial-finetune", {}),
]
QUICK_ATTACKS = {"prune 85%", "onnx-quantize int8 dynamic", "overwrite: attacker's watermark"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--train-size", type=int, default=5_000, help="MNIST training images used (random subset)")
    p.add_argument("--quick", action="store_true", help="1k images, 3 null models, 1 ε, 3 attacks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_watermark.json")
    return p.parse_args()


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def control_cost(model: nn.Module, train: Dataset, test: Dataset, epochs: float, key_size: int, seed: int,
                 lr: float) -> float:  # fmt: skip
    """Test accuracy after fine-tuning on clean data alone for as long as the embedding did (same
    stream length: the boosted key's slots are filled with more clean inputs)."""
    ctrl = copy.deepcopy(model)
    extra = np.random.default_rng(seed).choice(len(train), 10 * key_size)
    x, y = np.concatenate([train.x, train.x[extra]]), np.concatenate([train.y, train.y[extra]])
    done = 0.0
    while done < epochs - 1e-9:  # the same chunks and seeds as the embedding
        step = min(0.25, epochs - done)
        fit(ctrl, x, y, epochs=step, lr=lr, seed=seed + round(done * 4))
        done += step
    return evaluate_accuracy(ctrl, test)


def verdict_row(key: Fingerprint, target: Any, null: NullModel) -> dict[str, Any]:
    """Verdicts under the paper's null and the calibrated one (which may make any claim impossible:
    then its p-value is the chance that a null model gets the whole key right)."""
    paper = verify_watermark(key, target, alpha=ALPHA, null=PAPER_NULL)
    row = {
        "errors": paper.errors,
        "key_accuracy": paper.key_accuracy,
        "p_paper": paper.p_value,
        "status_paper": paper.status.value,
        "theta_paper": paper.theta,
        "p_calibrated": p_value(paper.errors, len(key), null),
        "theta_calibrated": threshold(len(key), ALPHA, null),
    }
    row["status_calibrated"] = "watermarked" if row["p_calibrated"] < ALPHA else "not-watermarked"
    return row


def main() -> int:
    args = parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: MNIST folder {args.data} not found (pass --data PATH)")
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), list(os.getloadavg())
    try:
        train_full = load_dataset("mnist", args.data, "train")
        test = load_dataset("mnist", args.data, "test")
    except DataError as e:
        sys.exit(f"error: cannot load MNIST from {args.data}: {e}")
    n_train = 1000 if args.quick else args.train_size
    rng = np.random.default_rng(args.seed)
    train = train_full.subset(np.sort(rng.choice(len(train_full), n_train, replace=False)))
    eps_sweep = EPS_SWEEP[1:2] if args.quick else EPS_SWEEP
    null_seeds = {a: list(s)[:1] for a, s in NULL_SEEDS.items()} if args.quick else NULL_SEEDS
    attacks = [a for a in ATTACKS if a[0] in QUICK_ATTACKS] if args.quick else ATTACKS
    timings: dict[str, float] = {}

    t = time.perf_counter()
    sources, null_models, model_rows = {}, {}, []
    for arch in ARCHS:
        for seed in [args.seed, *(args.seed + s for s in null_seeds[arch])]:
            t_m = time.perf_counter()
            m = train_model(train, arch, epochs=EPOCHS[arch], seed=seed, progress=False)
            acc = evaluate_accuracy(m, test)
            (sources if seed == args.seed else null_models)[f"{arch}-s{seed}"] = m
            model_rows.append(
                {"model": f"{arch}-s{seed}", "test_accuracy": acc, "seconds": time.perf_counter() - t_m}
            )
            print(
                f"trained {arch} seed {seed}: {100 * acc:.2f}% ({time.perf_counter() - t_m:.0f} s)",
                flush=True,
            )
    timings["training"] = time.perf_counter() - t
    null_names = list(null_models)

    # (a) accuracy cost over the ε sweep
    t = time.perf_counter()
    keys: dict[str, Fingerprint] = {}
    marked: dict[str, nn.Module] = {}
    cost_rows: list[dict[str, Any]] = []
    for arch in ARCHS:
        src = sources[f"{arch}-s{args.seed}"]
        for epsilon in eps_sweep:
            method = FrontierStitching(key_size=KEY_SIZE, epsilon=epsilon, seed=args.seed)
            row: dict[str, Any] = {"arch": arch, "epsilon": epsilon}
            try:
                wm, key, rep = method.embed(src, train, test=test)
            except NnsealError as e:
                row["error"] = str(e)
                cost_rows.append(row)
                print(f"{arch} ε={epsilon}: {e}", flush=True)
                continue
            ctrl = control_cost(src, train, test, rep.epochs, KEY_SIZE, args.seed, method.lr)
            null_acc = [key_accuracy(null_models[n], key) for n in null_names]
            theta = threshold(KEY_SIZE, ALPHA)
            row.update(rep.to_dict())
            row.update(
                {
                    "control_accuracy": ctrl,
                    "cost_vs_control_pp": 100 * (ctrl - rep.accuracy_after),
                    "null_key_accuracy": null_acc,
                    "false_claims_paper": int(sum(round((1 - a) * KEY_SIZE) < theta for a in null_acc)),
                }
            )
            cost_rows.append(row)
            if epsilon <= EPS:  # the sweep ascends: keep the largest ε up to the paper's
                keys[arch], marked[arch] = key, wm
            print(
                f"{arch} ε={epsilon}: key {rep.key_accuracy_after:.2f} after {rep.epochs:g} epochs, accuracy "
                f"{pct(rep.accuracy_before)}→{pct(rep.accuracy_after)} (control {pct(ctrl)}), "
                f"{rep.seconds:.0f} s",
                flush=True,
            )
    timings["embedding"] = time.perf_counter() - t

    # (c) false claims (computed before (b): the calibrated null is used there)
    claims_rows: list[dict[str, Any]] = []
    calibrated: dict[str, NullModel] = {}
    for arch, key in keys.items():
        acc = np.array([key_accuracy(null_models[n], key) for n in null_names])
        theta = threshold(KEY_SIZE, ALPHA)
        errors = np.round((1 - acc) * KEY_SIZE).astype(int)
        calibrated[arch] = NullModel.calibrate(acc, KEY_SIZE)
        loo = []
        for i in range(len(acc)):
            null_i = NullModel.calibrate(np.delete(acc, i), KEY_SIZE)
            loo.append(int(errors[i] < threshold(KEY_SIZE, ALPHA, null_i)))
        wm_errors = round((1 - key_accuracy(marked[arch], key)) * KEY_SIZE)
        by_arch = {
            a: [float(x) for n, x in zip(null_names, acc, strict=True) if n.startswith(a)] for a in ARCHS
        }
        claims_rows.append(
            {
                "key_arch": arch,
                "epsilon": key.params["epsilon"],
                "null_key_accuracy": dict(zip(null_names, acc.tolist(), strict=True)),
                "mean": float(acc.mean()),
                "std": float(acc.std(ddof=1)),
                "min": float(acc.min()),
                "max": float(acc.max()),
                "by_arch_mean": {a: float(np.mean(v)) for a, v in by_arch.items() if v},
                "theta_paper": theta,
                "false_claims_paper": int((errors < theta).sum()),
                "calibrated_null": calibrated[arch].to_dict(),
                "theta_calibrated": threshold(KEY_SIZE, ALPHA, calibrated[arch]),
                "false_claims_calibrated_loo": int(sum(loo)),
                "watermarked_p_calibrated": p_value(wm_errors, KEY_SIZE, calibrated[arch]),
                "sources_key_accuracy": {
                    n: key_accuracy(m, key) for n, m in sources.items() if not n.startswith(arch)
                },
            }
        )

    # (b) robustness at ε = 0.25
    t = time.perf_counter()
    robust_rows: list[dict[str, Any]] = []
    for arch, key in keys.items():
        wm = marked[arch]
        base = {
            "arch": arch,
            "epsilon": key.params["epsilon"],
            "attack": "none (watermarked)",
            "lineage": "original",
        }
        seq = verify_watermark(key, TorchTarget(wm), alpha=ALPHA, sequential=True, null=PAPER_NULL)
        robust_rows.append(
            {**base, "accuracy_before": None, "accuracy_after": evaluate_accuracy(wm, test),
             "sequential_queries": seq.queries_used,
             **verdict_row(key, TorchTarget(wm), calibrated[arch])}
        )  # fmt: skip
        for label, kind, params in attacks:
            t_a = time.perf_counter()
            try:
                res = run_attack(
                    kind, wm, params, train=train, test=test, seed=args.seed + 1
                )  # fmt: skip
            except (NnsealError, ValueError) as e:
                robust_rows.append({"arch": arch, "attack": label, "error": str(e)})
                print(f"  {arch} {label}: {e}", flush=True)
                continue
            row = {
                "arch": arch,
                "epsilon": key.params["epsilon"],
                "attack": label,
                "lineage": res.lineage_str,
                "accuracy_before": res.record["metrics"]["accuracy_before"],
                "accuracy_after": res.record["metrics"]["accuracy_after"],
                **verdict_row(key, res.target(), calibrated[arch]),
                "seconds": time.perf_counter() - t_a,
            }
            robust_rows.append(row)
            print(
                f"  {arch} {label}: acc {pct(row['accuracy_after'])}, key {row['key_accuracy']:.2f}, "
                f"p={row['p_paper']:.2g} ({row['seconds']:.0f} s)",
                flush=True,
            )
    timings["robustness"] = time.perf_counter() - t

    print("\n(a) accuracy cost of embedding, key size 100 (test accuracy %, 10k MNIST test images)")
    rows = []
    for r in cost_rows:
        if "error" in r:
            rows.append([r["arch"], f"{r['epsilon']:g}", *["-"] * 8, r["error"][:60]])
            continue
        na = np.array(r["null_key_accuracy"])
        rows.append(
            [
                r["arch"],
                f"{r['epsilon']:g}",
                f"{r['true_available']}/{r['candidates']}",
                f"{r['key_accuracy_after']:.2f}",
                f"{r['epochs']:g}",
                f"{pct(r['accuracy_before'])}→{pct(r['accuracy_after'])}",
                f"{r['accuracy_cost_pp']:+.2f}",
                f"{pct(r['control_accuracy'])} ({r['cost_vs_control_pp']:+.2f})",
                f"{na.mean():.2f} [{na.min():.2f}, {na.max():.2f}]",
                f"{r['false_claims_paper']}/{len(na)}",
                f"{r['seconds']:.0f}",
            ]
        )
    table(
        ["arch", "ε", "flipped/cand.", "key acc", "epochs", "acc before→after", "cost pp",
         "control (cost pp)", "null key acc mean [min,max]", "1/2-null claims", "s"],
        rows,
    )  # fmt: skip
    print("cost pp = before − after; control = the source fine-tuned as long on clean data only")

    print(f"\n(b) robustness, α={ALPHA} (detected: p < α; usable: accuracy within {USABLE_PP} pp)")
    rows = []
    for r in robust_rows:
        if "error" in r:
            rows.append([r["arch"], "-", r["attack"], "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        detected = r["p_paper"] < ALPHA
        ref = r["accuracy_before"] if r["accuracy_before"] is not None else r["accuracy_after"]
        usable = 100 * (ref - r["accuracy_after"]) <= USABLE_PP
        outcome = "detected" if detected else ("REMOVED" if usable else "lost, model unusable")
        rows.append(
            [
                r["arch"],
                f"{r['epsilon']:g}",
                r["attack"],
                pct(r["accuracy_after"]),
                f"{r['key_accuracy']:.2f}",
                f"{r['p_paper']:.1e}",
                f"{r['p_calibrated']:.1e}",
                "yes" if r["p_calibrated"] < ALPHA else "no",
                outcome,
            ]
        )
        r["outcome"] = outcome
    header = ["arch", "ε", "attack", "acc %", "key acc", "p (1/2 null)", "p (calibrated)", "det. (cal.)"]
    table([*header, "outcome (1/2 null)"], rows)
    for arch in keys:
        seq = next(r for r in robust_rows if r["arch"] == arch and r["attack"].startswith("none"))
        n_seq = seq["sequential_queries"]
        print(f"{arch}: the sequential test decided on the intact watermarked model in {n_seq} queries")

    print(f"\n(c) false claims: key accuracy of {len(null_names)} independently trained, unmarked models")
    rows = []
    for r in claims_rows:
        cal = r["calibrated_null"]
        rows.append(
            [
                f"{r['key_arch']} (ε {r['epsilon']:g})",
                f"{r['mean']:.3f} ± {r['std']:.3f}",
                f"[{r['min']:.2f}, {r['max']:.2f}]",
                ", ".join(f"{a} {v:.2f}" for a, v in r["by_arch_mean"].items()),
                f"{r['false_claims_paper']}/{len(null_names)} (θ={r['theta_paper']})",
                f"{cal['kind']} p={cal['p']:.3f}",
                f"{r['false_claims_calibrated_loo']}/{len(null_names)} (θ={r['theta_calibrated']})",
                f"{r['watermarked_p_calibrated']:.1e}",
            ]
        )
    table(
        ["key of", "null key acc mean ± sd", "[min, max]", "mean by arch", "claims, 1/2 null",
         "calibrated null", "claims, calibrated (LOO)", "p marked (cal.)"],
        rows,
    )  # fmt: skip
    allowed = int(np.ceil(ALPHA * len(null_names)))
    for r in claims_rows:
        ok = r["false_claims_paper"] <= allowed
        r["paper_threshold_holds"] = ok
        print(
            f"{r['key_arch']} key: the 1/2-null threshold {'holds' if ok else 'does NOT hold'} "
            f"({r['false_claims_paper']} false claims of {len(null_names)}, at most {allowed} expected at "
            f"α={ALPHA}); binomial null models would score 0.50 ± 0.05, "
            f"these {r['mean']:.2f} ± {r['std']:.2f}"
        )

    total_s = time.perf_counter() - t_start
    load_end = list(os.getloadavg())
    print(f"total {total_s:.0f} s (1-min load average at start {load_start[0]:.1f}, end {load_end[0]:.1f})")
    report = {
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "data": str(args.data),
            "train_inputs": len(train),
            "test_inputs": len(test),
            "train_epochs": EPOCHS,
            "null_seeds": {a: list(s) for a, s in null_seeds.items()},
            "key_size": KEY_SIZE,
            "eps_sweep": list(eps_sweep),
            "epsilon": EPS,
            "alpha": ALPHA,
            "embedding": FrontierStitching(key_size=KEY_SIZE, epsilon=EPS, seed=args.seed).config(),
            "usable_pp": USABLE_PP,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "models": model_rows,
        "accuracy_cost": cost_rows,
        "robustness": robust_rows,
        "false_claims": claims_rows,
        "timings": {**timings, "total_s": total_s},
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
