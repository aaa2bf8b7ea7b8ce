"""Exact (functionally equivalent) extraction of ReLU MLPs from their logits.

In the style of Carlini, Jagielski & Mironov (CRYPTO 2020, "Cryptanalytic extraction of neural
network models") and Jagielski et al. (USENIX Security 2020): a ReLU network is piecewise linear in
its input, and every first-layer neuron ``w·x + b`` bends the logits on the whole hyperplane
``w·x + b = 0``. The attacker

1. walks random lines ``x(t) = u + t·v`` through input space and finds the points where the logits
   stop being linear in ``t`` (bisection, then the intersection of the two linear pieces);
2. at each such critical point takes the Jacobian of the logits on either side (finite differences,
   exact inside a linear region): their difference is rank one, ``c ⊗ w``, which gives the neuron's
   row ``w`` up to sign and scale and its bias from ``w·x* + b = 0``;
3. keeps hyperplanes found on several lines and confirmed by a kink at random far points on them
   (a deeper neuron bends the logits on a surface that is only locally a plane), deduplicates them;
4. fits the rest by least squares on queries: for one hidden layer the logits are linear in
   ``[relu(Z), x, 1]`` (exact), the linear term then tells each neuron's sign; for deeper models a
   small network on ``[relu(Z), Z]`` is trained by regression on queried logits.

Assumption: the attacker may send any real-valued input (an API that accepts floats; the model's
inputs are images in [0, 1], the attack leaves that box) and reads logits; every row sent is a
counted query. The attack computes in float64 and the oracle made by :func:`model_oracle` evaluates a
float64 copy of the weights (a float32 deployment answers with ~1e-7 relative error, which this
implementation does not try to tolerate).

Example::

    oracle = model_oracle(model)                      # black box x (n, 64) -> logits (n, 10)
    ext = extract_mlp(oracle, seed=0)
    print(ext.queries, neuron_recovery(first_layer(model)[0], ext.weights))
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnseal.errors import ModelError

Logits = Callable[[np.ndarray], np.ndarray]


class CountingOracle:
    """Black-box access ``x (n, d) ↦ logits (n, k)`` in float64 that counts every input row sent."""

    def __init__(self, fn: Logits, input_dim: int, num_classes: int) -> None:
        self.fn, self.input_dim, self.num_classes = fn, int(input_dim), int(num_classes)
        self.queries = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.input_dim)
        self.queries += len(x)
        return np.asarray(self.fn(x), dtype=np.float64).reshape(len(x), self.num_classes)

    def __repr__(self) -> str:
        return (
            f"CountingOracle(input_dim={self.input_dim}, num_classes={self.num_classes}, "
            f"queries={self.queries})"
        )


def model_oracle(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> CountingOracle:
    """The logits of a float64 copy of ``model`` as a :class:`CountingOracle` on flattened inputs."""
    config = getattr(model, "config", None)
    shape = tuple(input_shape or (config.input_shape if config is not None else ()))
    if not shape:
        raise ModelError("model_oracle: give input_shape for a model without an nnseal config")
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        k = int(m(torch.zeros(1, *shape, dtype=torch.float64)).shape[1])

    @torch.no_grad()
    def fn(x: np.ndarray) -> np.ndarray:
        return m(torch.from_numpy(x).view(-1, *shape)).numpy()

    return CountingOracle(fn, int(np.prod(shape)), k)


def first_layer(model: nn.Module, host: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The first ``nn.Linear`` of an nnseal MLP as rows and biases in raw input coordinates (its
    normalisation folded in). ``host=True`` skips parasitic layers at the input (the original
    network's first layer); ``host=False`` gives the layer the input actually meets first."""
    features = getattr(model, "features", None)
    if features is None:
        raise ModelError("first_layer needs an nnseal MLP (normalize, features, head)")
    linear = next(
        (m for m in features if isinstance(m, nn.Linear)) if host else
        (m for m in features.modules() if isinstance(m, nn.Linear)),
        None,
    )  # fmt: skip
    if linear is None:
        raise ModelError("first_layer: the model has no Linear layer in its features")
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    norm = model.normalize
    mean = float(norm.mean.flatten()[0]) if norm.mean.numel() else 0.0
    std = float(norm.std.flatten()[0]) if norm.std.numel() else 1.0
    if norm.mean.numel() > 1 and not torch.all(norm.mean == norm.mean.flatten()[0]):
        raise ModelError("first_layer: per-channel normalisation is not supported")
    return w / std, b - w.sum(1) * mean / std


