"""Methods × attacks × query budgets × output specs on one dataset: the SSF paper's Tables 3–5.

What a repetition re-draws:
* attacked model — every attack runs with ``seeds_per_attack`` seeds; each curve averages over them;
* natural and SS + random — the N queries, drawn without replacement from the pool (a random bag
  of a random pool is a random draw from the pool); computed exactly (hypergeometric);
* SS + MANC — the bag (``bag`` candidates drawn from the pool, ``manc_bags`` times); MANC's picks are
  then deterministic, so each (bag, attacked model) pair is one exact outcome.
* TamperNN markers (``[markers] strategies``) — one pool per strategy, random selection (exact), except
  flip-rate markers, ordered by perturbation coverage within bags like MANC.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nnseal import __version__
from nnseal.attacks import run_attack
from nnseal.data import Dataset, load_dataset
from nnseal.evaluation.config import ExperimentConfig
from nnseal.evaluation.stats import (
    first_detection,
    missing_rate_exact,
    missing_rate_monte_carlo,
    missing_rate_ordered,
    queries_needed,
)
from nnseal.fingerprint import Fingerprint
from nnseal.methods.manc import manc_select, relu_activations
from nnseal.methods.markers import MarkerGenerator, measure_noise
from nnseal.methods.sensitive import SensitiveSampleGenerator
from nnseal.models import Classifier, export_onnx, load_model, model_id, train_model
from nnseal.models.train import evaluate_accuracy
from nnseal.outputs import OutputSpec
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.verify import Status, verify

SELECTIONS = (
    "natural",
    "ss-random",
    "ss-manc",
)  # always evaluated; marker selections are "marker-<strategy>"


@dataclass
class Pools:
    """Candidate queries with the intact model's answers; rows failing the margin are dropped."""

    natural: np.ndarray
    natural_probs: np.ndarray
    sensitive: np.ndarray
    sensitive_probs: np.ndarray
    seeds: np.ndarray
    active: np.ndarray  # ReLU activity of each sensitive sample on the intact model, for MANC
    generation_s: float
    markers: dict[str, MarkerPool] = field(default_factory=dict)  # "marker-<strategy>" → pool


@dataclass
class MarkerPool:
    x: np.ndarray
    probs: np.ndarray
    cover: np.ndarray | None  # flip-rate: which simulated perturbations flip each marker
    noise: dict[str, float]
    margin: float
    candidates: int
    generation_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "pool": len(self.x),
            "candidates": self.candidates,
            "max_noise": max(self.noise.values()),
            "margin": self.margin,
            "generation_s": self.generation_s,
        }


@dataclass
class Results:
    config: dict[str, Any]
    model_accuracy: float
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # attack→sel→spec
    needed: dict[str, dict[str, dict[str, dict[str, int | None]]]] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    monte_carlo: list[dict[str, Any]] = field(default_factory=list)
    markers: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolution: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


def _keep_stable(probs: np.ndarray, specs: list[OutputSpec], min_margin: float) -> np.ndarray:
    return np.min([s.margin(probs) for s in specs], axis=0) >= min_margin


def build_pools(model: Classifier, test: Dataset, cfg: ExperimentConfig, progress: bool) -> Pools:
    """Natural inputs and sensitive samples from seeded random test inputs, margin-filtered."""
    fp, specs = cfg.fingerprint, [OutputSpec.parse(s) for s in cfg.evaluation.specs]
    rng = np.random.default_rng(cfg.seed)
    natural = test.x[rng.choice(len(test), min(fp.natural_pool, len(test)), replace=False)]
    seeds = test.x[rng.choice(len(test), min(fp.pool, len(test)), replace=False)]
    t0 = time.perf_counter()
    gen = SensitiveSampleGenerator(
        epsilon=fp.epsilon, norm=fp.norm, lr=fp.lr, steps=fp.steps, progress=progress
    )  # type: ignore[arg-type]
    sensitive = gen.generate(model, seeds).x
    generation_s = time.perf_counter() - t0
    target = TorchTarget(model)
    nat_p, sen_p = target.predict(natural), target.predict(sensitive)
    keep_n, keep_s = _keep_stable(nat_p, specs, fp.min_margin), _keep_stable(sen_p, specs, fp.min_margin)
    sensitive = sensitive[keep_s]
    pools = Pools(
        natural[keep_n],
        nat_p[keep_n],
        sensitive,
        sen_p[keep_s],
        seeds[keep_s],
        relu_activations(model, sensitive),
        generation_s,
    )
    mk, ev = cfg.markers, cfg.evaluation
    for strategy in mk.strategies:
        t0 = time.perf_counter()
        marker_seeds = test.x[rng.choice(len(test), min(mk.pool, len(test)), replace=False)]
        generator = MarkerGenerator(
            strategy,  # type: ignore[arg-type]
            eps=mk.eps,
            pgd_steps=mk.pgd_steps,
            target_margin=mk.target_margin,
            backoff=mk.backoff,
            ss_steps=mk.ss_steps,
            ss_epsilon=fp.epsilon,
            seed=cfg.seed,
        )
        markers = generator.generate(model, marker_seeds)
        probs = target.predict(markers.x)
        noise = measure_noise(
            model, markers.x, batch_sizes=ev.false_alarm_batch_sizes, threads=ev.false_alarm_threads
        )
        margin = max(fp.min_margin, mk.noise_factor * max(noise.values()))
        keep = _keep_stable(probs, specs, margin)
        pools.markers[f"marker-{strategy}"] = MarkerPool(
            markers.x[keep],
            probs[keep],
            None if markers.flips is None else markers.flips[keep],
            noise,
            margin,
            len(markers.x),
            time.perf_counter() - t0,
        )
    return pools


