"""Tampering attacks as registered model → model transformations (see :mod:`nnseal.attacks.base`).

result = run_attack("prune", model, {"amount": 0.5}, test=test)
result.lineage_str, result.record["metrics"]["accuracy_after"], result.save("pruned.safetensors")
"""

from nnseal.attacks import bivbench, compression, removal, training, watermarking, weights
from nnseal.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    AttackResult,
    lineage_str,
    register,
    run_attack,
)
from nnseal.attacks.training import stamp_trigger

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "AttackResult",
    "bivbench",
    "compression",
    "lineage_str",
    "register",
    "removal",
    "run_attack",
    "stamp_trigger",
    "training",
    "watermarking",
    "weights",
]
