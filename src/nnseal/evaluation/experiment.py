"""Methods × attacks × query budgets × output specs on one dataset: the SSF paper's Tables 3–5.

What a repetition re-draws:
* attacked model — every attack runs with ``seeds_per_attack`` seeds; each curve averages over them;
* natural and SS + random — the N queries, drawn without replacement from the pool (a random bag
  of a random pool is a random draw from the pool); computed exactly (hypergeometric);
* SS + MANC — the bag (``bag`` candidates drawn from the pool, ``manc_bags`` times); MANC's picks are
  then deterministic, so each (bag, attacked model) pair is one exact outcome.
* TamperNN markers (``[markers] strategies``) — one pool per strategy, random selection (exact), except
  flip-rate markers, ordered by perturbation coverage within bags like MANC;
* any registered method (``[[methods]]``) — its pool, random or ordered as its pool's cover says.

Every pool and every ordered pick comes from the shipped method (:meth:`Method.pool`,
:meth:`Method.select`), so the harness measures exactly what ``nnseal fingerprint`` makes.
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
from nnseal.detectors import stealth_scores
from nnseal.evaluation.config import ExperimentConfig
from nnseal.evaluation.stats import (
    first_detection,
    missing_rate_exact,
    missing_rate_monte_carlo,
    missing_rate_ordered,
    queries_needed,
)
from nnseal.fingerprint import Fingerprint
from nnseal.methods import (
    METHODS,
    MarkerFingerprinter,
    Method,
    NaturalInputs,
    Pool,
    SensitiveSampleFingerprinter,
)
from nnseal.models import Classifier, export_onnx, load_model, model_id, train_model
from nnseal.models.train import evaluate_accuracy
from nnseal.outputs import OutputSpec
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.verification import Status, verify


@dataclass
class Selection:
    """One column of the tables: a pool and how queries are picked from it — ``random`` (exact,
    hypergeometric) or ``ordered`` (the method's own greedy cover, within random bags)."""

    name: str
    pool: str
    mode: str


@dataclass
class Results:
    config: dict[str, Any]
    model_accuracy: float
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # attack→sel→spec
    needed: dict[str, dict[str, dict[str, dict[str, int | None]]]] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    monte_carlo: list[dict[str, Any]] = field(default_factory=list)
    stealth: dict[str, dict[str, Any]] = field(default_factory=dict)
    markers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolution: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


def methods_from_config(cfg: ExperimentConfig, progress: bool = False) -> list[tuple[str, Method]]:
    """(pool name, shipped method) for every pool the config asks for: natural inputs, sensitive
    samples ([fingerprint]), one marker pool per [markers] strategy, then every [[methods]] entry."""
    fp, mk = cfg.fingerprint, cfg.markers
    common = {
        "n_queries": 1,
        "specs": cfg.evaluation.specs,
        "min_margin": fp.min_margin,
        "serving": fp.serving,
        "seed": cfg.seed,
    }
    out: list[tuple[str, Method]] = [
        ("natural", NaturalInputs(pool_size=fp.natural_pool, **common)),
        (
            "sensitive",
            SensitiveSampleFingerprinter(
                pool_size=fp.pool, selection="manc", steps=fp.steps, lr=fp.lr, epsilon=fp.epsilon,
                norm=fp.norm, progress=progress, **common,  # type: ignore[arg-type]
            ),
        ),
    ]  # fmt: skip
    for strategy in mk.strategies:
        marker = MarkerFingerprinter(
            pool_size=mk.pool, strategy=strategy, epsilon=mk.epsilon, pgd_steps=mk.pgd_steps,
            target_margin=mk.target_margin, backoff=mk.backoff, ss_steps=mk.ss_steps, ss_epsilon=fp.epsilon,
            noise_factor=mk.noise_factor, **common,  # type: ignore[arg-type]
        )  # fmt: skip
        out.append((f"marker-{strategy}", marker))
    for m in cfg.methods:
        out.append((m.label, METHODS[m.name](**{**common, "pool_size": fp.pool, **m.params})))
    return out


def build_pools(model: Classifier, test: Dataset, methods: dict[str, Method]) -> dict[str, Pool]:
    """Every method's margin-filtered candidates, made by the shipped :meth:`Method.pool`."""
    pools = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        pools[name] = method.pool(model, test)
        pools[name].info["generation_s"] = time.perf_counter() - t0
    return pools


def selections(pools: dict[str, Pool]) -> list[Selection]:
    """Random picks from every pool; the method's ordered picks where its pool has a cover
    (sensitive samples: SS + random and SS + MANC, the paper's columns)."""
    out = []
    for name, pool in pools.items():
        if name == "sensitive":
            out += [Selection("ss-random", name, "random"), Selection("ss-manc", name, "ordered")]
        else:
            out.append(Selection(name, name, "random" if pool.cover is None else "ordered"))
    return out


def _orders(
    methods: dict[str, Method], pools: dict[str, Pool], sels: list[Selection], n_max: int, bags: int,
    bag_size: int, rng: np.random.Generator,
) -> dict[str, list[np.ndarray]]:  # fmt: skip
    """Pick orders of the ordered selections: the method's own ``select`` within ``bags`` random bags."""
    orders: dict[str, list[np.ndarray]] = {}
    for sel in (s for s in sels if s.mode == "ordered"):
        pool, bag = pools[sel.pool], min(bag_size, len(pools[sel.pool]))
        orders[sel.name] = []
        for _ in range(bags):
            members = np.sort(rng.choice(len(pool), bag, replace=False))
            picks = methods[sel.pool].select(pool.subset(members), min(n_max, bag), rng)
            orders[sel.name].append(members[picks])
    return orders


def _detects(spec: OutputSpec, expected: np.ndarray, answers: np.ndarray) -> np.ndarray:
    return (spec.encode(expected) != spec.encode(answers)).any(axis=1)


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """The config's train split (its seeded ``train_subset``, when set) and test split."""
    train = load_dataset(cfg.data.name, cfg.data.root, "train")
    test = load_dataset(cfg.data.name, cfg.data.root, "test")
    if cfg.data.train_subset:
        train = train.sample(cfg.data.train_subset, cfg.seed)
    return train, test


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> tuple[Results, dict[str, Pool]]:
    """Run everything the config asks for; returns results (JSON-ready) and the pools (for images)."""
    t_start = time.perf_counter()
    ev, specs = cfg.evaluation, [OutputSpec.parse(s) for s in cfg.evaluation.specs]
    train, test = load_data(cfg)
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
    methods = dict(methods_from_config(cfg, progress))
    pools = build_pools(model, test, methods)
    results.timings["generation_s"] = pools["sensitive"].info["generation_s"]
    sels = selections(pools)
    n_max = min(ev.n_max, *(len(p) for p in pools.values()))
    results.resolution = {
        "pool_sensitive": len(pools["sensitive"]),
        "pool_natural": len(pools["natural"]),
        "n_max": n_max,
    }
    results.pools = {name: _summary(p) for name, p in pools.items()}
    results.markers = {name: results.pools[name] for name in pools if name.startswith("marker-")}
    rng = np.random.default_rng(cfg.seed + 1)
    orders = _orders(methods, pools, sels, n_max, ev.manc_bags, cfg.fingerprint.bag, rng)

    if ev.stealth:
        t0 = time.perf_counter()
        results.stealth = _stealth(
            model, methods, pools, sels, orders, train, test, ev.stealth_queries, cfg.seed
        )
        results.timings["stealth_s"] = time.perf_counter() - t0
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
            )
            target = result.target()
            answers = {name: target.predict(p.x) for name, p in pools.items()}
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
                    {name: _detects(s, pools[name].probs, a) for name, a in answers.items()}
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


