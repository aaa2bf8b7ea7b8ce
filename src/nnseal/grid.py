"""The input grid: every query nnseal sends is a valid image in the data's own quantisation.

Real images are 8-bit (values k/255; scikit-learn's digits are k/16). An input off that grid is a
one-line test away from being recognised as a query and routed to the original model, so every method
projects its candidates onto the grid and measures margins *after* rounding. Grid values are computed
exactly as the loaders compute pixels (float32 k / float32 levels), so an on-grid query is
bit-identical to the image a server decodes from the same integer pixels.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_LEVELS = 255
"""8-bit images: pixel values k/255, k = 0..255."""


def check_levels(levels: object) -> int:
    """``levels`` as an int in 1..255, or ValueError naming the value."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 1 <= int(levels) <= 255:
        raise ValueError(f"grid levels must be an integer in 1..255, got {levels!r}")
    return int(levels)


def pixels(x: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """The integer pixel values (uint8) nearest to ``x`` in [0, 1]."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * levels), 0, levels).astype(np.uint8)


def from_pixels(p: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """Integer pixels → float32 in [0, 1], the loaders' way (float32 k / float32 levels)."""
    out = np.asarray(p).astype(np.float32)
    out /= np.float32(levels)
    return out


def to_grid(x: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """``x`` rounded to the nearest grid value (clipped to [0, 1]), float32."""
    return from_pixels(pixels(x, levels), levels)


def off_grid_fraction(x: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """Per input, the fraction of its values that are not exactly a grid value: what a provider's
    grid test computes (natural images score 0)."""
    x = np.asarray(x, dtype=np.float32)
    off = x != to_grid(x, levels)
    return off.reshape(len(x), -1).mean(axis=1) if x.ndim > 1 else off.astype(float)


def is_on_grid(x: np.ndarray, levels: int = DEFAULT_LEVELS) -> bool:
    """Whether every value of ``x`` is exactly a grid value."""
    return bool(np.all(np.asarray(x, dtype=np.float32) == to_grid(x, levels)))


def straight_through(x: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """``x`` rounded to the grid in the forward pass, the identity in the backward pass, so a gradient
    ascent optimises the rounded input it will actually send."""
    rounded = torch.round(x.clamp(0, 1) * levels) / levels
    return x + (rounded - x).detach()


def snap(
    x: torch.Tensor,
    center: torch.Tensor,
    epsilon: float,
    norm: str,
    levels: int,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``x`` on the grid, inside the box and still inside the ``norm`` ball of radius ``epsilon``
    around the on-grid ``center``: nearest grid value, pulled back toward ``center`` where that leaves
    the ball (L∞: to the ball's outermost grid values; L2: rounded toward ``center`` instead)."""
    lo = torch.ceil(torch.as_tensor(bounds[0] * levels - 1e-6)) / levels
    hi = torch.floor(torch.as_tensor(bounds[1] * levels + 1e-6)) / levels
    xq = (torch.round(x * levels) / levels).clamp(lo, hi)
    if norm == "linf":
        down = torch.ceil((center - epsilon) * levels - 1e-6) / levels
        up = torch.floor((center + epsilon) * levels + 1e-6) / levels
        xq = torch.minimum(torch.maximum(xq, down), up)
    else:
        d = (xq - center).flatten(1).norm(dim=1)
        outside = d > epsilon * (1 + 1e-6)
        if outside.any():
            toward = center + torch.trunc((x - center) * levels) / levels
            xq = torch.where(outside.view(-1, *[1] * (x.dim() - 1)), toward, xq)
    return (torch.round(xq * levels) / levels).to(x.dtype)
