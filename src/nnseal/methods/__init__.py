"""Fingerprinting methods. Each has ``name`` and ``fingerprint(model, data) -> Fingerprint``."""

from nnseal.methods.frontier import FrontierStitching
from nnseal.methods.manc import manc_select, relu_activations, relu_modules
from nnseal.methods.markers import STRATEGIES, MarkerFingerprinter, MarkerGenerator, measure_noise
from nnseal.methods.sensitive import SensitiveSampleGenerator, sensitivity
from nnseal.methods.ssf import SensitiveSampleFingerprinter

METHODS = {
    SensitiveSampleFingerprinter.name: SensitiveSampleFingerprinter,
    MarkerFingerprinter.name: MarkerFingerprinter,
}

__all__ = [
    "METHODS",
    "STRATEGIES",
    "FrontierStitching",
    "MarkerFingerprinter",
    "MarkerGenerator",
    "SensitiveSampleFingerprinter",
    "SensitiveSampleGenerator",
    "manc_select",
    "measure_noise",
    "relu_activations",
    "relu_modules",
    "sensitivity",
]
