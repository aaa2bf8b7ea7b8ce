"""nnseal: check through black-box queries that a deployed classifier is still the one you shipped."""

__version__ = "0.1.0"

from nnseal.data import Dataset, load_dataset
from nnseal.errors import DataError, FingerprintError, ModelError, NnsealError, TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.methods import METHODS, SensitiveSampleFingerprinter, SensitiveSampleGenerator, manc_select
from nnseal.models import export_onnx, load_model, model_id, save_model, train_model
from nnseal.outputs import OutputSpec
from nnseal.query import Answers, Verdict, query
from nnseal.targets import OnnxTarget, Target, TorchTarget, open_target
from nnseal.verification import IntegrityVerdict, Status, verify

__all__ = [
    "METHODS",
    "Answers",
    "DataError",
    "Dataset",
    "Fingerprint",
    "FingerprintError",
    "IntegrityVerdict",
    "ModelError",
    "NnsealError",
    "OnnxTarget",
    "OutputSpec",
    "SensitiveSampleFingerprinter",
    "SensitiveSampleGenerator",
    "Status",
    "Target",
    "TargetError",
    "TorchTarget",
    "Verdict",
    "__version__",
    "export_onnx",
    "load_dataset",
    "load_model",
    "manc_select",
    "model_id",
    "open_target",
    "query",
    "save_model",
    "train_model",
    "verify",
]
