"""Benchmark: what each tampering attack does to the MNIST CNN, and whether a 10-sample
Sensitive-Sample fingerprint (SS + MANC selection) notices it.

1. Trains the MNIST LeNet (full 60k training set, 2 epochs) and measures its test accuracy on
   the full 10k test set.
2. Fingerprints it with ``SensitiveSampleFingerprinter`` at the SSF paper's settings: 10 queries
   chosen by MANC from a bag of 500 sensitive samples, 1000 Adam iterations, seeds from the test
   split, valid for the output specs top1, top3, top1-p2 and top1-p4 (timed).
3. Verifies the intact model, in torch and as an ONNX export run in ONNX Runtime (expected:
   intact under every spec).
4. Runs every attack of SSF Table 6 with ``run_attack`` (trojans, poisoning, compression, fine-tuning,
   weight modification, adversarial fine-tuning of the poisoned model) and records the lineage,
   clean accuracy before/after, the attack success rate where the attack measures one, its other
   metrics, the wall time and the verdict of ``verify`` under each spec (mismatches out of 10).

Prints an aligned table, a detection summary, PASS/FAIL for "trojan: trigger success >= 90 % with
<= 2 pp clean-accuracy drop", and writes everything to ``benchmarks/results/bench_attacks.json``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_attacks.py            # full run, about 8 minutes on 2 cores
    .venv/bin/python benchmarks/bench_attacks.py --quick    # 10k training images, small bag: ~5 min

Measured on 2 cores: the full run took 7.7 min (458 s) with another benchmark sharing the machine
for part of it (training 22 s, fingerprint 104 s, the 18 attacks with their checks ~5 min; most of
them take 5-10 s, flip-weight ~50 s) and up to 21 min with two other jobs competing throughout;
--quick took 5.2 min at load average 3. Attack results are deterministic for a given --seed.

Options: ``--data PATH`` (MNIST folder, default ``../shared/data/mnist``), ``--seed``,
``--threads`` (default 2), ``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import write_report

from nnseal.attacks import AttackResult, run_attack
from nnseal.data import Dataset, load_dataset
from nnseal.errors import DataError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.ssf import SensitiveSampleFingerprinter
from nnseal.models import export_onnx
from nnseal.models.train import evaluate_accuracy, train_model
from nnseal.targets import OnnxTarget, TorchTarget
from nnseal.targets.base import Target
from nnseal.verification import Status, verify

REPO = Path(__file__).resolve().parents[1]
SPECS = ("top1", "top3", "top1-p2", "top1-p4")
FLIP_SUBSET = 2000  # flip-weight searches on this many training inputs (it predicts ~100 times)


@dataclass(frozen=True)
class Case:
    """One attack of the benchmark: a label, the registered attack, its parameters, and what it
    starts from (the trained model, or another case's result) and trains on."""

    label: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # label of the case whose attacked model this one attacks
    train_subset: int | None = None  # training inputs passed to the attack (None = all)


CASES = [
    Case("trojan", "trojan", {"epochs": 0.5}),
    Case("trojan-selective", "trojan-selective", {"epochs": 0.5}),
    Case("poison-generic", "poison-generic", {"source": 0, "epochs": 0.5}),
    Case("poison-specific", "poison-specific", {"source": 0, "target": 1, "epochs": 0.5}),
    Case("quantize-int8", "quantize-int8"),
    Case("quantize-bits 8", "quantize-bits", {"bits": 8}),
    Case("quantize-bits 4", "quantize-bits", {"bits": 4}),
    Case("cast float16", "cast", {"dtype": "float16"}),
    Case("prune 50%", "prune", {"amount": 0.5}),
    Case("prune 50% structured", "prune", {"amount": 0.5, "structured": True}),
    Case("onnx-quantize dynamic", "onnx-quantize", {"mode": "dynamic"}),
    Case("onnx-quantize static", "onnx-quantize", {"mode": "static"}),
    Case("finetune", "finetune", {"steps": 100, "lr": 1e-4}),
    Case("finetune last layer", "finetune", {"steps": 100, "lr": 1e-4, "last_layer_only": True}),
    Case("modify largest head w", "modify-weights", {"index": -2, "relative": 0.01}),
    Case("modify random head w", "modify-weights", {"k": 1, "relative": 0.01}),
    Case("flip-weight (2k inputs)", "flip-weight", train_subset=FLIP_SUBSET),
    Case("adv-finetune(poison-sp)", "adversarial-finetune", base="poison-specific"),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--quick", action="store_true", help="10k training images, 1 epoch, bag 100 x 200 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_attacks.json")
    return p.parse_args()


def inherited_asr(base: AttackResult, res: AttackResult, test: Dataset) -> float | None:
    """For an attack applied on top of a poisoning: the poison's success rate after it, so the
    table shows whether the poisoning survived (None when the base attack is no poisoning)."""
    params = base.record["params"]
    if base.record["attack"] not in ("poison-specific", "poison-generic"):
        return None
    src = test.x[test.y == params["source"]]
    pred = res.target().predict(src).argmax(1)
    hit = pred == params["target"] if "target" in params else pred != params["source"]
    return float(hit.mean())


def verdicts(fp: Fingerprint, target: Target) -> dict[str, dict[str, Any]]:
    out = {}
    for spec in SPECS:
        v = verify(fp, target, spec)
        out[spec] = {"status": v.status.value, "mismatches": len(v.mismatches), "queries": v.queries_total}
    return out


def cell(v: dict[str, Any]) -> str:
    return f"{v['status']} {v['mismatches']}/{v['queries']}"


def fmt_acc(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{100 * before:.2f}→{100 * after:.2f} ({100 * (after - before):+.2f})"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["attack", "lineage", "acc % before→after (pp)", "ASR", *SPECS, "time s"]
    lines = [header]
    for r in rows:
        asr = r["attack_success_rate"]
        lines.append(
            [
                r["label"],
                r["lineage"],
                fmt_acc(r["accuracy_before"], r["accuracy_after"]),
                "-" if asr is None else f"{100 * asr:.1f}%",
                *(cell(r["verify"][s]) for s in SPECS),
                f"{r['seconds']:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


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
    rng = np.random.default_rng(args.seed)
    train = train_full
    if args.quick:
        train = train_full.subset(np.sort(rng.choice(len(train_full), 10_000, replace=False)))
    epochs = 1 if args.quick else 2
    bag, steps = (100, 200) if args.quick else (500, 1000)

    t = time.perf_counter()
    model = train_model(train, "lenet", epochs=epochs, seed=args.seed, progress=False)
    train_s = time.perf_counter() - t
    acc = evaluate_accuracy(model, test)
    print(
        f"LeNet trained on {len(train)} MNIST images, {epochs} epoch(s), {train_s:.0f} s: "
        f"test accuracy {100 * acc:.2f}% (10k)"
    )

    fper = SensitiveSampleFingerprinter(
        n_queries=10, pool_size=bag, steps=steps, selection="manc", specs=SPECS, seed=args.seed
    )
    t = time.perf_counter()
    fp = fper.fingerprint(model, test)
    fp_s = time.perf_counter() - t
    print(f"fingerprint: 10 of a bag of {bag} sensitive samples ({steps} steps), MANC: {fp_s:.0f} s")

    rows: list[dict[str, Any]] = []
    results: dict[str, AttackResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "intact.onnx", model.config.input_shape)
        intact = {
            "torch": verdicts(fp, TorchTarget(model)),
            "onnx": verdicts(fp, OnnxTarget(onnx_path)),
        }
        for where, v in intact.items():
            print(f"intact model ({where}): " + ", ".join(f"{s} {cell(v[s])}" for s in SPECS))

        for case in CASES:
            base = model if case.base is None else results[case.base].model
            assert base is not None
            attack_train = train if case.train_subset is None else train.subset(slice(0, case.train_subset))
            t = time.perf_counter()
            res = run_attack(case.kind, base, case.params, train=attack_train, test=test, seed=args.seed)
            seconds = time.perf_counter() - t
            results[case.label] = res
            metrics = dict(res.record["metrics"])
            if case.base is not None and "attack_success_rate" not in metrics:
                metrics["attack_success_rate"] = inherited_asr(results[case.base], res, test)
                metrics["attack_success_rate_of"] = case.base
            row = {
                "label": case.label,
                "attack": case.kind,
                "params": case.params,
                "base": case.base or "original",
                "train_inputs": len(attack_train),
                "lineage": res.lineage_str,
                "accuracy_before": metrics.pop("accuracy_before"),
                "accuracy_after": metrics.pop("accuracy_after"),
                "attack_success_rate": metrics.pop("attack_success_rate", None),
                "metrics": metrics,
                "seconds": seconds,
                "verify": verdicts(fp, res.target()),
            }
            rows.append(row)
            acc_cell = fmt_acc(row["accuracy_before"], row["accuracy_after"])
            top1 = cell(row["verify"]["top1"])
            print(f"  {case.label}: {acc_cell}, top1 {top1}, {seconds:.1f} s", flush=True)

    print()
    print_table(rows)
    for r in rows:
        if "attack_success_rate_of" in r["metrics"]:
            print(f"({r['label']}: ASR = {r['metrics']['attack_success_rate_of']}'s success rate after it)")
    detected = [r["label"] for r in rows if r["verify"]["top1"]["status"] == Status.TAMPERED.value]
    missed = [r["label"] for r in rows if r["label"] not in detected]
    print(
        f"\ntop-1, 10-sample fingerprint: {len(detected)}/{len(rows)} attacked models detected as "
        f"tampered; missed: {', '.join(missed) or 'none'}"
    )
    any_spec = [r["label"] for r in rows if any(v["status"] == "tampered" for v in r["verify"].values())]
    print(f"any spec: {len(any_spec)}/{len(rows)} detected")
    false_alarms = [f"{w} {s}" for w, v in intact.items() for s in SPECS if v[s]["status"] != "intact"]
    alarms = f" ({', '.join(false_alarms)})" if false_alarms else ""
    print(f"intact model (torch + ONNX), every spec: {'FAIL' if false_alarms else 'PASS'}{alarms}")
    troj = next(r for r in rows if r["label"] == "trojan")
    drop = 100 * (troj["accuracy_before"] - troj["accuracy_after"])
    ok = troj["attack_success_rate"] >= 0.9 and drop <= 2.0
    print(
        f"trojan: trigger success {100 * troj['attack_success_rate']:.1f}% (>= 90%), "
        f"clean drop {drop:.2f} pp (<= 2 pp): {'PASS' if ok else 'FAIL'}"
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
            "train_epochs": epochs,
            "test_inputs": len(test),
            "fingerprinter": fper.get_params(),
            "specs": list(SPECS),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "model": {"arch": "lenet", "test_accuracy": acc, "train_seconds": train_s},
        "fingerprint": {"seconds": fp_s, "provenance": fp.provenance},
        "intact": intact,
        "rows": rows,
        "summary": {
            "detected_top1": detected,
            "missed_top1": missed,
            "detected_any_spec": any_spec,
            "intact_false_alarms": false_alarms,
            "trojan_pass": ok,
        },
        "total_seconds": total_s,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
