"""Arbitrary weight modification: change chosen or random weights, or find the smallest change of
one weight that flips a prediction."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnseal.attacks.base import AttackContext, register
from nnseal.models.inference import probabilities


def _param(model: nn.Module, name: str) -> nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"unknown parameter {name!r}; model has: {', '.join(params)}")
    return params[name]


@register("modify-weights")
def modify_weights(
    model: nn.Module,
    ctx: AttackContext,
    *,
    param: str = "head.weight",
    k: int = 1,
    relative: float = 0.01,
    absolute: float = 0.0,
    index: int = -1,
) -> nn.Module:
    """Change k weights of one parameter: w → w·(1 + relative) + absolute (seeded random entries, or
    the entry at ``index``; ``index=-2`` picks the largest |w|)."""
    flat = _param(model, param).data.view(-1)
    if not 1 <= k <= flat.numel():
        raise ValueError(f"k must be between 1 and {flat.numel()}, got {k}")
    if relative == 0 and absolute == 0:
        raise ValueError("relative and absolute are both 0: the attack would change nothing")
    if index == -2:
        chosen = flat.abs().topk(k).indices
    elif index >= 0:
        if index >= flat.numel() or k != 1:
            raise ValueError(f"index {index} needs k=1 and must be < {flat.numel()}")
        chosen = torch.tensor([index])
    else:
        chosen = torch.from_numpy(ctx.rng().choice(flat.numel(), k, replace=False))
    with torch.no_grad():
        flat[chosen] = flat[chosen] * (1 + relative) + absolute
    ctx.metrics["indices"] = chosen.tolist()
    return model


@register("noise")
def noise(
    model: nn.Module, ctx: AttackContext, *, prefix: str = "head.", relative: float = 0.01
) -> nn.Module:
    """Gaussian weight noise: every parameter whose name starts with ``prefix`` ('' = all) becomes
    w·(1 + relative·N(0, 1)), seeded (a cheap tamper family: thousands of independent copies)."""
    chosen = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    if not chosen:
        raise ValueError(
            f"no parameter starts with {prefix!r}; model has: "
            + ", ".join(n for n, _ in model.named_parameters())
        )
    if relative <= 0:
        raise ValueError(f"relative must be > 0, got {relative}")
    gen = torch.Generator().manual_seed(ctx.seed)
    with torch.no_grad():
        for p in chosen:
            p.mul_(1 + relative * torch.randn(p.shape, generator=gen))
    return model


@register("flip-weight", needs_data=True)
def flip_weight(
    model: nn.Module, ctx: AttackContext, *, param: str = "head.weight", index: int = -1
) -> nn.Module:
    """Change one weight (``index``, or a seeded random one that can flip something) by the smallest
    amount found that flips the top-1 prediction of at least one training input (both signs:
    doubling, then bisection)."""
    train = ctx.require_train("flip-weight")
    flat = _param(model, param).data.view(-1)
    if index >= flat.numel():
        raise ValueError(f"index {index} out of range for {param} with {flat.numel()} entries")
    base = probabilities(model, train.x).argmax(1)
    candidates = [index] if index >= 0 else ctx.rng().permutation(flat.numel())[:20].tolist()
    with torch.no_grad():
        for i in candidates:
            delta = _smallest_flip(model, flat, i, train.x, base)
            if delta is not None:
                original = float(flat[i])
                flat[i] = original + delta  # exactly the value the search verified
                ctx.metrics.update(
                    {"index": i, "delta": delta, "relative_change": delta / original if original else None}
                )
                return model
    raise ValueError(
        f"no change of {param}{candidates if index >= 0 else ''} flips a prediction (unused weight?)"
    )


def _smallest_flip(
    model: nn.Module, flat: torch.Tensor, i: int, x: np.ndarray, base: np.ndarray
) -> float | None:
    original = float(flat[i])

    def flips(delta: float) -> bool:
        flat[i] = original + delta
        changed = bool((probabilities(model, x).argmax(1) != base).any())
        flat[i] = original
        return changed

    best: float | None = None
    for sign in (1.0, -1.0):
        lo, hi = 0.0, sign * max(abs(original), 1e-3) * 1e-3
        for _ in range(30):
            if flips(hi):
                break
            lo, hi = hi, hi * 2
        else:
            continue
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if flips(mid) else (mid, hi)
        if best is None or abs(hi) < abs(best):
            best = hi
    return best
