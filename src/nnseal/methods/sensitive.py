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
* **any parameters, factored** (the default for every other W): per-output gradients factor
  through each layer's input ``a`` and the back-propagated signal ``m = ∂(s·z)/∂y`` at its output
  ``y`` for a seed ``s`` (the per-example-gradient-norm trick of Goodfellow 2015, Opacus,
  BackPACK). With ``f = softmax(z)`` and J its Jacobian, ``∂f_k/∂W = Σ_j J_kj ∂z_j/∂W``; J's rows
  sum to zero, so with B an orthonormal basis of the vectors orthogonal to (1, …, 1) the K−1
  seeds ``s_r`` = rows of ``B·J`` give ``S = Σ_k ‖∂f_k/∂W‖² = Σ_r ‖∂(s_r·z)/∂W‖²`` (for logits,
  the K unit seeds): K−1 (K) input-only backward passes, each batched over the samples, and as
  the seeds already carry the softmax no K×K mixing of large tensors follows. For a linear map
  ``y = a Wᵀ + b``, ``∂(s·z)/∂W = mᵀ a`` and ``‖mᵀa‖² = ‖m‖²‖a‖²``; a ``Conv2d``'s per-seed weight
  gradients are one weight gradient of a grouped convolution with a group per sample (or, for a
  narrow input patch, products with the unfolded input, one seed at a time), or go through the
  input Gram matrix when that needs fewer operations; batch norm in eval mode is an affine map
  per channel. Behind a piecewise-linear network (ReLU, max / average pooling, linear layers,
  eval batch norm, reshapes) the signals are locally constant in x, exactly as Algorithm 1's
  double backprop sees them (the derivative of a ReLU mask is zero), so ``∂S/∂x`` has two parts:
  through each layer's input, in closed form from the same per-seed gradients (for a convolution
  the input gradient of the grouped convolution), and through the seeds' dependence on z, from
  the (K−1)×(K−1) Gram matrix of the per-seed gradients without any division by a probability;
  one ordinary backward pass through the forward graph takes both to x.
* **any parameters, per sample** (fallback): Algorithm 1's double backprop, one sample at a
  time, for the parameters the factored path cannot take, decided per parameter by one probe
  forward on two samples: an owner other than ``nn.Linear``, ``nn.Conv2d`` (groups 1, zero padding, numeric
  padding) and eval-mode ``BatchNorm`` with running statistics; a parameter shared or used more
  than once; a layer called other than once per forward, or whose input or output is changed in
  place; an operation after the layer that is not piecewise linear in the input (tanh, softmax,
  layer norm, products of two input-dependent tensors …); a model whose samples interact or
  whose output is not (N, K). S and ∂S/∂x are sums over parameters, so the two paths add up.
  (The earlier any-layer path, per-output Jacobians with ``torch.func``, is kept as
  ``_functional_sensitivity_and_grad`` for the benchmark only: it is slower, and under torch
  2.13 its ∂S/∂x is wrong for a ``LayerNorm`` weight — torch.func's higher-order layer-norm
  derivatives — while plain autograd's double backprop is right.)

Example::

    gen = SensitiveSampleGenerator(epsilon=0.1, steps=300)
    out = gen.generate(model, seeds)            # seeds: float32 (N, C, H, W) in [0, 1]
    assert (out.sensitivity > out.seed_sensitivity).all()
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, jacrev, vmap
from torch.nn import functional as F
from torch.nn.grad import conv2d_input, conv2d_weight
from tqdm.auto import tqdm

from nnseal import grid
from nnseal.models.inference import WhiteBox

SensitivityOf = Literal["probs", "logits"]
"""What S differentiates: the softmax (the paper's f) or the logits."""
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
    model: WhiteBox, x: torch.Tensor, names: set[str], of: SensitivityOf
) -> torch.Tensor:
    h = model.penultimate(x)
    z = model.head(h)
    jac_sq = _softmax_jacobian_sq(z) if of == "probs" else torch.full_like(z[:, 0], z.shape[1]).double()
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
    model: nn.Module, x: torch.Tensor, names: set[str], of: SensitivityOf
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S(x), ∂S/∂x) per sample for any parameter set, via per-output Jacobians (``torch.func``), in
    chunks: the earlier any-layer path, kept for the benchmark (see the module docstring)."""
    parts = [
        _functional_chunk(model, x[i : i + FUNCTIONAL_CHUNK], names, of)
        for i in range(0, len(x), FUNCTIONAL_CHUNK)
    ]
    return torch.cat([v for v, _ in parts]), torch.cat([g for _, g in parts])


def _functional_chunk(
    model: nn.Module, x: torch.Tensor, names: set[str], of: SensitivityOf
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = {n: p.detach() for n, p in model.named_parameters() if n in names}
    fixed = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in names}

    def f(params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, {**fixed, **params}, (xi.unsqueeze(0),))[0]
        return torch.softmax(z, 0) if of == "probs" else z

    def s(xi: torch.Tensor) -> torch.Tensor:
        jac = jacrev(f)(chosen, xi)
        return sum(j.pow(2).sum() for j in jac.values())  # type: ignore[return-value]

    g, v = vmap(grad_and_value(s))(x)
    return v.double(), g


# ---------------------------------------------------------------------------------------------
# The factored any-layer path.

FACTORED_CHUNK_ELEMENTS = 1 << 25
"""Rough bound on the elements of the K-fold tensors (signals, per-seed gradients) that one chunk
of the factored path holds (128 MiB in float32); the chunk size follows from the probe's shapes."""

