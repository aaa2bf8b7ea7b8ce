from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nnseal.attacks import ATTACKS
from nnseal.targets import TorchTarget

FAST = {"finetune": {"steps": 5}, "quantize-weights": {"bits": 4}, "prune": {"amount": 0.3}}


def _weights(m: torch.nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, mod in m.named_modules():
        w = getattr(mod, "weight", None)
        if callable(w):  # quantized modules expose weight() returning a quantized tensor
            w = w().dequantize()
        if isinstance(w, torch.Tensor):
            out[name] = w.detach().float().numpy()
    return out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_changes_weights_and_leaves_the_original(model, digits, name) -> None:
    attack = ATTACKS[name]
    before = copy.deepcopy(model.state_dict())
    attacked = attack(model, digits[0] if attack.needs_data else None, **FAST.get(name, {}))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the original model"
    orig, new = _weights(model), _weights(attacked)
    assert set(orig) == set(new)
    assert any(not np.array_equal(orig[k], new[k]) for k in orig), f"{name} left every weight unchanged"
    probs = TorchTarget(attacked).predict(digits[1].x[:5])
    assert probs.shape == (5, 10) and np.isfinite(probs).all()


def test_attack_argument_errors(model) -> None:
    with pytest.raises(ValueError, match="amount"):
        ATTACKS["prune"](model, amount=1.5)
    with pytest.raises(ValueError, match="bits"):
        ATTACKS["quantize-weights"](model, bits=0)
    with pytest.raises(ValueError, match="needs training data"):
        ATTACKS["finetune"](model)
    with pytest.raises(ValueError, match="unknown parameter"):
        ATTACKS["perturb-weight"](model, param="nope")
