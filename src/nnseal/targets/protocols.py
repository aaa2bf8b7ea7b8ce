"""Wire formats of serving APIs and the adapters that turn their answers into what ``verify`` compares.

A protocol knows one API's request path, how to encode a batch of inputs as JSON and where the
answer sits in the response; it returns the raw answer rows. An output adapter then says what those
rows are (probabilities, logits, ranked label indices or label names) and turns them into the
probability matrix or ranked labels a :class:`~nnseal.targets.base.Target` provides. Every malformed
answer raises :class:`~nnseal.errors.TargetError` with a ``kind`` naming the problem — whatever valid
JSON a hostile server sends (objects for lists, strings for numbers, 4000-digit integers, shapes
of 10^12 elements), decoding raises nothing else.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from nnseal.errors import TargetError
from nnseal.grid import DEFAULT_LEVELS, pixels
from nnseal.targets.base import Provides, softmax

AnswerKind = Literal["probabilities", "logits", "labels", "label-names"]
"""What a server's answer rows are."""
ANSWER_KINDS: tuple[AnswerKind, ...] = ("probabilities", "logits", "labels", "label-names")
INPUT_FORMATS: tuple[str, ...] = ("array", "png")
"""How inputs travel: ``array`` as numbers, ``png`` as base64 PNG files (for APIs that take images)."""


def png_base64(x: np.ndarray, levels: int = DEFAULT_LEVELS) -> list[str]:
    """Each input (C, H, W) as a base64 PNG of its integer pixels k = x · ``levels`` (grayscale for one
    channel, RGB for three): lossless for on-grid inputs, which the server decodes as k / levels."""
    from PIL import Image

    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"PNG inputs need 1 or 3 channels (N, C, H, W), got shape {x.shape}")
    out = []
    for img in pixels(x, levels):
        buf = io.BytesIO()
        Image.fromarray(img[0] if len(img) == 1 else img.transpose(1, 2, 0)).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def _malformed(message: str, kind: str = "wrong-shape") -> TargetError:
    return TargetError(message, kind)


MAX_DIMS = 32
"""Most dimensions accepted in a V2 output ``shape`` (NumPy's own limit is 64)."""
MAX_STRING_CELLS = 1 << 24
"""Most characters a NumPy array of answer strings may take: every string gets the longest one's
width, so 100,000 short names and one of 1 MB would take 400 GB (honest answers: under 10^7)."""


def _check_strings(strings: Any, what: str) -> None:
    """Refuse strings whose fixed-width NumPy array would be huge; ``strings`` may be nested lists."""
    count = longest = 0
    stack = [strings]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            count, longest = count + 1, max(longest, len(v))
    if count * longest > MAX_STRING_CELLS:
        raise _malformed(
            f"{what} holds {count} strings up to {longest} characters long", "malformed-response"
        )


def _array(value: Any, what: str) -> np.ndarray:
    """``value`` as an array; ragged lists, or integers beyond any float, are a wrong-shape error."""
    _check_strings(value, what)
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise _malformed(f"{what} is ragged or out of range, not an (n, m) array") from None


def _rows(value: Any, n: int, what: str) -> np.ndarray:
    """``value`` as an (n, m) array of numbers or of strings, or a wrong-shape error."""
    a = value if isinstance(value, np.ndarray) else _array(value, what)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise _malformed(f"{what} has shape {a.shape}, expected {n} rows")
    if a.dtype.kind not in "iufU":  # not bools, nor objects (mixed types, integers beyond 64 bits)
        raise _malformed(f"{what} holds {a.dtype} values, not numbers or label names")
    return a


