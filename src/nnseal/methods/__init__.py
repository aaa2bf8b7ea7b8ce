"""Fingerprinting methods. Tamper detection: a :class:`~nnseal.methods.base.Method` subclass per method,
registered in :data:`METHODS` (the CLI, the evaluation harness and the tests read it); ownership:
:class:`FrontierStitching` watermarks."""

from nnseal.methods.base import Method, Pool
from nnseal.methods.frontier import FrontierStitching
from nnseal.methods.manc import manc_select, relu_activations, relu_modules
from nnseal.methods.markers import STRATEGIES, MarkerFingerprinter, MarkerGenerator, measure_noise
from nnseal.methods.natural import NaturalInputs
from nnseal.methods.sensitive import SensitiveSampleGenerator, sensitivity
from nnseal.methods.ssf import SensitiveSampleFingerprinter

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (NaturalInputs, SensitiveSampleFingerprinter, MarkerFingerprinter)
}

__all__ = [
    "METHODS",
    "STRATEGIES",
    "FrontierStitching",
    "MarkerFingerprinter",
    "MarkerGenerator",
    "Method",
    "NaturalInputs",
    "Pool",
    "SensitiveSampleFingerprinter",
    "SensitiveSampleGenerator",
    "manc_select",
    "measure_noise",
    "relu_activations",
    "relu_modules",
    "sensitivity",
]
