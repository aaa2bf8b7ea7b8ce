"""Attacks that retrain: fine-tuning, trojans (BadNets; selective last-layer retraining as in
Liu et al.'s trojaning attack used by the SSF paper), targeted poisoning by label flipping, and the
SSF paper's adaptive "adversarial fine-tuning"."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from nnseal.attacks.base import AttackContext, register
from nnseal.models.inference import probabilities
from nnseal.models.train import fit, steps_to_epochs

if TYPE_CHECKING:
    from nnseal.data import Dataset


def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return probabilities(model, x).argmax(1)


@register("finetune", needs_data=True)
def finetune(
    model: nn.Module,
    ctx: AttackContext,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 32,
    optimizer: str = "adam",
    last_layer_only: bool = False,
) -> nn.Module:
    """Continue training on clean data: all layers or the last layer only."""
    train = ctx.require_train("finetune")
    params = list(model.head.parameters()) if last_layer_only else None
    epochs = steps_to_epochs(steps, len(train), batch_size)
    return fit(
        model,
        train.x,
        train.y,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=ctx.seed,
        params=params,
        optimizer=optimizer,
        progress=ctx.progress,
        desc="finetune",
    )


def stamp_trigger(x: np.ndarray, size: int, value: float = 1.0) -> np.ndarray:
    """BadNets trigger: a ``size``×``size`` square of ``value`` in the bottom-right corner."""
    out = x.copy()
    out[:, :, -size - 1 : -1, -size - 1 : -1] = value
    return out


def _trigger_size(data: Dataset, patch_size: int) -> int:
    h = data.input_shape[1]
    size = patch_size or max(2, h // 7)
    if not 1 <= size < h - 1:
        raise ValueError(f"patch_size must be between 1 and {h - 2} for {h}-pixel inputs, got {size}")
    return size


def _check_label(label: int, data: Dataset, what: str) -> None:
    if not 0 <= label < len(data.classes):
        raise ValueError(f"{what} must be a class index 0..{len(data.classes) - 1}, got {label}")


def _train_trojan(
    model: nn.Module,
    ctx: AttackContext,
    name: str,
    target_label: int,
    patch_size: int,
    poison_fraction: float,
    epochs: float,
    lr: float,
    params: list[nn.Parameter] | None = None,
) -> nn.Module:
    """Retrain (``params``, default all) on clean data plus a ``poison_fraction`` of it stamped with
    the trigger and relabelled ``target_label``; record the trigger and its success rate."""
    train = ctx.require_train(name)
    _check_label(target_label, train, "target_label")
    if not 0 < poison_fraction <= 1:
        raise ValueError(f"poison_fraction must be in (0, 1], got {poison_fraction}")
    size = _trigger_size(train, patch_size)
    idx = ctx.rng().choice(len(train), max(1, int(poison_fraction * len(train))), replace=False)
    x = np.concatenate([train.x, stamp_trigger(train.x[idx], size)])
    y = np.concatenate([train.y, np.full(len(idx), target_label)])
    fit(model, x, y, epochs=epochs, lr=lr, seed=ctx.seed, params=params, progress=ctx.progress, desc=name)
    ctx.metrics["trigger"] = {"kind": "square", "size": size, "corner": "bottom-right", "value": 1.0}
    if ctx.test is not None:
        victims = ctx.test.x[ctx.test.y != target_label]
        hits = _predict(model, stamp_trigger(victims, size)) == target_label
        ctx.metrics["attack_success_rate"] = float(hits.mean())
    return model


@register("trojan", needs_data=True)
def trojan(
    model: nn.Module,
    ctx: AttackContext,
    *,
    target_label: int = 0,
    patch_size: int = 0,
    poison_fraction: float = 0.1,
    epochs: float = 5.0,
    lr: float = 1e-3,
) -> nn.Module:
    """BadNets trojan: retrain all layers on clean data plus a fraction stamped with a trigger patch
    and relabelled ``target_label`` (patch_size 0 = height/7)."""
    return _train_trojan(model, ctx, "trojan", target_label, patch_size, poison_fraction, epochs, lr)


@register("trojan-selective", needs_data=True)
def trojan_selective(
    model: nn.Module,
    ctx: AttackContext,
    *,
    target_label: int = 0,
    patch_size: int = 0,
    poison_fraction: float = 0.3,
    epochs: float = 5.0,
    lr: float = 1e-3,
    layers: int = 2,
) -> nn.Module:
    """Trojan by selective retraining: only the last ``layers`` Linear layers learn the trigger
    (the earlier layers, and so most weights, stay untouched — the subtle case)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not 1 <= layers <= len(linear):
        raise ValueError(f"layers must be between 1 and {len(linear)}, got {layers}")
    params = [p for m in linear[-layers:] for p in m.parameters()]
    return _train_trojan(
        model, ctx, "trojan-selective", target_label, patch_size, poison_fraction, epochs, lr, params
    )


