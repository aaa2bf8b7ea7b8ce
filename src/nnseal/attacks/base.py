"""The attack framework: a registry of model → model transformations with parameters and a seed.

An attack function takes a private copy of the model, an :class:`AttackContext` (data, seed, a
dict for the effects it measures, one for what else it makes) and keyword-only parameters, and returns the
attacked model — or, for attacks that produce an ONNX model, its serialized bytes.
:func:`run_attack` does the shared work: validates parameters, copies the model, measures clean
accuracy before and after, and appends a lineage record such as
``finetune(lr=0.0001,steps=200)-quantize-int8()`` that travels with the saved model.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from nnseal._io import atomic_write_bytes
from nnseal._params import check_known, typed_params
from nnseal.errors import ModelError, NnsealError
from nnseal.models.architectures import check_data
from nnseal.targets.base import Target
from nnseal.targets.local import OnnxTarget, TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

ModelFormat = Literal["torch", "onnx"]
"""What an attack writes: a torch model, or a serialized ONNX model."""


@dataclass
class AttackContext:
    """What an attack may use besides the model; ``metrics`` collects the effects it measures."""

    train: Dataset | None = None
    test: Dataset | None = None
    seed: int = 0
    progress: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    """What an attack makes besides the model (the watermark attack: its key)."""

    def require_train(self, attack: str) -> Dataset:
        if self.train is None:
            raise ValueError(f"attack {attack} needs training data")
        return self.train

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


@dataclass(frozen=True)
class Attack:
    """A registered attack and what it declares: needs training data? torch or ONNX model?"""

    name: str
    fn: Callable[..., nn.Module | bytes]
    needs_data: bool
    produces: ModelFormat
    description: str

    def defaults(self) -> dict[str, Any]:
        """The attack's parameters and their defaults, from its signature."""
        sig = inspect.signature(self.fn)
        return {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}

    def parse_params(self, pairs: dict[str, str]) -> dict[str, Any]:
        """Convert ``key=value`` strings (from the CLI) to the types of the defaults."""
        return typed_params(pairs, self.defaults(), f"attack {self.name}")


ATTACKS: dict[str, Attack] = {}


def register(
    name: str, *, needs_data: bool = False, produces: ModelFormat = "torch"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an attack function to :data:`ATTACKS`; its docstring's first line describes it."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        first_paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
        ATTACKS[name] = Attack(name, fn, needs_data, produces, " ".join(first_paragraph.split()))
        return fn

    return wrap


@dataclass
class AttackResult:
    """The attacked model (a torch module, or a serialized ONNX model), its lineage, the measured
    effects and what else the attack made (``artifacts``)."""

    model: nn.Module | None
    onnx: bytes | None
    lineage: list[dict[str, Any]]
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> dict[str, Any]:
        """This attack's own lineage entry: name, parameters, seed, metrics."""
        return self.lineage[-1]

    @property
    def lineage_str(self) -> str:
        return lineage_str(self.lineage)

    def target(self, **kwargs: Any) -> Target:
        if self.onnx is not None:
            return OnnxTarget(self.onnx, name=self.lineage_str, **kwargs)
        assert self.model is not None
        return TorchTarget(self.model, name=f"torch ({self.lineage_str})", **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model: an nnseal safetensors file, or an ONNX file with the lineage in its
        metadata (key ``nnseal.lineage``)."""
        if self.onnx is None:
            from nnseal.models.io import save_model

            return save_model(self.model, path)  # type: ignore[arg-type]
        import onnx

        proto = onnx.load_from_string(self.onnx)
        props = [p for p in proto.metadata_props if p.key != "nnseal.lineage"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(props)
        proto.metadata_props.add(key="nnseal.lineage", value=json.dumps(self.lineage))
        return atomic_write_bytes(path, proto.SerializeToString())


def lineage_str(lineage: list[dict[str, Any]]) -> str:
    """``finetune(lr=0.0001,steps=200)-quantize-int8()``: explicit parameters of each attack."""
    parts = []
    for entry in lineage:
        args = ",".join(f"{k}={v}" for k, v in entry.get("explicit", {}).items())
        parts.append(f"{entry['attack']}({args})")
    return "-".join(parts) or "original"


def _accuracy(target: Target, data: Dataset) -> float:
    return float((target.predict(data.x).argmax(1) == data.y).mean())


def run_attack(
    name: str,
    model: nn.Module,
    params: dict[str, Any] | None = None,
    *,
    train: Dataset | None = None,
    test: Dataset | None = None,
    seed: int = 0,
    progress: bool = False,
) -> AttackResult:
    """Apply attack ``name`` to a copy of ``model`` and record what it did.

    Clean accuracy before/after is measured on ``test`` when given; attacks that need data train
    on ``train``. The input model is never modified.
    """
    if name not in ATTACKS:
        raise NnsealError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    attack = ATTACKS[name]
    if not isinstance(model, nn.Module):
        raise ModelError(f"attack {name} needs a torch model, got {type(model).__name__}")
    params = dict(params or {})
    defaults = attack.defaults()
    for key in params:
        check_known(key, defaults, f"attack {name}")
    if attack.needs_data and train is None:
        raise ValueError(f"attack {name} needs training data")
    for what, data in (("training data", train), ("test data", test)):
        if data is not None:
            check_data(model, data.input_shape, len(data.classes), what)
    ctx = AttackContext(train=train, test=test, seed=seed, progress=progress)
    before = _accuracy(TorchTarget(model), test) if test is not None else None
    out = attack.fn(copy.deepcopy(model).eval(), ctx, **params)
    entry = {
        "attack": name,
        "explicit": params,
        "params": {**defaults, **params},
        "seed": seed,
        "metrics": {"accuracy_before": before, **ctx.metrics},
    }
    lineage = [*getattr(model, "lineage", []), entry]
    if isinstance(out, bytes):
        result = AttackResult(None, out, lineage, ctx.artifacts)
    else:
        out.eval().lineage = lineage
        result = AttackResult(out, None, lineage, ctx.artifacts)
    if test is not None:
        entry["metrics"]["accuracy_after"] = _accuracy(result.target(), test)
    return result
