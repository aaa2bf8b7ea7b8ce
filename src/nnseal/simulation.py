"""Simulated tamperings: cheap weight changes an owner applies to its own model to rank candidate
queries by what they would catch (flip-rate markers, covert inputs, boundary-sensitive samples).

These are a *selection* device, kept apart from the attack suite (:mod:`nnseal.attacks`) that the
evaluation measures with: a fingerprint chosen to cover these is then scored on attacks and on fresh
draws it never saw, so its missing rates are not measured on the perturbations it was tuned to.

Example::

    family = labels_only_family(seed=0)
    flips = flip_matrix(model, x, family, data)   # bool (len(x), len(family))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.models.inference import probabilities

if TYPE_CHECKING:
    from nnseal.data import Dataset

Kind = Literal["gauss", "round", "cast", "prune", "edit", "sgd"]


@dataclass(frozen=True)
class Perturbation:
    """One simulated weight change of a copy of the model.

    * ``gauss``: every weight (of parameters named ``prefix…``) × (1 + scale·N(0, 1));
    * ``round``: every weight matrix rounded to ``bits`` bits (uniform, symmetric, per tensor);
    * ``cast``: every parameter rounded to ``dtype`` (float16, bfloat16) and back;
    * ``prune``: the ``scale`` fraction of smallest-magnitude weights (global) set to zero;
    * ``edit``: ``count`` random entries of one weight matrix (named ``prefix…``, default the head)
      × (1 + scale);
    * ``sgd``: ``steps`` Adam steps (lr ``scale``, batch 32) on the data the owner fingerprints from.
    """

    kind: Kind
    scale: float = 0.0
    bits: int = 8
    dtype: str = "float16"
    prefix: str = ""
    count: int = 1
    steps: int = 0
    seed: int = 0

    def apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = copy.deepcopy(model).eval()
        gen = torch.Generator().manual_seed(self.seed)
        if self.kind == "sgd":
            return _sgd(out, data, self.steps, self.scale, gen)
        chosen = [(n, p) for n, p in out.named_parameters() if n.startswith(self.prefix)]
        matrices = [(n, p) for n, p in chosen if n.endswith("weight") and p.dim() > 1]
        with torch.no_grad():
            if self.kind == "gauss":
                for _, p in chosen:
                    p.mul_(1 + self.scale * torch.randn(p.shape, generator=gen))
            elif self.kind == "round":
                for _, p in matrices:
                    step = p.abs().max().clamp_min(1e-12) / (2 ** (self.bits - 1) - 1)
                    p.copy_(torch.round(p / step) * step)
            elif self.kind == "cast":
                for _, p in chosen:
                    p.copy_(p.to(getattr(torch, self.dtype)).float())
            elif self.kind == "prune":
                flat = torch.cat([p.abs().flatten() for _, p in matrices])
                cut = torch.quantile(flat, self.scale) if self.scale > 0 else -1.0
                for _, p in matrices:
                    p.mul_(p.abs() > cut)
            elif self.kind == "edit":
                _, p = matrices[-1]
                idx = torch.randperm(p.numel(), generator=gen)[: self.count]
                p.view(-1)[idx] *= 1 + self.scale
            else:
                raise ValueError(f"unknown perturbation kind {self.kind!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sgd(model: nn.Module, data: Dataset | None, steps: int, lr: float, gen: torch.Generator) -> nn.Module:
    if data is None:
        raise ValueError("an sgd perturbation needs the data the owner fingerprints from")
    x, y = torch.as_tensor(data.x, dtype=torch.float32), torch.as_tensor(data.y, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(32, len(x)),), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def default_perturbations(
    scales: Sequence[float] = (1e-3, 3e-3, 1e-2), draws: int = 4, bits: Sequence[int] = (6, 10), seed: int = 0
) -> list[Perturbation]:
    """The flip-rate markers' family: all-weight Gaussian noise at three scales, 6- and 10-bit rounding."""
    gauss = [
        Perturbation("gauss", s, seed=seed + 1000 * i + j) for i, s in enumerate(scales) for j in range(draws)
    ]
    return gauss + [Perturbation("round", bits=b) for b in bits]


def labels_only_family(seed: int = 0, head: str = "head.") -> list[Perturbation]:
    """A broad family for labels-only fingerprints: all-weight and head-only noise, 6/10-bit rounding,
    a bfloat16 round trip, 0.5–2 % magnitude pruning, single-weight +1 % head edits and a few Adam
    steps. 8-bit rounding and float16 are left out on purpose, so they stay held-out tests."""
    out = default_perturbations(seed=seed)
    out += [
        Perturbation("gauss", s, prefix=head, seed=seed + 5000 + j) for s in (3e-3, 1e-2) for j in range(4)
    ]
    out += [Perturbation("cast", dtype="bfloat16")]
    out += [Perturbation("prune", s) for s in (0.005, 0.01, 0.02)]
    out += [Perturbation("edit", 0.01, prefix=head, seed=seed + 7000 + j) for j in range(8)]
    out += [Perturbation("sgd", 1e-3, steps=5, seed=seed + 9000 + j) for j in range(3)]
    return out


@torch.no_grad()
def head_edit_flips(model: nn.Module, x: np.ndarray, relative: float = 5e-3) -> np.ndarray:
    """(len(x), 2·C·F) booleans, computed exactly from ``penultimate``: does scaling head weight
    (i, j) by (1 ± ``relative``) change x's top-1 label? Every single-entry edit of the head, both
    signs: a change of w_ij moves logit i alone, by ±relative·w_ij·h_j(x)."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    h = model.penultimate(xt).double()  # (n, F)
    w = model.head.weight.double()  # (C, F)
    z = model.head(h.float()).double()  # (n, C)
    label = z.argmax(1)
    top = z.gather(1, label[:, None])  # (n, 1)
    others = z.scatter(1, label[:, None], -torch.inf).max(1, keepdim=True).values  # runner-up logit
    out = []
    for sign in (1.0, -1.0):
        delta = sign * relative * w[None] * h[:, None, :]  # (n, C, F): the change of logit i
        own = torch.nn.functional.one_hot(label, z.shape[1]).bool()[:, :, None]
        flips = torch.where(
            own, top[:, :, None] + delta < others[:, :, None], z[:, :, None] + delta > top[:, :, None]
        )
        out.append(flips.reshape(len(x), -1))
    return torch.cat(out, 1).numpy()


def flip_matrix(
    model: nn.Module,
    x: np.ndarray,
    perturbations: Sequence[Perturbation],
    data: Dataset | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(len(x), len(perturbations)) booleans: does the perturbed model change x's top-1 label?"""
    base = probabilities(model, x).argmax(1)
    bar = tqdm(perturbations, desc="simulated tamperings", disable=not progress, leave=False)
    return np.stack([probabilities(p.apply(model, data), x).argmax(1) != base for p in bar], axis=1)