def selections(pools: Pools) -> list[tuple[str, str, str]]:
    """(selection name, pool name, "random" | "ordered") for every selection evaluated."""
    out = [
        ("natural", "natural", "random"),
        ("ss-random", "sensitive", "random"),
        ("ss-manc", "sensitive", "ordered"),
    ]
    out += [(name, name, "random" if p.cover is None else "ordered") for name, p in pools.markers.items()]
    return out


def _pool_arrays(pools: Pools) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pool name → (queries, the intact model's answers)."""
    arrays = {
        "natural": (pools.natural, pools.natural_probs),
        "sensitive": (pools.sensitive, pools.sensitive_probs),
    }
    arrays.update({name: (p.x, p.probs) for name, p in pools.markers.items()})
    return arrays


def _detects(spec: OutputSpec, expected: np.ndarray, answers: np.ndarray) -> np.ndarray:
    return (spec.encode(expected) != spec.encode(answers)).any(axis=1)


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> tuple[Results, Pools]:
    """Run everything the config asks for; returns results (JSON-ready) and the pools (for images)."""
    t_start = time.perf_counter()
    ev, specs = cfg.evaluation, [OutputSpec.parse(s) for s in cfg.evaluation.specs]
    train = load_dataset(cfg.data.name, cfg.data.root, "train")
    test = load_dataset(cfg.data.name, cfg.data.root, "test")
    if cfg.data.train_subset:
        pick = np.random.default_rng(cfg.seed).choice(
            len(train), min(cfg.data.train_subset, len(train)), replace=False
        )
        train = train.subset(np.sort(pick))
    model = (
        load_model(cfg.model.path)
        if cfg.model.path
        else train_model(train, cfg.model.arch, epochs=cfg.model.epochs, seed=cfg.seed, progress=progress)
    )
    results = Results(config=cfg.to_dict(), model_accuracy=evaluate_accuracy(model, test))
    results.environment = {
        "nnseal": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
        "machine": platform.machine(),
    }
    results.timings["train_s"] = time.perf_counter() - t_start
    pools = build_pools(model, test, cfg, progress)
    results.timings["generation_s"] = pools.generation_s
    arrays, sels = _pool_arrays(pools), selections(pools)
    n_max = min(ev.n_max, *(len(x) for x, _ in arrays.values()))
    results.resolution = {
        "pool_sensitive": len(pools.sensitive),
        "pool_natural": len(pools.natural),
        "n_max": n_max,
    }
    results.markers = {name: p.summary() for name, p in pools.markers.items()}
    cover = {"ss-manc": pools.active, **{n: p.cover for n, p in pools.markers.items() if p.cover is not None}}
    rng = np.random.default_rng(cfg.seed + 1)
    orders: dict[str, list[np.ndarray]] = {}
    for sel, matrix in cover.items():
        bag = min(cfg.fingerprint.bag, len(matrix))
        orders[sel] = []
        for _ in range(ev.manc_bags):
            members = np.sort(rng.choice(len(matrix), bag, replace=False))
            orders[sel].append(members[manc_select(matrix[members], min(n_max, bag))])

    results.false_alarms = _false_alarms(model, pools, specs, ev, Path(cfg.out), cfg.seed)
    t0 = time.perf_counter()
    for attack in tqdm(cfg.attacks, desc="attacks", disable=not progress):
        detections: dict[str, list[dict[str, np.ndarray]]] = {str(s): [] for s in specs}
        for k in range(ev.seeds_per_attack):
            seed = cfg.seed + 1000 * k
            result = run_attack(
                attack.kind,
                model,
                attack.params,
                train=train,
                test=test,
                seed=seed,
                workdir=Path(cfg.out) / "attacked" / f"{attack.name}-{k}",
            )
            target = result.target()
            answers = {name: target.predict(x) for name, (x, _) in arrays.items()}
            results.attacks.append(
                {
                    "attack": attack.name,
                    "seed": seed,
                    "lineage": result.lineage_str,
                    "metrics": result.record["metrics"],
                }
            )
            for s in specs:
                detections[str(s)].append(
                    {name: _detects(s, arrays[name][1], a) for name, a in answers.items()}
                )
        results.curves[attack.name], results.needed[attack.name] = _curves(
            detections, sels, orders, n_max, ev.alphas
        )
        if ev.monte_carlo_repetitions:
            results.monte_carlo += _monte_carlo_check(attack.name, detections, ev, cfg.seed)
    results.resolution["manc_trials"] = ev.manc_bags * ev.seeds_per_attack
    results.timings["attacks_and_evaluation_s"] = time.perf_counter() - t0
    results.timings["total_s"] = time.perf_counter() - t_start
    return results, pools


def _curves(
    detections: dict[str, list[dict[str, np.ndarray]]],
    sels: list[tuple[str, str, str]],
    orders: dict[str, list[np.ndarray]],
    n_max: int,
    alphas: list[float],
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, dict[str, int | None]]]]:
    curves: dict[str, dict[str, list[float]]] = {sel: {} for sel, _, _ in sels}
    for spec, per_model in detections.items():
        for sel, pool, mode in sels:
            if mode == "random":
                curve = np.mean(
                    [missing_rate_exact(len(d[pool]), int(d[pool].sum()), n_max) for d in per_model], axis=0
                )
            else:
                firsts = [first_detection(order, d[pool]) for d in per_model for order in orders[sel]]
                curve = missing_rate_ordered(np.array(firsts), n_max)
            curves[sel][spec] = curve.tolist()
    needed = {
        sel: {spec: {f"{a:g}": queries_needed(np.array(c), a) for a in alphas} for spec, c in by_spec.items()}
        for sel, by_spec in curves.items()
    }
    return curves, needed


