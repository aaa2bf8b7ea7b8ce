"""Sensitive-Sample generation — He, Zhang & Lee, "Sensitive-Sample Fingerprinting of Deep Neural
Networks", CVPR 2019, Algorithm 1.

A sensitive sample ``v`` maximises ``S(v) = ‖∂f(W, v)/∂W‖²_F``: by a first-order Taylor expansion,
any small change ΔW of the weights moves the output by ``∂f/∂W · ΔW``, so the larger S, the more
likely a tampered model answers differently. ``v`` stays inside the box [p, q] and an ε-ball around
a natural seed ``v0``, so it looks natural.

Two ways to compute S and its gradient with respect to the input:

* **last layer** (``W`` = weights and bias of ``model.head``, the paper's choice): for
  ``z = W h + b`` and ``f = softmax(z)``, ``‖∂f_k/∂W‖²_F = ‖∂f_k/∂z‖²·‖h‖²``, and
  ``Σ_k ‖∂f_k/∂z‖² = ‖diag(p) − ppᵀ‖²_F`` has a closed form, so one forward and one backward
  pass give the exact gradient for the whole batch — the same cost as a plain input gradient.
* **any parameters**: per-output Jacobians with ``torch.func`` (``vmap(grad(jacrev))``).

Example::

    gen = SensitiveSampleGenerator(epsilon=0.1, steps=300)
    out = gen.generate(model, seeds)            # seeds: float32 (N, C, H, W) in [0, 1]
    assert (out.sensitivity > out.seed_sensitivity).all()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, jacrev, vmap
from tqdm.auto import tqdm

from nnseal.models.architectures import Classifier

Output = Literal["probs", "logits"]
Norm = Literal["linf", "l2"]
LAST_LAYER = ("head.weight", "head.bias")


def _softmax_jacobian_sq(z: torch.Tensor) -> torch.Tensor:
    """Σ_k ‖∂softmax(z)_k/∂z‖² per row, computed from sums of positive terms only.

    The textbook form Σp² − 2Σp³ + (Σp²)² cancels catastrophically for a confident prediction;
    here ``Σ_{i≠k} p_i`` replaces ``1 − p_k``. Computed in float64 so tiny probabilities survive.
    """
    p = torch.softmax(z.double(), dim=1)
    off_diag = 1.0 - torch.eye(p.shape[1], dtype=p.dtype)
    one_minus_p = p @ off_diag
    others_sq = (p * p) @ off_diag
    return (p * p * (one_minus_p**2 + others_sq)).sum(1)


def _last_layer_sensitivity(
    model: Classifier, x: torch.Tensor, names: set[str], output: Output
) -> torch.Tensor:
    h = model.penultimate(x)
    z = model.head(h)
    jac_sq = _softmax_jacobian_sq(z) if output == "probs" else torch.full_like(z[:, 0], z.shape[1]).double()
    scale = torch.zeros_like(jac_sq)
    if "head.weight" in names:
        scale = scale + h.double().pow(2).sum(1)
    if "head.bias" in names:
        scale = scale + 1.0
    return jac_sq * scale


FUNCTIONAL_CHUNK = 16
"""Samples per torch.func call: each holds a full per-output Jacobian of W (tens of MB for a
hidden layer), so chunks keep memory flat whatever the batch size."""


def _functional_sensitivity_and_grad(
    model: nn.Module, x: torch.Tensor, names: set[str], output: Output
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S(x), ∂S/∂x) per sample for any parameter set, via per-output Jacobians, in chunks."""
    parts = [
        _functional_chunk(model, x[i : i + FUNCTIONAL_CHUNK], names, output)
        for i in range(0, len(x), FUNCTIONAL_CHUNK)
    ]
    return torch.cat([v for v, _ in parts]), torch.cat([g for _, g in parts])


def _functional_chunk(
    model: nn.Module, x: torch.Tensor, names: set[str], output: Output
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = {n: p.detach() for n, p in model.named_parameters() if n in names}
    fixed = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in names}

    def f(params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, {**fixed, **params}, (xi.unsqueeze(0),))[0]
        return torch.softmax(z, 0) if output == "probs" else z

    def s(xi: torch.Tensor) -> torch.Tensor:
        jac = jacrev(f)(chosen, xi)
        return sum(j.pow(2).sum() for j in jac.values())  # type: ignore[return-value]

    g, v = vmap(grad_and_value(s))(x)
    return v.double(), g


