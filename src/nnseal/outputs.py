"""Output specifications: which part of a model's answer verification compares.

The SSF paper's cases: top-1 label (hardest), top-k labels, and probabilities rounded to n
decimals (alone or with the top-k labels). A spec turns a target's answer — a probability matrix
or ranked labels — into rows that compare for equality, and says how far each recorded answer is
from changing (its *margin*), so answers sitting on a knife-edge of numeric noise are not used.

Spec strings: ``top1``, ``top3``, ``top1-p2`` (top-1 label + its probability at 2 decimals),
``probs-p1`` (all probabilities at 1 decimal, plus the top-1 label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

_SPEC_RE = re.compile(r"^(?:top(?P<k>[1-9]\d*)|(?P<all>probs))(?:-p(?P<d>\d))?$")


@dataclass(frozen=True)
class OutputSpec:
    """Compare the top-``k`` labels in rank order, and with ``decimals`` set also probabilities
    rounded to that many decimals: of those k labels, or of every class when ``all_probs``."""

    k: int = 1
    decimals: int | None = None
    all_probs: bool = False

    @classmethod
    def parse(cls, text: str | OutputSpec) -> OutputSpec:
        if isinstance(text, OutputSpec):
            return text
        m = _SPEC_RE.match(str(text).strip().lower())
        if not m or (m["all"] and m["d"] is None):
            raise ValueError(f"unknown output spec {text!r}; expected e.g. top1, top3, top1-p2, probs-p2")
        if m["all"]:
            return cls(k=1, decimals=int(m["d"]), all_probs=True)
        return cls(k=int(m["k"]), decimals=None if m["d"] is None else int(m["d"]))

    def __str__(self) -> str:
        if self.all_probs:
            return f"probs-p{self.decimals}"
        return f"top{self.k}" + ("" if self.decimals is None else f"-p{self.decimals}")

    @property
    def needs(self) -> Literal["labels", "probabilities"]:
        """What a target must return for this spec."""
        return "labels" if self.decimals is None else "probabilities"

    def _check_classes(self, n_classes: int) -> None:
        if self.k > n_classes:
            raise ValueError(f"spec {self} compares {self.k} labels but the model has {n_classes} classes")

    def encode(self, probs: np.ndarray) -> np.ndarray:
        """Rows to compare, from a probability matrix (N, classes)."""
        probs = np.asarray(probs, dtype=np.float64)
        self._check_classes(probs.shape[1])
        labels = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
        parts = [labels.astype(np.float64)]
        if self.decimals is not None:
            shown = probs if self.all_probs else np.take_along_axis(probs, labels, axis=1)
            parts.append(np.round(shown, self.decimals))
        return np.concatenate(parts, axis=1)

    def encode_labels(self, labels: np.ndarray) -> np.ndarray:
        """Rows to compare, from ranked labels (N, ≥k) returned by a labels-only target."""
        if self.decimals is not None:
            raise ValueError(f"spec {self} needs probabilities; the target returns labels only")
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[1] < self.k:
            raise ValueError(f"spec {self} needs {self.k} ranked labels per query, got shape {labels.shape}")
        return labels[:, : self.k].astype(np.float64)

    def margin(self, probs: np.ndarray) -> np.ndarray:
        """Per row, the relative numeric noise the encoded answer survives: every probability may
        move by up to ``margin × its value`` (float error is relative) without reordering the top k
        — gap / (p_i + p_{i+1}) — or crossing a rounding boundary — distance / p."""
        probs = np.asarray(probs, dtype=np.float64)
        self._check_classes(probs.shape[1])
        ranked = -np.sort(-probs, axis=1)
        upper, lower = ranked[:, : min(self.k, probs.shape[1] - 1)], ranked[:, 1 : self.k + 1]
        out = ((upper - lower) / np.maximum(upper + lower, 1e-300)).min(axis=1)
        if self.decimals is not None:
            labels = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            shown = probs if self.all_probs else np.take_along_axis(probs, labels, axis=1)
            scaled = shown * 10**self.decimals
            to_boundary = np.abs(scaled - np.floor(scaled) - 0.5) / 10**self.decimals
            out = np.minimum(out, (to_boundary / np.maximum(shown, 1e-300)).min(axis=1))
        return out
