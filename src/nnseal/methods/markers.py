"""TamperNN boundary markers (Le Merrer & Trédan, arXiv 1903.00317): inputs whose top-1 label is
likely to change when the model's weights change, because they sit just inside a decision frontier.

The paper's crafting algorithms are not public, so the idea is implemented as strategies that the
evaluation harness compares side by side with Sensitive-Sample fingerprints:

* ``natural`` — test inputs as they are (the baseline);
* ``adversarial`` — PGD (L∞) from a natural seed toward another class, then bisection on the segment
  seed → adversarial point to land where the seed's class wins by ``target_margin``;
* ``bisection`` — bisection between two inputs of different classes using *labels only* (so it works
  on a model the owner can only query), then a step of ``backoff`` (L2) back into the first class;
* ``flip-rate`` — adversarial candidates ordered by greedy coverage of simulated weight perturbations
  (multiplicative Gaussian noise at several scales, low-bit rounding) that flip them: the most fragile
  first, and each next one catching perturbations the earlier ones miss;
* ``hybrid`` — sensitive samples (SSF) pushed to the frontier like ``adversarial``.

Markers sit close to a frontier on purpose, so benign numerics (batch size, threads, ONNX Runtime, a
GPU's TF32) could flip them. The fingerprinter therefore always measures that noise on the owner's
side in the declared serving environments (:mod:`nnseal.numerics`; ONNX Runtime too unless
``noise_onnx`` is off) and keeps only markers whose answers are unchanged there and survive
``max(min_margin, noise_factor × the noise measured on each)`` (:meth:`Method.stable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.errors import NnsealError
from nnseal.grid import to_grid
from nnseal.methods.base import Method, Pool, answers
from nnseal.methods.sensitive import SensitiveSampleGenerator
from nnseal.numerics import measure_noise  # noqa: F401 (re-exported: nnseal.methods.measure_noise)
from nnseal.outputs import OutputSpec
from nnseal.simulation import Perturbation, default_perturbations, flip_matrix
from nnseal.targets.base import Target
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

Strategy = Literal["natural", "adversarial", "bisection", "flip-rate", "hybrid"]
STRATEGIES: tuple[str, ...] = ("natural", "adversarial", "bisection", "flip-rate", "hybrid")
TOP1 = OutputSpec.parse("top1")


def top1_margin(probs: np.ndarray) -> np.ndarray:
    """Relative noise the top-1 label survives (see :meth:`OutputSpec.margin`)."""
    return TOP1.margin(probs)


def pgd(
    model: nn.Module, x: np.ndarray, *, epsilon: float = 0.3, steps: int = 20, seed: int = 0
) -> np.ndarray:
    """Untargeted L∞ PGD with a random start, kept in [0, 1]; returns the last iterate."""
    model = model.eval()
    x0 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        labels = model(x0).argmax(1)
    gen = torch.Generator().manual_seed(seed)
    xa = (x0 + epsilon * (2 * torch.rand(x0.shape, generator=gen) - 1)).clamp(0, 1)
    step = 2.5 * epsilon / max(steps, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), labels)
        (grad,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            xa = torch.minimum(torch.maximum(xa + step * grad.sign(), x0 - epsilon), x0 + epsilon).clamp(0, 1)
    return xa.detach().numpy()


def bisect_margin(
    model: nn.Module,
    inside: np.ndarray,
    outside: np.ndarray,
    target_margin: float,
    iters: int = 30,
    levels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """On each segment inside → outside, the point farthest along where ``inside``'s label still wins
    with top-1 margin ≥ ``target_margin`` (with ``levels``: the point's on-grid rounding, which is what
    is sent, so the margin holds after rounding). Returns (points, ok); ``ok`` is False where the
    segment does not start inside or does not leave the class (no frontier to land on)."""
    labels = answers(model, inside).argmax(1)

    def keeps(t: np.ndarray) -> np.ndarray:
        p = answers(model, _along(inside, outside, t, levels))
        return (p.argmax(1) == labels) & (top1_margin(p) >= target_margin)

    lo, hi = np.zeros(len(inside)), np.ones(len(inside))
    ok = keeps(lo) & ~keeps(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        k = keeps(mid)
        lo, hi = np.where(k, mid, lo), np.where(k, hi, mid)
    return _along(inside, outside, lo, levels), ok


def bisect_labels(
    labels_of: Callable[[np.ndarray], np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    *,
    iters: int = 30,
    backoff: float = 0.05,
    levels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels-only bisection on each segment a → b (a and b of different classes): the last point
    still labelled like ``a``, moved ``backoff`` (L2 distance in input space) back toward ``a``; with
    ``levels`` every point is its on-grid rounding. Returns (points, ok); ``ok`` is False where a and
    b share a label."""
    la = labels_of(a)
    ok = la != labels_of(b)
    lo, hi = np.zeros(len(a)), np.ones(len(a))
    for _ in range(iters):
        mid = (lo + hi) / 2
        same = labels_of(_along(a, b, mid, levels)) == la
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    length = np.linalg.norm((b - a).reshape(len(a), -1), axis=1)
    t = np.clip(lo - backoff / np.maximum(length, 1e-12), 0.0, 1.0)
    return _along(a, b, t, levels), ok