class Protocol(ABC):
    """One serving API: request path, JSON encoding of a batch, location of the answer."""

    name: str = ""
    max_batch: int | None = None
    """Most inputs one request may carry (None: no limit of the protocol itself)."""
    png_levels: int | None = None
    """Send inputs as base64 PNG files of their integer pixels k = x · png_levels (None: numbers);
    set with :meth:`send_png`."""

    def send_png(self, levels: int = DEFAULT_LEVELS) -> Protocol:
        """Send inputs as PNG images of the data's pixel grid (``levels``); returns ``self``."""
        self.png_levels = levels
        return self

    def _images(self, x: np.ndarray) -> list[str] | None:
        return None if self.png_levels is None else png_base64(x, self.png_levels)

    @abstractmethod
    def path(self) -> str:
        """Request path relative to the base URL."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> Any:
        """The JSON body for a batch ``x`` (N, C, H, W)."""

    @abstractmethod
    def decode(self, body: Any, n: int) -> np.ndarray:
        """The answer rows (n, m) — numbers or label names — from a parsed JSON response."""


def _version(version: str | None, sep: str) -> str:
    return f"{sep}{quote(version, safe='')}" if version else ""


class V2Protocol(Protocol):
    """KServe V2 / Open Inference Protocol REST (KServe, Triton, MLServer, Seldon, OpenVINO MS).

    Sends plain V2 JSON: one FP32 tensor named ``input_name``; reads the output named
    ``output_name`` (default: the first), whose ``shape`` must start with the batch size.
    """

    name = "v2"

    def __init__(
        self,
        model: str,
        *,
        version: str | None = None,
        input_name: str = "input",
        output_name: str | None = None,
    ) -> None:
        self.model, self.version, self.input_name, self.kind_name = model, version, input_name, output_name

    def path(self) -> str:
        return f"/v2/models/{quote(self.model, safe='')}{_version(self.version, '/versions/')}/infer"

    def encode(self, x: np.ndarray) -> Any:
        images = self._images(x)
        if images is not None:  # V2 BYTES, one base64 PNG per input (MLServer's base64 content type)
            tensor = {"name": self.input_name, "shape": [len(images)], "datatype": "BYTES", "data": images,
                      "parameters": {"content_type": "base64"}}  # fmt: skip
        else:
            tensor = {"name": self.input_name, "shape": list(x.shape), "datatype": "FP32",
                      "data": x.ravel().tolist()}  # fmt: skip
        return {"inputs": [tensor]}

    def decode(self, body: Any, n: int) -> np.ndarray:
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise _malformed("V2 response has no 'outputs' list", "malformed-response")
        if self.kind_name is None:
            out = outputs[0]
        else:
            named = [o for o in outputs if o.get("name") == self.kind_name]
            if not named:
                raise _malformed(f"V2 response has no output named {self.kind_name!r}", "malformed-response")
            out = named[0]
        shape, data = out.get("shape"), out.get("data")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(s) is int and 0 <= s < 2**63 for s in shape)  # not bools, not huge
            or data is None
        ):
            raise _malformed("V2 output lacks a valid 'shape' or 'data'", "malformed-response")
        a = _array(data, "V2 output data")
        if math.prod(shape) != a.size:  # before reshape, which fails on shapes beyond memory otherwise
            raise _malformed(f"V2 output data ({a.size} values) does not fit its shape {shape[:8]}")
        a = a.reshape(shape)
        if a.ndim > 2 and a.shape[0] == n:
            a = a.reshape(n, -1)
        return _rows(a, n, "V2 output")


class TorchServeProtocol(Protocol):
    """TorchServe predictions API: one input per request (TorchServe batches on the server side).

    Sends ``{"data": input as nested list}``; the handler's answer is read either as a list of
    scores or as a ``{label: score}`` mapping (the built-in classifiers' top-k format), which gives
    label names ranked by score.
    """

    name = "torchserve"
    max_batch = 1

    def __init__(self, model: str, *, version: str | None = None) -> None:
        self.model, self.version = model, version

    def path(self) -> str:
        return f"/predictions/{quote(self.model, safe='')}{_version(self.version, '/')}"

    def encode(self, x: np.ndarray) -> Any:
        if len(x) != 1:
            raise ValueError(f"TorchServe requests carry one input, got {len(x)}")
        images = self._images(x)
        return {"data": x[0].tolist() if images is None else images[0]}

    def decode(self, body: Any, n: int) -> np.ndarray:
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], (list, dict)):
            body = body[0]
        if isinstance(body, dict):
            if not body or not all(type(v) in (int, float) for v in body.values()):  # not bools
                raise _malformed("TorchServe answer is not a {label: score} mapping", "malformed-response")
            scores = {k: _score(v) for k, v in body.items()}
            if not all(math.isfinite(v) for v in scores.values()):
                raise _malformed("TorchServe answer has a NaN or infinite score", "nan")
            if n != 1:
                raise _malformed(f"TorchServe answer ranks one input, expected {n}")
            _check_strings(list(scores), "TorchServe answer")
            return np.asarray([sorted(scores, key=lambda k: -scores[k])], dtype=str)
        return _rows([body], n, "TorchServe answer")


def _score(v: float) -> float:
    """A score as a float; an integer beyond any float is infinite (and so rejected)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


class TFServingProtocol(Protocol):
    """TensorFlow Serving REST predict API, row format: ``{"instances": […]}`` → ``{"predictions": […]}``.

    ``layout="nhwc"`` sends channels last, as Keras models expect. A prediction that is a mapping
    (several named outputs) is read at ``output_name``, or its only key.
    """

    name = "tfserving"

    def __init__(
        self,
        model: str,
        *,
        version: str | None = None,
        layout: Literal["nchw", "nhwc"] = "nchw",
        output_name: str | None = None,
    ) -> None:
        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be nchw or nhwc, got {layout!r}")
        self.model, self.version, self.layout, self.kind_name = model, version, layout, output_name

    def path(self) -> str:
        return f"/v1/models/{quote(self.model, safe='')}{_version(self.version, '/versions/')}:predict"

    def encode(self, x: np.ndarray) -> Any:
        images = self._images(x)
        if images is not None:  # TF Serving's binary convention
            return {"instances": [{"b64": b} for b in images]}
        return {"instances": (x.transpose(0, 2, 3, 1) if self.layout == "nhwc" else x).tolist()}

    def decode(self, body: Any, n: int) -> np.ndarray:
        preds = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(preds, list):
            raise _malformed("TF Serving response has no 'predictions' list", "malformed-response")
        if preds and all(isinstance(p, dict) for p in preds):
            key = self.kind_name or (next(iter(preds[0])) if len(preds[0]) == 1 else None)
            if key is None or not all(key in p for p in preds):
                raise _malformed(
                    "TF Serving predictions have several outputs; name one", "malformed-response"
                )
            preds = [p[key] for p in preds]
        return _rows(preds, n, "TF Serving predictions")


class JsonProtocol(Protocol):
    """Any JSON API: a request template and the path of the answer in the response.

    ``template`` is a JSON object in which the string ``"$inputs"`` stands for the batch (nested
    lists, N × C × H × W; or a list of base64 PNG strings with :meth:`send_png`). ``response_path``
    is dot-separated keys and list indexes, with ``*`` mapping over a list — e.g. ``result.scores``
    or ``predictions.*.probs``.
    """

    name = "json"

    def __init__(self, path: str, *, template: str | dict[str, Any], response_path: str) -> None:
        if isinstance(template, str):
            try:
                template = json.loads(template)
            except json.JSONDecodeError as e:
                raise ValueError(f"request template is not JSON: {e}") from None
        if "$inputs" not in json.dumps(template):
            raise ValueError('request template must contain the placeholder "$inputs"')
        if not response_path.strip():
            raise ValueError("response path must not be empty")
        self._path = path if path.startswith("/") or not path else f"/{path}"
        self.template, self.response_path = template, response_path

    def path(self) -> str:
        return self._path

    def encode(self, x: np.ndarray) -> Any:
        images = self._images(x)
        inputs = x.tolist() if images is None else images

        def fill(node: Any) -> Any:
            if node == "$inputs":
                return inputs
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, list):
                return [fill(v) for v in node]
            return node

        return fill(self.template)

    def decode(self, body: Any, n: int) -> np.ndarray:
        return _rows(_walk(body, self.response_path.split(".")), n, f"response at {self.response_path!r}")


