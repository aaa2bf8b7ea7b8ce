"""Rendering helpers for reports: image grids as PNG and Markdown tables."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nnseal._io import atomic_write_bytes


def image_grid(rows: Sequence[np.ndarray], scale: int = 4, pad: int = 2) -> Image.Image:
    """One grid row per array of images (N, C, H, W) in [0, 1]; grey or RGB; upscaled ``scale``×."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    c, h, w = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    canvas = np.ones(((h + pad) * len(rows) + pad, (w + pad) * cols + pad, 3), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(np.clip(row, 0, 1)):
            tile = np.repeat(img, 3, axis=0) if c == 1 else img[:3]
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = tile.transpose(1, 2, 0)
    pil = Image.fromarray((canvas * 255).round().astype(np.uint8))
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