def _along(a: np.ndarray, b: np.ndarray, t: np.ndarray, levels: int | None = None) -> np.ndarray:
    """The points a + t (b − a), rounded to the grid with ``levels``."""
    t = t.reshape(-1, *([1] * (a.ndim - 1)))
    x = (a + t * (b - a)).astype(np.float32)
    return x if levels is None else to_grid(x, levels)


def target_labels(target: Target) -> Callable[[np.ndarray], np.ndarray]:
    """Top-1 labels from any target (probabilities or ranked labels)."""

    def labels_of(x: np.ndarray) -> np.ndarray:
        out = target.predict(x)
        return out.argmax(1) if target.provides == "probabilities" else out[:, 0].astype(int)

    return labels_of


@dataclass
class Markers:
    """Candidate markers, the natural inputs they came from (and their positions among the seeds
    given: seeds that reach no frontier are dropped), and (flip-rate) a coverage matrix."""

    x: np.ndarray
    seeds: np.ndarray
    index: np.ndarray
    flips: np.ndarray | None = None


class MarkerGenerator:
    """Craft marker candidates from natural inputs with one strategy (see the module docstring).

    Args:
        strategy: one of :data:`STRATEGIES`.
        epsilon, pgd_steps: PGD budget (L∞ radius in [0, 1] pixels, steps) for adversarial /
            flip-rate / hybrid.
        target_margin: where markers land — the top-1 label wins by this relative margin
            (≈ half the top-1/top-2 logit gap); larger than the noise margin, small enough to be fragile.
        iters: bisection steps (2⁻³⁰ of the segment by default).
        backoff: labels-only bisection: L2 distance moved back from the frontier.
        perturbations: simulated weight changes ranking flip-rate candidates.
        ss_steps, ss_epsilon: sensitive-sample generation for the hybrid strategy.
    """

    def __init__(
        self,
        strategy: Strategy = "adversarial",
        *,
        epsilon: float = 0.3,
        pgd_steps: int = 20,
        target_margin: float = 1e-3,
        iters: int = 30,
        backoff: float = 0.05,
        perturbations: Sequence[Perturbation] | None = None,
        ss_steps: int = 300,
        ss_epsilon: float = 0.1,
        seed: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown marker strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if not 0 < target_margin < 1 or epsilon <= 0 or iters < 1 or backoff < 0:
            raise ValueError("need 0 < target_margin < 1, epsilon > 0, iters >= 1 and backoff >= 0")
        self.strategy, self.epsilon, self.pgd_steps = strategy, float(epsilon), int(pgd_steps)
        self.target_margin, self.iters, self.backoff = float(target_margin), int(iters), float(backoff)
        self.perturbations = (
            list(perturbations) if perturbations is not None else default_perturbations(seed=seed)
        )
        self.ss_steps, self.ss_epsilon, self.seed = int(ss_steps), float(ss_epsilon), int(seed)

    def config(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "epsilon": self.epsilon,
            "pgd_steps": self.pgd_steps,
            "target_margin": self.target_margin,
            "iters": self.iters,
            "backoff": self.backoff,
            "perturbations": [p.to_dict() for p in self.perturbations]
            if self.strategy == "flip-rate"
            else None,
            "ss_steps": self.ss_steps,
            "ss_epsilon": self.ss_epsilon,
            "seed": self.seed,
        }

    def generate(
        self, model: nn.Module, seeds: np.ndarray, progress: bool = False, levels: int | None = None
    ) -> Markers:
        """Candidates from ``seeds`` (natural inputs); seeds with no frontier in reach are dropped.
        With ``levels`` (the data's pixel grid) seeds and markers are on the grid."""
        model = model.eval()
        seeds = np.ascontiguousarray(seeds, dtype=np.float32)
        if levels is not None:
            seeds = to_grid(seeds, levels)
        if self.strategy == "natural":
            return Markers(seeds, seeds, np.arange(len(seeds)))
        stages = tqdm(total=4, desc=f"markers ({self.strategy})", disable=not progress, leave=False)
        with stages:
            return self._generate(model, seeds, stages, progress, levels)

    def _generate(
        self, model: nn.Module, seeds: np.ndarray, stages: tqdm, progress: bool, levels: int | None
    ) -> Markers:
        if self.strategy == "bisection":
            labels_of = target_labels(TorchTarget(model))
            rng = np.random.default_rng(self.seed)
            partners = seeds[rng.permutation(len(seeds))]
            x, ok = bisect_labels(
                labels_of, seeds, partners, iters=self.iters, backoff=self.backoff, levels=levels
            )
            return Markers(x[ok], seeds[ok], np.flatnonzero(ok))
        start = seeds
        if self.strategy == "hybrid":
            stages.set_postfix_str("sensitive samples")
            start = (
                SensitiveSampleGenerator(epsilon=self.ss_epsilon, steps=self.ss_steps, progress=progress)
                .generate(model, seeds, levels=levels)
                .x
            )
        stages.update()
        stages.set_postfix_str("PGD")
        adversarial = pgd(model, start, epsilon=self.epsilon, steps=self.pgd_steps, seed=self.seed)
        stages.update()
        stages.set_postfix_str("bisection to the margin")
        x, ok = bisect_margin(model, start, adversarial, self.target_margin, self.iters, levels)
        stages.update()
        markers = Markers(x[ok], seeds[ok], np.flatnonzero(ok))
        if self.strategy == "flip-rate":
            stages.set_postfix_str("flip rates")
            markers.flips = flip_matrix(model, markers.x, self.perturbations, progress=progress)
        stages.update()
        return markers


class MarkerFingerprinter(Method):
    """A fingerprint of ``n_queries`` boundary markers for :func:`nnseal.verification.verify`.

    Args:
        strategy, epsilon, pgd_steps, target_margin, iters, backoff, ss_steps, ss_epsilon: see
            :class:`MarkerGenerator`.
        noise_onnx: measure ONNX Runtime too (the ``onnxruntime`` environment; exports the model to a
            temp dir), whether or not it is declared in ``serving``.
        **common: ``n_queries``, ``pool_size`` (natural seeds; some reach no frontier and are
            dropped), ``specs``, ``min_margin`` (the margin's floor), ``serving`` and
            ``noise_factor`` (markers always measure the declared environments' noise), ``seed``:
            see :class:`~nnseal.methods.base.Method`.
    """

    name = "tampernn-markers"
    always_measures = True

    def __init__(
        self,
        *,
        pool_size: int = 200,
        strategy: Strategy = "adversarial",
        epsilon: float = 0.3,
        pgd_steps: int = 20,
        target_margin: float = 1e-3,
        iters: int = 30,
        backoff: float = 0.05,
        ss_steps: int = 300,
        ss_epsilon: float = 0.1,
        noise_onnx: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(pool_size=pool_size, **common)
        self.noise_onnx = bool(noise_onnx)
        self.generator = MarkerGenerator(
            strategy,
            epsilon=epsilon,
            pgd_steps=pgd_steps,
            target_margin=target_margin,
            iters=iters,
            backoff=backoff,
            ss_steps=ss_steps,
            ss_epsilon=ss_epsilon,
            seed=self.seed,
        )

    def own_params(self) -> dict[str, Any]:
        return {"noise_onnx": self.noise_onnx, **self.generator.config()}

    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        idx = self.draw_seeds(data, rng)
        markers = self.generator.generate(model, data.x[idx], progress=self.progress, levels=data.levels)
        if len(markers.x) == 0:
            raise NnsealError("no marker candidate reached a decision frontier; raise epsilon or pool_size")
        probs = answers(model, markers.x)
        details = {"seed_indices": idx[markers.index], "top1_margin": top1_margin(probs)}
        if markers.flips is not None:
            details["flip_rate"] = markers.flips.mean(1)
        return Pool(markers.x, probs, markers.seeds, markers.flips, details)
