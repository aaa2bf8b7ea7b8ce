"""Rendering helpers for reports: image grids as PNG and Markdown tables."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nnseal._io import atomic_write_bytes


def image_grid(
    rows: Sequence[np.ndarray], scale: int = 4, pad: int = 2, labels: Sequence[str] | None = None
) -> Image.Image:
    """One grid row per array of images (N, C, H, W) in [0, 1]; grey or RGB; upscaled ``scale``×;
    ``labels`` (one per row) written in a margin on the left, so the image explains itself."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"image_grid got {len(labels)} labels for {len(rows)} rows")
    c, h, w = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    canvas = np.ones(((h + pad) * len(rows) + pad, (w + pad) * cols + pad, 3), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(np.clip(row, 0, 1)):
            tile = np.repeat(img, 3, axis=0) if c == 1 else img[:3]
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = tile.transpose(1, 2, 0)
    pil = Image.fromarray((canvas * 255).round().astype(np.uint8))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    if not labels:
        return pil
    draw = ImageDraw.Draw(pil)
    margin = max(int(draw.textlength(t)) for t in labels) + 4 * pad * scale
    out = Image.new("RGB", (pil.width + margin, pil.height), "white")
    out.paste(pil, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        y = (pad + i * (h + pad) + h // 2) * scale
        draw.text((2 * pad * scale, y), text, fill="black", anchor="lm")
    return out


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; a ``|`` inside a cell is escaped so it cannot split the row."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])
