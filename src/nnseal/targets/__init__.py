"""Black-box access to a model under verification."""

from nnseal.targets.base import Target
from nnseal.targets.local import OnnxTarget, TorchTarget, open_target

__all__ = ["OnnxTarget", "Target", "TorchTarget", "open_target"]
