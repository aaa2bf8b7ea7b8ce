"""Conferrable Adversarial Examples: an ownership fingerprint that survives model extraction (Lukas,
Zhang & Kerschbaum, ICLR 2021; equations and hyperparameters in papers.md §5).

A *conferrable* example x' is an adversarial example of the source model M (M(x') ≠ M(x0) for a
natural seed x0, ‖x' − x0‖∞ ≤ ε) whose adversarial label t = M(x') transfers to models *derived*
from M (surrogates S: distilled on its soft labels or extracted from its top-1 labels) and not to
models trained *independently* for the same task (references R). Nothing is embedded: the model is
not changed. The key is the examples with M's labels on them; a suspect's agreement with those labels
(top-1 labels only) is the score, and :func:`nnseal.watermark.verify_watermark` decides on it against
a null calibrated on further references held out from the optimisation
(:func:`nnseal.watermark.calibrate_key`).

Generation (paper Eq. 1–5), per batch of correctly classified seeds x0 (label y0):

* ensembles with model dropout (each model kept with probability 1 − ``dropout`` per step, at
  least one): Surr(x) = mean softmax of the kept surrogates, Ref(x) likewise for the references,
  σ(x) = Surr(x) ⊙ (1 − Ref(x));
* Adam on δ minimises ``alpha``·H(1, max_t σ(x')_t) − ``beta``·H(M(x0), M(x')) +
  ``gamma``·H(M(x'), Surr(x')) (high conferrability, away from the source's original output, the
  surrogates agreeing with the source on x'), x' = clip(x0 + δ, 0, 1), δ projected onto the ε-ball
  after every step;
* the last ``grid_steps`` steps optimise the rounded input (:func:`nnseal.grid.straight_through`);
  the result is rounded to the data's pixel grid (``Dataset.levels``) and clipped, in integer
  pixels, to within ⌊ε·levels⌋ grid steps of the seed — so every query is on the grid and within ε;
* an example is kept only if the *rounded* input still fools the source (M(x') ≠ y0); its
  conferrability score is Eq. 2 on hard labels over the full ensembles,
  Transfer(S, x'; t) · (1 − Transfer(R, x'; t)), t = M(x') (ties broken by the soft σ_t);
* the ``n_examples`` highest-scoring examples are the key.

Surrogates and references are trained here from the source and its training data with the library's
own attacks and training loop (:func:`nnseal.attacks.run_attack` ``distill`` / ``extract-labels``,
:func:`nnseal.watermark.train_references`), or passed in. Defaults are sized for 8×8 digits on two
CPU cores (about 30 s in all); for MNIST-size data lower the epochs and raise the budgets.

Example::

    cae = ConferrableExamples(n_examples=100)
    key = cae.fingerprint(model, train)              # surrogates + references trained inside
    key, null = calibrate_key(key, train)            # held-out references: the null
    verify_watermark(key, TorchTarget(stolen)).status   # Ownership.WATERMARKED for a surrogate
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.grid import check_levels, from_pixels, pixels, straight_through
from nnseal.models.architectures import ARCHITECTURES, check_data
from nnseal.models.io import model_id
from nnseal.models.train import predict_logits
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

METHOD = "conferrable"
SURROGATE_ATTACKS = ("distill", "extract-labels")
"""How surrogates are derived from the source: on its soft labels, on its top-1 labels."""
SURROGATE_SEED = 2000
"""The first generation surrogate's attacker seed (+1 each); disjoint from the null's references."""
REFERENCE_SEED = 3000
"""The first generation reference's seed (+1 each); the null's references start at 1000."""

AWAY_CAP = 2.3
"""Default clip of Eq. 5's β term: stop pushing the source once its original label's probability is
below 0.1 (unclipped, the term dominates and the examples transfer to references too: on digits the
kept examples' mean conferrability was 0.46 unclipped and 0.92 clipped, benchmarks/bench_conferrable.py)."""

MAX_POOL_GROWTH = 4
"""Generation draws up to this many pools of seeds while too few candidates fool the source."""

Ensemble = Sequence[tuple[dict[str, Any], nn.Module]]
"""(description, model) pairs, as :func:`nnseal.watermark.train_references` returns them."""


@dataclass
class Generation:
    """What generation found: the kept examples, their seeds, the source's labels on both, their
    conferrability scores (hard, Eq. 2) and the scores of every candidate that fooled the source."""

    x: np.ndarray
    seeds: np.ndarray
    seed_labels: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    soft_scores: np.ndarray
    candidate_scores: np.ndarray
    candidates: int
    fooled: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def _summary(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a, dtype=np.float64)
    if not len(a):
        return {"n": 0}
    q = np.quantile(a, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"n": len(a), "mean": float(a.mean()), "min": float(q[0]), "p10": float(q[1]),
            "median": float(q[2]), "p90": float(q[3]), "max": float(q[4])}  # fmt: skip


class ConferrableExamples:
    """Make a conferrable-adversarial-example key for a source model (module docstring).

    Args:
        n_examples: key size (queries at verification). Default 100.
        epsilon: L∞ radius in [0, 1] pixel units; at least one grid step of the data. Paper: 0.025
            (CIFAR-10), 0.15 (ImageNet32). Default 0.25 (4 grid steps of 8×8 digits, 63 of MNIST).
        steps: Adam iterations per batch (paper reimplementations: 100–300). Default 100.
        lr: Adam's step size on δ, in pixel units (paper: 5e-4 at ε = 0.025). Default 0.01.
        alpha, beta, gamma: the weights of Eq. 5's three terms (paper: 1, 1, 1).
        dropout: model dropout of the ensembles (paper: 0.3).
        away_cap: if set, the β term H(M(x0), M(x')) is clipped at this value, so it stops pushing
            once the source gives its original label probability e^−cap (None: the paper's, unclipped).
            Default :data:`AWAY_CAP` (2.3: probability 0.1).
        grid_steps: last steps that optimise the grid-rounded input (straight-through).
        pool_factor: candidate seeds per key example (correctly classified training inputs); more
            are drawn while fewer than ``n_examples`` candidates fool the source after rounding.
        batch_size: seeds optimised together.
        surrogates: generation surrogates trained by :meth:`train_ensembles` (``surrogate_attacks``
            and ``surrogate_architectures`` in turn). Default 4.
        surrogate_attacks: removal attacks that derive them (``distill``, ``extract-labels``).
        surrogate_architectures: their architectures, in turn (the source's own when "").
        surrogate_params: extra parameters of those attacks (budget, epochs, fraction …).
        references: generation references trained independently (seeds ``reference_seed`` …).
        reference_architectures, reference_epochs: theirs.
        seed: draws the seeds and the model dropout.
    """

    name = METHOD

    def __init__(
        self,
        *,
        n_examples: int = 100,
        epsilon: float = 0.25,
        steps: int = 100,
        lr: float = 0.01,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        dropout: float = 0.3,
        away_cap: float | None = AWAY_CAP,
        grid_steps: int = 20,
        pool_factor: int = 3,
        batch_size: int = 256,
        surrogates: int = 4,
        surrogate_attacks: Sequence[str] = SURROGATE_ATTACKS,
        surrogate_architectures: Sequence[str] = ("lenet", "mlp"),
        surrogate_params: dict[str, Any] | None = None,
        surrogate_seed: int = SURROGATE_SEED,
        references: int = 4,
        reference_architectures: Sequence[str] = ("lenet", "mlp"),
        reference_epochs: float = 20.0,
        reference_seed: int = REFERENCE_SEED,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        def check(ok: bool, name: str, want: str, got: object) -> None:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {got!r}")

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        check(type(n_examples) is int and n_examples >= 1, "n_examples", "an integer >= 1", n_examples)
        check(number(epsilon) and 0 < epsilon <= 1, "epsilon", "in (0, 1] (pixel units)", epsilon)
        check(type(steps) is int and steps >= 1, "steps", "an integer >= 1", steps)
        check(number(lr) and lr > 0, "lr", "> 0", lr)
        for nm, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            check(number(v) and v >= 0, nm, ">= 0", v)
        check(number(dropout) and 0 <= dropout < 1, "dropout", "in [0, 1)", dropout)
        check(away_cap is None or (number(away_cap) and away_cap > 0), "away_cap", "None or > 0", away_cap)
        check(
            type(grid_steps) is int and 0 <= grid_steps <= steps, "grid_steps", f"in 0..{steps}", grid_steps
        )
        check(type(pool_factor) is int and pool_factor >= 1, "pool_factor", "an integer >= 1", pool_factor)
        check(type(batch_size) is int and batch_size >= 1, "batch_size", "an integer >= 1", batch_size)
        check(type(surrogates) is int and surrogates >= 1, "surrogates", "an integer >= 1", surrogates)
        check(type(references) is int and references >= 2, "references", "an integer >= 2", references)
        check(
            bool(surrogate_attacks) and all(a in SURROGATE_ATTACKS for a in surrogate_attacks),
            "surrogate_attacks", f"among {', '.join(SURROGATE_ATTACKS)}", surrogate_attacks,
        )  # fmt: skip
        for nm, archs, blank in (
            ("surrogate_architectures", surrogate_architectures, True),
            ("reference_architectures", reference_architectures, False),
        ):
            ok = bool(archs) and all(a in ARCHITECTURES or (blank and a == "") for a in archs)
            check(ok, nm, f"among {', '.join(ARCHITECTURES)}", archs)
        check(number(reference_epochs) and reference_epochs > 0, "reference_epochs", "> 0", reference_epochs)
        self.n_examples, self.epsilon, self.steps, self.lr = n_examples, float(epsilon), steps, float(lr)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.dropout, self.grid_steps, self.pool_factor = float(dropout), grid_steps, pool_factor
        self.away_cap = None if away_cap is None else float(away_cap)
        self.batch_size, self.surrogates, self.references = batch_size, surrogates, references
        self.surrogate_attacks = tuple(surrogate_attacks)
        self.surrogate_architectures = tuple(surrogate_architectures)
        self.surrogate_params = dict(surrogate_params or {})
        self.surrogate_seed, self.reference_seed = int(surrogate_seed), int(reference_seed)
        self.reference_architectures = tuple(reference_architectures)
        self.reference_epochs = float(reference_epochs)
        self.seed, self.progress = int(seed), progress

    def config(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples,
            "epsilon": self.epsilon,
            "steps": self.steps,
            "lr": self.lr,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "dropout": self.dropout,
            "away_cap": self.away_cap,
            "grid_steps": self.grid_steps,
            "pool_factor": self.pool_factor,
            "batch_size": self.batch_size,
            "surrogates": self.surrogates,
            "surrogate_attacks": list(self.surrogate_attacks),
            "surrogate_architectures": list(self.surrogate_architectures),
            "surrogate_params": dict(self.surrogate_params),
            "surrogate_seed": self.surrogate_seed,
            "references": self.references,
            "reference_architectures": list(self.reference_architectures),
            "reference_epochs": self.reference_epochs,
            "reference_seed": self.reference_seed,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"ConferrableExamples({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    # ------------------------------------------------------------------ ensembles

    def train_surrogates(self, model: nn.Module, data: Dataset) -> list[tuple[dict[str, Any], nn.Module]]:
        """``surrogates`` models derived from ``model`` by the ``surrogate_attacks`` (black-box
        distillation / label-only extraction on ``data``), attacks and architectures in turn."""
        from nnseal.attacks import run_attack

        out = []
        for i in range(self.surrogates):
            attack = self.surrogate_attacks[i % len(self.surrogate_attacks)]
            arch = self.surrogate_architectures[
                (i // len(self.surrogate_attacks)) % len(self.surrogate_architectures)
            ]
            s = self.surrogate_seed + i
            t = time.perf_counter()
            result = run_attack(attack, model, {**self.surrogate_params, "arch": arch}, train=data, seed=s)
            desc = {"name": f"{attack}-{arch or 'source'}-s{s}", "attack": attack, "arch": arch, "seed": s,
                    "model_id": model_id(result.model),
                    "seconds": round(time.perf_counter() - t, 3)}  # fmt: skip
            out.append((desc, result.model))
        return out

    def train_references(self, model: nn.Module, data: Dataset) -> list[tuple[dict[str, Any], nn.Module]]:
        """``references`` models trained from scratch on ``data`` (never the source itself)."""
        from nnseal.watermark import train_references

        return train_references(
            data, count=self.references, architectures=self.reference_architectures,
            epochs=self.reference_epochs, seed=self.reference_seed, exclude=[model_id(model)],
        )  # fmt: skip

    # ------------------------------------------------------------------ optimisation

    def _optimise(
        self,
        model: nn.Module,
        surrogates: list[nn.Module],
        references: list[nn.Module],
        x0: np.ndarray,
        levels: int,
        gen: torch.Generator,
    ) -> np.ndarray:
        """Eq. 5 by Adam on δ for one batch of seeds; returns the rounded, ε-clipped examples."""
        xs = torch.as_tensor(x0, dtype=torch.float32)
        with torch.no_grad():
            p0 = torch.softmax(model(xs), 1)
        delta = torch.zeros_like(xs, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        keep = 1.0 - self.dropout

        def mask(n: int) -> list[int]:
            kept = (torch.rand(n, generator=gen) < keep).nonzero().flatten().tolist()
            return kept or [int(torch.randint(n, (1,), generator=gen))]

        for step in range(self.steps):
            x = (xs + delta).clamp(0.0, 1.0)
            if step >= self.steps - self.grid_steps:
                x = straight_through(x, levels)
            logp_src = torch.log_softmax(model(x), 1)
            surr = torch.stack([torch.softmax(surrogates[i](x), 1) for i in mask(len(surrogates))]).mean(0)
            ref = torch.stack([torch.softmax(references[i](x), 1) for i in mask(len(references))]).mean(0)
            sigma = surr * (1.0 - ref)
            confer = -torch.log(sigma.max(1).values.clamp_min(1e-12))  # H(1, max_t σ_t)
            away = -(p0 * logp_src).sum(1)  # H(M(x0), M(x'))
            if self.away_cap is not None:  # once the source is fooled enough, stop pushing it
                away = away.clamp(max=self.away_cap)
            agree = -(logp_src.exp() * torch.log(surr.clamp_min(1e-12))).sum(1)  # H(M(x'), Surr(x'))
            loss = (self.alpha * confer - self.beta * away + self.gamma * agree).sum()
            opt.zero_grad()
            (delta.grad,) = torch.autograd.grad(loss, delta)
            opt.step()
            with torch.no_grad():  # the ε-ball and the box
                delta.clamp_(-self.epsilon, self.epsilon)
                delta.copy_((xs + delta).clamp(0.0, 1.0) - xs)
        radius = int(np.floor(self.epsilon * levels + 1e-9))
        p_seed = pixels(x0, levels).astype(np.int32)
        p_adv = pixels((xs + delta).detach().clamp(0.0, 1.0).numpy(), levels).astype(np.int32)
        return from_pixels(np.clip(p_adv, p_seed - radius, p_seed + radius).clip(0, levels), levels)

    def generate(
        self,
        model: nn.Module,
        data: Dataset,
        surrogates: Ensemble,
        references: Ensemble,
    ) -> Generation:
        """Conferrable examples of ``model`` from seeds of ``data`` (module docstring), given the
        generation ensembles; :class:`NnsealError` if fewer than ``n_examples`` fool the source."""
        check_data(model, data.input_shape, len(data.classes))
        if not surrogates or not references:
            raise ValueError("generation needs at least one surrogate and one reference model")
        levels = check_levels(data.levels)
        if int(np.floor(self.epsilon * levels + 1e-9)) < 1:
            raise ValueError(
                f"epsilon={self.epsilon:g} is less than one grid step (1/{levels}) of {data.name}"
            )
        t0 = time.perf_counter()
        model.eval()
        s_models = [m.eval() for _, m in surrogates]
        r_models = [m.eval() for _, m in references]
        pred = predict_logits(model, data.x).argmax(1).numpy()
        correct = np.flatnonzero(pred == data.y)
        pool = min(len(correct), self.pool_factor * self.n_examples)
        if pool < self.n_examples:
            raise NnsealError(
                f"only {len(correct)} inputs are classified correctly; the key needs {self.n_examples}"
            )
        rng = np.random.default_rng(self.seed)
        # Seeds in a random order; more are drawn (up to MAX_POOL_GROWTH pools) while too few of the
        # candidates still fool the source once rounded to the grid.
        shuffled = rng.permutation(correct)
        limit = min(len(correct), MAX_POOL_GROWTH * pool)
        gen = torch.Generator().manual_seed(self.seed)
        xs: list[np.ndarray] = []
        labels_seen: list[np.ndarray] = []
        done = fooled_count = 0
        bar = tqdm(total=pool, desc="conferrable", unit="seed", disable=not self.progress, leave=False)
        while done < limit and (done < pool or fooled_count < self.n_examples):
            batch = shuffled[done : min(done + self.batch_size, pool if done < pool else limit)]
            xs.append(self._optimise(model, s_models, r_models, data.x[batch], levels, gen))
            labels_seen.append(predict_logits(model, xs[-1]).argmax(1).numpy())
            fooled_count += int((labels_seen[-1] != data.y[batch]).sum())
            done += len(batch)
            if done > bar.total:
                bar.total = done
            bar.update(len(batch))
        bar.close()
        idx = shuffled[:done]
        x = np.concatenate(xs)
        y0 = data.y[idx]
        labels = np.concatenate(labels_seen)
        hard, soft = conferrability(x, labels, [m for _, m in surrogates], [m for _, m in references])
        fooled = np.flatnonzero(labels != y0)
        if len(fooled) < self.n_examples:
            raise NnsealError(
                f"only {len(fooled)} of {done} candidates still fool the source after rounding to the grid; "
                f"the key needs {self.n_examples} (raise epsilon or steps)"
            )
        order = fooled[np.lexsort((-soft[fooled], -hard[fooled]))][: self.n_examples]
        order = order[rng.permutation(len(order))]
        return Generation(
            x=x[order],
            seeds=data.x[idx[order]],
            seed_labels=y0[order],
            labels=labels[order],
            scores=hard[order],
            soft_scores=soft[order],
            candidate_scores=hard[fooled],
            candidates=done,
            fooled=len(fooled),
            seconds=time.perf_counter() - t0,
            info={"source_indices": idx[order].tolist()},
        )

    def fingerprint(
        self,
        model: nn.Module,
        data: Dataset,
        *,
        surrogates: Ensemble | None = None,
        references: Ensemble | None = None,
    ) -> Fingerprint:
        """The key (a :class:`Fingerprint` with ``method="conferrable"``, ``labels`` = the source's
        labels on the examples, ``seeds`` = their natural seeds), with no null yet: calibrate it on
        held-out references with :func:`nnseal.watermark.calibrate_key`. Trains the generation
        ensembles unless given; ``provenance`` records them, the scores and the timings."""
        check_data(model, data.input_shape, len(data.classes))
        t0 = time.perf_counter()
        surrogates = list(surrogates) if surrogates is not None else self.train_surrogates(model, data)
        t1 = time.perf_counter()
        references = list(references) if references is not None else self.train_references(model, data)
        t2 = time.perf_counter()
        g = self.generate(model, data, surrogates, references)
        probs = TorchTarget(model).predict(g.x)
        labels = probs.argmax(1).astype(np.int64)
        if not np.array_equal(labels, g.labels):  # the black-box path must give the same labels
            raise NnsealError(
                "the source's labels on the examples differ between white- and black-box queries"
            )
        return Fingerprint(
            queries=g.x,
            probabilities=probs,
            labels=labels,
            seeds=g.seeds,
            specs=["top1"],
            model_id=model_id(model),
            method=self.name,
            params=self.config(),
            provenance={
                "dataset": data.name,
                "levels": int(data.levels),
                "source_model_id": model_id(model),
                "seed_labels": g.seed_labels.tolist(),
                "conferrability": g.scores.tolist(),
                "conferrability_soft": [round(float(v), 6) for v in g.soft_scores],
                "conferrability_candidates": _summary(g.candidate_scores),
                "candidates": g.candidates,
                "fooled": g.fooled,
                "generation_surrogates": [_plain(d) for d, _ in surrogates],
                "generation_references": [_plain(d) for d, _ in references],
                "seconds": {
                    "surrogates": round(t1 - t0, 3),
                    "references": round(t2 - t1, 3),
                    "optimisation": round(g.seconds, 3),
                },
                "torch": torch.__version__,
                **g.info,
            },
        )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float))}


@torch.no_grad()
def conferrability(
    x: np.ndarray, labels: np.ndarray, surrogates: Sequence[nn.Module], references: Sequence[nn.Module]
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2 per input for the label ``labels``: Transfer(S; t)·(1 − Transfer(R; t)) with Transfer the
    share of models predicting t (hard), and its soft form Surr_t·(1 − Ref_t) (mean softmax)."""
    t = torch.as_tensor(labels, dtype=torch.int64)[:, None]

    def transfer(models: Sequence[nn.Module]) -> tuple[np.ndarray, np.ndarray]:
        logits = [predict_logits(m, x) for m in models]
        hard = torch.stack([(lg.argmax(1, keepdim=True) == t).float()[:, 0] for lg in logits]).mean(0)
        soft = torch.stack([torch.softmax(lg, 1).gather(1, t)[:, 0] for lg in logits]).mean(0)
        return hard.numpy(), soft.numpy()

    sh, ss = transfer(surrogates)
    rh, rs = transfer(references)
    return (sh * (1 - rh)).astype(np.float64), (ss * (1 - rs)).astype(np.float64)


def agreement(model: nn.Module, key: Fingerprint) -> float:
    """Share of the key's examples that ``model`` (white-box) labels with the key's labels."""
    if key.labels is None:
        raise NnsealError("this fingerprint has no labels: it is not an ownership key")
    return float((predict_logits(model, key.queries).argmax(1).numpy() == key.labels).mean())
