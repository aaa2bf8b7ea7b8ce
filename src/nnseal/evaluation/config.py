"""Experiment configuration, read from TOML; every field has a default so a config states only what
it changes. Unknown keys are errors (a typo must not silently fall back to a default)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from nnseal.errors import NnsealError


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    train_subset: int = 0  # 0 = the whole training split


@dataclass
class ModelSettings:
    arch: str = "lenet"
    epochs: float = 20.0
    path: str | None = None  # use this saved model instead of training one


@dataclass
class PoolConfig:
    """The candidates fingerprints are drawn from: sensitive samples and natural inputs."""

    pool: int = 300  # sensitive samples generated; MANC bags and random picks come from them
    bag: int = 100
    steps: int = 300
    lr: float = 1e-2
    epsilon: float = 0.1
    norm: str = "linf"
    natural_pool: int = 300
    min_margin: float = 2e-5
    serving: list[str] = field(default_factory=lambda: ["cpu-fp32"])  # see nnseal.numerics


@dataclass
class MarkerSettings:
    """TamperNN boundary-marker pools evaluated beside SSF (see :mod:`nnseal.methods.markers`)."""

    strategies: list[str] = field(default_factory=list)  # adversarial, bisection, flip-rate, hybrid
    pool: int = 300  # natural seeds per strategy; seeds that reach no frontier are dropped
    epsilon: float = 0.3
    pgd_steps: int = 20
    target_margin: float = 1e-3
    backoff: float = 0.05
    noise_factor: float = 4.0  # margin = max(fingerprint.min_margin, noise_factor × measured noise)
    ss_steps: int = 300


@dataclass
class MethodConfig:
    """Any registered method (``nnseal.methods.METHODS``) evaluated as its own pool, named ``label``;
    ``params`` are its keyword parameters (pool_size defaults to [fingerprint] pool)."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    paper: str | None = (
        None  # the SSF paper's row to print beside: trojan, error-generic, error-specific, compression
    )
    seeds: int = 0  # independently attacked models (0: [evaluation] seeds_per_attack)
    held_out: bool | None = None  # whether the family is kept out of the methods' simulated tamperings


@dataclass
class EvalSettings:
    specs: list[str] = field(
        default_factory=lambda: ["top1", "top3", "top5", "top1-p2", "probs-p1", "probs-p2"]
    )
    n_max: int = 100
    alphas: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    manc_bags: int = 20
    seeds_per_attack: int = 3
    false_alarm_batch_sizes: list[int] = field(default_factory=lambda: [1, 7, 64, 256])
    false_alarm_threads: list[int] = field(default_factory=lambda: [1, 2])
    false_alarm_fingerprints: int = 20  # random 10-query fingerprints per pool verified per setup and spec
    monte_carlo_repetitions: int = 0  # > 0: also simulate random selection this many times
    stealth: bool = True  # the provider's four query detectors (nnseal.detectors) per selection
    accuracy_models: int = 20  # test accuracy measured on the first this many models per attack (0: all)
    stealth_queries: int = 20  # ordered selections: the first this many picks of each bag are scored


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    out: str = "evaluation"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    fingerprint: PoolConfig = field(default_factory=PoolConfig)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    markers: MarkerSettings = field(default_factory=MarkerSettings)
    methods: list[MethodConfig] = field(default_factory=list)
    attacks: list[AttackConfig] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise NnsealError(f"config section [{where}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise NnsealError(f"unknown key(s) {unknown} in [{where}]; allowed: {', '.join(sorted(known))}")
    return cls(**raw)


def _check_methods(methods: list[MethodConfig]) -> None:
    from nnseal._params import check_known
    from nnseal.methods import METHODS

    reserved = {"natural", "sensitive", "ss-random", "ss-manc"}
    labels = [m.label for m in methods]
    if (
        len(set(labels)) != len(labels)
        or reserved & set(labels)
        or any(x.startswith("marker-") for x in labels)
    ):
        raise NnsealError(
            f"[[methods]] labels must be unique and not {sorted(reserved)} or marker-*: {labels}"
        )
    for m in methods:
        if m.name not in METHODS:
            raise NnsealError(
                f"unknown method {m.name!r} in [[methods]]; known: {', '.join(sorted(METHODS))}"
            )
        try:
            for key in m.params:
                check_known(key, METHODS[m.name].defaults(), f"method {m.name}")
        except ValueError as e:
            raise NnsealError(str(e)) from None


def load_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Parse a TOML experiment file; relative data/model paths are taken relative to the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise NnsealError(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise NnsealError(f"{path}: invalid TOML ({e})") from None
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], base: Path | None = None) -> ExperimentConfig:
    sections = {
        "data": DataConfig,
        "model": ModelSettings,
        "fingerprint": PoolConfig,
        "evaluation": EvalSettings,
        "markers": MarkerSettings,
    }
    top = {k: v for k, v in raw.items() if k not in (*sections, "attacks", "methods")}
    cfg = _build(ExperimentConfig, top, "top level")
    for key, cls in sections.items():
        if key in raw:
            setattr(cfg, key, _build(cls, raw[key], key))
    attacks = raw.get("attacks", [])
    if not isinstance(attacks, list) or not attacks:
        raise NnsealError("config needs at least one [[attacks]] entry (name, kind, params)")
    cfg.attacks = [_build(AttackConfig, a, f"attacks #{i + 1}") for i, a in enumerate(attacks)]
    methods = raw.get("methods", [])
    if not isinstance(methods, list):
        raise NnsealError("[[methods]] entries must be tables (label, name, params)")
    cfg.methods = [_build(MethodConfig, m, f"methods #{i + 1}") for i, m in enumerate(methods)]
    _check_methods(cfg.methods)
    names = [a.name for a in cfg.attacks]
    if len(set(names)) != len(names):
        raise NnsealError(f"attack names must be unique, got {names}")
    if base is not None:
        if cfg.data.root and not Path(cfg.data.root).is_absolute():
            cfg.data.root = str(base / cfg.data.root)
        if cfg.model.path and not Path(cfg.model.path).is_absolute():
            cfg.model.path = str(base / cfg.model.path)
        if not Path(cfg.out).is_absolute():
            cfg.out = str(base / cfg.out)
    if cfg.fingerprint.bag > cfg.fingerprint.pool:
        raise NnsealError(f"bag ({cfg.fingerprint.bag}) cannot exceed pool ({cfg.fingerprint.pool})")
    from nnseal.numerics import check_serving

    cfg.fingerprint.serving = check_serving(cfg.fingerprint.serving, where="[fingerprint] serving")
    bad = sorted(set(cfg.markers.strategies) - {"adversarial", "bisection", "flip-rate", "hybrid"})
    if bad:
        raise NnsealError(
            f"unknown marker strategies {bad}; choose from adversarial, bisection, flip-rate, hybrid"
        )
    if cfg.evaluation.seeds_per_attack < 1 or cfg.evaluation.manc_bags < 1 or cfg.evaluation.n_max < 1:
        raise NnsealError("seeds_per_attack, manc_bags and n_max must be >= 1")
    if any(a.seeds < 0 for a in cfg.attacks):
        raise NnsealError("[[attacks]] seeds must be >= 0 (0: seeds_per_attack)")
    return cfg
