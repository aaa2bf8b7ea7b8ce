"""Benchmark: parasitic layers (``nnseal.protect``) against exact and learning-based extraction.

1. Trains two digits MLPs (scikit-learn digits, 1,437 training / 360 test images, 30 epochs, seed
   ``--seed``): one hidden layer of 64 and two hidden layers (64, 32).
2. Protects each with one noisy-identity parasitic layer after the first hidden ReLU (``at=(1,)``,
   the default) and one at the input (``at=(0,)``); width twice the activations, noise 0.05,
   100 epochs.
3. For every model (unprotected and protected): test accuracy, top-1 agreement with the unprotected
   model on the test split, inference latency (torch float32, 1 thread: batch 1 and batch 360,
   medians), parameter count; then the attacks, each against the model as a black box:
   - ``exact``: :func:`nnseal.attacks.extraction.extract_mlp` on a float64 logit oracle, by an
     attacker who assumes the public (unprotected) architecture — least squares for one hidden
     layer, regression (5,000 noise queries, 20 epochs) for two. Rows: first-layer neurons
     recovered (|cos| ≥ 0.999) of the *original* network and of the layer the input actually meets
     first, top-1 agreement and max logit error of the reconstruction on the test split, queries,
     seconds;
   - ``exact adaptive`` (protected models only): the same attacker told the protected architecture
     (regression over all the ReLU layers after the first);
   - ``distill`` (718 training images, the attack's defaults), ``distill noise`` (uniform noise at
     the exact attack's query count capped at 10,000, 2 epochs) and ``extract-labels`` (500 images):
     top-1 agreement with the attacked model on the test split, queries.

Prints an aligned table and writes everything to ``benchmarks/results/bench_protect.json``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_protect.py     # about 5 min on 2 idle cores (more when busy)

Options: ``--seed`` (default 0), ``--threads`` (default 2), ``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine_info, print_table, write_report
from torch import nn

from nnseal.attacks import run_attack
from nnseal.attacks.extraction import extract_mlp, fidelity, first_layer, model_oracle, neuron_recovery
from nnseal.data import load_dataset
from nnseal.errors import ModelError
from nnseal.models import Classifier, build_model
from nnseal.models.train import config_for, evaluate_accuracy, fit, predict_logits
from nnseal.protect import protect

REPO = Path(__file__).resolve().parents[1]
TRAIN_EPOCHS = 30
MODELS = {"mlp-64": (64,), "mlp-64-32": (64, 32)}
PROTECTIONS = {"at 1": {"at": (1,)}, "at 0": {"at": (0,)}}
PROTECT = {"noise": 0.05, "epochs": 100}
NOISE_CAP = 10_000  # distill on noise: at most this many queries (time on 2 busy cores)
EXACT = {"lines": 4, "min_hits": 2, "radius": 200.0, "segments": 512, "fit_epochs": 20}
REGRESSION_QUERIES = 5000  # fit inputs of the regression (two or more hidden layers)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="owner seed; the attacker uses seed + 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_protect.json")
    return p.parse_args()


def relu_widths(model: Classifier) -> list[int]:
    """Widths of the Linear layers followed by a ReLU, in order: the MLP the attacker would face."""
    mods = [m for m in model.features.modules() if not isinstance(m, nn.Sequential)]
    pairs = itertools.pairwise(mods)
    return [m.out_features for m, nxt in pairs if isinstance(m, nn.Linear) and isinstance(nxt, nn.ReLU)]


def latency(model: nn.Module, x: np.ndarray) -> dict[str, float]:
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = {}
    with torch.no_grad():
        for name, batch, reps in (("batch1_us", xt[:1], 300), ("batch360_us", xt, 50)):
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - t)
            out[name] = 1e6 * statistics.median(times)
    return out


def exact(model: Classifier, hidden_after: tuple[int, ...], test_x: np.ndarray, seed: int) -> dict[str, Any]:
    oracle = model_oracle(model)
    t = time.perf_counter()
    try:
        ext = extract_mlp(
            oracle,
            hidden_after=hidden_after,
            seed=seed,
            fit_queries=REGRESSION_QUERIES if hidden_after else 0,
            **EXACT,
        )  # type: ignore[arg-type]
    except ModelError as e:  # no first-layer hyperplane confirmed: the attack failed outright
        return {"hidden_after": list(hidden_after), "error": str(e), "host_recovery": 0.0,
                "first_layer_recovery": 0.0, "agreement": 0.0, "queries": oracle.queries,
                "seconds": time.perf_counter() - t}  # fmt: skip
    print(f"    exact {hidden_after}: {ext.seconds:.1f} s", flush=True)
    host_w, _ = first_layer(model, host=True)
    outer_w, _ = first_layer(model, host=False)
    return {
        "hidden_after": list(hidden_after),
        "rows_recovered": len(ext.weights),
        "host_recovery": neuron_recovery(host_w, ext.weights),
        "first_layer_recovery": neuron_recovery(outer_w, ext.weights),
        **fidelity(ext, oracle, test_x),
        "queries": ext.total_queries,
        "queries_by_phase": ext.queries,
        "seconds": ext.seconds,
        "stats": ext.stats,
    }


def learning(model: Classifier, train: Any, test: Any, seed: int, budget: int) -> dict[str, Any]:
    out = {}
    for label, name, params in (
        ("distill", "distill", {}),
        ("distill noise", "distill", {"source": "noise", "budget": min(budget, NOISE_CAP), "epochs": 2.0}),
        ("extract-labels", "extract-labels", {}),
    ):
        t = time.perf_counter()
        res = run_attack(name, model, params, train=train, test=test, seed=seed)
        print(f"    {label}: {time.perf_counter() - t:.1f} s", flush=True)
        m = res.record["metrics"]
        out[label] = {"params": params, "fidelity": m["fidelity"], "queries": m["queries"],
                      "accuracy_after": m["accuracy_after"], "seconds": time.perf_counter() - t}  # fmt: skip
    return out


def print_results(rows: list[dict[str, Any]]) -> None:
    header = ["model", "acc %", "agree %", "params", "lat b1 µs", "lat b360 µs", "attack", "host rec %",
              "1st rec %", "fidelity %", "max logit err", "queries", "time s"]  # fmt: skip
    lines = [header]
    for r in rows:
        first = True
        for a in r["attacks"]:
            lat = r["latency"]
            base = [r["label"], f"{100 * r['accuracy']:.1f}", f"{100 * r['agreement']:.1f}",
                    str(r["parameters"]), f"{lat['batch1_us']:.0f}", f"{lat['batch360_us']:.0f}"]  # fmt: skip
            base = base if first else [""] * 6
            first = False
            lines.append(
                [
                    *base,
                    a["attack"],
                    f"{100 * a['host_recovery']:.1f}" if "host_recovery" in a else "-",
                    f"{100 * a['first_layer_recovery']:.1f}" if "first_layer_recovery" in a else "-",
                    f"{100 * a['fidelity']:.2f}",
                    f"{a['max_logit_error']:.2g}" if "max_logit_error" in a else "-",
                    str(a["queries"]),
                    f"{a['seconds']:.1f}",
                ]
            )
    print_table(header, lines[1:], right=[j for j in range(len(header)) if j not in (0, 6)])


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    attacker = args.seed + 1
    rows: list[dict[str, Any]] = []
    for name, hidden in MODELS.items():
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            base = build_model(config_for(train, "mlp", hidden=hidden))
        fit(base, train.x, train.y, epochs=TRAIN_EPOCHS, seed=args.seed)
        reference = predict_logits(base, test.x).argmax(1).numpy()
        variants: list[tuple[str, Classifier, dict[str, Any], float]] = [(name, base, {}, 0.0)]  # type: ignore[list-item]
        for pname, pparams in PROTECTIONS.items():
            t = time.perf_counter()
            prot = protect(base, train, **pparams, **PROTECT, seed=args.seed)  # type: ignore[arg-type]
            variants.append((f"{name} {pname}", prot, pparams, time.perf_counter() - t))
        for label, model, pparams, protect_s in variants:
            torch.set_num_threads(1)
            lat = latency(model, test.x)
            torch.set_num_threads(args.threads)
            row: dict[str, Any] = {
                "label": label,
                "hidden": list(hidden),
                "protection": {k: list(v) for k, v in pparams.items()},
                "parasitic": [list(p) for p in model.config.parasitic],
                "protect_seconds": protect_s,
                "accuracy": evaluate_accuracy(model, test),
                "agreement": float((predict_logits(model, test.x).argmax(1).numpy() == reference).mean()),
                "parameters": sum(p.numel() for p in model.parameters()),
                "latency": lat,
                "attacks": [],
            }
            naive = exact(model, hidden[1:], test.x, attacker)
            row["attacks"].append({"attack": "exact", **naive, "fidelity": naive["agreement"]})
            if model.config.parasitic:
                adaptive = tuple(relu_widths(model)[1:])
                a = exact(model, adaptive, test.x, attacker)
                row["attacks"].append({"attack": "exact adaptive", **a, "fidelity": a["agreement"]})
            for label2, r in learning(model, train, test, attacker, naive["queries"]).items():
                row["attacks"].append({"attack": label2, **r})
            rows.append(row)
            print(
                f"{label}: acc {100 * row['accuracy']:.1f}%, agreement {100 * row['agreement']:.1f}%, "
                + ", ".join(f"{a['attack']} fidelity {100 * a['fidelity']:.2f}%" for a in row["attacks"]),
                flush=True,
            )
    print()
    print_results(rows)
    total_s = time.perf_counter() - t_start
    print(
        f"total {total_s:.0f} s (1-min load average at start {load_start[0]:.1f}, "
        f"end {os.getloadavg()[0]:.1f})"
    )
    report = {
        "config": {
            "dataset": "digits",
            "models": {k: list(v) for k, v in MODELS.items()},
            "train_epochs": TRAIN_EPOCHS,
            "protections": {k: {kk: list(vv) for kk, vv in v.items()} for k, v in PROTECTIONS.items()},
            "protect": PROTECT,
            "exact": EXACT,
            "oracle": "float64 copy of the weights, logits, any real input",
            "owner_seed": args.seed,
            "attacker_seed": attacker,
            "threads": args.threads,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
        },
        "rows": rows,
        "total_seconds": total_s,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
