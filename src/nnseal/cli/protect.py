"""``nnseal protect``: insert parasitic layers against model extraction (:mod:`nnseal.protect`)."""

from __future__ import annotations

from pathlib import Path

import click

from nnseal.cli.app import main
from nnseal.cli.options import emit, json_option, root_option


@main.command("protect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Protected model file (.safetensors)."
)
@click.option(
    "--data", "dataset", default="digits", show_default=True, help="Training data the layers learn on."
)
@root_option
@click.option(
    "--at",
    "at",
    type=click.IntRange(min=0),
    multiple=True,
    help="Insertion point (repeatable): 0 = at the input, k = after hidden layer k. Default: 1.",
)
@click.option(
    "--width", type=click.IntRange(1, 1 << 16), help="Parasitic hidden width [default: 2x the activations]."
)
@click.option("--noise", type=click.FloatRange(0, 10), default=0.05, show_default=True,
              help="Target noise, relative to each activation's std.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--onnx", type=click.Path(path_type=Path), help="Also export the protected model to ONNX.")
@json_option
def protect_cmd(
    model: Path,
    out: Path,
    dataset: str,
    root: Path | None,
    at: tuple[int, ...],
    width: int | None,
    noise: float,
    epochs: int,
    seed: int,
    onnx: Path | None,
    as_json: bool,
) -> None:
    """Insert noisy-identity parasitic layers into an MLP MODEL (Chabanne et al. 2020).

    Each layer is Linear → ReLU → Linear trained to reproduce the model's activations at that point
    plus noise; the result is an ordinary nnseal model file (ONNX export works). The exact
    (piecewise-linear) extraction attack then meets a deeper network than it assumes.

    \b
    Measured limits (benchmarks/bench_protect.py, digits MLP-64, accuracy 96.9% -> 96.4%):
    * --at 1 (default): the first layer is still recovered exactly (99% fidelity);
      only the layers after it are protected.
    * --at 0: none of the original first-layer neurons is recovered, but the parasitic
      layer is, and the reconstruction still agrees on 98.6% of test inputs.
    * Learning-based extraction (distillation) reaches 98% fidelity either way: the
      defence does not stop it.

    Fingerprint and watermark a protected model after protecting it: it answers as a different
    model from its source.
    """
    from nnseal.data import load_dataset
    from nnseal.models import evaluate_accuracy, export_onnx, load_model, model_id, save_model
    from nnseal.models.train import predict_logits
    from nnseal.protect import DEFAULT_AT, protect

    src = load_model(model)
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    protected = protect(src, train, at=at or DEFAULT_AT, width=width, noise=noise, epochs=epochs, seed=seed)
    save_model(protected, out)
    if onnx:
        export_onnx(protected, onnx, protected.config.input_shape)
    agree = float(
        (predict_logits(src, test.x).argmax(1) == predict_logits(protected, test.x).argmax(1)).float().mean()
    )
    before, after = evaluate_accuracy(src, test), evaluate_accuracy(protected, test)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    info = {
        "model": str(out),
        "onnx": str(onnx) if onnx else None,
        "parasitic": [list(p) for p in protected.config.parasitic],
        "noise": noise,
        "test_accuracy_before": before,
        "test_accuracy_after": after,
        "agreement": agree,
        "parameters_before": count(src),
        "parameters_after": count(protected),
        "model_id": model_id(protected),
    }
    emit(
        info,
        as_json,
        f"parasitic layers {info['parasitic']} (position, width): test accuracy {before:.2%} → {after:.2%}, "
        f"top-1 agreement {agree:.2%}, parameters {info['parameters_before']} → {info['parameters_after']}; "
        f"saved {out}" + (f" and {onnx}" if onnx else ""),
    )