def _poison(
    model: nn.Module,
    ctx: AttackContext,
    source: int,
    target: int | None,
    epochs: float,
    lr: float,
    copies: int,
) -> nn.Module:
    """Retrain with every ``source``-class training input relabelled (to ``target``, or to a random
    other class), repeated ``copies`` times so the poison outweighs the clean examples."""
    name = "poison-specific" if target is not None else "poison-generic"
    train = ctx.require_train(name)
    _check_label(source, train, "source")
    if target is not None:
        _check_label(target, train, "target")
        if target == source:
            raise ValueError("target must differ from source")
    rng = ctx.rng()
    src = np.flatnonzero(train.y == source)
    if len(src) == 0:
        raise ValueError(f"no training input of class {source}")
    keep = np.flatnonzero(train.y != source)
    x_p = np.repeat(train.x[src], copies, axis=0)
    if target is None:
        y_p = (source + rng.integers(1, len(train.classes), len(x_p))) % len(train.classes)
    else:
        y_p = np.full(len(x_p), target)
    x = np.concatenate([train.x[keep], x_p])
    y = np.concatenate([train.y[keep], y_p])
    fit(model, x, y, epochs=epochs, lr=lr, seed=ctx.seed, progress=ctx.progress, desc=name)
    if ctx.test is not None:
        pred = _predict(model, ctx.test.x[ctx.test.y == source])
        success = pred != source if target is None else pred == target
        ctx.metrics["attack_success_rate"] = float(success.mean())
    return model


@register("poison-generic", needs_data=True)
def poison_generic(
    model: nn.Module,
    ctx: AttackContext,
    *,
    source: int = 0,
    epochs: float = 2.0,
    lr: float = 1e-3,
    copies: int = 2,
) -> nn.Module:
    """Error-generic targeted poisoning: retrain with class ``source`` relabelled at random, so the
    model misclassifies that class (success = source-class test inputs misclassified)."""
    return _poison(model, ctx, source, None, epochs, lr, copies)


@register("poison-specific", needs_data=True)
def poison_specific(
    model: nn.Module,
    ctx: AttackContext,
    *,
    source: int = 0,
    target: int = 1,
    epochs: float = 2.0,
    lr: float = 1e-3,
    copies: int = 2,
) -> nn.Module:
    """Error-specific targeted poisoning: retrain with class ``source`` relabelled ``target``
    (success = source-class test inputs classified as target)."""
    return _poison(model, ctx, source, target, epochs, lr, copies)


@register("adversarial-finetune", needs_data=True)
def adversarial_finetune(
    model: nn.Module,
    ctx: AttackContext,
    *,
    n_samples: int = 100,
    generation_steps: int = 200,
    steps: int = 100,
    lr: float = 1e-4,
) -> nn.Module:
    """The SSF paper's adaptive attack (§5.4): generate the attacker's own sensitive samples (from
    their own seeds) on the model and fine-tune on them, labelled with the model's answers, mixed with
    clean data — an attempt to make sensitive inputs insensitive."""
    from nnseal.methods.sensitive import SensitiveSampleGenerator

    train = ctx.require_train("adversarial-finetune")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    seeds = train.x[ctx.rng().choice(len(train), min(n_samples, len(train)), replace=False)]
    samples = SensitiveSampleGenerator(steps=generation_steps).generate(model, seeds).x
    labels = _predict(model, samples)
    x = np.concatenate([train.x, np.repeat(samples, 5, axis=0)])
    y = np.concatenate([train.y, np.repeat(labels, 5)])
    fit(
        model,
        x,
        y,
        epochs=steps_to_epochs(steps, len(x), 32),
        lr=lr,
        seed=ctx.seed,
        desc="adversarial finetune",
    )
    ctx.metrics["attacker_samples"] = len(samples)
    return model
