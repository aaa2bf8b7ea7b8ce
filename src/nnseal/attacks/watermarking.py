"""Watermarking as tampering: someone else embeds their own frontier-stitching watermark (TamperNN
counts it as a modification of the model; it also "overwrites" an owner's watermark)."""

from __future__ import annotations

from torch import nn

from nnseal.attacks.base import AttackContext, register
from nnseal.methods.frontier import FrontierStitching


@register("watermark", needs_data=True)
def watermark(
    model: nn.Module,
    ctx: AttackContext,
    *,
    key_size: int = 100,
    epsilon: float | str = "auto",
    boost: int = 10,
    epochs: float = 5.0,
    checks_per_epoch: int = 4,
    settle: float = 2.0,
    lr: float = 1e-3,
) -> nn.Module:
    """Embed a frontier-stitching watermark (FGSM key of ``key_size`` inputs at ``epsilon``, fine-tuned on
    clean data plus the key boosted ``boost`` times until the key is learnt, then ``settle`` epochs
    more); the key is the attack's
    artifact ``key``. ``epsilon="auto"``: the paper's 0.25, or the nearest ε on a ×0.8 grid that
    forms a balanced key (the metrics' ``epsilon`` is the one used)."""
    train = ctx.require_train("watermark")
    if isinstance(epsilon, str) and epsilon != "auto":  # from the CLI's key=value pairs
        try:
            epsilon = float(epsilon)
        except ValueError:
            raise ValueError(f"epsilon must be a number in (0, 1] or 'auto', got {epsilon!r}") from None
    method = FrontierStitching(
        key_size=key_size,
        epsilon=epsilon,
        boost=boost,
        epochs=epochs,
        checks_per_epoch=checks_per_epoch,
        settle=settle,
        lr=lr,
        seed=ctx.seed,
        progress=ctx.progress,
    )
    marked, key, report = method.embed(model, train, test=ctx.test)
    ctx.artifacts["key"] = key
    ctx.metrics.update(
        {k: v for k, v in report.to_dict().items() if k not in ("accuracy_before", "accuracy_after")}
    )
    return marked
