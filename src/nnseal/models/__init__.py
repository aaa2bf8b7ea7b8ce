"""Reference architectures, training, and safe save/load/export."""

from nnseal.models.architectures import ARCHITECTURES, Classifier, ModelConfig, build_model, check_data
from nnseal.models.inference import WhiteBox, probabilities, white_box
from nnseal.models.io import export_onnx, load_model, model_id, save_model
from nnseal.models.train import evaluate_accuracy, train_model

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelConfig",
    "WhiteBox",
    "build_model",
    "check_data",
    "evaluate_accuracy",
    "export_onnx",
    "load_model",
    "model_id",
    "probabilities",
    "save_model",
    "train_model",
    "white_box",
]
