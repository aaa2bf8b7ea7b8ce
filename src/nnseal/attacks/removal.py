"""Watermark removal and model extraction attacks, named as the Watermark-Robustness-Toolbox (WRT,
Lukas et al. 2022) and BIVBench name them.

White-box removal (the attacker holds the weights and a ``fraction`` of the training data, drawn
from the seed; ``queries`` = 0):

- ``ftll`` — fine-tune the last layer (only ``head`` learns; the features are frozen in eval mode);
- ``ftal`` — fine-tune all layers;
- ``rtll`` — re-initialise ``head`` (from the seed), then train only ``head``;
- ``rtal`` — re-initialise ``head``, then train all layers;
- ``fine-pruning`` — Liu, Dolan-Gavitt & Garg 2018: mask the channels of the last convolution (the
  last hidden Linear layer of an MLP) that are least active on the attacker's clean data, up to the
  pruning ``rate``, then fine-tune all layers with the masks in place;
- ``overwrite`` — embed the attacker's own Frontier-Stitching watermark with the attacker's seed
  (the ``watermark`` attack, run on the attacker's data share);
- WRT's "adversarial training" is :mod:`nnseal.attacks.training`'s ``adversarial-finetune``.

Black-box extraction (the victim is only queried; a fresh surrogate built with :mod:`nnseal.models`,
``arch`` = the victim's architecture unless named, is trained from the seed; ``queries`` counts every
input sent to the victim):

- ``distill`` — Hinton distillation: the surrogate learns the victim's softmax at temperature ``T``.
  The victim answers probabilities p at T = 1; softmax(log p / T) equals softmax(logits / T), so
  the black box suffices;
- ``extract-labels`` — Knockoff-style label-only extraction: at most ``budget`` inputs (the attacker's
  share of the training split, uniform noise, or another dataset by name, resized to the victim's
  input), the victim's top-1 labels, and a surrogate trained on them.

Every attack reports ``fidelity`` (top-1 agreement of the result with the victim on the test set,
when one is given; run_attack adds the result's test accuracy as ``accuracy_after``), ``queries``,
``attacker_inputs`` and what else it did. Defaults are sized to run in a few seconds on the digits
LeNet (1,437 training images, 8x8) while changing the model measurably; for MNIST-size data raise
``epochs`` or lower ``fraction``/``budget`` to taste. Two strengths per attack (:data:`STRENGTHS`,
what ``benchmarks/bench_removal.py`` runs); "light" is the defaults:

================  ======================================  ==============================================
attack            light (defaults)                        strong
================  ======================================  ==============================================
ftll              fraction 0.5, 5 epochs, lr 1e-3          fraction 1.0, 20 epochs, lr 1e-2
ftal              fraction 0.5, 5 epochs, lr 1e-3          fraction 1.0, 20 epochs, lr 3e-3
rtll              fraction 0.5, 10 epochs, lr 1e-3         fraction 1.0, 20 epochs, lr 1e-2
rtal              fraction 0.5, 5 epochs, lr 1e-3          fraction 1.0, 20 epochs, lr 3e-3
fine-pruning      rate 0.5, 5 epochs, lr 1e-3              rate 0.9, 20 epochs, lr 1e-3
distill           1000 queries, T 4, 30 epochs             fraction 1.0, 5000 queries, T 4, 60 epochs
extract-labels    500 queries, 30 epochs                   fraction 1.0, 5000 queries, 60 epochs
overwrite         50 keys, epsilon 0.1, 5 epochs           100 keys, epsilon 0.1, boost 20, 10 epochs
================  ======================================  ==============================================

Example::

    result = run_attack("distill", model, {"arch": "mlp", "budget": 500}, train=train, test=test)
    result.record["metrics"]["fidelity"], result.record["metrics"]["queries"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnseal.attacks.base import AttackContext, register
from nnseal.attacks.watermarking import watermark
from nnseal.data import DATASETS, Dataset, load_dataset
from nnseal.methods.frontier import UnbalancedKey
from nnseal.models.architectures import ARCHITECTURES, Classifier, build_model
from nnseal.models.train import config_for, fit, predict_logits
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.targets.base import Target

STRENGTHS: dict[str, dict[str, dict[str, Any]]] = {
    "ftll": {"light": {}, "strong": {"fraction": 1.0, "epochs": 20.0, "lr": 1e-2}},
    "ftal": {"light": {}, "strong": {"fraction": 1.0, "epochs": 20.0, "lr": 3e-3}},
    "rtll": {"light": {}, "strong": {"fraction": 1.0, "epochs": 20.0, "lr": 1e-2}},
    "rtal": {"light": {}, "strong": {"fraction": 1.0, "epochs": 20.0, "lr": 3e-3}},
    "fine-pruning": {"light": {}, "strong": {"rate": 0.9, "epochs": 20.0}},
    "distill": {"light": {}, "strong": {"fraction": 1.0, "budget": 5000, "epochs": 60.0}},
    "extract-labels": {"light": {}, "strong": {"fraction": 1.0, "budget": 5000, "epochs": 60.0}},
    "overwrite": {"light": {}, "strong": {"key_size": 100, "boost": 20, "epochs": 10.0}},
}
"""Parameters of the two strengths of each attack, over its defaults (the module docstring's table)."""

SOURCES = ("train", "noise", *DATASETS)
"""Where ``distill`` and ``extract-labels`` take their query inputs from (a dataset name: its train split)."""


# --------------------------------------------------------------------------- shared helpers


def _check(ok: bool, name: str, want: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {got!r}")


def _check_training(fraction: float, epochs: float, lr: float, batch_size: int) -> None:
    _check(0 < fraction <= 1, "fraction", "in (0, 1]", fraction)
    _check(epochs > 0, "epochs", "> 0", epochs)
    _check(lr > 0, "lr", "> 0", lr)
    _check(batch_size >= 1, "batch_size", ">= 1", batch_size)


def _share(ctx: AttackContext, name: str, fraction: float, rng: np.random.Generator) -> Dataset:
    """The attacker's part of the training data: a seeded ``fraction`` of it (in its original order)."""
    train = ctx.require_train(name)
    n = max(1, round(fraction * len(train)))
    if n >= len(train):
        return train
    return train.subset(np.sort(rng.choice(len(train), n, replace=False)))


def _head(model: nn.Module, name: str) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not callable(getattr(model, "penultimate", None)):
        raise ValueError(f"attack {name} needs an nnseal classifier (head(features(normalize(x))))")
    return head


def _top1(model: nn.Module, data: Dataset | None) -> np.ndarray | None:
    """White-box top-1 on the test set, for the fidelity measurement (no attacker query)."""
    return None if data is None else predict_logits(model, data.x).argmax(1).numpy()


def _report(
    ctx: AttackContext, reference: np.ndarray | None, result: nn.Module, queries: int, **extra: Any
) -> None:
    """``fidelity`` (agreement with the victim's test predictions), ``queries`` and the extras."""
    if reference is not None:
        ctx.metrics["fidelity"] = float((_top1(result, ctx.test) == reference).mean())
    ctx.metrics["queries"] = int(queries)
    ctx.metrics.update(extra)


@torch.no_grad()
def _penultimate(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat(
        [model.penultimate(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
    ).numpy()


def _reinit_head(head: nn.Linear, seed: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head.reset_parameters()


def _retrain(
    model: nn.Module,
    ctx: AttackContext,
    name: str,
    *,
    reinit: bool,
    all_layers: bool,
    fraction: float,
    epochs: float,
    lr: float,
    batch_size: int,
    optimizer: str,
) -> nn.Module:
    """FTLL / FTAL / RTLL / RTAL on the attacker's share. Last-layer training runs on the frozen
    features computed once in eval mode (so batch-norm statistics stay the victim's, and it is fast)."""
    _check_training(fraction, epochs, lr, batch_size)
    _check(optimizer in ("adam", "sgd"), "optimizer", "adam or sgd", optimizer)
    head = _head(model, name)
    data = _share(ctx, name, fraction, ctx.rng())
    reference = _top1(model, ctx.test)
    if reinit:
        _reinit_head(head, ctx.seed)
    kwargs = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": ctx.seed, "optimizer": optimizer}
    if all_layers:
        fit(model, data.x, data.y, **kwargs, progress=ctx.progress, desc=name)  # type: ignore[arg-type]
    else:
        fit(head, _penultimate(model, data.x), data.y, **kwargs, progress=ctx.progress, desc=name)  # type: ignore[arg-type]
    _report(
        ctx,
        reference,
        model.eval(),
        0,
        attacker_inputs=len(data),
        trained="all layers" if all_layers else "head",
        head_reinitialised=reinit,
    )
    return model


# --------------------------------------------------------------------------- fine-tuning / retraining


@register("ftll", needs_data=True)
def ftll(
    model: nn.Module,
    ctx: AttackContext,
    *,
    fraction: float = 0.5,
    epochs: float = 5.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
) -> nn.Module:
    """FTLL (WRT): fine-tune only the last layer on the attacker's ``fraction`` of the training data.

    Defaults: half of the digits training set, 5 epochs of Adam at 1e-3 (about 60 steps, < 1 s)."""
    return _retrain(
        model, ctx, "ftll", reinit=False, all_layers=False, fraction=fraction, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer,
    )  # fmt: skip


@register("ftal", needs_data=True)
def ftal(
    model: nn.Module,
    ctx: AttackContext,
    *,
    fraction: float = 0.5,
    epochs: float = 5.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
) -> nn.Module:
    """FTAL (WRT): fine-tune all layers on the attacker's ``fraction`` of the training data.

    Defaults: half of the digits training set, 5 epochs of Adam at 1e-3 (about 60 steps, ~1 s)."""
    return _retrain(
        model, ctx, "ftal", reinit=False, all_layers=True, fraction=fraction, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer,
    )  # fmt: skip


@register("rtll", needs_data=True)
def rtll(
    model: nn.Module,
    ctx: AttackContext,
    *,
    fraction: float = 0.5,
    epochs: float = 10.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
) -> nn.Module:
    """RTLL (WRT): re-initialise the last layer from the seed, then train only it on the attacker's
    ``fraction`` of the training data.

    Defaults: half of the digits training set, 10 epochs of Adam at 1e-3 (about 120 steps, < 1 s)."""
    return _retrain(
        model, ctx, "rtll", reinit=True, all_layers=False, fraction=fraction, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer,
    )  # fmt: skip


@register("rtal", needs_data=True)
def rtal(
    model: nn.Module,
    ctx: AttackContext,
    *,
    fraction: float = 0.5,
    epochs: float = 5.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
) -> nn.Module:
    """RTAL (WRT): re-initialise the last layer from the seed, then train all layers on the
    attacker's ``fraction`` of the training data.

    Defaults: half of the digits training set, 5 epochs of Adam at 1e-3 (about 60 steps, ~1 s)."""
    return _retrain(
        model, ctx, "rtal", reinit=True, all_layers=True, fraction=fraction, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer,
    )  # fmt: skip


# --------------------------------------------------------------------------- fine-pruning


def _prunable(model: nn.Module) -> tuple[str, nn.Conv2d | nn.Linear, nn.BatchNorm2d | None, nn.ReLU]:
    """The last convolution of ``features`` (an MLP: its last hidden Linear layer), the batch norm
    right after it if any, and the ReLU whose output is the activation Liu et al. rank."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError("attack fine-pruning needs an nnseal classifier whose features are a Sequential")
    mods = list(features)
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    if not (convs or linears):
        raise ValueError("attack fine-pruning found no convolution or hidden Linear layer to prune")
    i = (convs or linears)[-1]
    after = mods[i + 1 :]
    relu = next((m for m in after if isinstance(m, nn.ReLU)), None)
    if relu is None:
        raise ValueError(f"attack fine-pruning: no ReLU after features.{i} to measure activations on")
    bn = after[0] if after and isinstance(after[0], nn.BatchNorm2d) else None
    return f"features.{i}", mods[i], bn, relu  # type: ignore[return-value]


@torch.no_grad()
def _mean_activation(model: nn.Module, relu: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Mean activation per channel (over inputs and positions) of ``relu``'s output."""
    total: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        total.append(out.transpose(0, 1).reshape(out.shape[1], -1).sum(1) / out[0, 0].numel())

    handle = relu.register_forward_hook(hook)
    try:
        predict_logits(model, x, batch_size)
    finally:
        handle.remove()
    return (torch.stack(total).sum(0) / len(x)).numpy()


@register("fine-pruning", needs_data=True)
def fine_pruning(
    model: nn.Module,
    ctx: AttackContext,
    *,
    rate: float = 0.5,
    fraction: float = 0.5,
    epochs: float = 5.0,
    lr: float = 1e-3,
    batch_size: int = 64,
) -> nn.Module:
    """Fine-pruning (Liu et al. 2018): prune the ``rate`` of the last conv layer's channels least
    active on the attacker's clean data, then fine-tune all layers with them kept at zero.

    Channels are ranked once by mean post-ReLU activation (Liu et al. prune in that order until a
    rate or an accuracy drop; here: the rate). An MLP prunes its last hidden Linear layer's units.
    Defaults: half of the LeNet's 32 last-conv channels, then 5 epochs on half of the digits
    training set (about 1 s)."""
    _check(0 < rate < 1, "rate", "in (0, 1)", rate)
    _check_training(fraction, epochs, lr, batch_size)
    layer_name, layer, bn, relu = _prunable(model)
    data = _share(ctx, "fine-pruning", fraction, ctx.rng())
    reference = _top1(model, ctx.test)
    activation = _mean_activation(model, relu, data.x)
    n = len(activation)
    k = min(n - 1, max(1, round(rate * n)))
    pruned = np.sort(np.argsort(activation, kind="stable")[:k])
    keep = torch.ones(n)
    keep[torch.from_numpy(pruned)] = 0
    masked = [(layer, "weight"), (layer, "bias")]
    if bn is not None:  # a zeroed conv channel still gets batch norm's shift: mask that too
        masked += [(bn, "weight"), (bn, "bias")]
    for module, pname in masked:
        shape = getattr(module, pname).shape
        torch_prune.custom_from_mask(
            module, pname, keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        )
    accuracy_pruned = None
    if ctx.test is not None:
        accuracy_pruned = float((_top1(model, ctx.test) == ctx.test.y).mean())
    fit(
        model, data.x, data.y, epochs=epochs, lr=lr, batch_size=batch_size, seed=ctx.seed,
        progress=ctx.progress, desc="fine-pruning",
    )  # fmt: skip
    for module, pname in masked:
        torch_prune.remove(module, pname)
    _report(
        ctx,
        reference,
        model.eval(),
        0,
        attacker_inputs=len(data),
        layer=layer_name,
        channels=n,
        pruned_channels=pruned.tolist(),
        accuracy_pruned=accuracy_pruned,
    )
    return model


# --------------------------------------------------------------------------- extraction


def _check_source(source: str, budget: int, arch: str) -> None:
    _check(source in SOURCES, "source", f"one of {', '.join(SOURCES)}", source)
    _check(budget >= 1, "budget", ">= 1 (queries to the victim)", budget)
    _check(
        not arch or arch in ARCHITECTURES,
        "arch",
        f"'' (the victim's) or one of {', '.join(ARCHITECTURES)}",
        arch,
    )


def adapt_inputs(x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Images of another dataset as inputs of shape ``shape`` (C, H, W): grey ↔ colour (channel
    mean / repeat) and an antialiased bilinear resize, staying in [0, 1]."""
    c = shape[0]
    xt = torch.as_tensor(x, dtype=torch.float32)
    if xt.shape[1] != c:
        if xt.shape[1] == 1:
            xt = xt.expand(-1, c, -1, -1)
        elif c == 1:
            xt = xt.mean(1, keepdim=True)
        else:
            raise ValueError(f"source: cannot turn {xt.shape[1]}-channel images into {c}-channel inputs")
    if tuple(xt.shape[2:]) != tuple(shape[1:]):
        out = []
        for i in range(0, len(xt), 1024):
            out.append(
                nn.functional.interpolate(
                    xt[i : i + 1024], size=shape[1:], mode="bilinear", antialias=True, align_corners=False
                )
            )
        xt = torch.cat(out)
    return np.ascontiguousarray(xt.clamp(0.0, 1.0).numpy(), dtype=np.float32)


def _query_inputs(
    model: nn.Module,
    ctx: AttackContext,
    name: str,
    *,
    source: str,
    fraction: float,
    budget: int,
    root: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, str]:
    """At most ``budget`` inputs the attacker will send, and a description of where they came from."""
    config = getattr(model, "config", None)
    shape = tuple(config.input_shape) if config is not None else ctx.require_train(name).input_shape
    if source == "train":
        data = _share(ctx, name, fraction, rng)
        x, what = data.x, f"{data.name} train (fraction {fraction})"
    elif source == "noise":
        x, what = rng.random((budget, *shape), dtype=np.float32), "uniform noise"
    else:
        other = load_dataset(source, root or None, "train")
        x = other.x
        if len(x) > budget:  # draw before resizing: a big set needs only `budget` images adapted
            x = x[np.sort(rng.choice(len(x), budget, replace=False))]
        x = adapt_inputs(x, shape)  # type: ignore[arg-type]
        what = f"{source} train, {other.input_shape[0]}x{other.input_shape[1]}x{other.input_shape[2]}"
        what += " resized" if other.input_shape != shape else ""
    if len(x) > budget:
        x = x[np.sort(rng.choice(len(x), budget, replace=False))]
    return x, what


def _victim(model: nn.Module) -> Target:
    """The victim as the extraction attacker sees it: a black box whose answers are counted."""
    return TorchTarget(model, batch_size=256, name="victim")


def _surrogate(model: nn.Module, arch: str, data: Dataset, seed: int) -> Classifier:
    """A fresh nnseal model of ``arch`` (default: the victim's, with its width and hidden sizes),
    normalised with the attacker's own data statistics, initialised from ``seed``."""
    config = getattr(model, "config", None)
    kwargs: dict[str, Any] = {}
    if not arch:
        if config is None:
            raise ValueError("arch: the victim is not an nnseal model, so name the surrogate's architecture")
        arch, kwargs = config.arch, {"width": config.width, "hidden": config.hidden}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(config_for(data, arch, **kwargs))


def _classes(model: nn.Module, ctx: AttackContext) -> tuple[str, ...]:
    config = getattr(model, "config", None)
    return tuple(config.classes) if config is not None else ctx.require_train("extraction").classes


def _fit_soft(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    temperature: float,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool,
) -> nn.Module:
    """Hinton distillation: minimise T² · KL(targets ‖ softmax(logits / T)) with :func:`fit`."""

    def kl(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        log_q = nn.functional.log_softmax(logits / temperature, dim=1)
        return nn.functional.kl_div(log_q, p, reduction="batchmean") * temperature**2

    return fit(model, x, targets, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, loss=kl,
               progress=progress, desc="distill")  # fmt: skip


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the victim's softmax at temperature T, from its T = 1 probabilities."""
    logp = np.log(np.clip(probabilities.astype(np.float64), np.finfo(np.float32).tiny, None)) / temperature
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


@register("distill", needs_data=True)
def distill(
    model: nn.Module,
    ctx: AttackContext,
    *,
    arch: str = "",
    temperature: float = 4.0,
    source: str = "train",
    fraction: float = 0.5,
    budget: int = 1000,
    root: str = "",
    epochs: float = 30.0,
    lr: float = 1e-3,
    batch_size: int = 64,
) -> nn.Module:
    """Distillation: train a fresh surrogate (``arch``, default the victim's) on the victim's softmax
    at ``temperature`` over at most ``budget`` attacker inputs, each queried once (black box).

    ``source``: ``train`` (the attacker's ``fraction`` of the training data; labels unused),
    ``noise``, or a dataset name (its train split from ``root``, resized). Defaults: 718 digits
    queries (half the training set), T = 4, 30 epochs of Adam at 1e-3 (about 2 s)."""
    _check(temperature > 0, "temperature", "> 0", temperature)
    _check_source(source, budget, arch)
    _check_training(fraction, epochs, lr, batch_size)
    rng = ctx.rng()
    x, what = _query_inputs(
        model, ctx, "distill", source=source, fraction=fraction, budget=budget, root=root, rng=rng
    )
    reference = _top1(model, ctx.test)
    victim = _victim(model)
    probs = victim.predict(x)
    transfer = Dataset("transfer", x, probs.argmax(1).astype(np.int64), _classes(model, ctx))
    surrogate = _surrogate(model, arch, transfer, ctx.seed)
    _fit_soft(
        surrogate, x, soften(probs, temperature), temperature=temperature, epochs=epochs, lr=lr,
        batch_size=batch_size, seed=ctx.seed, progress=ctx.progress,
    )  # fmt: skip
    _report(
        ctx,
        reference,
        surrogate,
        victim.queries,
        attacker_inputs=len(x),
        data=what,
        surrogate_arch=surrogate.config.arch,
    )
    return surrogate


@register("extract-labels", needs_data=True)
def extract_labels(
    model: nn.Module,
    ctx: AttackContext,
    *,
    arch: str = "",
    source: str = "train",
    fraction: float = 0.5,
    budget: int = 500,
    root: str = "",
    epochs: float = 30.0,
    lr: float = 1e-3,
    batch_size: int = 64,
) -> nn.Module:
    """Label-only extraction (Knockoff-style): query the victim's top-1 label on at most ``budget``
    attacker inputs and train a fresh surrogate (``arch``, default the victim's) on those labels.

    ``source``: ``train`` (the attacker's ``fraction`` of the training data; its own labels unused),
    ``noise``, or a dataset name (its train split from ``root``, resized to the victim's input).
    Defaults: 500 digits queries, 30 epochs of Adam at 1e-3 (about 1 s)."""
    _check_source(source, budget, arch)
    _check_training(fraction, epochs, lr, batch_size)
    rng = ctx.rng()
    x, what = _query_inputs(
        model, ctx, "extract-labels", source=source, fraction=fraction, budget=budget, root=root, rng=rng
    )
    reference = _top1(model, ctx.test)
    victim = _victim(model)
    labels = victim.predict(x).argmax(1).astype(np.int64)  # only the top-1 label is used
    transfer = Dataset("transfer", x, labels, _classes(model, ctx))
    surrogate = _surrogate(model, arch, transfer, ctx.seed)
    fit(
        surrogate, x, labels, epochs=epochs, lr=lr, batch_size=batch_size, seed=ctx.seed,
        progress=ctx.progress, desc="extract-labels",
    )  # fmt: skip
    _report(
        ctx,
        reference,
        surrogate,
        victim.queries,
        attacker_inputs=len(x),
        data=what,
        surrogate_arch=surrogate.config.arch,
        label_classes=len(np.unique(labels)),
    )
    return surrogate


# --------------------------------------------------------------------------- overwriting


@register("overwrite", needs_data=True)
def overwrite(
    model: nn.Module,
    ctx: AttackContext,
    *,
    fraction: float = 0.5,
    key_size: int = 50,
    epsilon: float | str = 0.1,
    boost: int = 10,
    epochs: float = 5.0,
    lr: float = 1e-3,
) -> nn.Module:
    """Watermark overwriting: embed the attacker's own Frontier-Stitching watermark (their seed,
    their ``fraction`` of the training data) with the ``watermark`` attack; its key is the artifact.

    Defaults: a 50-input key at epsilon 0.1 (the paper's 0.25 flips almost every 8x8 digit, leaving
    no false adversaries) — or, where 0.1 cannot form a balanced key either (CIFAR-10: 8 of 8,880
    inputs stay correct), the automatic ε search, as an attacker would retry (``epsilon_fallback``
    in the metrics) — boosted 10x, at most 5 epochs on half of the digits training set until the key is
    learnt, then the watermark's settle epochs (a few seconds)."""
    _check(0 < fraction <= 1, "fraction", "in (0, 1]", fraction)
    _check(lr > 0, "lr", "> 0", lr)
    share = _share(ctx, "overwrite", fraction, ctx.rng())
    reference = _top1(model, ctx.test)
    inner = AttackContext(train=share, test=ctx.test, seed=ctx.seed, progress=ctx.progress)
    embed = dict(key_size=key_size, boost=boost, epochs=epochs, lr=lr)
    try:
        marked = watermark(model, inner, epsilon=epsilon, **embed)
    except UnbalancedKey:
        if epsilon == "auto":
            raise
        marked = watermark(model, inner, epsilon="auto", **embed)
        inner.metrics["epsilon_fallback"] = True
    ctx.artifacts.update(inner.artifacts)
    _report(ctx, reference, marked, 0, attacker_inputs=len(share), **inner.metrics)
    return marked
