"""Reference classifiers. Each takes images in [0, 1] and returns logits.

Every model is ``head(features(normalize(x)))`` with ``head`` its last ``nn.Linear``: methods that
need the penultimate activations (the last-layer fast path of Sensitive-Sample generation) find
them without guessing, and normalisation lives inside the model so a black-box copy (ONNX, HTTP)
receives the same [0, 1] inputs the owner used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        try:
            return cls(
                arch=str(d["arch"]),
                input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
                classes=tuple(str(c) for c in d["classes"]),
                mean=tuple(float(v) for v in d.get("mean", (0.0,))),
                std=tuple(float(v) for v in d.get("std", (1.0,))),
                width=int(d.get("width", 1)),
                hidden=tuple(int(v) for v in d.get("hidden", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"invalid model config: {e!r}") from None


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


def _mlp(c: ModelConfig) -> Classifier:
    hidden = c.hidden or (256, 128)
    layers: list[nn.Module] = [nn.Flatten()]
    d = c.input_shape[0] * c.input_shape[1] * c.input_shape[2]
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
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


def build_model(config: ModelConfig) -> Classifier:
    """Instantiate the architecture a config names (weights freshly initialised)."""
    if config.arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {config.arch!r}; known: {', '.join(ARCHITECTURES)}")
    ch, h, w = config.input_shape
    if min(ch, h, w) < 1 or config.num_classes < 2:
        raise ModelError(f"invalid input shape {config.input_shape} or class count {config.num_classes}")
    if (config.arch == "lenet" and min(h, w) < 4) or (config.arch == "vgg" and min(h, w) < 8):
        raise ModelError(f"input {h}x{w} is too small for {config.arch}")
    return ARCHITECTURES[config.arch](config)
