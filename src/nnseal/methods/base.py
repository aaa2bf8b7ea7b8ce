"""The Method protocol: every tamper-detection fingerprinting method is candidates → margin filter →
selection, and only the first and last steps differ between methods.

A method subclasses :class:`Method`, names itself, declares its own keyword parameters in
``__init__`` (so the CLI, the evaluation harness and the recorded parameters read them from one
place) and implements :meth:`Method.candidates`. The base class does the shared work once: input
checks, the numeric-noise margin filter (optionally widened by measured serving noise), selection
(greedy coverage when the pool carries a coverage matrix, else a seeded random draw) and assembling
the :class:`~nnseal.fingerprint.Fingerprint`. The evaluation harness calls :meth:`Method.pool` and
:meth:`Method.select` of the shipped methods, so it measures exactly what ``fingerprint`` ships.

Adding a method is one file with a ``Method`` subclass and its line in ``METHODS``
(:mod:`nnseal.methods`); see :mod:`nnseal.methods.natural` for the smallest one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from nnseal import grid, numerics
from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.manc import manc_select
from nnseal.models.architectures import check_data
from nnseal.models.inference import probabilities, white_box
from nnseal.models.io import model_id
from nnseal.outputs import OutputSpec

if TYPE_CHECKING:
    from nnseal.data import Dataset


@dataclass
class Pool:
    """Candidate queries of one method on one model, with the model's answers on them.

    ``cover`` (optional, boolean (n, k)): what each candidate catches — ReLU units it activates (MANC),
    simulated perturbations that flip it (flip-rate markers); selection then covers greedily.
    ``details`` holds per-candidate provenance arrays (kept for the chosen queries), ``info`` the
    pool's own (noise measured, margin used, counts).
    """

    x: np.ndarray
    probs: np.ndarray
    seeds: np.ndarray | None = None
    cover: np.ndarray | None = None
    details: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> Pool:
        return Pool(
            self.x[idx],
            self.probs[idx],
            None if self.seeds is None else self.seeds[idx],
            None if self.cover is None else self.cover[idx],
            {k: np.asarray(v)[idx] for k, v in self.details.items()},
            dict(self.info),
        )


class Method(ABC):
    """A fingerprinting method; see the module docstring.

    Args:
        n_queries: queries in the fingerprint.
        pool_size: natural seeds drawn from the data to make candidates from (the SSF paper's bag).
        specs: output specs the fingerprint must be valid for (the first is ``verify``'s default).
        min_margin: a candidate is kept only if every spec's answer survives every probability moving
            by this fraction of its value (:meth:`OutputSpec.margin`); float error is relative. It
            covers ``cpu-fp32`` serving (measured up to ~1e-5).
        serving: the environments the model will be served in (:data:`nnseal.numerics.ENVIRONMENTS`:
            cpu-fp32, onnxruntime, gpu-fp32, gpu-tf32, bf16, fp16; a list or a comma-separated
            string). Unless only ``cpu-fp32`` is declared (or the method always measures), every
            candidate is run in each declared environment and kept only if every spec's answer is
            unchanged there and its margin is at least ``noise_factor ×`` the noise measured on it.
            Declaring bf16/fp16 makes a cast-to-bf16/fp16 copy undetectable by design (warned).
        noise_factor: the margin a kept answer needs is at least this many times the noise measured on
            it in the declared environments (:func:`nnseal.numerics.relative_noise`).
        seed: the one source of randomness (seeds drawn, random selection, the method's own draws).
        progress: show progress bars.
    """

    name: ClassVar[str]
    always_measures: ClassVar[bool] = False
    """Measure the declared environments' noise even when only cpu-fp32 is declared (methods whose
    candidates sit near a frontier on purpose)."""
    noise_onnx: bool = False
    """Measure ONNX Runtime's noise too, declared or not (methods that set it take it as a parameter)."""
    white_box: ClassVar[bool] = True
    """Whether the method looks inside the model (gradients, ``head``, ``penultimate``: the
    :class:`~nnseal.models.inference.WhiteBox` contract); False for methods that only need answers."""

    def __init__(
        self,
        *,
        n_queries: int = 10,
        pool_size: int = 100,
        specs: Sequence[str] = ("top1",),
        min_margin: float = 2e-5,
        serving: Sequence[str] | str = numerics.DEFAULT_SERVING,
        noise_factor: float = 4.0,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if n_queries < 1 or pool_size < n_queries:
            raise ValueError(
                f"need 1 <= n_queries <= pool_size, got n_queries={n_queries}, pool_size={pool_size}"
            )
        if min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {min_margin}")
        if noise_factor < 0:
            raise ValueError(f"noise_factor must be >= 0, got {noise_factor}")
        self.serving = numerics.check_serving(serving)
        numerics.warn_lower_precision(self.serving)
        self.noise_factor = float(noise_factor)
        self.n_queries, self.pool_size, self.seed = int(n_queries), int(pool_size), int(seed)
        self.specs = [OutputSpec.parse(s) for s in specs]
        if not self.specs:
            raise ValueError("specs must name at least one output spec")
        self.min_margin, self.progress = float(min_margin), progress

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every keyword parameter of the method and its default (its own, then the common ones)."""
        out: dict[str, Any] = {}
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and issubclass(klass, Method):
                for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                    if p.kind is p.KEYWORD_ONLY and p.name not in out and p.name != "progress":
                        out[p.name] = p.default
        return out

    @classmethod
    def own_defaults(cls) -> dict[str, Any]:
        """The method's own parameters (those a CLI passes as ``-p key=value``) and their defaults."""
        common = Method.defaults()
        return {k: v for k, v in cls.defaults().items() if k not in common}

    def get_params(self) -> dict[str, Any]:
        """The parameters this instance runs with, as recorded in the fingerprint header."""
        return {
            "n_queries": self.n_queries,
            "pool_size": self.pool_size,
            "min_margin": self.min_margin,
            "noise_factor": self.noise_factor,
            "seed": self.seed,
            **self.own_params(),
        }

    @abstractmethod
    def own_params(self) -> dict[str, Any]:
        """The method's own parameters (JSON-ready)."""

    @abstractmethod
    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        """Candidate queries made from ``pool_size`` inputs of ``data`` drawn with ``rng``."""

    def draw_seeds(self, data: Dataset, rng: np.random.Generator) -> np.ndarray:
        """Indices of the natural inputs candidates are made from (sorted, without replacement)."""
        return np.sort(rng.choice(len(data), min(self.pool_size, len(data)), replace=False))

    def noise_environments(self) -> list[str]:
        """The environments :meth:`stable` runs candidates in: the declared ones — none when only
        ``cpu-fp32`` is declared, which ``min_margin`` covers, unless the method always measures —
        and ONNX Runtime whenever ``noise_onnx`` is set."""
        if not self.always_measures and self.serving == list(numerics.DEFAULT_SERVING):
            return []
        envs = list(self.serving)
        return [*envs, "onnxruntime"] if self.noise_onnx and "onnxruntime" not in envs else envs

    def stable(self, model: nn.Module, pool: Pool) -> Pool:
        """The candidates whose answer under every spec is unchanged in every measured serving
        environment and survives ``max(min_margin, noise_factor × the noise measured on it)``."""
        margins = np.stack([s.margin(pool.probs) for s in self.specs], axis=1).reshape(len(pool), -1)
        required = np.full(margins.shape, self.min_margin)
        changed = np.zeros(margins.shape, dtype=bool)
        envs = self.noise_environments() if len(pool) else []
        info: dict[str, Any] = {}
        if envs:
            noise = numerics.measure(model, pool.x, envs, self.specs, reference=pool.probs)
            per_query = noise.per_query()
            required = np.maximum(required, self.noise_factor * per_query)
            changed = noise.any_changed()
            pool.details["serving_noise"] = per_query  # (n, specs): the margin needed is factor × this
            info = {
                "noise_environments": envs,
                "noise": noise.by_setup(),
                "noise_by_environment": noise.by_environment(),
                "changed_answers": noise.changed_by_environment(),
            }
        ok = (margins >= required) & ~changed
        keep = np.flatnonzero(ok.all(axis=1))
        out = pool.subset(keep)
        margin = float(required.max()) if len(pool) else self.min_margin
        out.info.update(candidates=len(pool), stable_candidates=len(keep), noise_margin=margin, **info)
        if envs:
            out.info["stable_by_spec"] = {str(s): int(ok[:, i].sum()) for i, s in enumerate(self.specs)}
        return out

    def pool(self, model: nn.Module, data: Dataset, rng: np.random.Generator | None = None) -> Pool:
        """Candidates that clear the margin: what :meth:`select` picks from (and the evaluation)."""
        if self.white_box:
            white_box(model, f"method {self.name}")
        check_data(model, data.input_shape, len(data.classes))
        rng = np.random.default_rng(self.seed) if rng is None else rng
        pool = self.candidates(model.eval(), data, rng)
        if not grid.is_on_grid(pool.x, data.levels):  # a recognisable query; never let one out
            raise NnsealError(
                f"method {self.name} made candidates off the data's pixel grid (values k/{data.levels}); "
                "every query must be a valid image (nnseal.grid)"
            )
        return self.stable(model, pool)

    def _too_few(self, pool: Pool) -> str:
        """Why the pool cannot make a fingerprint: which spec the declared environments rule out."""
        head = f"only {len(pool)} of {pool.info['candidates']} candidates clear the noise margin"
        by_spec = pool.info.get("stable_by_spec")
        if not by_spec:
            return f"{head} {pool.info['noise_margin']:.2g}; raise pool_size or lower min_margin"
        envs = ", ".join(pool.info["noise_environments"])
        short = [f"{s} ({n} candidates)" for s, n in by_spec.items() if n < self.n_queries]
        noise = max(pool.info["noise_by_environment"].values())
        reason = (
            f"output spec {' and '.join(short)} cannot be supported under serving {envs}: "
            if short
            else f"too few satisfy every spec at once under serving {envs}: "
        )
        return (
            f"{head} for {self.n_queries} queries; {reason}its answers move by up to {noise:.2g} "
            f"(relative) there and need a margin of {self.noise_factor:g}× that; drop the spec, declare "
            "fewer environments, or raise pool_size"
        )

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` indices into ``pool``: greedy coverage of ``pool.cover`` (pick order), or a random draw."""
        if pool.cover is not None:
            return np.asarray(manc_select(pool.cover, n))
        return np.sort(rng.choice(len(pool), n, replace=False))

    def fingerprint(self, model: nn.Module, data: Dataset) -> Fingerprint:
        """Candidates → margin filter → selection → the fingerprint, with parameters and provenance."""
        rng = np.random.default_rng(self.seed)
        pool = self.pool(model, data, rng)
        if len(pool) < self.n_queries:
            raise NnsealError(self._too_few(pool))
        chosen = pool.subset(self.select(pool, self.n_queries, rng))
        return Fingerprint(
            queries=chosen.x,
            probabilities=chosen.probs,
            specs=[str(s) for s in self.specs],
            model_id=model_id(model),
            method=self.name,
            params=self.get_params(),
            seeds=chosen.seeds,
            serving=list(self.serving),
            levels=data.levels,
            provenance={
                "dataset": data.name,
                **pool.info,
                **{k: np.asarray(v).tolist() for k, v in chosen.details.items()},
                "torch": torch.__version__,
            },
        )


def answers(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's probabilities on ``x``, computed as every method records them."""
    return probabilities(model, x)


def names(value: Sequence[str] | str | None) -> list[str] | None:
    """A list of names from a sequence or a comma-separated string (as the CLI passes it)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v.strip()] or None