def resolve_params(model: nn.Module, params: Sequence[str] | None) -> set[str]:
    """Parameter names W; ``None`` means the last layer (weights and bias of ``model.head``)."""
    available = dict(model.named_parameters())
    names = set(LAST_LAYER) if params is None else set(params)
    unknown = sorted(names - set(available))
    if unknown or not names:
        raise ValueError(
            f"unknown parameter name(s) {unknown or '(none given)'}; model has: {', '.join(available)}"
        )
    return names


def sensitivity(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    params: Sequence[str] | None = None,
    output: Output = "probs",
    batch_size: int = 256,
) -> np.ndarray:
    """S(x) = ‖∂f(W, x)/∂W‖²_F for each input (float64 array of shape (N,))."""
    names = resolve_params(model, params)
    model.eval()
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    out = []
    for i in range(0, len(xt), batch_size):
        xb = xt[i : i + batch_size]
        if _fast_path(model, names):
            with torch.no_grad():
                out.append(_last_layer_sensitivity(model, xb, names, output))  # type: ignore[arg-type]
        else:
            out.append(_functional_sensitivity_and_grad(model, xb, names, output)[0].detach())
    return torch.cat(out).numpy()


def sensitivity_reference(
    model: nn.Module, x: torch.Tensor, params: Sequence[str] | None = None, output: Output = "probs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 as written: one sample, a loop over outputs, double backprop. For tests and
    benchmarks — (S, ∂S/∂x) for a single input of shape (C, H, W)."""
    names = resolve_params(model, params)
    w = [p for n, p in model.named_parameters() if n in names]
    v = x.detach().clone().unsqueeze(0).requires_grad_(True)
    z = model(v)[0]
    f = torch.softmax(z, 0) if output == "probs" else z
    total = torch.zeros((), dtype=f.dtype)
    for k in range(f.shape[0]):
        gk = torch.autograd.grad(f[k], w, create_graph=True)
        total = total + sum(g.pow(2).sum() for g in gk)
    (gx,) = torch.autograd.grad(total, v)
    return total.detach(), gx[0]


def _fast_path(model: nn.Module, names: set[str]) -> bool:
    return isinstance(model, Classifier) and names <= set(LAST_LAYER)


def project(
    x: torch.Tensor, v0: torch.Tensor, epsilon: float, norm: Norm, bounds: tuple[float, float]
) -> torch.Tensor:
    """Onto {‖x − v0‖ ≤ ε} ∩ [p, q]^m. Box clipping after the ball step never leaves the ball,
    because each clipped coordinate moves toward v0 (v0 lies in the box)."""
    if norm == "linf":
        x = torch.minimum(torch.maximum(x, v0 - epsilon), v0 + epsilon)
    else:
        d = x - v0
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        x = v0 + d * (epsilon / n).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
    return x.clamp(*bounds)


@dataclass(frozen=True)
class SensitiveSamples:
    """Generated samples with their seeds and sensitivities (float64)."""

    x: np.ndarray
    seeds: np.ndarray
    sensitivity: np.ndarray
    seed_sensitivity: np.ndarray


class SensitiveSampleGenerator:
    """Projected gradient ascent on S(x) from natural seeds (Algorithm 1), batched.

    Args:
        epsilon: radius of the ball around each seed, in input units ([0, 1] pixels). Default
            0.1 in L∞: every pixel moves by at most 10 % of its range, which keeps digits readable.
        norm: "linf" or "l2".
        lr: Adam learning rate (paper: 1e-3 with pixels in [0, 255]; 1e-2 here, pixels in [0, 1]).
        steps: itr_max (paper: 1000).
        output: "probs" (softmax, the paper's f) or "logits".
        params: names of the parameters W; None = last layer (paper's choice).
        bounds: the box [p, q].
        batch_size: samples optimised together.

    The ascent maximises log S, which has the same maximiser as S but a usable gradient where
    the softmax is saturated; the best iterate seen for each sample is returned.
    """

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        norm: Norm = "linf",
        lr: float = 1e-2,
        steps: int = 1000,
        output: Output = "probs",
        params: Sequence[str] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 500,
        progress: bool = False,
    ) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if output not in ("probs", "logits"):
            raise ValueError(f"output must be 'probs' or 'logits', got {output!r}")
        if steps < 0 or lr <= 0 or batch_size < 1:
            raise ValueError(f"need steps >= 0, lr > 0, batch_size >= 1 (got {steps}, {lr}, {batch_size})")
        if not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must satisfy p < q, got {bounds}")
        self.epsilon, self.norm, self.lr, self.steps = float(epsilon), norm, float(lr), int(steps)
        self.output, self.params, self.bounds = output, None if params is None else list(params), bounds
        self.batch_size, self.progress = int(batch_size), progress

    def __repr__(self) -> str:
        return (
            f"SensitiveSampleGenerator(epsilon={self.epsilon}, norm={self.norm!r}, lr={self.lr}, "
            f"steps={self.steps}, output={self.output!r}, params={self.params})"
        )

    def config(self) -> dict:
        """Hyperparameters, as recorded in a fingerprint."""
        return {
            "epsilon": self.epsilon,
            "norm": self.norm,
            "lr": self.lr,
            "steps": self.steps,
            "output": self.output,
            "params": self.params or list(LAST_LAYER),
            "bounds": list(self.bounds),
            "batch_size": self.batch_size,
        }

    def _value_and_grad(
        self, model: nn.Module, x: torch.Tensor, names: set[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if _fast_path(model, names):
            x = x.detach().requires_grad_(True)
            s = _last_layer_sensitivity(model, x, names, self.output)  # type: ignore[arg-type]
            (g,) = torch.autograd.grad(torch.log(s + 1e-300).sum(), x)
            return s.detach(), g
        s, g = _functional_sensitivity_and_grad(model, x, names, self.output)
        return s.detach(), g / (s.view(-1, *[1] * (x.dim() - 1)).float() + 1e-30)  # ∇ log S

    def generate(self, model: nn.Module, seeds: np.ndarray) -> SensitiveSamples:
        """Optimise every seed (float32 (N, C, H, W) inside the box); returns the samples."""
        v0_all = np.asarray(seeds, dtype=np.float32)
        lo, hi = self.bounds
        if v0_all.ndim < 2 or len(v0_all) == 0:
            raise ValueError(f"seeds must be a non-empty batch of inputs, got shape {v0_all.shape}")
        if v0_all.min() < lo or v0_all.max() > hi:
            raise ValueError(f"seeds must lie in the box [{lo}, {hi}]; got [{v0_all.min()}, {v0_all.max()}]")
        names = resolve_params(model, self.params)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        xs, ss, s0s = [], [], []
        bar = tqdm(
            total=len(v0_all) * self.steps,
            desc="sensitive samples",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        try:
            for i in range(0, len(v0_all), self.batch_size):
                v0 = torch.from_numpy(v0_all[i : i + self.batch_size])
                x, s, s0 = self._ascend(model, v0, names, bar)
                xs.append(x), ss.append(s), s0s.append(s0)
        finally:
            bar.close()
            for p in model.parameters():
                p.requires_grad_(True)
        return SensitiveSamples(np.concatenate(xs), v0_all, np.concatenate(ss), np.concatenate(s0s))

    def _ascend(
        self, model: nn.Module, v0: torch.Tensor, names: set[str], bar: tqdm
    ) -> tuple[np.ndarray, ...]:
        x = v0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.steps))
        best_x, best_s, s0 = v0.clone(), None, None
        for _ in range(self.steps + 1):
            s, g = self._value_and_grad(model, x, names)
            if best_s is None:
                s0, best_s = s.clone(), s.clone()
            better = s > best_s
            best_s = torch.where(better, s, best_s)
            best_x[better] = x.detach()[better]
            if _ == self.steps:
                break
            x.grad = -g  # ascent: Adam minimises
            opt.step()
            sched.step()
            with torch.no_grad():
                x.copy_(project(x, v0, self.epsilon, self.norm, self.bounds))
            bar.update(len(v0))
        assert s0 is not None and best_s is not None
        return best_x.numpy(), best_s.numpy(), s0.numpy()
