"""An MLServer custom runtime serving an ONNX classifier's logits through ONNX Runtime.

Runs inside MLServer's own virtual environment (``.venv-mlserver``, made by
``scripts/setup-mlserver.sh``), not nnseal's: ``mlserver_rig.py`` copies this file next to the
model settings, and MLServer imports it as ``nnseal_runtime.OnnxClassifier``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxClassifier(MLModel):
    """One FP32 input tensor in, the model's first output (logits) out as ``logits``."""

    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        logits = self.session.run(None, {self.input_name: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)])