def _stealth(
    model: Classifier, methods: dict[str, Method], pools: dict[str, Pool], sels: list[Selection],
    orders: dict[str, list[np.ndarray]], train: Dataset, test: Dataset, first: int, seed: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each selection's detector AUCs: test traffic vs the queries it sends (ordered selections: the
    first ``first`` picks of every bag). The provider trains its statistics detector on pools it makes
    itself with the same method from the training split (another seed)."""
    provider = {n: m.pool(model, train, np.random.default_rng(seed + 7)) for n, m in methods.items()}
    out = {}
    for sel in sels:
        pool = pools[sel.pool]
        if sel.mode == "ordered":
            pool = pool.subset(np.unique(np.concatenate([o[:first] for o in orders[sel.name]])))
        scores = stealth_scores(
            model, test.x, pool.x, levels=test.levels, provider_natural=train.x,
            provider_queries=provider[sel.pool].x, seed=seed,
        )  # fmt: skip
        out[sel.name] = scores.to_dict()
    return out


def _curves(
    detections: dict[str, list[dict[str, np.ndarray]]],
    sels: list[Selection],
    orders: dict[str, list[np.ndarray]],
    n_max: int,
    alphas: list[float],
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, dict[str, int | None]]]]:
    curves: dict[str, dict[str, list[float]]] = {s.name: {} for s in sels}
    for spec, per_model in detections.items():
        for sel, pool, mode in ((s.name, s.pool, s.mode) for s in sels):
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


def _summary(pool: Pool) -> dict[str, Any]:
    noise = pool.info.get("noise") or {"none measured": 0.0}
    return {
        "pool": len(pool),
        "candidates": pool.info["candidates"],
        "max_noise": max(noise.values()),
        "margin": pool.info["noise_margin"],
        "generation_s": pool.info["generation_s"],
    }


def _false_alarms(
    model: Classifier, pools: dict[str, Pool], specs: list[OutputSpec], ev: Any, out: Path, seed: int
) -> list[dict[str, Any]]:
    """Query every pool sample on the intact model through each serving setup; any changed answer
    would be a false alarm for a fingerprint containing it. Then verify ``false_alarm_fingerprints``
    random 10-query fingerprints per pool through every setup under every spec with :func:`verify`."""
    onnx = export_onnx(model, out / "intact.onnx", model.config.input_shape)
    targets: list[tuple[str, Target]] = [
        (f"torch batch {b} threads {t}", TorchTarget(model, batch_size=b, threads=t))
        for b in ev.false_alarm_batch_sizes
        for t in ev.false_alarm_threads
    ]
    targets.append(("onnxruntime", OnnxTarget(onnx)))
    rng = np.random.default_rng(seed)
    fingerprints = {
        name: [
            Fingerprint(p.x[idx], p.probs[idx], [str(s) for s in specs], model_id(model), "evaluation")
            for idx in (
                rng.choice(len(p), min(10, len(p)), replace=False) for _ in range(ev.false_alarm_fingerprints)
            )
        ]
        for name, p in pools.items()
    }
    rows = []
    for name, target in targets:
        for pool_name, p in pools.items():
            answers = target.predict(p.x)
            verdicts = [verify(fp, target, s).status for fp in fingerprints[pool_name] for s in specs]
            rows.append(
                {
                    "target": name,
                    "pool": pool_name,
                    "queries": len(p),
                    "comparisons": len(p) * len(specs),
                    "changed_answers": int(sum(_detects(s, p.probs, answers).sum() for s in specs)),
                    "verifications": len(verdicts),
                    "not_intact": sum(v is not Status.INTACT for v in verdicts),
                }
            )
    return rows