def _walk(node: Any, parts: list[str]) -> Any:
    """Follow a response path; ``*`` maps the rest of the path over a list."""
    for i, part in enumerate(parts):
        if part == "*":
            if not isinstance(node, list):
                raise _malformed(
                    f"response path: '*' needs a list, found {type(node).__name__}", "malformed-response"
                )
            return [_walk(item, parts[i + 1 :]) for item in node]
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list) and re.fullmatch("-?[0-9]+", part) and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            raise _malformed(f"response has nothing at path element {part!r}", "malformed-response")
    return node


class AnswerAdapter:
    """Reads answer rows as ``output``: probabilities, logits (softmaxed here), ranked label indices,
    or ranked label names mapped to indices through ``class_names``."""

    def __init__(self, kind: AnswerKind = "probabilities", class_names: Sequence[str] | None = None) -> None:
        if kind not in ANSWER_KINDS:
            raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(ANSWER_KINDS)}")
        if kind == "label-names" and not class_names:
            raise ValueError("answers as label-names need the class names (in class-index order)")
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ValueError("class names must be unique")
        self.kind = kind
        self.index = {name: i for i, name in enumerate(class_names or ())}

    @property
    def provides(self) -> Provides:
        return "probabilities" if self.kind in ("probabilities", "logits") else "labels"

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self.kind == "label-names":
            if rows.dtype.kind != "U":
                raise _malformed("expected label names, got numbers", "unknown-label")
            unknown = sorted({str(v) for v in rows.ravel() if str(v) not in self.index})
            if unknown:
                raise _malformed(f"unknown label {unknown[0]!r} (not among the class names)", "unknown-label")
            return np.vectorize(self.index.__getitem__, otypes=[np.int64])(rows)
        if rows.dtype.kind not in "iuf":
            raise _malformed(f"expected numbers for output {self.kind}, got text", "malformed-response")
        a = rows.astype(np.float64)
        if not np.isfinite(a).all():
            raise _malformed("answer contains NaN or infinite values", "nan")
        with np.errstate(over="ignore"):  # beyond float32: infinite, which verify rejects
            if self.kind == "logits":
                return softmax(a).astype(np.float32)
            return a.astype(np.float32) if self.kind == "probabilities" else a  # verify rejects non-integers
