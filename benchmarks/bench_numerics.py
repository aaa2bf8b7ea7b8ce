"""False alarms and detection cost of declared serving numerics (issue 20): a fingerprint declared for
``cpu-fp32`` vs one declared for ``gpu-tf32``, on scikit-learn digits (or ``--data mnist``).

    .venv/bin/python benchmarks/bench_numerics.py                  # digits LeNet, about 4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_numerics.py --data mnist     # MNIST from ../shared/data/mnist
    .venv/bin/python benchmarks/bench_numerics.py --quick          # smaller pools, 1 attack seed

Every pool of the digits experiment (examples/digits.toml: natural inputs, sensitive samples, the four
TamperNN marker strategies) is generated once; the stable filter (:meth:`Method.stable`) then runs for
each declaration (cpu-fp32, gpu-tf32) and each output spec on its own (top1, top1-p2, top1-p4: a
fingerprint valid for that spec). Prints

1. the noise every environment of :data:`nnseal.numerics.ENVIRONMENTS` puts on each raw pool;
2. the false-alarm matrix: the intact model's changed answers over the *whole stable pool*, per
   method × declaration × spec × environment (GPU environments emulated on CPU unless CUDA is there);
3. the detection cost: queries needed at missing rate α (exact for random selection; MANC / flip-rate
   orders within random bags, as the evaluation harness does) for the digits experiment's attacks;
4. whether a 20-query fingerprint declared for gpu-tf32 can be made per method and spec (or the error
   it raises) and that it verifies intact under TF32.

Writes benchmarks/results/bench_numerics[-mnist][-quick].json with the config, seeds and all numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info

from nnseal._io import atomic_write_text
from nnseal.attacks import run_attack
from nnseal.errors import NnsealError
from nnseal.evaluation import config_from_dict
from nnseal.evaluation.experiment import Selection, _orders, load_data, methods_from_config, selections
from nnseal.evaluation.stats import first_detection, missing_rate_exact, missing_rate_ordered, queries_needed
from nnseal.fingerprint import Fingerprint
from nnseal.methods import Method, Pool
from nnseal.models import train_model
from nnseal.models.train import evaluate_accuracy
from nnseal.numerics import ENVIRONMENTS, environment_target, measure
from nnseal.outputs import OutputSpec
from nnseal.report import markdown_table
from nnseal.verification import Status, verify

HERE = Path(__file__).resolve().parent
DECLARED = ("cpu-fp32", "gpu-tf32")
SPECS = ("top1", "top1-p2", "top1-p4")
ALPHAS = (1e-2, 1e-4)
ATTACKS = [  # examples/digits.toml
    {"name": "trojan", "kind": "trojan", "params": {}},
    {"name": "poison-generic", "kind": "poison-generic", "params": {"source": 3}},
    {"name": "poison-specific", "kind": "poison-specific", "params": {"source": 3, "target": 8}},
    {"name": "compression-8bit", "kind": "quantize-bits", "params": {"bits": 8}},
]


def config(data: str, root: str | None, quick: bool) -> dict:
    """The digits experiment's pools (examples/digits.toml), as a harness config."""
    return {
        "name": f"numerics-{data}" + ("-quick" if quick else ""),
        "seed": 0,
        "data": {"name": data, "root": root, "train_subset": 10000 if data == "mnist" else 0},
        "model": {"arch": "lenet", "epochs": 3 if data == "mnist" else 20},
        "fingerprint": {"pool": 150 if quick else 300, "bag": 100, "steps": 300, "natural_pool": 300},
        "markers": {
            "strategies": ["adversarial", "bisection", "flip-rate", "hybrid"],
            "pool": 150 if quick else 300,
        },
        "evaluation": {
            "specs": list(SPECS),
            "n_max": 100,
            "alphas": list(ALPHAS),
            "manc_bags": 20,
            "seeds_per_attack": 1 if quick else 2,
        },
        "attacks": ATTACKS,
    }


def declared(method: Method, serving: str, spec: str) -> Method:
    """The same method (same candidates) declared for ``serving`` and valid for ``spec`` alone."""
    out = copy.copy(method)
    out.serving, out.specs, out.n_queries = [serving], [OutputSpec.parse(spec)], 20
    return out


