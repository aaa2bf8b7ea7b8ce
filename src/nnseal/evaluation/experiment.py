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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nnseal import __version__
from nnseal.data import Dataset, load_dataset
from nnseal.detectors import stealth_scores
from nnseal.evaluation import sweep
from nnseal.evaluation.config import AttackConfig, ExperimentConfig
from nnseal.evaluation.stats import (
    CONFIDENCE,
    first_detections,
    missing_rate_exact,
    missing_rate_monte_carlo,
    missing_rate_ordered,
    queries_needed,
    smallest_supported,
    upper_curve,
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

if TYPE_CHECKING:
    from dask.distributed import Client


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
    supported: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # attack→sel→spec
    needed: dict[str, dict[str, dict[str, dict[str, int | None]]]] = field(default_factory=dict)
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
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


def run_experiment(
    cfg: ExperimentConfig, progress: bool = True, scheduler: str | None = None
) -> tuple[Results, dict[str, Pool]]:
    """Run everything the config asks for; returns results (JSON-ready) and the pools (for images).

    ``scheduler`` (``local:N`` or ``tcp://HOST:PORT``, see :mod:`nnseal.evaluation.sweep`) runs the
    pools, serving checks and attacked models as Dask tasks, and everything with one torch thread:
    float results depend on the thread count, and these are a serial run's with one thread
    (``OMP_NUM_THREADS=1``)."""
    if scheduler is None:
        return _run(cfg, progress, None)
    sweep.parse_scheduler(scheduler)  # a bad one fails before anything starts
    t0 = time.perf_counter()
    with sweep.dask_client(scheduler) as client, sweep.torch_threads(1):
        start_s = time.perf_counter() - t0
        results, pools = _run(cfg, progress, client)
    results.timings["cluster_start_s"] = start_s
    return results, pools


def _run(cfg: ExperimentConfig, progress: bool, client: Client | None) -> tuple[Results, dict[str, Pool]]:
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
    methods = dict(methods_from_config(cfg, progress and client is None))  # no bars from workers
    local = sweep.Inputs(model, train, test)
    inputs = sweep.share(client, local)
    jobs = {name: (m, "test", None) for name, m in methods.items()}
    if ev.stealth:  # the provider's own pools (another seed, training split) for its detector
        jobs |= {f"provider {name}": (m, "train", cfg.seed + 7) for name, m in methods.items()}
    made = dict(
        zip(jobs, sweep.run_tasks(client, sweep.generate_pool, list(jobs.values()), inputs), strict=True)
    )
    pools = {name: made[name] for name in methods}
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
    bags = max(ev.manc_bags, *(_seeds(a, ev) for a in cfg.attacks)) if cfg.attacks else ev.manc_bags
    orders = _orders(methods, pools, sels, n_max, bags, cfg.fingerprint.bag, rng)

    if ev.stealth:
        t0 = time.perf_counter()
        provider = {name: made[f"provider {name}"] for name in methods}
        results.stealth = _stealth(
            model, pools, provider, sels, orders, train, test, ev.stealth_queries, cfg.seed
        )
        results.timings["stealth_s"] = time.perf_counter() - t0
    results.false_alarms = _false_alarms(model, pools, specs, ev, Path(cfg.out), cfg.seed, inputs, client)
    t0 = time.perf_counter()
    queries = {name: p.x for name, p in pools.items()}
    units = [
        sweep.Unit(
            a.name, a.kind, a.params, cfg.seed + 1000 * k, not ev.accuracy_models or k < ev.accuracy_models
        )  # thousands of copies: accuracy measured on a sample
        for a in cfg.attacks
        for k in range(_seeds(a, ev))
    ]
    cache = sweep.UnitCache(
        Path(cfg.out) / "cache", sweep.inputs_digest(local, queries, torch.get_num_threads())
    )
    outcomes = iter(sweep.run_units(units, inputs, queries, cache, client, progress))
    for attack in cfg.attacks:
        detections: dict[str, list[dict[str, np.ndarray]]] = {str(s): [] for s in specs}
        per_model: list[dict[str, np.ndarray]] = []
        for _ in range(_seeds(attack, ev)):
            outcome = next(outcomes)
            per_model.append(outcome.answers)
            results.attacks.append(outcome.record)
            for s in specs:
                detections[str(s)].append(
                    {name: _detects(s, pools[name].probs, a) for name, a in outcome.answers.items()}
                )
        deterministic = (
            len(per_model) > 1
            and all(  # seen, not assumed: ≥ 2 seeds answered identically
                np.array_equal(m[name], per_model[0][name]) for m in per_model[1:] for name in pools
            )
        )
        curves, supported, needed, trials = _curves(
            detections, sels, orders, n_max, ev.alphas, ev.manc_bags, deterministic
        )
        results.curves[attack.name], results.supported[attack.name] = curves, supported
        results.needed[attack.name], results.trials[attack.name] = needed, trials
        if ev.monte_carlo_repetitions:
            results.monte_carlo += _monte_carlo_check(attack.name, detections, ev, cfg.seed)
    results.resolution["manc_trials"] = ev.manc_bags * ev.seeds_per_attack
    results.resolution["confidence"] = CONFIDENCE
    results.timings["attacks_and_evaluation_s"] = time.perf_counter() - t0
    results.timings["total_s"] = time.perf_counter() - t_start
    return results, pools


def _stealth(
    model: Classifier, pools: dict[str, Pool], provider: dict[str, Pool], sels: list[Selection],
    orders: dict[str, list[np.ndarray]], train: Dataset, test: Dataset, first: int, seed: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each selection's detector AUCs: test traffic vs the queries it sends (ordered selections: the
    first ``first`` picks of every bag). The provider trains its statistics detector on ``provider``,
    pools it makes itself with the same methods from the training split (another seed)."""
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


def _seeds(attack: AttackConfig, ev: Any) -> int:
    """Independently attacked models for ``attack``: its own ``seeds`` or ``seeds_per_attack``."""
    return attack.seeds or ev.seeds_per_attack


def _curves(
    detections: dict[str, list[dict[str, np.ndarray]]],
    sels: list[Selection],
    orders: dict[str, list[np.ndarray]],
    n_max: int,
    alphas: list[float],
    bags: int,
    deterministic: bool,
) -> tuple[dict, dict, dict, dict[str, Any]]:
    """Per selection and spec: the missing-rate curve, the rate the trials *support* at each N, and
    the queries needed for each α on the supported rate (what the report prints).

    Random selections: exact over the query draw for each attacked model, averaged over models;
    with a random attack, no rate below :func:`smallest_supported` of the models is claimed.
    Ordered selections: the curve over every (bag, model) pair among the first ``bags`` bags, and a
    Clopper–Pearson upper bound from independent trials — bag k with model k, or, when every
    attacked model answered identically (a deterministic attack), every bag with that model. Bags are
    i.i.d. draws of the verifier's fingerprint, so a bag drawn twice counts twice: keeping only
    distinct bags would weigh a rare bag like a common one and could bound a common miss too low."""
    models = len(next(iter(detections.values())))
    trials = models
    curves: dict[str, dict[str, list[float]]] = {s.name: {} for s in sels}
    supported: dict[str, dict[str, list[float]]] = {s.name: {} for s in sels}
    for spec, per_model in detections.items():
        for sel, pool, mode in ((s.name, s.pool, s.mode) for s in sels):
            if mode == "random":
                curve = np.mean(
                    [missing_rate_exact(len(d[pool]), int(d[pool].sum()), n_max) for d in per_model], axis=0
                )
                floor = 0.0 if deterministic else smallest_supported(models)
                bound = np.maximum(curve, floor)
            else:
                picks = np.stack([o[:n_max] for o in orders[sel]])
                detects = np.stack([d[pool] for d in per_model])
                cross = [
                    first_detections(picks[:bags], np.repeat(d[None], min(bags, len(picks)), 0))
                    for d in detects
                ]
                curve = missing_rate_ordered(np.concatenate(cross), n_max)
                if deterministic:  # the bags are the independent draws; repeats count as drawn
                    firsts = first_detections(picks, np.repeat(detects[:1], len(picks), 0))
                else:
                    firsts = first_detections(picks[np.arange(models) % len(picks)], detects)
                trials = len(firsts)
                bound = upper_curve(firsts, n_max)
            curves[sel][spec], supported[sel][spec] = curve.tolist(), bound.tolist()
    needed = {
        sel: {spec: {f"{a:g}": queries_needed(np.array(c), a) for a in alphas} for spec, c in by_spec.items()}
        for sel, by_spec in supported.items()
    }
    info = {
        "trials": trials,
        "models": models,
        "deterministic": deterministic,
        "smallest_supported": smallest_supported(trials),
    }
    return curves, supported, needed, info


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
    model: Classifier, pools: dict[str, Pool], specs: list[OutputSpec], ev: Any, out: Path, seed: int,
    inputs: Any, client: Client | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Query every pool sample on the intact model through each serving setup; any changed answer
    would be a false alarm for a fingerprint containing it. Then verify ``false_alarm_fingerprints``
    random 10-query fingerprints per pool through every setup under every spec with :func:`verify`.
    One task per setup."""
    onnx = export_onnx(model, out / "intact.onnx", model.config.input_shape).read_bytes()
    setups = [
        (f"torch batch {b} threads {t}", b, t)
        for b in ev.false_alarm_batch_sizes
        for t in ev.false_alarm_threads
    ]
    setups.append(("onnxruntime", 0, 0))
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
    checked = sweep.share(
        client, {"pools": pools, "fingerprints": fingerprints, "specs": specs, "onnx": onnx}
    )
    return [row for rows in sweep.run_tasks(client, _setup_alarms, setups, inputs, checked) for row in rows]


def _setup_alarms(
    name: str, batch: int, threads: int, inputs: sweep.Inputs, checked: dict[str, Any]
) -> list[dict[str, Any]]:
    """:func:`_false_alarms` through one setup: torch with ``batch`` and ``threads`` (batch 0: ONNX)."""
    pools, specs = checked["pools"], checked["specs"]
    target: Target = (
        TorchTarget(inputs.model, batch_size=batch, threads=threads) if batch else OnnxTarget(checked["onnx"])
    )
    rows = []
    for pool_name, p in pools.items():
        answers = target.predict(p.x)
        verdicts = [verify(fp, target, s).status for fp in checked["fingerprints"][pool_name] for s in specs]
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
