"""Reference classifiers. Each takes images in [0, 1] and returns logits.

Every model is ``head(features(normalize(x)))`` with ``head`` its last ``nn.Linear``: methods that
need the penultimate activations (the last-layer fast path of Sensitive-Sample generation) find
them without guessing, and normalisation lives inside the model so a black-box copy (ONNX, HTTP)
receives the same [0, 1] inputs the owner used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nnseal.errors import ModelError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's structure; saved as JSON next to its weights."""

    arch: str
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    width: int = 1
    hidden: tuple[int, ...] = field(default=())
    parasitic: tuple[tuple[int, int], ...] = field(default=())
    """Parasitic layers (``mlp`` only, :mod:`nnseal.protect`): ``(position, width)`` pairs, position 0
    at the flattened input, k after the k-th hidden ReLU; empty for an ordinary model."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.parasitic:  # an unprotected model's config JSON stays as it always was
            del d["parasitic"]
        else:
            d["parasitic"] = [list(p) for p in self.parasitic]
        return d

    @classmethod
    def from_dict(cls, d: object) -> ModelConfig:
        """Parse and range-check a config read from a file (which may be hostile: every field is checked)."""
        if not isinstance(d, dict):
            raise ModelError("invalid model config: not a JSON object")
        try:
            config = cls(
                arch=_get(d, "arch", str),
                input_shape=tuple(_ints(d["input_shape"], "input_shape")),  # type: ignore[arg-type]
                classes=tuple(_get(d, "classes", list)),
                mean=tuple(_floats(d.get("mean", [0.0]), "mean")),
                std=tuple(_floats(d.get("std", [1.0]), "std")),
                width=_get(d, "width", int, 1),
                hidden=tuple(_ints(d.get("hidden", []), "hidden")),
                parasitic=_pairs(d.get("parasitic", []), "parasitic"),
            )
        except KeyError as e:
            raise ModelError(f"invalid model config: missing {e}") from None
        config.check()
        return config

    def check(self) -> None:
        """Ranges that keep a model buildable and its size sane; a ModelError names the bad field."""
        problems = []
        if len(self.input_shape) != 3 or not all(1 <= v <= LIMITS["side"] for v in self.input_shape):
            problems.append(f"input_shape {self.input_shape} (want C, H, W each in 1..{LIMITS['side']})")
        elif self.input_shape[0] > LIMITS["channels"]:
            problems.append(f"{self.input_shape[0]} channels (at most {LIMITS['channels']})")
        if not 2 <= len(self.classes) <= LIMITS["classes"] or not all(
            isinstance(c, str) for c in self.classes
        ):
            problems.append(f"classes (want 2..{LIMITS['classes']} names)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.input_shape[0] if self.input_shape else 1):
                problems.append(f"{name} has {len(v)} values (want 1 or one per channel)")
        if any(s <= 0 for s in self.std):
            problems.append("std must be > 0")
        if not 1 <= self.width <= LIMITS["width"]:
            problems.append(f"width {self.width} (want 1..{LIMITS['width']})")
        if len(self.hidden) > LIMITS["layers"] or not all(1 <= h <= LIMITS["hidden"] for h in self.hidden):
            problems.append(
                f"hidden {self.hidden} (at most {LIMITS['layers']} layers of 1..{LIMITS['hidden']})"
            )
        if self.parasitic:
            depth = len(self.hidden or MLP_DEFAULT_HIDDEN)
            positions = [p for p, _ in self.parasitic]
            if self.arch != "mlp":
                problems.append(f"parasitic layers need arch mlp, not {self.arch}")
            elif len(self.parasitic) > LIMITS["layers"] or positions != sorted(set(positions)):
                problems.append(
                    f"parasitic {self.parasitic} (at most {LIMITS['layers']}, "
                    "distinct positions in increasing order)"
                )
            elif not all(0 <= p <= depth and 1 <= w <= LIMITS["hidden"] for p, w in self.parasitic):
                problems.append(
                    f"parasitic {self.parasitic} (want positions in 0..{depth}, widths 1..{LIMITS['hidden']})"
                )
        if problems:
            raise ModelError(f"invalid model config: {'; '.join(problems)}")


LIMITS = {"side": 1024, "channels": 16, "classes": 100_000, "width": 64, "layers": 16, "hidden": 1 << 16}
"""Bounds on a model config: far above anything nnseal trains, low enough that a hostile file can't
ask for an absurd allocation."""


def _get(d: dict, key: str, kind: type, default: object = None) -> Any:
    value = d.get(key, default) if default is not None else d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelError(f"invalid model config: {key} must be a {kind.__name__}")
    return value


def _ints(values: object, key: str) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise ModelError(f"invalid model config: {key} must be a list of integers")
    return values


def _pairs(values: object, key: str) -> tuple[tuple[int, int], ...]:
    ok = isinstance(values, list) and all(
        isinstance(v, list) and len(v) == 2 and all(type(i) is int for i in v) for v in values
    )
    if not ok:
        raise ModelError(f"invalid model config: {key} must be a list of [position, width] integer pairs")
    return tuple((int(a), int(b)) for a, b in values)  # type: ignore[misc]


def _floats(values: object, key: str) -> list[float]:
    ok = isinstance(values, list) and all(type(v) in (int, float) and math.isfinite(v) for v in values)
    if not ok or not values:
        raise ModelError(f"invalid model config: {key} must be a non-empty list of finite numbers")
    return [float(v) for v in values]


class Normalize(nn.Module):
    """(x - mean) / std per channel, as fixed buffers (part of the model's identity)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(channels).clone()
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(channels).clone()
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1))
        self.register_buffer("std", std_t.view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``head(features(normalize(x)))``; ``penultimate(x)`` gives the input of ``head``."""

    def __init__(self, config: ModelConfig, features: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.normalize = Normalize(config.mean, config.std, config.input_shape[0])
        self.features = features
        self.head = nn.Linear(feature_dim, config.num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(x))


MLP_DEFAULT_HIDDEN = (256, 128)


def parasitic_block(dim: int, width: int) -> nn.Sequential:
    """A parasitic layer: ``Linear(dim, width) → ReLU → Linear(width, dim)``, trained to a noisy
    identity (:func:`nnseal.protect.protect`)."""
    return nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, dim))


def _mlp(c: ModelConfig) -> Classifier:
    hidden = c.hidden or MLP_DEFAULT_HIDDEN
    parasitic = dict(c.parasitic)  # positions are unique (check() keeps them ordered)
    layers: list[nn.Module] = [nn.Flatten()]
    d = c.input_shape[0] * c.input_shape[1] * c.input_shape[2]
    for k, h in enumerate(hidden):
        if k in parasitic:
            layers.append(parasitic_block(d, parasitic[k]))
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    if len(hidden) in parasitic:
        layers.append(parasitic_block(d, parasitic[len(hidden)]))
    return Classifier(c, nn.Sequential(*layers), d)


def _lenet(c: ModelConfig) -> Classifier:
    """Two conv+pool blocks and one hidden FC layer; works for 8x8 up to 32x32 inputs."""
    ch, h, w = c.input_shape
    c1, c2, fc = 16 * c.width, 32 * c.width, (c.hidden or (128,))[0]
    features = nn.Sequential(
        nn.Conv2d(ch, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), fc),
        nn.ReLU(),
    )
    return Classifier(c, features, fc)


def _vgg(c: ModelConfig) -> Classifier:
    """Small VGG-style net for 32x32 colour: three conv stages with batch norm."""
    ch, h, w = c.input_shape
    widths = [32 * c.width, 64 * c.width, 128 * c.width]
    layers: list[nn.Module] = []
    for i, out in enumerate(widths):
        layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        if i < 2:
            layers += [nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        ch = out
    fc = (c.hidden or (256,))[0]
    layers += [nn.Flatten(), nn.Linear(ch * (h // 8) * (w // 8), fc), nn.ReLU()]
    return Classifier(c, nn.Sequential(*layers), fc)


ARCHITECTURES: dict[str, Callable[[ModelConfig], Classifier]] = {"mlp": _mlp, "lenet": _lenet, "vgg": _vgg}


def check_data(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, what: str = "data") -> None:
    """Refuse inputs the model cannot take (or labels it cannot give) before any work, naming both."""
    config = getattr(model, "config", None)
    if config is None:
        return
    if tuple(input_shape) != tuple(config.input_shape):
        raise ModelError(
            f"{what} inputs are {_shape(input_shape)} but the model takes {_shape(config.input_shape)}: "
            f"use the dataset (--data) the model was trained on"
        )
    if num_classes != config.num_classes:
        raise ModelError(f"{what} has {num_classes} classes but the model has {config.num_classes}")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def build_model(config: ModelConfig) -> Classifier:
    """Instantiate the architecture a config names (weights freshly initialised)."""
    if config.arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {config.arch!r}; known: {', '.join(ARCHITECTURES)}")
    config.check()
    _, h, w = config.input_shape
    if (config.arch == "lenet" and min(h, w) < 4) or (config.arch == "vgg" and min(h, w) < 8):
        raise ModelError(f"input {h}x{w} is too small for {config.arch}")
    return ARCHITECTURES[config.arch](config)