_LINEAR_OPS = frozenset(
    """AddBackward0 AddBackward1 SubBackward0 SubBackward1 RsubBackward0 RsubBackward1 NegBackward0
    MulBackward1 DivBackward1 ViewBackward0 UnsafeViewBackward0 ReshapeAliasBackward0 TBackward0
    TransposeBackward0 TransposeBackward1 PermuteBackward0 ExpandBackward0 SqueezeBackward0
    SqueezeBackward1 SqueezeBackward2 SqueezeBackward3 UnsqueezeBackward0 CloneBackward0
    CatBackward0 StackBackward0 SelectBackward0 SliceBackward0 IndexBackward0 SplitBackward0
    SplitWithSizesBackward0 UnbindBackward0 SumBackward0 SumBackward1 MeanBackward0 MeanBackward1
    AvgPool2DBackward0 AdaptiveAvgPool2DBackward0 ToCopyBackward0 ConstantPadNdBackward0
    ReluBackward0 LeakyReluBackward0 HardtanhBackward0 ThresholdBackward0 AbsBackward0
    ClampBackward1 ClampMinBackward0 ClampMaxBackward0 MaximumBackward0 MinimumBackward0
    MaxBackward0 MaxBackward1 AmaxBackward0 MaxPool2DWithIndicesBackward0
    MaxPool1DWithIndicesBackward0 AdaptiveMaxPool2DBackward0""".split()
)
"""Autograd nodes piecewise linear in all their inputs together: behind them the derivative of the
output w.r.t. a layer's output is locally constant in x (as Algorithm 1's double backprop sees it)."""
_BILINEAR_OPS = frozenset(
    """MulBackward0 MmBackward0 BmmBackward0 MvBackward0 AddmmBackward0 AddmvBackward0
    BaddbmmBackward0 ConvolutionBackward0""".split()
)
"""Linear in each input: piecewise linear while at most one input depends on x."""
_BATCH_NORM_OPS = frozenset(
    {"NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0"}
)
"""Affine in the input when every batch norm of the model uses its running statistics."""


def _frozen_batch_norm(m: nn.Module) -> bool:
    return (
        not m.training
        and getattr(m, "running_mean", None) is not None
        and getattr(m, "running_var", None) is not None
    )


def _unsupported(module: nn.Module, attr: str) -> str | None:
    """Why the factored path can't take ``module.<attr>``; None if it can."""
    if attr not in ("weight", "bias"):
        return f"{type(module).__name__}.{attr} is not a weight or bias"
    if type(module) is nn.Linear:
        return None
    if type(module) is nn.Conv2d:
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return "Conv2d with groups, a non-zero padding mode or string padding"
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None if module.affine and _frozen_batch_norm(module) else "batch norm not in eval mode"
    return f"{type(module).__name__} layers are not factored"


@dataclass
class _Plan:
    """Which parameters go which way: ``layers`` (module, its factored attrs), ``reasons`` (why each
    other parameter goes through the per-sample fallback) and the chunk size of the factored path."""

    layers: list[tuple[nn.Module, tuple[str, ...]]]
    reasons: dict[str, str]
    chunk: int


def _hooked(modules: list[nn.Module]) -> tuple[dict[nn.Module, list], list]:
    """Forward hooks recording (input, output, their versions) of each call of each module."""
    records: dict[nn.Module, list] = {m: [] for m in modules}

    def hook(store: list, args: tuple, out: object) -> None:
        a = args[0] if args else None
        store.append((a, out, getattr(a, "_version", None), getattr(out, "_version", None)))

    hooks = [
        m.register_forward_hook(lambda _m, args, out, st=records[m]: hook(st, args, out)) for m in modules
    ]
    return records, hooks


