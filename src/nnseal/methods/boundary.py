"""Boundary-sensitive samples: the labels-only fingerprint (issue 16).

An API that returns only a label shows a weight change only when it moves an input across a decision
boundary. A good labels-only query is therefore *sensitive* (its logits move a lot when weights move:
a Sensitive Sample, He, Zhang & Lee) and *a hair inside a boundary* (a small move flips it: a TamperNN
marker, Le Merrer & Trédan) — on the data's pixel grid, with the serving-noise margin kept — and best
where *many* classes meet. The junction step takes IBSF's idea (ICML'24: maximise the entropy of the
top-k softmax), reimplemented, not copied.

Candidates: sensitive samples from natural seeds → an entropy ascent toward a point where many classes
tie (:func:`toward_junction`) → bisection on the segment to a top-1 margin of ``target_margin`` (on the
grid) → a greedy on-grid search (one-level moves of one or two pixels, checked exactly) that draws the
label's nearest rivals in to just below it while the margin still clears ``target_margin``
(:func:`approach_junction`: where five classes meet, a weight change keeps the answer only if the label
still beats all four rivals, so it flips far more often than at a two-class boundary). A share of the
seeds first switches on penultimate units the data leaves off (:func:`awaken_units`). Selection: greedy
coverage of a broad family of simulated tamperings (:func:`nnseal.simulation.labels_only_family`) and
of every single-entry ±0.5 % head edit (exact, from the penultimate features) — each next query
catches what the earlier ones miss. The family leaves 8-bit rounding and float16 out, so the evaluation
can test them as held-out attacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.grid import to_grid
from nnseal.methods.base import Method, Pool, answers
from nnseal.methods.markers import bisect_margin, top1_margin
from nnseal.methods.sensitive import SensitiveSampleGenerator
from nnseal.simulation import flip_matrix, head_edit_flips, labels_only_family

if TYPE_CHECKING:
    from nnseal.data import Dataset


COARSE_GRID = 64
"""Grids with fewer levels than this (scikit-learn's digits: 16) are coarse: one pixel level moves the
logits by more than the junction gaps sought, so the on-grid search also tries pairs of moves."""


def approach_junction(
    model: nn.Module,
    x: np.ndarray,
    levels: int,
    floor: float,
    classes: int = 5,
    steps: int = 80,
    singles: int = 256,
    pairs: int | None = None,
    nearest_weight: float = 4.0,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Greedy on-grid search that draws each input's ``classes − 1`` nearest rivals in to just below
    its label, never letting the top-1 margin fall under ``floor`` nor the label change.

    The objective is the sum of the logit gaps from the label to those rivals: where k classes sit
    within a hair, a weight change keeps the label only if the label still beats all k − 1, so the
    answer flips far more often than at a two-class boundary (digits LeNet, 8-bit rounding: 0.70 of
    queries with 5 classes vs 0.57 with 2, ``benchmarks/bench_junction.py``). The nearest rival's gap
    counts ``nearest_weight`` times: a tiny change (one head weight moves one logit by ~1e-3) flips
    the answer only through it.

    Each step scores exactly ``singles`` one-level single-pixel moves (all of them on a small image,
    else those the objective's gradient ranks best) and ``pairs`` random pairs of them — on a coarse
    grid one pixel moves the logits by more than the gaps sought, and two moves can cancel — and takes
    the best one that improves; an input stops when none does. ``pairs`` defaults to 512 on grids of
    fewer than 64 levels and to none on finer ones, where one level moves the logits by less than the
    gaps sought (MNIST: the same median gaps without pairs, at a quarter of the time). ``classes=2``
    lowers the top-1 margin alone."""
    if classes < 2:
        raise ValueError(f"need classes >= 2, got {classes}")
    model = model.eval()
    rng = np.random.default_rng(seed)
    pairs = (512 if levels < COARSE_GRID else 0) if pairs is None else int(pairs)
    shape = np.shape(x)[1:]
    flat = np.array(x, dtype=np.float32).reshape(len(x), -1)
    size = flat.shape[1]
    labels = answers(model, np.reshape(flat, (-1, *shape))).argmax(1)
    pixel = np.tile(np.arange(size), 2)  # the move list: every pixel up one level, then down one
    sign = np.repeat(np.array([1, -1], dtype=np.float32), size) / np.float32(levels)

    def summed_gaps(z: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        gaps = (z.gather(1, lab[:, None]) - z).topk(min(classes, z.shape[1]), dim=1, largest=False).values
        return gaps.sum(1) + (nearest_weight - 1) * gaps[:, 1]  # gaps[:, 0] is the label's own 0

    def gradient(inputs: np.ndarray, lab: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(inputs.reshape(len(inputs), *shape)).requires_grad_(True)
        (g,) = torch.autograd.grad(summed_gaps(model(xt), torch.from_numpy(lab)).sum(), xt)
        return g.numpy().reshape(len(inputs), -1)

    def exact(inputs: np.ndarray, lab: np.ndarray) -> np.ndarray:
        probs = answers(model, inputs.reshape(len(inputs), *shape))  # as recorded: the margin is exact
        ok = (probs.argmax(1) == lab) & (top1_margin(probs) >= floor)
        logp = torch.from_numpy(np.log(np.maximum(probs, 1e-38)).astype(np.float64))  # gaps of log p = of z
        return np.where(ok, summed_gaps(logp, torch.from_numpy(lab)).numpy(), np.inf)

    current = exact(flat, labels)
    active = np.isfinite(current)
    m = min(singles, len(pixel))
    n_moves = m + pairs
    chunk = max(1, 2**22 // (n_moves * size))
    bar = tqdm(range(steps), desc="junction search", disable=not progress, leave=False)
    for _ in bar:
        todo = np.flatnonzero(active)
        if not len(todo):
            break
        bar.set_postfix(improving=len(todo))
        for rows in np.array_split(todo, -(-len(todo) // chunk)):
            base, lab, r = flat[rows], labels[rows], np.arange(len(rows))[:, None]
            g = gradient(base, lab)
            moved = base[:, pixel] + sign
            gain = np.where((moved >= 0) & (moved <= 1), -g[:, pixel] * sign, -np.inf)
            ranked = np.argsort(-gain, axis=1, kind="stable")[:, :m]  # (rows, m) moves, best first
            first, second = ranked[r, rng.integers(m, size=(2, len(rows), pairs))]
            trial = np.repeat(base[:, None, :], n_moves, axis=1)
            trial[r, np.arange(m), pixel[ranked]] += sign[ranked]
            for move in (first, second):
                trial[r, m + np.arange(pairs), pixel[move]] += sign[move]
            trial = (np.round(trial * levels) / levels).astype(np.float32)  # back onto the grid exactly
            inside = ((trial >= 0) & (trial <= 1)).all(2)
            score = exact(trial.reshape(-1, size), np.repeat(lab, n_moves)).reshape(len(rows), n_moves)
            score[~inside] = np.inf
            best = score.argmin(1)
            better = score[r[:, 0], best] < current[rows]
            flat[rows[better]] = trial[better, best[better]]
            current[rows[better]] = score[r[:, 0], best][better]
            active[rows[~better]] = False
    return flat.reshape(-1, *shape)


def toward_junction(model: nn.Module, x: np.ndarray, steps: int = 200, lr: float = 0.02) -> np.ndarray:
    """Adam ascent of the softmax entropy from ``x`` in [0, 1]: toward a point where many classes tie.

    Just inside such a junction the label stays only if the true class still beats *every* close
    rival after a weight change, so a big change (retraining, poisoning) flips it far more often than
    the coin toss a two-class boundary gives (measured on digits: 0.82 vs 0.57 of queries per trojan)."""
    model = model.eval()
    z = torch.as_tensor(np.asarray(x), dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logp = torch.log_softmax(model(z), 1)
        (logp.exp() * logp).sum().backward()  # minus the entropy
        opt.step()
        with torch.no_grad():
            z.clamp_(0, 1)
    return z.detach().numpy()


def awaken_units(
    model: nn.Module, x: np.ndarray, levels: int, steps: int = 100, lr: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs that switch on penultimate ReLU units the inputs ``x`` leave off, one unit per input in
    turn (Adam ascent of its pre-activation in [0, 1], then the grid). A head weight leaving a unit
    that no query activates can change without any answer moving, so the pool must wake them.
    Returns (inputs, units); empty when every unit is already on or the penultimate is not a ReLU."""
    model = model.eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        off = np.flatnonzero(~(model.penultimate(xt) > 0).any(0).numpy())
    if not relus or not len(off):
        return x[:0], off
    units = torch.as_tensor(off[np.arange(len(x)) % len(off)])
    store: dict[str, torch.Tensor] = {}
    hook = relus[-1].register_forward_hook(lambda _m, inp, _o: store.__setitem__("pre", inp[0]))
    try:
        z = xt.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            h = model.penultimate(z)
            if store["pre"].shape != h.shape:  # the last ReLU does not make the penultimate features
                return x[:0], off[:0]
            (-store["pre"].gather(1, units[:, None]).sum()).backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(0, 1)
    finally:
        hook.remove()
    return to_grid(z.detach().numpy(), levels), units.numpy()


class BoundarySensitive(Method):
    """A labels-only fingerprint of sensitive samples a hair inside a decision boundary (module docstring).

    Args:
        target_margin: the smallest top-1 margin a candidate is brought to (relative, ≈ half the
            top-1/top-2 logit gap); above the serving-noise margin, small enough to flip.
        ss_steps, ss_epsilon: sensitive-sample ascent the candidates start from (0 steps: natural seeds).
        junction_steps, junction_lr: entropy ascent toward a many-class junction (:func:`toward_junction`).
        junction_classes: how many classes the on-grid search draws within a hair of each other
            (the label and its nearest rivals, :func:`approach_junction`).
        refine_steps: steps of that search.
        head_edit: coverage also counts every single-entry head edit by ± this fraction, computed
            exactly (:func:`nnseal.simulation.head_edit_flips`).
        wake: the share of seeds first moved to switch on penultimate units the data leaves off
            (:func:`awaken_units`), so head weights leaving them are covered too.
        noise_onnx: measure ONNX Runtime too, whether or not it is declared in ``serving``.
        **common: see :class:`~nnseal.methods.base.Method` (the margin filter always measures).
    """

    name = "boundary-sensitive"
    always_measures = True

    def __init__(
        self,
        *,
        n_queries: int = 20,
        pool_size: int = 300,
        target_margin: float = 3e-5,
        ss_steps: int = 100,
        ss_epsilon: float = 0.1,
        junction_steps: int = 200,
        junction_lr: float = 0.02,
        junction_classes: int = 5,
        refine_steps: int = 80,
        head_edit: float = 5e-3,
        wake: float = 0.3,
        noise_onnx: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(n_queries=n_queries, pool_size=pool_size, **common)
        if not 0 < target_margin < 1:
            raise ValueError(f"need 0 < target_margin < 1, got {target_margin}")
        self.target_margin, self.ss_steps, self.ss_epsilon = (
            float(target_margin),
            int(ss_steps),
            float(ss_epsilon),
        )
        self.junction_steps, self.junction_lr = int(junction_steps), float(junction_lr)
        if junction_classes < 2:
            raise ValueError(f"need junction_classes >= 2, got {junction_classes}")
        self.junction_classes, self.refine_steps = int(junction_classes), int(refine_steps)
        if not 0 <= wake <= 1:
            raise ValueError(f"need 0 <= wake <= 1, got {wake}")
        self.head_edit, self.wake, self.noise_onnx = float(head_edit), float(wake), bool(noise_onnx)
        self.family = labels_only_family(seed=self.seed)

    def own_params(self) -> dict[str, Any]:
        return {
            "target_margin": self.target_margin,
            "ss_steps": self.ss_steps,
            "ss_epsilon": self.ss_epsilon,
            "junction_steps": self.junction_steps,
            "junction_lr": self.junction_lr,
            "junction_classes": self.junction_classes,
            "refine_steps": self.refine_steps,
            "head_edit": self.head_edit,
            "wake": self.wake,
            "noise_onnx": self.noise_onnx,
            "family": [p.to_dict() for p in self.family],
        }

    def candidates(self, model: nn.Module, data: Dataset, rng: np.random.Generator) -> Pool:
        idx = self.draw_seeds(data, rng)
        stages = tqdm(total=4, desc="boundary-sensitive", disable=not self.progress, leave=False)
        with stages:
            start = data.x[idx]
            if self.wake:  # a share of the seeds start from inputs that switch on units the data leaves off
                n = round(self.wake * len(start))
                woken, _ = awaken_units(model, start[:n], data.levels)
                start = np.concatenate([woken, start[len(woken) :]])
            if self.ss_steps:
                gen = SensitiveSampleGenerator(
                    epsilon=self.ss_epsilon, steps=self.ss_steps, progress=self.progress
                )
                start = gen.generate(model, start, levels=data.levels).x
            stages.update()
            far = toward_junction(model, start, self.junction_steps, self.junction_lr)
            x, ok = bisect_margin(model, start, far, self.target_margin, levels=data.levels)
            stages.update()
            x = approach_junction(
                model,
                x[ok],
                data.levels,
                self.target_margin,
                self.junction_classes,
                self.refine_steps,
                seed=int(rng.integers(2**31)),
                progress=self.progress,
            )
            stages.update()
            flips = flip_matrix(model, x, self.family, data, progress=self.progress)
            edits = head_edit_flips(model, x, self.head_edit)
            stages.update()
        probs = answers(model, x)
        details = {"seed_indices": idx[ok], "top1_margin": top1_margin(probs), "flip_rate": flips.mean(1)}
        cover = np.concatenate([flips, edits], axis=1)
        return Pool(x, probs, data.x[idx[ok]], cover, details)