def neuron_recovery(true_w: np.ndarray, rec_w: np.ndarray, threshold: float = 0.999) -> float:
    """Fraction of true rows with a recovered row at |cosine| ≥ ``threshold`` (up to sign)."""
    if len(rec_w) == 0:
        return 0.0
    t = true_w / np.linalg.norm(true_w, axis=1, keepdims=True)
    r = rec_w / np.linalg.norm(rec_w, axis=1, keepdims=True)
    return float((np.abs(t @ r.T).max(1) >= threshold).mean())


@dataclass
class Extraction:
    """What :func:`extract_mlp` recovered and what it cost."""

    weights: np.ndarray
    """(h, d) first-layer rows, unit norm, in raw input coordinates; signs resolved when
    ``signs_resolved`` (one hidden layer), else arbitrary."""
    biases: np.ndarray
    model: nn.Module
    """The reconstruction, float64, on flattened inputs: ``model(x (n, d)) -> logits``."""
    queries: dict[str, int]
    seconds: float
    signs_resolved: bool
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def total_queries(self) -> int:
        return int(sum(self.queries.values()))

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
        return self.model(xt).numpy()


def fidelity(extraction: Extraction, oracle: CountingOracle, x: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and max |logit error| of the reconstruction against ``oracle`` on ``x``
    (evaluation queries: the oracle's count is restored afterwards)."""
    before = oracle.queries
    want = oracle(np.asarray(x).reshape(len(x), -1))
    oracle.queries = before
    got = extraction.predict(x)
    return {
        "agreement": float((want.argmax(1) == got.argmax(1)).mean()),
        "max_logit_error": float(np.abs(want - got).max()),
        "mean_logit_error": float(np.abs(want - got).mean()),
    }


# --------------------------------------------------------------------------- critical points


def _linear_tol(*values: np.ndarray) -> float:
    return 1e-9 * (1.0 + max(float(np.abs(v).max()) for v in values))


def _critical_points(oracle: CountingOracle, u: np.ndarray, v: np.ndarray, radius: float,
                     segments: int, min_width: float) -> list[float]:  # fmt: skip
    """Values of t in [-radius, radius] where t ↦ logits(u + t v) bends."""
    ts = np.linspace(-radius, radius, segments + 1)
    fs = oracle(u + ts[:, None] * v)
    cache: dict[float, np.ndarray] = {float(t): f for t, f in zip(ts, fs, strict=True)}

    def f(t: float) -> np.ndarray:
        if t not in cache:
            cache[t] = oracle((u + t * v)[None])[0]
        return cache[t]

    found: list[float] = []
    stack = [(float(ts[i]), float(ts[i + 1])) for i in range(segments)]
    while stack:
        a, b = stack.pop()
        fa, fb, m = f(a), f(b), 0.5 * (a + b)
        fm = f(m)
        if np.abs(fm - 0.5 * (fa + fb)).max() <= _linear_tol(fa, fb):
            # linear on [a, b] at the midpoint; a kink pair cancelling exactly at m is ignored
            continue
        if b - a <= min_width:
            found.append(m)
            continue
        # one kink? intersect the left and right linear pieces and check the prediction
        d = (b - a) * 1e-4
        sl, sr = (f(a + d) - fa) / d, (fb - f(b - d)) / d
        ds = sl - sr
        if np.abs(ds).max() > _linear_tol(sl, sr):
            j = int(np.argmax(np.abs(ds)))
            t = float(a + (fb[j] - fa[j] - sr[j] * (b - a)) / ds[j])
            if a + d < t < b - d:
                pred = fa + sl * (t - a)
                ft = f(t)
                if np.abs(ft - pred).max() <= 1e3 * _linear_tol(fa, fb) and all(
                    np.abs(
                        f(t + s * h) - (fa + sl * (t + s * h - a) if s < 0 else fb + sr * (t + s * h - b))
                    ).max()
                    <= 1e3 * _linear_tol(fa, fb)
                    for s, h in ((-1, (t - a) / 2), (1, (b - t) / 2))
                ):
                    found.append(t)
                    continue
        stack += [(a, m), (m, b)]
    return sorted(found)


def _hyperplane(oracle: CountingOracle, x: np.ndarray, v: np.ndarray, eta: float,
                eps: float) -> tuple[np.ndarray, float, float] | None:  # fmt: skip
    """(unit row, bias, rank-one ratio) of the neuron bending the logits at ``x`` (crossed along
    ``v``), from the Jacobians at ``x ∓ eta v``; None when the difference is not rank one."""
    d = len(x)
    basis = np.eye(d) * eps
    pts = []
    for side in (-1.0, 1.0):
        c = x + side * eta * v
        pts.append(np.vstack([c[None], c[None] + basis]))
    out = oracle(np.vstack(pts))
    left, right = out[: d + 1], out[d + 1 :]
    jl = (left[1:] - left[0]) / eps  # (d, k)
    jr = (right[1:] - right[0]) / eps
    delta = (jr - jl).T  # (k, d) = c w^T
    _, s, vt = np.linalg.svd(delta, full_matrices=False)
    if s[0] <= 1e-8 * (1.0 + np.abs(jl).max()):
        return None
    ratio = float(s[1] / s[0]) if len(s) > 1 else 0.0
    if ratio > 1e-3:
        return None
    w = vt[0]
    w = w * np.sign(w[np.argmax(np.abs(w))])  # canonical sign for deduplication
    return w, float(-w @ x), ratio


def _kinks_at(oracle: CountingOracle, w: np.ndarray, b: float, points: np.ndarray, eps: float) -> np.ndarray:
    """Whether the logits bend across the hyperplane (w, b) at each of ``points`` (projected on it)."""
    p = points - ((points @ w + b) / (w @ w))[:, None] * w
    f = oracle(np.vstack([p - eps * w, p, p + eps * w])).reshape(3, len(p), -1)
    second = np.abs(f[0] + f[2] - 2 * f[1]).max(axis=1)
    scale = 1.0 + np.abs(f).max(axis=(0, 2))
    return second > 1e-7 * scale


# --------------------------------------------------------------------------- the attack


def extract_mlp(
    oracle: CountingOracle,
    *,
    hidden_after: tuple[int, ...] = (),
    lines: int = 4,
    min_hits: int = 2,
    radius: float = 200.0,
    segments: int = 512,
    center: float = 0.5,
    spread: float = 0.5,
    checks: int = 6,
    fit_queries: int = 0,
    fit_inputs: np.ndarray | None = None,
    fit_epochs: int = 300,
    seed: int = 0,
) -> Extraction:
    """Recover a ReLU MLP's first layer and a functionally equivalent model from ``oracle``.

    Args:
        hidden_after: the attacker's guess of the hidden widths after the first layer: ``()`` — one
            hidden layer, fitted exactly by least squares; e.g. ``(32,)`` — trained by regression.
        lines: random lines walked; ``min_hits``: lines a hyperplane must be found on to count.
        radius: each line spans t ∈ [-radius, radius] (raw input units) with ``segments`` initial
            pieces; the lines pass through ``center + spread · N(0, I)`` in random unit directions.
        checks: random points on a candidate hyperplane where a kink must show (at least half).
        fit_queries: random inputs (uniform in [center ± spread·2]) queried for the fit (default
            3·(h + d + 1) for least squares, 20,000 for regression); ``fit_inputs``: attacker
            inputs queried as well (e.g. a few unlabeled images), flattened to (n, d).
        fit_epochs: Adam epochs of the regression fit.
    """
    if lines < 1 or not 1 <= min_hits <= lines:
        raise ValueError(f"need lines >= 1 and 1 <= min_hits <= lines, got {lines} and {min_hits}")
    if radius <= 0 or segments < 2 or checks < 1:
        raise ValueError(f"need radius > 0, segments >= 2, checks >= 1; got {radius}, {segments}, {checks}")
    start, rng, d = time.perf_counter(), np.random.default_rng(seed), oracle.input_dim
    q0 = oracle.queries
    candidates: list[tuple[np.ndarray, float]] = []
    hits: list[set[int]] = []
    n_critical = n_rejected = 0
    for line in range(lines):
        u = center + spread * rng.standard_normal(d)
        v = rng.standard_normal(d)
        v /= np.linalg.norm(v)
        ts = _critical_points(oracle, u, v, radius, segments, min_width=1e-9 * radius)
        n_critical += len(ts)
        for i, t in enumerate(ts):
            gap = min([abs(t - s) for s in (ts[i - 1] if i else None, ts[i + 1] if i + 1 < len(ts) else None)
                       if s is not None] + [1.0])  # fmt: skip
            hp = _hyperplane(oracle, u + t * v, v, eta=gap / 4, eps=gap * 1e-4)
            if hp is None:
                n_rejected += 1
                continue
            w, b, _ = hp
            for j, (cw, cb) in enumerate(candidates):
                if abs(cw @ w) >= 1 - 1e-6 and abs(cb - b) <= 1e-4 * (1 + abs(b)):
                    hits[j].add(line)
                    break
            else:
                candidates.append((w, b))
                hits.append({line})
    q_search = oracle.queries - q0
    kept = [(w, b) for (w, b), h in zip(candidates, hits, strict=True) if len(h) >= min_hits]
    confirmed = []
    for w, b in kept:
        pts = center + spread * 4 * rng.standard_normal((checks, d))
        if _kinks_at(oracle, w, b, pts, eps=1e-3).sum() * 2 >= checks:
            confirmed.append((w, b))
    q_confirm = oracle.queries - q0 - q_search
    if not confirmed:
        raise ModelError("extraction found no first-layer hyperplane; try more lines or a larger radius")
    W = np.array([w for w, _ in confirmed])
    B = np.array([b for _, b in confirmed])
    stats: dict[str, Any] = {
        "critical_points": n_critical,
        "not_rank_one": n_rejected,
        "candidates": len(candidates),
        "found_on_enough_lines": len(kept),
        "confirmed": len(confirmed),
    }
    qf = oracle.queries
    if not hidden_after:
        model, W, B, resolved, fit_stats = _fit_least_squares(oracle, W, B, rng, center, spread,
                                                              fit_queries, fit_inputs)  # fmt: skip
    else:
        model, fit_stats = _fit_regression(oracle, W, B, hidden_after, rng, center, spread,
                                           fit_queries, fit_inputs, fit_epochs, seed)  # fmt: skip
        resolved = False
    stats.update(fit_stats)
    queries = {"search": q_search, "confirm": q_confirm, "fit": oracle.queries - qf}
    return Extraction(W, B, model, queries, time.perf_counter() - start, resolved, stats)


def _fit_inputs(rng: np.random.Generator, n: int, d: int, center: float, spread: float,
                extra: np.ndarray | None) -> np.ndarray:  # fmt: skip
    x = center + spread * 2 * (2 * rng.random((n, d)) - 1)
    if extra is not None:
        x = np.vstack([np.asarray(extra, dtype=np.float64).reshape(len(extra), d), x])
    return x


class _OneHidden(nn.Module):
    def __init__(self, w: np.ndarray, b: np.ndarray, a: np.ndarray, c: np.ndarray) -> None:
        super().__init__()
        self.hidden = nn.Linear(w.shape[1], w.shape[0]).double()
        self.out = nn.Linear(w.shape[0], a.shape[0]).double()
        with torch.no_grad():
            for p, val in (
                (self.hidden.weight, w),
                (self.hidden.bias, b),
                (self.out.weight, a),
                (self.out.bias, c),
            ):
                p.copy_(torch.as_tensor(val))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _fit_least_squares(oracle: CountingOracle, W: np.ndarray, B: np.ndarray, rng: np.random.Generator,
                       center: float, spread: float, n: int, extra: np.ndarray | None):  # type: ignore[no-untyped-def]  # fmt: skip
    """logits = A relu(Z) + L x + c exactly (one hidden layer, any signs); then L = Σ β_i A_i w_iᵀ
    with β_i ∈ {0, -1} tells which rows point the wrong way; flip them and refit without L."""
    h, d = W.shape
    x = _fit_inputs(rng, n or 3 * (h + d + 1), d, center, spread, extra)
    y = oracle(x)
    z = x @ W.T + B
    phi = np.hstack([np.maximum(z, 0), x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(phi, y, rcond=None)
    A, L = coef[:h].T, coef[h : h + d].T  # (k, h), (k, d)
    basis = np.stack([np.outer(A[:, i], W[i]).ravel() for i in range(h)], axis=1)
    beta, *_ = np.linalg.lstsq(basis, L.ravel(), rcond=None)
    flip = beta < -0.5
    s = np.where(flip, -1.0, 1.0)
    W2, B2 = W * s[:, None], B * s
    phi2 = np.hstack([np.maximum(x @ W2.T + B2, 0), np.ones((len(x), 1))])
    coef2, *_ = np.linalg.lstsq(phi2, y, rcond=None)
    resid = float(np.abs(phi2 @ coef2 - y).max())
    stats = {
        "fit": "least squares",
        "fit_inputs": len(x),
        "flipped": int(flip.sum()),
        "fit_max_residual": resid,
        "beta_off_by": float(np.minimum(np.abs(beta), np.abs(beta + 1)).max()),
    }
    return _OneHidden(W2, B2, coef2[:h].T, coef2[h]), W2, B2, True, stats


class _Deeper(nn.Module):
    def __init__(self, w: np.ndarray, b: np.ndarray, hidden: tuple[int, ...], k: int) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w))
        self.register_buffer("b", torch.as_tensor(b))
        layers: list[nn.Module] = []
        dim = 2 * len(w)
        for hh in hidden:
            layers += [nn.Linear(dim, hh), nn.ReLU()]
            dim = hh
        layers.append(nn.Linear(dim, k))
        self.rest = nn.Sequential(*layers).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.w.T + self.b
        return self.rest(torch.cat([torch.relu(z), z], dim=1))


def _fit_regression(oracle: CountingOracle, W: np.ndarray, B: np.ndarray, hidden: tuple[int, ...],
                    rng: np.random.Generator, center: float, spread: float, n: int,
                    extra: np.ndarray | None, epochs: int, seed: int):  # type: ignore[no-untyped-def]  # fmt: skip
    """The recovered first layer fixed (features [relu(Z), Z], so signs need not be known), the
    remaining layers trained by Adam on the MSE to queried logits."""
    x = _fit_inputs(rng, n or 20_000, W.shape[1], center, spread, extra)
    y = oracle(x)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _Deeper(W, B, hidden, y.shape[1])
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    opt = torch.optim.Adam(model.rest.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            nn.functional.mse_loss(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        resid = float((model(xt) - yt).abs().max())
    return model, {"fit": f"regression {hidden}", "fit_inputs": len(x), "fit_max_residual": resid}