def _monte_carlo_check(name: str, detections: dict, ev: Any, seed: int) -> list[dict[str, Any]]:
    """Simulate SS + random at top-1 (first spec) for N = 1..5 and compare with the exact value."""
    spec = next(iter(detections))
    rows = []
    ss = [d["sensitive"] for d in detections[spec]]
    for n in range(1, 6):
        exact = float(np.mean([missing_rate_exact(len(d), int(d.sum()), n)[-1] for d in ss]))
        sims = [
            missing_rate_monte_carlo(len(d), int(d.sum()), n, ev.monte_carlo_repetitions, seed=seed + i)
            for i, d in enumerate(ss)
        ]
        rows.append(
            {
                "attack": name,
                "spec": spec,
                "n": n,
                "exact": exact,
                "simulated": float(np.mean(sims)),
                "repetitions": ev.monte_carlo_repetitions,
            }
        )
    return rows


def _false_alarms(
    model: Classifier, pools: Pools, specs: list[OutputSpec], ev: Any, out: Path, seed: int
) -> list[dict[str, Any]]:
    """Query every pool sample on the intact model through each serving setup; any changed answer
    would be a false alarm for a fingerprint containing it. Then verify ``false_alarm_fingerprints``
    random 10-query fingerprints per pool through every setup under every spec with :func:`verify`."""
    onnx = export_onnx(model, out / "intact.onnx", model.config.input_shape)
    targets: list[tuple[str, Target, int]] = [
        (f"torch batch {b} threads {t}", TorchTarget(model, batch_size=b, threads=t), b)
        for b in ev.false_alarm_batch_sizes
        for t in ev.false_alarm_threads
    ]
    targets.append(("onnxruntime", OnnxTarget(onnx), 64))
    rng = np.random.default_rng(seed)
    fingerprints = {
        pool: [
            Fingerprint(x[idx], expected[idx], [str(s) for s in specs], model_id(model), "evaluation")
            for idx in (
                rng.choice(len(x), min(10, len(x)), replace=False) for _ in range(ev.false_alarm_fingerprints)
            )
        ]
        for pool, (x, expected) in _pool_arrays(pools).items()
    }
    rows = []
    for name, target, _ in targets:
        for pool, (x, expected) in _pool_arrays(pools).items():
            answers = target.predict(x)
            verdicts = [verify(fp, target, s).status for fp in fingerprints[pool] for s in specs]
            rows.append(
                {
                    "target": name,
                    "pool": pool,
                    "queries": len(x),
                    "comparisons": len(x) * len(specs),
                    "changed_answers": int(sum(_detects(s, expected, answers).sum() for s in specs)),
                    "verifications": len(verdicts),
                    "not_intact": sum(v is not Status.INTACT for v in verdicts),
                }
            )
    return rows