def _record_problem(rec: list) -> str | None:
    if len(rec) != 1:
        return f"the layer runs {len(rec)} times per forward"
    a, y, va, vy = rec[0]
    if not isinstance(a, torch.Tensor) or not isinstance(y, torch.Tensor) or y.grad_fn is None:
        return "the layer's input or output is not a tensor in the graph"
    if a._version != va or y._version != vy:
        return "the layer's input or output is changed in place"
    return None


def _graph_nodes(root: object) -> list:
    nodes, seen, stack = [], set(), [root]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        nodes.append(n)
        stack.extend(f for f, _ in n.next_functions)  # type: ignore[attr-defined]
    return nodes


def _reaching(nodes: list, targets: set) -> dict:
    """For each autograd node: does it lead (backward, towards the inputs) to one of ``targets``?"""
    memo: dict = {}
    for start in nodes:
        stack = [start]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            kids = [f for f, _ in n.next_functions if f is not None]
            todo = [k for k in kids if k not in memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            memo[n] = any(k in targets or memo[k] for k in kids)
    return memo


def _plan(model: nn.Module, x: torch.Tensor, names: set[str]) -> _Plan:
    """Decide, with one probe forward on two samples, which parameters the factored path takes."""
    params = dict(model.named_parameters())
    uses = {id(p): 0 for p in params.values()}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] += 1
    reasons: dict[str, str] = {}
    owners: dict[nn.Module, list[tuple[str, str]]] = {}
    for name in sorted(names):
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name)
        why = _unsupported(module, attr) or (
            "the parameter is shared" if uses[id(params[name])] > 1 else None
        )
        if why:
            reasons[name] = why
        else:
            owners.setdefault(module, []).append((name, attr))
    per_sample = _probe(model, x, params, owners, reasons) if owners else 0
    layers = [(m, tuple(a for n, a in ps if n not in reasons)) for m, ps in owners.items()]
    layers = [(m, attrs) for m, attrs in layers if attrs]
    return _Plan(layers, reasons, max(1, FACTORED_CHUNK_ELEMENTS // max(1, per_sample)))


def _probe(
    model: nn.Module,
    x: torch.Tensor,
    params: dict[str, nn.Parameter],
    owners: dict[nn.Module, list[tuple[str, str]]],
    reasons: dict[str, str],
) -> int:
    """Check the graph of a forward on two samples; adds to ``reasons``; returns the elements per
    sample of the factored path's K-fold tensors."""
    chosen = {n: params[n] for ps in owners.values() for n, _ in ps}
    flags = {n: p.requires_grad for n, p in chosen.items()}
    xp = (x[:2] if len(x) >= 2 else torch.cat([x[:1], x[:1]])).detach().clone().requires_grad_(True)
    records, hooks = _hooked(list(owners))
    problem = None
    try:
        for p in chosen.values():
            p.requires_grad_(True)  # so that each use of a chosen parameter shows in the graph
        with torch.enable_grad():
            z = model(xp)
            if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.grad_fn is None:
                problem = "the model's output is not (N, K)"
            else:
                (gx,) = torch.autograd.grad(z[0].sum(), xp, retain_graph=True, allow_unused=True)
                if gx is not None and bool(gx[1].ne(0).any()):
                    problem = "the samples of a batch interact"
    finally:
        for h in hooks:
            h.remove()
        for n, p in chosen.items():
            p.requires_grad_(flags[n])
    if problem is not None:
        reasons.update((n, problem) for n in chosen)
        return 0
    nodes = _graph_nodes(z.grad_fn)
    edges = {id(p): 0 for p in chosen.values()}
    for n in nodes:
        for f, _ in n.next_functions:
            var = getattr(f, "variable", None)
            if var is not None and id(var) in edges:
                edges[id(var)] += 1
    x_node = next((n for n in nodes if getattr(n, "variable", None) is xp), None)
    depends = _reaching(nodes, {x_node})
    bn_affine = all(
        _frozen_batch_norm(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )

    def nonlinear(n: object) -> bool:
        kind = type(n).__name__
        if kind in _LINEAR_OPS:
            return False
        dep = [f is not None and (f is x_node or depends[f]) for f, _ in n.next_functions]  # type: ignore[attr-defined]
        if kind in _BILINEAR_OPS:
            return sum(dep) > 1
        if kind == "DivBackward0":
            return len(dep) > 1 and dep[1]
        if kind in _BATCH_NORM_OPS:
            return not bn_affine or any(dep[1:])
        return True

    k, per_sample = z.shape[1], 0
    for module, ps in owners.items():
        why = _record_problem(records[module])
        if why is None:
            after = _reaching(nodes, {records[module][0][1].grad_fn})
            bad = sorted({type(n).__name__ for n in nodes if after[n] and depends[n] and nonlinear(n)})
            if bad:
                why = f"not piecewise linear after the layer ({', '.join(bad)})"
        for name, _ in ps:
            if why is None and edges[id(chosen[name])] != 1:
                reasons[name] = f"the parameter is used {edges[id(chosen[name])]} times per forward"
            elif why is not None:
                reasons[name] = why
        if any(n not in reasons for n, _ in ps):
            a, y = records[module][0][:2]
            per_sample += k * (3 * y[0].numel() + _gram_size(module, a[:1], y[:1])) + a[0].numel()
    return per_sample


def _gram_size(module: nn.Module, a: torch.Tensor, y: torch.Tensor) -> int:
    """Elements per sample and seed of the per-seed weight gradient (direct) or of the input Gram
    matrix (per sample) that the weight's step holds."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return y.shape[1]
    u = _unfolded(module, a)
    o, l_, p = y.shape[1] if type(module) is nn.Conv2d else y.shape[-1], u.shape[1], u.shape[2]
    return min(o * p, l_ * l_ + l_ * o)


def _unfolded(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The layer input as (N, L, P): L positions the weight is applied at, P inputs per position."""
    if type(module) is nn.Conv2d:
        u = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # type: ignore[arg-type]
        return u.transpose(1, 2)
    return a.reshape(len(a), -1, a.shape[-1])


@functools.cache
def _complement_basis(k: int) -> torch.Tensor:
    """(K−1, K): orthonormal rows spanning the vectors orthogonal to (1, …, 1), float64."""
    ones_first = torch.cat(
        [torch.ones(k, 1, dtype=torch.float64), torch.eye(k, dtype=torch.float64)[:, :-1]], 1
    )
    return torch.linalg.qr(ones_first)[0][:, 1:].T.contiguous()


def _softmax_jacobian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, J = diag(p) − ppᵀ) per row, in float64, J's diagonal from positive terms only."""
    p = torch.softmax(z.double(), dim=1)
    off_diag = 1.0 - torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return p, torch.diag_embed(p * (p @ off_diag)) - p.unsqueeze(2) * p.unsqueeze(1) * off_diag


def _logit_gradient(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """∂S/∂z through the softmax Jacobian alone, for ``S = Σ_r ‖Σ_k J_rk G_k‖²`` with the per-logit
    gradients ``G_k`` held fixed, from ``h`` = the Gram matrix of the ``Σ_k J_rk G_k`` (N, K, K) and
    ``p``. Since each row of J sums to zero, ``⟨Σ_j J_rj G_j, G_k⟩ = h_rk / p_k`` up to a term that
    ∂J/∂z removes, and the 1/p_k cancel: no division, so tiny probabilities are harmless."""
    d = h.diagonal(dim1=1, dim2=2)
    hp = (h * p.unsqueeze(2)).sum(1)  # Σ_r h_ra p_r
    jac = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    rows = (h.sum(2).unsqueeze(2) * jac).sum(1)  # Σ_r (Σ_k h_rk) J_ra
    return 2 * (d - p * d.sum(1, keepdim=True) - rows - hp + p * hp.sum(1, keepdim=True))


def _pairs(d: torch.Tensor) -> torch.Tensor:
    """(N, R, D) → the R×R Gram matrix per sample."""
    return d @ d.transpose(1, 2)


def _norms(d: torch.Tensor, need_h: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ_r ‖d_r‖² per sample and, if asked for, the Gram matrix (whose trace that sum is)."""
    if not need_h:
        return d.pow(2).sum((1, 2)), None
    h = _pairs(d)
    return h.diagonal(dim1=1, dim2=2).sum(1), h


_Terms = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]
"""One layer's share: S per sample (N,), ∂S/∂(layer input) with the signals held fixed (None if not
asked for), and the R×R Gram matrix of the per-seed gradients (N, R, R; None if not asked for)."""


def _gram_cheaper(r: int, o: int, l_: int, p: int, need_h: bool) -> bool:
    """Whether the route through the L×L input Gram matrix takes fewer multiply-adds than the direct
    one for per-seed weight gradients ``m_r u`` (m_r: O×L, u: L×P), value, input gradient and Gram."""
    direct = 2 * r * o * l_ * p + (r * r * o * p if need_h else 0)
    gram = 2 * l_ * l_ * p + r * o * l_ * l_ + (r * o * l_ * l_ + r * r * o * l_ if need_h else 0)
    return gram < direct


def _unfolded_terms(mt: torch.Tensor, u: torch.Tensor, need_grad: bool, need_h: bool) -> _Terms:
    """S, ∂S/∂u and the Gram matrix for the per-seed weight gradients ``D_r = m_r u`` from signals
    ``mt`` (N, R, O, L) and unfolded inputs ``u`` (N, L, P): directly, or through ``G = uuᵀ`` as
    ``⟨D_r, D_q⟩ = ⟨m_r G, m_q⟩`` — whichever takes fewer operations."""
    n, r, o, l_ = mt.shape
    m = mt.reshape(n, r * o, l_)
    if not _gram_cheaper(r, o, l_, u.shape[-1], need_h):
        d = m @ u
        du = 2 * (m.transpose(1, 2) @ d) if need_grad else None
        s, h = _norms(d.reshape(n, r, -1), need_h)
        return s, du, h
    g = u @ u.transpose(1, 2)
    q = m.transpose(1, 2) @ m  # Σ_r m_rᵀ m_r
    h = None
    if need_h:
        h = (m @ g).reshape(n, r, o * l_) @ mt.reshape(n, r, o * l_).transpose(1, 2)
    return (g * q).sum((1, 2)), 2 * (q @ u) if need_grad else None, h


SMALL_CONV_PATCH = 32
"""A convolution with at most this many inputs per output position (in channels × kernel size, as
a first layer on images) takes its per-seed weight gradients one seed at a time from the unfolded
input; wider ones take them for all seeds at once as one grouped convolution."""


def _conv_terms(
    module: nn.Conv2d,
    attrs: tuple[str, ...],
    a: torch.Tensor,
    sigs: list[torch.Tensor],
    need_grad: bool,
    need_h: bool,
) -> _Terms:
    n, o = sigs[0].shape[:2]
    r, c, size = len(sigs), a.shape[1], sigs[0].shape[2:]
    l_, p = size.numel(), module.weight[0].numel()
    geometry = (module.kernel_size, module.dilation, module.padding, module.stride)
    bias = "bias" in attrs
    if "weight" not in attrs:
        s, h = _norms(torch.stack([sig.reshape(n, o, l_).sum(-1) for sig in sigs], 1), need_h)
        return s, None, h
    if _gram_cheaper(r, o, l_, p, need_h):
        u = F.unfold(a, *geometry).transpose(1, 2)  # type: ignore[arg-type]
        mt = torch.stack(sigs, 1).reshape(n, r, o, l_)
        s, du, h = _unfolded_terms(mt, u, need_grad, need_h)
        da = F.fold(du.transpose(1, 2), a.shape[2:], *geometry) if du is not None else None  # type: ignore[arg-type]
        if bias:
            bs, bh = _norms(mt.sum(-1), need_h)
            s, h = s + bs, None if h is None else h + bh  # type: ignore[operator]
        return s, da, h
    if p <= SMALL_CONV_PATCH:  # one seed at a time, D_rᵀ = uᵀ m_rᵀ; a row of ones gives the bias'
        ut = F.unfold(a, *geometry)  # type: ignore[arg-type]  # (N, P, L)
        if bias:
            ut = torch.cat([ut, ut.new_ones(n, 1, l_)], 1)
        ds, dut = [], None
        for sig in sigs:
            m = sig.reshape(n, o, l_)
            d = ut @ m.transpose(1, 2)  # (N, P[+1], O)
            if need_grad:
                dut = d @ m if dut is None else dut.baddbmm_(d, m)
            ds.append(d)
        da = 2 * F.fold(dut[:, :p], a.shape[2:], *geometry) if dut is not None else None  # type: ignore[arg-type]
        s, h = _norms(torch.stack(ds, 1).reshape(n, r, -1), need_h)
        return s, da, h
    # all seeds at once: sample i's per-seed weight gradients are the weight gradient of group i of
    # a convolution with one group per sample (N·C input channels, N·R·O output channels)
    grouped = (module.stride, module.padding, module.dilation, n)
    a1 = a.reshape(1, n * c, *a.shape[2:])
    m = torch.stack(sigs, 1)
    g = m.reshape(1, n * r * o, *size)
    d = conv2d_weight(a1, (n * r * o, *module.weight.shape[1:]), g, *grouped).reshape(n, r, o, p)
    da = (
        2 * conv2d_input(a1.shape, d.reshape(-1, *module.weight.shape[1:]), g, *grouped).reshape(a.shape)
        if need_grad
        else None
    )
    s, h = _norms(d.reshape(n, r, -1), need_h)
    if bias:
        bs, bh = _norms(m.reshape(n, r, o, l_).sum(-1), need_h)
        s, h = s + bs, None if h is None else h + bh  # type: ignore[operator]
    return s, da, h


def _layer_terms(
    module: nn.Module,
    attrs: tuple[str, ...],
    a: torch.Tensor,
    sigs: list[torch.Tensor],
    need_grad: bool,
    need_h: bool,
) -> _Terms:
    """One layer's share of S from its input ``a`` and the signals ``sigs`` (one per seed r, each
    ∂(seed_r · z)/∂y shaped like the layer's output y), summed over ``attrs``."""
    a = a.detach()
    if type(module) is nn.Conv2d:
        return _conv_terms(module, attrs, a, sigs, need_grad, need_h)
    n, r = len(a), len(sigs)
    s = torch.zeros(n, dtype=sigs[0].dtype, device=a.device)
    da: torch.Tensor | None = None
    hs: list[torch.Tensor] = []

    def add(vec: torch.Tensor) -> torch.Tensor:  # (N, R, D) per-seed gradients that don't depend on a
        v, vh = _norms(vec, need_h)
        if vh is not None:
            hs.append(vh)
        return v

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        c = sigs[0].shape[1]
        ms = torch.stack(sigs, 1).reshape(n, r, c, -1)  # (N, R, C, positions)
        if "weight" in attrs:
            shape = (1, c, *[1] * (a.dim() - 2))
            inv = torch.rsqrt(module.running_var + module.eps)  # type: ignore[operator]
            xhat = (a - module.running_mean.view(shape)) * inv.view(shape)  # type: ignore[union-attr]
            w = (ms * xhat.reshape(n, 1, c, -1)).sum(-1)  # (N, R, C)
            s = s + add(w)
            if need_grad:
                da = (2 * (w.unsqueeze(-1) * ms).sum(1) * inv.view(1, c, 1)).reshape(a.shape)
        if "bias" in attrs:
            s = s + add(ms.sum(-1))
    else:
        o = sigs[0].shape[-1]
        m = torch.stack(sigs, 1).reshape(n, r, -1, o)  # (N, R, L, O)
        if "weight" in attrs:
            if m.shape[2] == 1:  # D_r = m_r ⊗ a: ‖D_r‖² = ‖m_r‖²‖a‖², ⟨D_r, D_q⟩ = ⟨m_r, m_q⟩‖a‖²
                a_sq = a.reshape(n, -1).pow(2).sum(1)
                ms, mh = _norms(m[:, :, 0], need_h)
                s = s + a_sq * ms
                da = 2 * a * ms.view(-1, *[1] * (a.dim() - 1)) if need_grad else None
                if mh is not None:
                    hs.append(mh * a_sq.view(n, 1, 1))
            else:
                ws, du, wh = _unfolded_terms(
                    m.transpose(2, 3), a.reshape(n, -1, a.shape[-1]), need_grad, need_h
                )
                s, da = s + ws, None if du is None else du.reshape(a.shape)
                if wh is not None:
                    hs.append(wh)
        if "bias" in attrs:
            s = s + add(m.sum(2))
    return s, da, sum(hs[1:], hs[0]) if hs else None


def _factored_chunk(
    model: nn.Module, x: torch.Tensor, plan: _Plan, of: SensitivityOf, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    modules = [m for m, _ in plan.layers]
    records, hooks = _hooked(modules)
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            z = model(xg)
    finally:
        for h in hooks:
            h.remove()
    bad = [_record_problem(records[m]) for m in modules]
    if any(bad) or z.dim() != 2:
        raise RuntimeError(f"the model's forward changed since the probe: {next(b for b in bad if b)}")
    ys = [records[m][0][1] for m in modules]
    n, k = z.shape
    full = of == "probs"
    if full:  # seeds: rows of B·J, B an orthonormal basis of 1⊥ (J·1 = 0, so K−1 rows suffice)
        p, jac = _softmax_jacobian(z.detach())
        basis = _complement_basis(k).to(jac.device)
        seeds = (basis @ jac).to(z.dtype)
    else:
        seeds = torch.eye(k, dtype=z.dtype, device=z.device).expand(n, k, k)
    r = seeds.shape[1]
    with torch.enable_grad():
        per_seed = [
            torch.autograd.grad(z, ys, seeds[:, i], retain_graph=need_grad or i < r - 1, allow_unused=True)
            for i in range(r)
        ]
    need_h = full and need_grad
    s = torch.zeros(n, dtype=torch.float64, device=x.device)
    h = torch.zeros((n, r, r), dtype=torch.float64, device=x.device) if need_h else None
    outs: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for idx, (module, attrs) in enumerate(plan.layers):
        sigs = [torch.zeros_like(ys[idx]) if g[idx] is None else g[idx] for g in per_seed]
        a = records[module][0][0]
        ls, da, lh = _layer_terms(module, attrs, a, sigs, need_grad and a.requires_grad, need_h)
        s = s + ls.double()
        if h is not None and lh is not None:
            h = h + lh.double()
        if da is not None:
            outs.append(a)
            grads.append(da)
    if not need_grad:
        return s, None
    if h is not None:  # back from B·J to J: the Gram matrix of Σ_k J_rk ∂z_k/∂W is Bᵀ h B
        outs.append(z)
        grads.append(_logit_gradient(p, basis.T @ h @ basis).to(z.dtype))
    g = torch.zeros_like(x)
    if outs:
        with torch.enable_grad():
            (gx,) = torch.autograd.grad(outs, xg, grads, allow_unused=True)
        if gx is not None:
            g = gx
    return s, g


def _sensitivity_and_grad(
    model: nn.Module, x: torch.Tensor, names: set[str], of: SensitivityOf, need_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(S(x), ∂S/∂x) per sample for any parameter set: the factored path for the parameters it
    takes, per-sample double backprop for the rest (see the module docstring), summed."""
    plan = _plan(model, x, names)
    s = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    g = torch.zeros_like(x) if need_grad else None
    if plan.layers:
        parts = [
            _factored_chunk(model, x[i : i + plan.chunk], plan, of, need_grad)
            for i in range(0, len(x), plan.chunk)
        ]
        s = s + torch.cat([v for v, _ in parts])
        if g is not None:
            g = g + torch.cat([d for _, d in parts])  # type: ignore[misc]
    if plan.reasons:
        v, d = _per_sample_sensitivity_and_grad(model, x, set(plan.reasons), of, need_grad)
        s = s + v
        if g is not None:
            g = g + d  # type: ignore[operator]
    return s, g


def _per_sample_sensitivity_and_grad(
    model: nn.Module, x: torch.Tensor, names: set[str], of: SensitivityOf, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Algorithm 1 for the parameters ``names``: per sample, a loop over outputs, double backprop."""
    w = [p for n, p in model.named_parameters() if n in names]
    flags = [p.requires_grad for p in w]
    s, g = [], []
    try:
        for p in w:
            p.requires_grad_(True)
        with torch.enable_grad():
            for xi in x:
                v = xi.detach().unsqueeze(0).requires_grad_(True)
                z = model(v)[0]
                f = torch.softmax(z, 0) if of == "probs" else z
                total = torch.zeros((), dtype=f.dtype, device=f.device)
                for k in range(f.shape[0]):
                    gk = torch.autograd.grad(
                        f[k], w, retain_graph=True, create_graph=need_grad, allow_unused=True
                    )
                    total = total + sum(t.pow(2).sum() for t in gk if t is not None)
                s.append(total.detach().double())
                if need_grad:
                    (gx,) = (
                        torch.autograd.grad(total, v, allow_unused=True) if total.requires_grad else (None,)
                    )
                    g.append(torch.zeros_like(xi) if gx is None else gx[0])
    finally:
        for p, flag in zip(w, flags, strict=True):
            p.requires_grad_(flag)
    return torch.stack(s), torch.stack(g) if need_grad else None


def sensitivity_plan(
    model: nn.Module, x: np.ndarray | torch.Tensor, params: Sequence[str] | None = None
) -> dict[str, str]:
    """How S is computed for each parameter of W: ``"last layer"`` (closed form), ``"factored"``,
    or ``"per sample: <why>"`` (the fallback). ``x``: inputs like the ones to be scored (one will do)."""
    names = resolve_params(model, params)
    if _fast_path(model, names):
        return dict.fromkeys(sorted(names), "last layer")
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    xt = xt.to(next(model.parameters()).dtype)
    plan = _plan(model, xt, names)
    return {n: f"per sample: {plan.reasons[n]}" if n in plan.reasons else "factored" for n in sorted(names)}


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
    of: SensitivityOf = "probs",
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
                out.append(_last_layer_sensitivity(model, xb, names, of))  # type: ignore[arg-type]
        else:
            out.append(_sensitivity_and_grad(model, xb, names, of, need_grad=False)[0])
    return torch.cat(out).numpy()


def sensitivity_reference(
    model: nn.Module, x: torch.Tensor, params: Sequence[str] | None = None, of: SensitivityOf = "probs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 as written: one sample, a loop over outputs, double backprop. For tests and
    benchmarks — (S, ∂S/∂x) for a single input of shape (C, H, W)."""
    names = resolve_params(model, params)
    w = [p for n, p in model.named_parameters() if n in names]
    v = x.detach().clone().unsqueeze(0).requires_grad_(True)
    z = model(v)[0]
    f = torch.softmax(z, 0) if of == "probs" else z
    total = torch.zeros((), dtype=f.dtype)
    for k in range(f.shape[0]):
        gk = torch.autograd.grad(f[k], w, create_graph=True)
        total = total + sum(g.pow(2).sum() for g in gk)
    (gx,) = torch.autograd.grad(total, v)
    return total.detach(), gx[0]


def _fast_path(model: nn.Module, names: set[str]) -> bool:
    return isinstance(model, WhiteBox) and names <= set(LAST_LAYER)


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
        of: "probs" (softmax, the paper's f) or "logits": what the sensitivity differentiates.
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
        of: SensitivityOf = "probs",
        params: Sequence[str] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 500,
        progress: bool = False,
    ) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if of not in ("probs", "logits"):
            raise ValueError(f"of must be 'probs' or 'logits', got {of!r}")
        if steps < 0 or lr <= 0 or batch_size < 1:
            raise ValueError(f"need steps >= 0, lr > 0, batch_size >= 1 (got {steps}, {lr}, {batch_size})")
        if not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must satisfy p < q, got {bounds}")
        self.epsilon, self.norm, self.lr, self.steps = float(epsilon), norm, float(lr), int(steps)
        self.of, self.params, self.bounds = of, None if params is None else list(params), bounds
        self.batch_size, self.progress = int(batch_size), progress

    def __repr__(self) -> str:
        return (
            f"SensitiveSampleGenerator(epsilon={self.epsilon}, norm={self.norm!r}, lr={self.lr}, "
            f"steps={self.steps}, of={self.of!r}, params={self.params})"
        )

    def config(self) -> dict:
        """Hyperparameters, as recorded in a fingerprint."""
        return {
            "epsilon": self.epsilon,
            "norm": self.norm,
            "lr": self.lr,
            "steps": self.steps,
            "of": self.of,
            "params": self.params or list(LAST_LAYER),
            "bounds": list(self.bounds),
            "batch_size": self.batch_size,
        }

    def _value_and_grad(
        self, model: nn.Module, x: torch.Tensor, names: set[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if _fast_path(model, names):
            x = x.detach().requires_grad_(True)
            s = _last_layer_sensitivity(model, x, names, self.of)  # type: ignore[arg-type]
            (g,) = torch.autograd.grad(torch.log(s + 1e-300).sum(), x)
            return s.detach(), g
        s, g = _sensitivity_and_grad(model, x, names, self.of)
        assert g is not None
        return s.detach(), g / (s.view(-1, *[1] * (x.dim() - 1)).to(g.dtype) + 1e-30)  # ∇ log S

    def generate(self, model: nn.Module, seeds: np.ndarray, levels: int | None = None) -> SensitiveSamples:
        """Optimise every seed (float32 (N, C, H, W) inside the box); returns the samples.

        With ``levels`` (the data's pixel grid, :mod:`nnseal.grid`) seeds are rounded to the grid and
        every iterate is evaluated at its on-grid projection (a straight-through ascent), so the
        samples are valid images and their sensitivity is measured after rounding."""
        v0_all = np.asarray(seeds, dtype=np.float32)
        if levels is not None:
            v0_all = grid.to_grid(v0_all, levels)
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
                x, s, s0 = self._ascend(model, v0, names, bar, levels)
                xs.append(x), ss.append(s), s0s.append(s0)
        finally:
            bar.close()
            for p in model.parameters():
                p.requires_grad_(True)
        return SensitiveSamples(np.concatenate(xs), v0_all, np.concatenate(ss), np.concatenate(s0s))

    def _ascend(
        self, model: nn.Module, v0: torch.Tensor, names: set[str], bar: tqdm, levels: int | None
    ) -> tuple[np.ndarray, ...]:
        x = v0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.steps))
        best_x, best_s, s0 = v0.clone(), None, None
        for _ in range(self.steps + 1):
            sent = x.detach()
            if levels is not None:  # straight-through: value and gradient at the image that is sent
                sent = grid.snap(sent, v0, self.epsilon, self.norm, levels, self.bounds)
            s, g = self._value_and_grad(model, sent, names)
            if best_s is None:
                s0, best_s = s.clone(), s.clone()
            better = s > best_s
            best_s = torch.where(better, s, best_s)
            best_x[better] = sent[better]
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
