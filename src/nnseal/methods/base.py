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

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.manc import manc_select
from nnseal.models.architectures import check_data
from nnseal.models.io import model_id
from nnseal.outputs import OutputSpec
from nnseal.targets.local import TorchTarget

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
            by this fraction of its value (:meth:`OutputSpec.margin`); float error is relative.
        seed: the one source of randomness (seeds drawn, random selection, the method's own draws).
        progress: show progress bars.
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        n_queries: int = 10,
        pool_size: int = 100,
        specs: Sequence[str] = ("top1",),
        min_margin: float = 2e-5,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if n_queries < 1 or pool_size < n_queries:
            raise ValueError(
                f"need 1 <= n_queries <= pool_size, got n_queries={n_queries}, pool_size={pool_size}"
            )
        if min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {min_margin}")
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

    def noise_margin(self, model: nn.Module, pool: Pool) -> float:
        """The relative margin every kept answer must survive: ``min_margin``; methods whose
        candidates sit near a frontier on purpose widen it by the noise they measure."""
        return self.min_margin

    def stable(self, model: nn.Module, pool: Pool) -> Pool:
        """The candidates whose answer under every spec survives the noise margin."""
        margin = self.noise_margin(model, pool) if len(pool) else self.min_margin
        keep = np.flatnonzero(np.min([s.margin(pool.probs) for s in self.specs], axis=0) >= margin)
        out = pool.subset(keep)
        out.info.update(candidates=len(pool), stable_candidates=len(keep), noise_margin=margin)
        return out

    def pool(self, model: nn.Module, data: Dataset, rng: np.random.Generator | None = None) -> Pool:
        """Candidates that clear the margin: what :meth:`select` picks from (and the evaluation)."""
        check_data(model, data.input_shape, len(data.classes))
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return self.stable(model, self.candidates(model.eval(), data, rng))

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
            raise NnsealError(
                f"only {len(pool)} of {pool.info['candidates']} candidates clear the noise margin "
                f"{pool.info['noise_margin']:.2g}; raise pool_size or lower min_margin"
            )
        chosen = pool.subset(self.select(pool, self.n_queries, rng))
        return Fingerprint(
            queries=chosen.x,
            probabilities=chosen.probs,
            specs=[str(s) for s in self.specs],
            model_id=model_id(model),
            method=self.name,
            params=self.get_params(),
            seeds=chosen.seeds,
            provenance={
                "dataset": data.name,
                **pool.info,
                **{k: np.asarray(v).tolist() for k, v in chosen.details.items()},
                "torch": torch.__version__,
            },
        )


def answers(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's probabilities on ``x``, computed as every method records them."""
    return TorchTarget(model).predict(x)


def names(value: Sequence[str] | str | None) -> list[str] | None:
    """A list of names from a sequence or a comma-separated string (as the CLI passes it)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v.strip()] or None