def needed(
    sel: Selection, method: Method, pool: Pool, detections: list[np.ndarray], bags: int, seed: int
) -> dict:
    """Queries needed at each α for one selection of one stable pool, from each attacked model's
    detection vector over the pool."""
    n_max = min(100, len(pool))
    if n_max == 0:
        return {f"{a:g}": None for a in ALPHAS}
    if sel.mode == "random":
        curve = np.mean([missing_rate_exact(len(pool), int(d.sum()), n_max) for d in detections], axis=0)
    else:
        rng = np.random.default_rng(seed)
        orders = _orders({sel.pool: method}, {sel.pool: pool}, [sel], n_max, bags, 100, rng)[sel.name]
        curve = missing_rate_ordered(
            np.array([first_detection(o, d) for d in detections for o in orders]), n_max
        )
    return {f"{a:g}": queries_needed(curve, a) for a in ALPHAS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--root", default=None, help="dataset folder (mnist: ../shared/data/mnist)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    root = args.root or (
        str(HERE.parent.parent / "shared" / "data" / "mnist") if args.data == "mnist" else None
    )
    raw = config(args.data, root, args.quick)
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    train, test = load_data(cfg)
    model = train_model(train, cfg.model.arch, epochs=cfg.model.epochs, seed=cfg.seed, progress=False)
    accuracy = evaluate_accuracy(model, test)
    timings: dict[str, float] = {"train_s": time.perf_counter() - t0}

    # candidates once per method, exactly as Method.pool draws them
    methods = dict(methods_from_config(cfg))
    raw_pools: dict[str, Pool] = {}
    for name, method in methods.items():
        t = time.perf_counter()
        raw_pools[name] = method.candidates(model.eval(), test, np.random.default_rng(method.seed))
        timings[f"candidates_{name}_s"] = time.perf_counter() - t

    # 1. noise of every environment on every raw pool
    t = time.perf_counter()
    envs = list(ENVIRONMENTS)
    noise_rows, pool_noise, raw_measured = [], {}, {}
    for name, p in raw_pools.items():
        m = raw_measured[name] = measure(model, p.x, envs, SPECS, reference=p.probs)
        pool_noise[name] = {"noise": m.by_environment(), "changed_answers": m.changed_by_environment()}
        noise_rows.append([name, len(p), *(f"{m.by_environment()[e]:.2g}" for e in envs)])
    timings["noise_s"] = time.perf_counter() - t

    # 2. stable pools per declaration × spec, and the false-alarm matrix over each whole stable pool
    t = time.perf_counter()
    stable: dict[tuple[str, str, str], tuple[Method, Pool]] = {}
    matrix, matrix_rows = [], []
    for name, method in methods.items():
        for serving in DECLARED:
            for spec in SPECS:
                m = declared(method, serving, spec)
                candidates = copy.deepcopy(raw_pools[name])
                candidates.details["raw_index"] = np.arange(len(candidates))
                pool = m.stable(model, candidates)
                stable[name, serving, spec] = m, pool
                # the intact model's answers on the stable pool's members, from the raw pool's run
                idx, col, m_raw = pool.details["raw_index"], SPECS.index(spec), raw_measured[name]
                changed = {
                    env: int(
                        np.any(
                            [m_raw.changed[k][idx, col] for k, e in m_raw.setups.items() if e == env], axis=0
                        ).sum()
                    )
                    for env in envs
                }
                matrix.append({"pool": name, "declared": serving, "spec": spec, "kept": len(pool),
                               "candidates": len(raw_pools[name]), "changed_answers": changed})  # fmt: skip
                matrix_rows.append([name, serving, spec, f"{len(pool)}/{len(raw_pools[name])}",
                                    *(changed[e] for e in envs)])  # fmt: skip
    timings["false_alarms_s"] = time.perf_counter() - t

    # 3. detection cost: each attacked model answers every raw candidate once
    t = time.perf_counter()
    detections: dict[tuple[str, str, str, str], list[np.ndarray]] = {}
    attack_records = []
    for attack in ATTACKS:
        for k in range(cfg.evaluation.seeds_per_attack):
            seed = cfg.seed + 1000 * k
            result = run_attack(attack["kind"], model, attack["params"], train=train, test=test, seed=seed)
            attack_records.append({"attack": attack["name"], "seed": seed, "lineage": result.lineage_str})
            target = result.target()
            answers = {name: target.predict(p.x) for name, p in raw_pools.items()}
            for (name, serving, spec), (_, pool) in stable.items():
                s = OutputSpec.parse(spec)
                idx = pool.details["raw_index"]
                d = (s.encode(pool.probs) != s.encode(answers[name][idx])).any(axis=1)
                detections.setdefault((attack["name"], name, serving, spec), []).append(d)
    cost, cost_rows = [], []
    sels = selections({name: raw_pools[name] for name in raw_pools})
    for attack in ATTACKS:
        for sel in sels:
            row = [attack["name"], sel.name]
            for spec in ("top1", "top1-p4"):
                for serving in DECLARED:
                    m, pool = stable[sel.pool, serving, spec]
                    mode = (
                        sel
                        if (sel.mode == "random" or pool.cover is not None)
                        else Selection(sel.name, sel.pool, "random")
                    )
                    n = needed(mode, m, pool, detections[attack["name"], sel.pool, serving, spec],
                               cfg.evaluation.manc_bags, cfg.seed + 1)  # fmt: skip
                    cost.append({"attack": attack["name"], "selection": sel.name, "spec": spec,
                                 "declared": serving, "pool": len(pool), "queries_needed": n})  # fmt: skip
                    row.append(f"{n['0.0001'] or '—'} ({len(pool)})")
            cost_rows.append(row)
    timings["attacks_s"] = time.perf_counter() - t

    # 4. shipped 20-query fingerprints declared for gpu-tf32, verified under TF32
    shipped, shipped_rows = [], []
    tf32 = environment_target(model, "gpu-tf32")
    for name in methods:
        for spec in SPECS:
            m, pool = stable[name, "gpu-tf32", spec]
            try:
                if len(pool) < m.n_queries:
                    raise NnsealError(m._too_few(pool))
                chosen = pool.subset(m.select(pool, m.n_queries, np.random.default_rng(m.seed)))
                fp = Fingerprint(chosen.x, chosen.probs, [spec], "bench", m.name, serving=["gpu-tf32"])
                verdict = verify(fp, tf32, spec)
                outcome = f"{verdict.status.value} ({len(verdict.mismatches)}/{len(fp)})"
                ok = verdict.status is Status.INTACT
            except NnsealError as e:
                outcome, ok = f"refused: {str(e)[:90]}…", None
            shipped.append({"pool": name, "spec": spec, "outcome": outcome, "intact": ok})
            shipped_rows.append([name, spec, outcome])
    total = time.perf_counter() - t0

    print(f"{args.data} LeNet, test accuracy {accuracy:.2%}; GPU environments "
          f"{'on CUDA' if torch.cuda.is_available() else 'emulated on CPU'}\n")  # fmt: skip
    print("Largest noise (relative, margin units of top1/top1-p2/top1-p4) per environment on each raw pool")
    print(markdown_table(["pool", "candidates", *envs], noise_rows))
    print("\nFalse alarms: the intact model's changed answers over the whole stable pool (kept/candidates)")
    print(markdown_table(["pool", "declared", "spec", "kept", *envs], matrix_rows))
    print("\nQueries needed at α = 1e-4 (stable pool size); — = not reached within min(100, pool)")
    heads = [f"{s} {d}" for s in ("top1", "top1-p4") for d in DECLARED]
    print(markdown_table(["attack", "selection", *heads], cost_rows))
    print("\n20-query fingerprints declared for gpu-tf32, verified under gpu-tf32")
    print(markdown_table(["pool", "spec", "verdict under gpu-tf32"], shipped_rows))
    print(f"\ntotal {total:.0f} s on {args.threads} threads")
    out = (
        HERE
        / "results"
        / (
            "bench_numerics"
            + ("-mnist" if args.data == "mnist" else "")
            + ("-quick" if args.quick else "")
            + ".json"
        )
    )
    summary = {
        "config": raw,
        "declared": DECLARED,
        "specs": SPECS,
        "alphas": ALPHAS,
        "seeds": {
            "experiment": cfg.seed,
            "attacks": [a["seed"] for a in attack_records],
            "orders": cfg.seed + 1,
        },
        "accuracy": accuracy,
        "cuda": torch.cuda.is_available(),
        "pool_noise": pool_noise,
        "false_alarms": matrix,
        "detection_cost": cost,
        "shipped_gpu_tf32": shipped,
        "attacks": attack_records,
        "timings": timings,
        "seconds": total,
        "threads": args.threads,
        "machine": machine_info(load),
    }
    atomic_write_text(out, json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
