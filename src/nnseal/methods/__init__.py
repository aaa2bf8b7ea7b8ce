"""Fingerprinting methods. Tamper detection: a :class:`~nnseal.methods.base.Method` subclass per method,
registered in :data:`METHODS` (the CLI, the evaluation harness and the tests read it); ownership:
:data:`OWNERSHIP_METHODS` — :class:`FrontierStitching` watermarks and :class:`ConferrableExamples`
fingerprints (both verified by :func:`nnseal.watermark.verify_watermark`)."""

from nnseal.methods.base import Method, Pool
from nnseal.methods.boundary import BoundarySensitive
from nnseal.methods.conferrable import ConferrableExamples
from nnseal.methods.covert import CovertInputs
from nnseal.methods.frontier import FrontierStitching
from nnseal.methods.manc import manc_select, relu_activations, relu_modules
from nnseal.methods.markers import STRATEGIES, MarkerFingerprinter, MarkerGenerator, measure_noise
from nnseal.methods.natural import NaturalInputs
from nnseal.methods.sensitive import SensitiveSampleGenerator, sensitivity
from nnseal.methods.ssf import SensitiveSampleFingerprinter

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        NaturalInputs,
        SensitiveSampleFingerprinter,
        MarkerFingerprinter,
        CovertInputs,
        BoundarySensitive,
    )
}

OWNERSHIP_METHODS: dict[str, type] = {
    "frontier-stitching": FrontierStitching,
    "conferrable": ConferrableExamples,
}
"""Ownership methods by key method name: a watermark embedded by fine-tuning, or a fingerprint."""

__all__ = [
    "METHODS",
    "OWNERSHIP_METHODS",
    "STRATEGIES",
    "BoundarySensitive",
    "ConferrableExamples",
    "CovertInputs",
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
