"""Declared serving environments: the numerics a deployed copy of the model is served with, and how
far they move its answers from the owner's float32 reference.

A fingerprint records answers computed on the owner's CPU in float32. A copy served elsewhere gives
slightly different numbers even when nobody touched it, and a recorded answer sitting closer to a
boundary (a label order, a rounding step) than that noise would make an honest deployment look
tampered. The owner therefore *declares* where the model will be served (``serving=`` of every
:class:`~nnseal.methods.base.Method`); each declared environment here answers
:meth:`Environment.probabilities`, :func:`measure_noise` says how far that moves every candidate's
answer, and the method keeps only candidates whose answers are unchanged in every declared
environment with a margin of ``noise_factor ×`` that noise.

Environments (:data:`ENVIRONMENTS`):

``cpu-fp32`` (the default)
    PyTorch on CPU in float32 at batch sizes 1/7/64/256 × 1/2 threads: only the summation order
    changes. ``min_margin`` (2e-5 relative) was calibrated for this.
``onnxruntime``
    The model exported to ONNX and run by ONNX Runtime on CPU (float32, its own kernels).
``gpu-fp32``
    CUDA in float32 with TF32 *off* (``torch.backends.cuda.matmul.allow_tf32 = False`` and
    ``torch.backends.cudnn.allow_tf32 = False``). Note PyTorch's default is cudnn TF32 *on*: a
    server that does not switch it off serves convolutions in TF32 on Ampere and later GPUs, so
    declare ``gpu-tf32`` for it.
``gpu-tf32``
    CUDA with both TF32 flags on: conv and matmul operands (activation and weight) are rounded to
    TF32 (10 explicit mantissa bits, float32 exponent range), products accumulated in float32; bias,
    every other layer and the output stay float32.
``bf16`` / ``fp16``
    ``torch.autocast`` to bfloat16 / float16: conv and linear operands (activation, weight and bias)
    are rounded to the format, accumulated in float32, and the op's output is rounded to the format.

On a machine with CUDA (``torch.cuda.is_available()``) the GPU environments run for real on a copy
of the model on the first GPU (the TF32 flags are set and restored; autocast for bf16/fp16). Without
one they are *emulated* on CPU, exactly as described above, by :func:`emulate`: a torch function mode
intercepts every ``conv1d/2d/3d``, ``linear``, ``matmul``/``mm``/``bmm``/``addmm`` call while the
model runs (the model itself is never modified), rounds the operands with :func:`round_mantissa`
(integer bit manipulation on the float32 bits, round-to-nearest-even) or a cast to float16, runs the
op in float64 and rounds the result to float32 (then, for bf16/fp16, to the format). Assumptions of
the emulation, each stated so a user can judge it:

* **Rounding mode.** Operands are rounded to nearest, ties to even. NVIDIA's conversion instruction
  (``cvt.rna.tf32.f32``) rounds ties away from zero, and some kernels simply drop the 13 low bits
  (truncation, up to twice the error). Ties are rare; truncation's larger error is what the default
  ``noise_factor`` of 4 leaves room for.
* **Accumulation.** The emulation accumulates in float64 and rounds once; a GPU accumulates in
  float32 in an order of its choosing (split-K, Winograd and FFT convolutions included). That
  difference is float32 summation noise — the size ``cpu-fp32`` measures, well under the operand
  rounding's.
* **Other layers.** Only conv/linear/matmul are emulated. Under autocast a GPU also stores the
  outputs of layers that keep the input dtype (ReLU, max-pooling: exact; BatchNorm, average pooling,
  additions: rounded again) in the format; the emulation keeps those in float32, so for models with
  BatchNorm or residual additions the measured bf16/fp16 noise is a slight underestimate. Softmax runs
  in float32 in both (autocast runs it in float32).
* ``gpu-fp32`` emulated is the float64-accumulated answer rounded to float32: a correctly rounded
  result differs from the CPU's by the CPU's own summation error, as a GPU's does.

**Declaring bf16 or fp16 accepts their noise by design.** A fingerprint declared for fp16 (bf16) only
keeps answers that survive fp16 (bf16) rounding, so an attacker who serves the model cast to fp16
(bf16) — a real, cheaper, different model — is *not* detectable by it. Declare a lower precision only
when the deployment really is served that way.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nnseal.errors import NnsealError
from nnseal.outputs import OutputSpec

DEFAULT_SERVING: tuple[str, ...] = ("cpu-fp32",)
CPU_BATCH_SIZES: tuple[int, ...] = (1, 7, 64, 256)
CPU_THREADS: tuple[int, ...] = (1, 2)
LOWER_PRECISION = frozenset({"bf16", "fp16"})
LOWER_PRECISION_WARNING = (
    "declaring {names} accepts their rounding as benign by design: a copy of the model served cast to "
    "{names} (a cheaper, different model) will verify as intact; declare it only if the deployment "
    "really serves in that precision"
)


class ServingWarning(UserWarning):
    """A declared serving environment weakens what the fingerprint can detect."""


# ---------------------------------------------------------------------------------------------- rounding


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round float32 ``x`` to ``bits`` explicit mantissa bits, keeping float32's exponent range, to
    nearest with ties to even (TF32: ``bits=10``; bfloat16: ``bits=7``). Returns float32.

    On the float32 bit pattern viewed as an integer (sign | 8 exponent bits | 23 mantissa bits),
    keeping the top ``bits`` of the mantissa means dropping ``d = 23 - bits`` low bits: add
    ``2^(d-1) - 1`` plus the lowest kept bit (so an exact half rounds to the even neighbour), then
    clear the ``d`` low bits. A carry out of the mantissa increments the exponent, which is exactly the
    next representable value (and the largest values round to infinity, as in the real formats); the
    sign bit is never reached for a finite or infinite input, so signs, zeros, infinities and
    subnormals come out right. NaN is passed through unchanged (its payload could otherwise carry into
    the sign or round to infinity).
    """
    if not 0 < bits < 23:
        raise ValueError(f"bits must be in 1..22, got {bits}")
    x = x.to(torch.float32).contiguous()
    drop = 23 - bits
    i = x.view(torch.int32)
    bias = ((i >> drop) & 1) + ((1 << (drop - 1)) - 1)
    rounded = ((i + bias) & ~((1 << drop) - 1)).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded)


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to TF32 (10 explicit mantissa bits, float32 range), as float32."""
    return round_mantissa(x, 10)


def to_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bfloat16 (7 explicit mantissa bits), as float32; bitwise equal to
    ``x.to(torch.bfloat16).float()``."""
    return round_mantissa(x, 7)


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 (10 mantissa bits, float16's range: overflow to ±inf, fp16
    subnormals), as float32 — a cast there and back."""
    return x.to(torch.float32).to(torch.float16).to(torch.float32)


ROUNDERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tf32": to_tf32,
    "bf16": to_bf16,
    "fp16": to_fp16,
}


# --------------------------------------------------------------------------------------------- emulation

_CONVS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR = {F.linear}
_MATMULS = {torch.matmul, torch.mm, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm}
_ADDMM = {torch.addmm, torch.Tensor.addmm}


class _Emulation(TorchFunctionMode):
    """Round conv/linear/matmul operands (and, with ``round_output``, results) while active."""

    def __init__(self, operand: Callable[[torch.Tensor], torch.Tensor] | None, round_output: bool) -> None:
        super().__init__()
        self.operand, self.round_output = operand, round_output

    def _in(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return (self.operand(t) if self.operand is not None else t).to(torch.float64)

    def _out(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        y = y.to(torch.float32)
        if self.round_output and self.operand is not None:
            y = self.operand(y)
        return y.to(dtype)

    def _bias(self, t: Any) -> Any:
        """A bias is added in float32 under TF32 (the GEMM's epilogue), cast under autocast."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return self._in(t) if self.round_output else t.to(torch.float64)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        first = args[0] if args else kwargs.get("input")
        if not isinstance(first, torch.Tensor) or not first.is_floating_point():
            return func(*args, **kwargs)
        if func in _CONVS or func in _LINEAR:  # (input, weight, bias, ...)
            args = tuple(self._in(a) if i < 2 else self._bias(a) if i == 2 else a for i, a in enumerate(args))
            kwargs = {k: self._in(v) if k in ("input", "weight") else self._bias(v) if k == "bias" else v
                      for k, v in kwargs.items()}  # fmt: skip
        elif func in _ADDMM:  # (bias, mat1, mat2, beta=, alpha=)
            first = args[1] if len(args) > 1 else kwargs.get("mat1", first)
            args = tuple(self._bias(a) if i == 0 else self._in(a) if i < 3 else a for i, a in enumerate(args))
            kwargs = {k: self._bias(v) if k == "input" else self._in(v) if k in ("mat1", "mat2") else v
                      for k, v in kwargs.items()}  # fmt: skip
        elif func in _MATMULS:
            args = tuple(self._in(a) if i < 2 else a for i, a in enumerate(args))
            kwargs = {k: self._in(v) if k in ("input", "other", "mat2") else v for k, v in kwargs.items()}
        else:
            return func(*args, **kwargs)
        return self._out(func(*args, **kwargs), first.dtype)


@contextmanager
def emulate(fmt: str | None, *, round_output: bool = False) -> Iterator[None]:
    """While active, every conv/linear/matmul computes as on a GPU with operands in ``fmt`` ("tf32",
    "bf16", "fp16"; ``None``: float32 operands), float64 accumulation rounded to float32 and, with
    ``round_output`` (autocast), the result rounded to ``fmt``. Nothing is patched: a torch function
    mode, popped on exit even when the body raises."""
    if fmt is not None and fmt not in ROUNDERS:
        raise ValueError(f"unknown number format {fmt!r}; choose from {', '.join(ROUNDERS)}")
    with _Emulation(ROUNDERS[fmt] if fmt else None, round_output):
        yield


# ---------------------------------------------------------------------------------------- environments


@dataclass(frozen=True)
class Environment:
    """A declared serving environment (see the module docstring)."""

    name: str
    description: str
    fmt: str | None = None  # operand format on the GPU: tf32, bf16, fp16 (None: float32)
    autocast: bool = False  # bf16/fp16: outputs rounded to the format as well

    @property
    def gpu(self) -> bool:
        return self.name.startswith("gpu-") or self.autocast

    def setups(self, model: nn.Module, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(label, probabilities) of every way this environment computes ``x``'s answers."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.name == "cpu-fp32":
            from nnseal.targets.local import TorchTarget

            return [
                (f"torch batch {b} threads {t}", TorchTarget(model, batch_size=b, threads=t).predict(x))
                for b in CPU_BATCH_SIZES
                for t in CPU_THREADS
            ]
        if self.name == "onnxruntime":
            from nnseal.targets.local import OnnxTarget

            return [("onnxruntime", OnnxTarget(_onnx_bytes(model, tuple(x.shape[1:]))).predict(x))]
        if torch.cuda.is_available():
            return [(f"{self.name} (cuda)", self._cuda(model, x))]
        return [(f"{self.name} (emulated)", self._emulated(model, x))]

    def probabilities(self, model: nn.Module, x: np.ndarray) -> np.ndarray:
        """The model's probabilities on ``x`` served in this environment (for ``cpu-fp32``: one
        batch at torch's thread count; real CUDA when available, else the CPU emulation)."""
        if self.name == "cpu-fp32":
            from nnseal.targets.local import TorchTarget

            return TorchTarget(model).predict(np.ascontiguousarray(x, dtype=np.float32))
        return self.setups(model, x)[0][1]

    @torch.no_grad()
    def _emulated(self, model: nn.Module, x: np.ndarray) -> np.ndarray:
        from nnseal.models.io import model_dtype

        xt = torch.from_numpy(x).to(model_dtype(model))
        with emulate(self.fmt, round_output=self.autocast):
            logits = model.eval()(xt)
        return torch.softmax(logits.float(), dim=1).numpy()

    @torch.no_grad()
    def _cuda(self, model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        gpu = copy.deepcopy(model).eval().to("cuda")
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        tf32 = self.fmt == "tf32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.fmt or "", torch.float32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            xt = torch.from_numpy(x).to(next(gpu.parameters()).dtype)
            out = []
            with torch.autocast("cuda", dtype=dtype, enabled=self.autocast):
                for i in range(0, len(xt), batch_size):
                    out.append(gpu(xt[i : i + batch_size].to("cuda")).float())
            return torch.softmax(torch.cat(out), dim=1).cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


_ONNX_CACHE: dict[tuple[str, str, tuple[int, ...]], bytes] = {}


def _onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The model exported to ONNX (seconds per export), kept in memory per weights and input shape:
    the same model's candidates are measured many times (methods, specs, declarations)."""
    from nnseal.models.io import export_onnx, model_id

    key = (type(model).__qualname__, model_id(model), input_shape)
    if key not in _ONNX_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "model.onnx", input_shape)
            if len(_ONNX_CACHE) >= 4:
                _ONNX_CACHE.pop(next(iter(_ONNX_CACHE)))
            _ONNX_CACHE[key] = Path(path).read_bytes()
    return _ONNX_CACHE[key]


ENVIRONMENTS: dict[str, Environment] = {
    e.name: e
    for e in (
        Environment("cpu-fp32", "PyTorch on CPU, float32, batch sizes 1/7/64/256 × 1/2 threads"),
        Environment("onnxruntime", "ONNX export run by ONNX Runtime on CPU, float32"),
        Environment("gpu-fp32", "CUDA float32 with TF32 off (matmul and cudnn)"),
        Environment(
            "gpu-tf32", "CUDA with TF32 on: conv/matmul operands rounded to 10 mantissa bits", "tf32"
        ),
        Environment(
            "bf16", "torch.autocast to bfloat16 (accepts a cast-to-bf16 copy by design)", "bf16", True
        ),
        Environment(
            "fp16", "torch.autocast to float16 (accepts a cast-to-fp16 copy by design)", "fp16", True
        ),
    )
}


def check_serving(value: Sequence[str] | str | None, *, where: str = "serving") -> list[str]:
    """Declared environment names (a sequence, or a comma-separated string), validated against
    :data:`ENVIRONMENTS`, in registry order without duplicates. Raises :class:`NnsealError` naming
    the valid ones; warns (:class:`ServingWarning`) when bf16/fp16 is declared."""
    if value is None:
        return list(DEFAULT_SERVING)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise NnsealError(f"{where} must list environment names; valid: {', '.join(ENVIRONMENTS)}")
    chosen = {v.strip().lower() for v in items if v.strip()}
    unknown = sorted(chosen - set(ENVIRONMENTS))
    if unknown:
        raise NnsealError(
            f"unknown serving environment(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid: {', '.join(ENVIRONMENTS)}"
        )
    if not chosen:
        raise NnsealError(f"{where} must declare at least one environment; valid: {', '.join(ENVIRONMENTS)}")
    return [name for name in ENVIRONMENTS if name in chosen]


def warn_lower_precision(serving: Sequence[str]) -> None:
    low = [s for s in serving if s in LOWER_PRECISION]
    if low:
        warnings.warn(LOWER_PRECISION_WARNING.format(names="/".join(low)), ServingWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ noise


def relative_noise(reference: np.ndarray, probs: np.ndarray, spec: OutputSpec | None = None) -> np.ndarray:
    """Per row, how far ``probs`` moved from ``reference`` in the units of
    :meth:`OutputSpec.margin` (relative): for ``spec=None``, the largest relative change of the
    reference's top-2 class probabilities; for a spec, the largest relative change of any quantity
    its margin compares — a gap between consecutive ranked probabilities over their sum (the top k+1)
    and, with decimals, each shown probability over its value."""
    ref = np.asarray(reference, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-ref, axis=1, kind="stable")
    r, q = np.take_along_axis(ref, order, axis=1), np.take_along_axis(p, order, axis=1)
    if spec is None:
        return (np.abs(q[:, :2] - r[:, :2]) / np.maximum(r[:, :2], 1e-30)).max(axis=1)
    k = min(spec.k, ref.shape[1] - 1)
    gap_change = np.abs((q[:, :k] - q[:, 1 : k + 1]) - (r[:, :k] - r[:, 1 : k + 1]))
    out = (gap_change / np.maximum(r[:, :k] + r[:, 1 : k + 1], 1e-300)).max(axis=1)
    if spec.decimals is not None:
        shown = slice(None) if spec.all_probs else slice(0, spec.k)
        rel = np.abs(q[:, shown] - r[:, shown]) / np.maximum(r[:, shown], 1e-300)
        out = np.maximum(out, rel.max(axis=1))
    return out


@dataclass
class NoiseMeasurement:
    """What the declared environments do to a batch of answers: per setup, the noise (n, specs) in
    margin units (see :func:`relative_noise`) and whether each spec's encoded answer changed."""

    environments: list[str]
    setups: dict[str, str]  # setup label -> environment
    noise: dict[str, np.ndarray]  # setup label -> (n, n_specs)
    changed: dict[str, np.ndarray]  # setup label -> (n, n_specs) bool

    def per_query(self) -> np.ndarray:
        """(n, n_specs): the largest noise over every setup of every environment."""
        return np.max(np.stack(list(self.noise.values())), axis=0)

    def any_changed(self) -> np.ndarray:
        """(n, n_specs): the spec's answer changed in at least one setup."""
        return np.any(np.stack(list(self.changed.values())), axis=0)

    def by_environment(self) -> dict[str, float]:
        """Largest noise per environment."""
        return {
            env: float(max(self.noise[s].max() for s, e in self.setups.items() if e == env))
            for env in self.environments
        }

    def by_setup(self) -> dict[str, float]:
        return {s: float(v.max()) for s, v in self.noise.items()}

    def changed_by_environment(self) -> dict[str, int]:
        """Per environment, the answers (query × spec) that differ in at least one of its setups."""
        return {
            env: int(np.any([self.changed[s] for s, e in self.setups.items() if e == env], axis=0).sum())
            for env in self.environments
        }


def measure(
    model: nn.Module,
    x: np.ndarray,
    environments: Sequence[str],
    specs: Sequence[str | OutputSpec] = ("top1",),
    *,
    reference: np.ndarray | None = None,
) -> NoiseMeasurement:
    """Run ``x`` through every setup of every environment and compare with ``reference`` (default:
    the float32 full-batch answer every method records)."""
    from nnseal.targets.local import TorchTarget

    envs = check_serving(list(environments), where="environments")
    parsed = [OutputSpec.parse(s) for s in specs]
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = TorchTarget(model).predict(x) if reference is None else np.asarray(reference)
    setups, noise, changed = {}, {}, {}
    for env in envs:
        for label, probs in ENVIRONMENTS[env].setups(model, x):
            setups[label] = env
            noise[label] = np.stack([relative_noise(ref, probs, s) for s in parsed], axis=1)
            changed[label] = np.stack(
                [(s.encode(probs) != s.encode(ref)).any(axis=1) for s in parsed], axis=1
            )
    return NoiseMeasurement(envs, setups, noise, changed)


def measure_noise(
    model: nn.Module,
    x: np.ndarray,
    environments: Sequence[str] = DEFAULT_SERVING,
    *,
    spec: str | OutputSpec | None = None,
) -> dict[str, np.ndarray]:
    """Per environment, per query: the largest relative change (over the environment's setups) of
    the reference float32 full-batch answer's top-2 class probabilities — or, with ``spec``, of the
    quantities that spec's margin compares (:func:`relative_noise`)."""
    from nnseal.targets.local import TorchTarget

    envs = check_serving(list(environments), where="environments")
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = TorchTarget(model).predict(x)
    parsed = None if spec is None else OutputSpec.parse(spec)
    out = {}
    for env in envs:
        rows = [relative_noise(ref, p, parsed) for _, p in ENVIRONMENTS[env].setups(model, x)]
        out[env] = np.max(rows, axis=0)
    return out


def environment_target(model: nn.Module, environment: str) -> Any:
    """A :class:`~nnseal.targets.base.Target` answering as ``model`` served in ``environment`` (real
    CUDA when available, else the emulation): verify a fingerprint against a simulated deployment."""
    from nnseal.targets.base import Target

    env = ENVIRONMENTS[check_serving([environment])[0]]

    class EnvironmentTarget(Target):
        def _predict(self, x: np.ndarray) -> np.ndarray:
            return env.probabilities(model, x)

        def describe(self) -> str:
            how = ("cuda" if torch.cuda.is_available() else "emulated") if env.gpu else "cpu"
            return f"{env.name} ({how})"

    target = EnvironmentTarget()
    config = getattr(model, "config", None)
    if config is not None:
        target.input_shape, target.num_classes = tuple(config.input_shape), config.num_classes
    return target
