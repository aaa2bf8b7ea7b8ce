"""Ownership commands: ``watermark embed`` and ``watermark verify``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nnseal.cli.app import main
from nnseal.cli.http import HttpConfig, http_options
from nnseal.cli.options import (
    emit,
    json_option,
    load_signed,
    root_option,
    signature_check,
    signing,
    signing_keys,
)


@main.group()
def watermark() -> None:
    """Prove ownership: embed a frontier-stitching watermark, verify it through a model's labels.

    Verify exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """


@watermark.command("embed")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "dataset", default="digits", show_default=True, help="The model's training data.")
@root_option
@click.option("--key-size", default=100, show_default=True, help="Key inputs ℓ (even).")
@click.option("--epsilon", default=0.25, show_default=True, help="FGSM step (L∞, pixels in [0, 1]).")
@click.option("--boost", default=10, show_default=True, help="Times the key is repeated in fine-tuning.")
@click.option("--epochs", default=5.0, show_default=True, help="Most fine-tuning epochs.")
@click.option("--lr", default=1e-3, show_default=True, help="Fine-tuning learning rate (Adam).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Watermarked model to write.")
@click.option("--key", "key_out", type=click.Path(path_type=Path), required=True, help="Key file to write.")
@signing
@json_option
def watermark_embed(
    model: Path,
    dataset: str,
    root: Path | None,
    key_size: int,
    epsilon: float,
    boost: int,
    epochs: float,
    lr: float,
    seed: int,
    out: Path,
    key_out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    as_json: bool,
) -> None:
    """Watermark MODEL; write the watermarked copy (with its lineage) and the signed key."""
    from nnseal.attacks import run_attack
    from nnseal.data import load_dataset
    from nnseal.models import load_model

    keys = signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    params = {"key_size": key_size, "epsilon": epsilon, "boost": boost, "epochs": epochs, "lr": lr}
    result = run_attack("watermark", m, params, train=train, test=test, seed=seed, progress=not as_json)
    key = result.artifacts["key"]
    key.save(key_out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    result.save(out)
    r = result.record["metrics"]
    signed = keys.schemes
    info = {"model": str(out), "key": str(key_out), "signed": signed, "model_id": key.model_id, **r}
    text = (
        f"wrote {out} and {key_out} (signed: {', '.join(signed) or 'no'}): key accuracy "
        f"{r['key_accuracy_before']:.0%} → {r['key_accuracy_after']:.0%} after {r['epochs']:g} epochs; "
        f"test accuracy {r['accuracy_before']:.2%} → {r['accuracy_after']:.2%}"
    )
    if r["key_accuracy_after"] < 1:
        text += "\nwarning: the key was not fully learnt; raise --epochs or --lr"
    emit(info, as_json, text)


@watermark.command("verify")
@click.argument("key_file", metavar="KEY", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option("--alpha", default=0.05, show_default=True, help="Significance level, fixed beforehand.")
@click.option("--sequential", is_flag=True, help="Stop as soon as the decision is certain (fewer queries).")
@click.option("--budget", type=int, help="Most queries to send.")
@click.option(
    "--calibrate",
    "null_models",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A model known not to be watermarked (repeatable, >= 2): fit the null to their key accuracy "
    "instead of the paper's 1/2.",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Most queries per call.")
@signature_check
@json_option
@http_options
def watermark_verify(
    key_file: Path,
    target: Path | None,
    alpha: float,
    sequential: bool,
    budget: int | None,
    null_models: tuple[Path, ...],
    batch_size: int | None,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    as_json: bool,
    http: HttpConfig,
) -> None:
    """Is TARGET (an nnseal model file or an .onnx file), or the prediction API at --url,
    watermarked with KEY?

    Exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """
    from nnseal.targets import open_target
    from nnseal.watermark import PAPER_NULL, NullModel, verify_watermark

    key = load_signed(key_file, hmac_key_file, public_keys, allow_unsigned)
    null = PAPER_NULL
    if null_models:
        accs = [verify_watermark(key, open_target(p), alpha=alpha).key_accuracy for p in null_models]
        null = NullModel.calibrate([a for a in accs if a is not None], len(key))
    tgt = http.open(key, target)
    try:
        v = verify_watermark(
            key, tgt, alpha=alpha, null=null, sequential=sequential, budget=budget, batch_size=batch_size
        )
    finally:
        tgt.close()
    acc = "-" if v.key_accuracy is None else f"{v.key_accuracy:.2%}"
    text = (
        f"{v.status.value.upper()}: {v.reason} (p={v.p_value:.3g}, key accuracy {acc}, "
        f"{v.queries_used} of {v.queries_total} queries, null {v.null['kind']} p={v.null['p']:.3f})"
        f"\n{key.signature}"
    )
    emit(v.to_dict(), as_json, text)
    sys.exit(v.exit_code)
