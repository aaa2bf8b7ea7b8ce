"""Fingerprinting methods. Each has ``name`` and ``fingerprint(model, data) -> Fingerprint``."""

from nnseal.methods.manc import manc_select, relu_activations, relu_modules
from nnseal.methods.sensitive import SensitiveSampleGenerator, sensitivity
from nnseal.methods.ssf import SensitiveSampleFingerprinter

METHODS = {SensitiveSampleFingerprinter.name: SensitiveSampleFingerprinter}

__all__ = [
    "METHODS",
    "SensitiveSampleFingerprinter",
    "SensitiveSampleGenerator",
    "manc_select",
    "relu_activations",
    "relu_modules",
    "sensitivity",
]
