"""Black-box access to a model under verification."""

from nnseal.targets.base import Target
from nnseal.targets.http import HttpTarget, make_protocol
from nnseal.targets.local import OnnxTarget, TorchTarget, open_target
from nnseal.targets.protocols import (
    AnswerAdapter,
    JsonProtocol,
    Protocol,
    TFServingProtocol,
    TorchServeProtocol,
    V2Protocol,
)
from nnseal.targets.stealth import StealthTarget

__all__ = [
    "AnswerAdapter",
    "HttpTarget",
    "JsonProtocol",
    "OnnxTarget",
    "Protocol",
    "StealthTarget",
    "TFServingProtocol",
    "Target",
    "TorchServeProtocol",
    "TorchTarget",
    "V2Protocol",
    "make_protocol",
    "open_target",
]
