"""Ownership commands: ``watermark embed``, ``watermark fingerprint`` and ``watermark verify``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

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
from nnseal.errors import NnsealError
from nnseal.watermark import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_REFERENCES,
    REFERENCE_ARCHITECTURES,
    REFERENCE_EPOCHS,
    REFERENCE_SEED,
)


def _epsilon(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    if value == "auto":
        return value
    try:
        eps = float(value)
    except ValueError:
        raise click.BadParameter(f"must be 'auto' or a number in (0, 1], got {value!r}") from None
    if not 0 < eps <= 1:
        raise click.BadParameter(f"must be 'auto' or a number in (0, 1], got {value!r}")
    return eps


@main.group()
def watermark() -> None:
    """Prove ownership: embed a frontier-stitching watermark, or fingerprint a model with conferrable
    adversarial examples; verify either through a suspect's labels.

    Verify exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """


@watermark.command("embed")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "dataset", default="digits", show_default=True, help="The model's training data.")
@root_option
@click.option("--key-size", default=100, show_default=True, help="Key inputs ℓ (even).")
@click.option(
    "--epsilon",
    default="auto",
    show_default=True,
    callback=_epsilon,
    help="FGSM step (L∞, pixels in [0, 1]); auto: the paper's 0.25, or the nearest ε on a ×0.8 grid "
    "that forms a balanced key (at most 12 tried).",
)
@click.option("--boost", default=10, show_default=True, help="Times the key is repeated in fine-tuning.")
@click.option(
    "--epochs", default=5.0, show_default=True, help="Most fine-tuning epochs until the key is learnt."
)
@click.option(
    "--settle",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Epochs of further fine-tuning once every key is right, so a light fine-tune does not undo it "
    "(0: stop there, as WRT does).",
)
@click.option("--lr", default=1e-3, show_default=True, help="Fine-tuning learning rate (Adam).")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--references",
    "n_references",
    type=click.IntRange(min=0),
    default=DEFAULT_REFERENCES,
    show_default=True,
    help="Reference models to train on the same data (independent seeds, the --reference-arch "
    "architectures in turn) to calibrate the null stored in the key; 0: none (then verify is "
    "inconclusive unless it calibrates or is given --paper-null). About 10 s on digits.",
)
@click.option(
    "--reference",
    "reference_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A model known not to be watermarked (repeatable, >= 2; model or .onnx file): calibrate on these "
    "instead of training references.",
)
@click.option(
    "--reference-arch",
    "reference_archs",
    multiple=True,
    type=click.Choice(["mlp", "lenet", "vgg"]),
    help=f"Architectures of the trained references, in turn (repeatable; default: "
    f"{', '.join(REFERENCE_ARCHITECTURES)}).",
)
@click.option(
    "--reference-epochs", default=REFERENCE_EPOCHS, show_default=True, help="Training epochs per reference."
)
@click.option(
    "--reference-seed",
    default=REFERENCE_SEED,
    show_default=True,
    help="Seed of the first reference (+1 each).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Watermarked model to write.")
@click.option("--key", "key_out", type=click.Path(path_type=Path), required=True, help="Key file to write.")
@signing
@json_option
def watermark_embed(
    model: Path,
    dataset: str,
    root: Path | None,
    key_size: int,
    epsilon: float | str,
    boost: int,
    epochs: float,
    settle: float,
    lr: float,
    seed: int,
    n_references: int,
    reference_files: tuple[Path, ...],
    reference_archs: tuple[str, ...],
    reference_epochs: float,
    reference_seed: int,
    out: Path,
    key_out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    as_json: bool,
) -> None:
    """Watermark MODEL; write the watermarked copy (with its lineage) and the signed key, which also
    carries the null calibrated on reference models (trained, or given with --reference)."""
    from nnseal.attacks import run_attack
    from nnseal.data import load_dataset
    from nnseal.models import load_model
    from nnseal.targets import open_target
    from nnseal.watermark import calibrate_key

    if len(reference_files) == 1:
        raise NnsealError("--reference needs at least 2 models (repeat it)")
    keys = signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    references = [open_target(p) for p in reference_files]  # fail on a bad file before any training
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    params = {
        "key_size": key_size,
        "epsilon": epsilon,
        "boost": boost,
        "epochs": epochs,
        "settle": settle,
        "lr": lr,
    }
    result = run_attack("watermark", m, params, train=train, test=test, seed=seed, progress=not as_json)
    key = result.artifacts["key"]
    r = result.record["metrics"]
    null = None
    t = time.perf_counter()
    try:
        if references:
            key, null = calibrate_key(key, references=references, names=[str(p) for p in reference_files])
        elif n_references:
            key, null = calibrate_key(
                key,
                train,
                count=n_references,
                architectures=reference_archs or REFERENCE_ARCHITECTURES,
                epochs=reference_epochs,
                seed=reference_seed,
                progress=not as_json,
            )
    finally:
        for ref in references:
            ref.close()
    calibration_s = time.perf_counter() - t
    key.save(key_out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    result.save(out)
    signed = keys.schemes
    info: dict[str, Any] = {"model": str(out), "key": str(key_out), "signed": signed}
    info.update(model_id=key.model_id, **r)
    eps_note = f"epsilon {r['epsilon']:g}" + (
        f" (auto; tried {', '.join(f'{e:g}' for e in r['epsilon_tried'])})"
        if len(r["epsilon_tried"]) > 1
        else ""
    )
    text = (
        f"wrote {out} and {key_out} (signed: {', '.join(signed) or 'no'}): {eps_note}; key accuracy "
        f"{r['key_accuracy_before']:.0%} → {r['key_accuracy_after']:.0%} after {r['epochs']:g} epochs; "
        f"test accuracy {r['accuracy_before']:.2%} → {r['accuracy_after']:.2%}"
    )
    if r["key_accuracy_after"] < 1:
        text += "\nwarning: the key was not fully learnt; raise --epochs or --lr"
    text += _null_summary(
        key, null, calibration_s, info, "key accuracy", "a longer key, or a larger --epsilon"
    )
    emit(info, as_json, text)


@watermark.command("verify")
@click.argument("key_file", metavar="KEY", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option(
    "--alpha",
    default=DEFAULT_ALPHA,
    show_default=True,
    help="Significance level, fixed beforehand: a claim accuses, so at most 1 innocent model in 1/alpha "
    "may be claimed.",
)
@click.option("--sequential", is_flag=True, help="Stop as soon as the decision is certain (fewer queries).")
@click.option("--budget", type=int, help="Most queries to send.")
@click.option(
    "--calibrate",
    "null_models",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A model known not to be watermarked (repeatable, >= 2): fit the null to their key accuracy "
    "instead of the key's stored null.",
)
@click.option(
    "--paper-null",
    is_flag=True,
    help="Test the paper's Binomial(ℓ, 1/2) null instead of the key's calibrated one (needed to decide "
    "with a key that has none). It claims independently trained models that agree with the key "
    "more often than half the time.",
)
@click.option(
    "--margin",
    default=DEFAULT_MARGIN,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="With a calibrated null, a claim also needs key accuracy above the best reference model's by "
    "more than this.",
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
    paper_null: bool,
    margin: float,
    batch_size: int | None,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    as_json: bool,
    http: HttpConfig,
) -> None:
    """Is TARGET (an nnseal model file or an .onnx file), or the prediction API at --url,
    watermarked with KEY?

    The null is the one stored in KEY (calibrated at embedding), else --calibrate's; a key with
    neither is inconclusive unless --paper-null is given.

    Exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """
    from nnseal.targets import open_target
    from nnseal.watermark import PAPER_NULL, calibrate_null, stored_null, verify_watermark

    if null_models and paper_null:
        raise NnsealError("give either --calibrate or --paper-null, not both")
    if len(null_models) == 1:
        raise NnsealError("--calibrate needs at least 2 models (repeat it)")
    key = load_signed(key_file, hmac_key_file, public_keys, allow_unsigned)
    stored_null(key)  # a hostile stored null is an input error even when another null is used
    null = PAPER_NULL if paper_null else None
    if null_models:
        refs = [open_target(p) for p in null_models]
        try:
            null = calibrate_null(key, refs)
        finally:
            for ref in refs:
                ref.close()
    tgt = http.open(key, target)
    try:
        v = verify_watermark(
            key,
            tgt,
            alpha=alpha,
            null=null,
            uncalibrated="inconclusive",
            margin=margin,
            sequential=sequential,
            budget=budget,
            batch_size=batch_size,
        )
    finally:
        tgt.close()
    acc = "-" if v.key_accuracy is None else f"{v.key_accuracy:.2%}"
    source = {
        "key": "the key's",
        "given": "--calibrate" if null_models else "the paper's",
        "paper": "the paper's",
    }
    null_text = f"{source[v.null_source]} {v.null['kind']} null p={v.null['p']:.3f}"
    if v.null["calibration_models"]:
        null_text += f" ({v.null['calibration_models']} reference models, bound p={v.null_tested['p']:.3f})"
    text = (
        f"{v.status.value.upper()}: {v.reason} (p={v.p_value:.3g}, key accuracy {acc}, "
        f"{v.queries_used} of {v.queries_total} queries, {null_text})\n{key.signature}"
    )
    emit(v.to_dict(), as_json, text)
    sys.exit(v.exit_code)


def _ownership_fingerprinters() -> list[str]:
    """Ownership methods that fingerprint a model without changing it (they have ``fingerprint``)."""
    from nnseal.methods import OWNERSHIP_METHODS

    return [name for name, cls in OWNERSHIP_METHODS.items() if callable(getattr(cls, "fingerprint", None))]


@watermark.command("fingerprint")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--method",
    default="conferrable",
    show_default=True,
    type=click.Choice(_ownership_fingerprinters()),
    help="Ownership fingerprint (Conferrable Adversarial Examples: the model is not changed).",
)
@click.option("--data", "dataset", default="digits", show_default=True, help="The model's training data.")
@root_option
@click.option("--subset", type=click.IntRange(min=1), help="Use only N training inputs (seeded by --seed).")
@click.option("--examples", default=100, show_default=True, type=click.IntRange(min=1), help="Key size.")
@click.option(
    "--epsilon", default=0.25, show_default=True, type=click.FloatRange(0, 1, min_open=True),
    help="L∞ radius around the natural seeds (pixels in [0, 1]; at least one grid step).",
)  # fmt: skip
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1), help="Adam iterations.")
@click.option(
    "--pool-factor", default=3, show_default=True, type=click.IntRange(min=1),
    help="Candidate seeds per key example (MNIST: 10; only candidates that fool MODEL are kept).",
)  # fmt: skip
@click.option(
    "--surrogates", default=4, show_default=True, type=click.IntRange(min=1),
    help="Surrogates derived from MODEL for the optimisation (distill and extract-labels, LeNet and MLP).",
)  # fmt: skip
@click.option(
    "--surrogate-epochs", type=click.FloatRange(min=0, min_open=True),
    help="Their training epochs (default: the attacks', 30).",
)  # fmt: skip
@click.option(
    "--surrogate-budget", type=click.IntRange(min=1), help="Their queries to MODEL (default: the attacks')."
)
@click.option(
    "--gen-references", default=4, show_default=True, type=click.IntRange(min=2),
    help="Independently trained references for the optimisation (held out from the null).",
)  # fmt: skip
@click.option(
    "--references",
    "n_references",
    type=click.IntRange(min=0),
    default=DEFAULT_REFERENCES,
    show_default=True,
    help="Further references, trained independently, that calibrate the null stored in the key; 0: none "
    "(then verify is inconclusive unless it calibrates or is given --paper-null).",
)
@click.option(
    "--reference-arch",
    "reference_archs",
    multiple=True,
    type=click.Choice(["mlp", "lenet", "vgg"]),
    help=f"Architectures of all trained references, in turn (repeatable; default: "
    f"{', '.join(REFERENCE_ARCHITECTURES)}).",
)
@click.option(
    "--reference-epochs", default=REFERENCE_EPOCHS, show_default=True, help="Training epochs per reference."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--key", "key_out", type=click.Path(path_type=Path), required=True, help="Key file to write.")
@signing
@json_option
def watermark_fingerprint(
    model: Path,
    method: str,
    dataset: str,
    root: Path | None,
    subset: int | None,
    examples: int,
    epsilon: float,
    steps: int,
    pool_factor: int,
    surrogates: int,
    surrogate_epochs: float | None,
    surrogate_budget: int | None,
    gen_references: int,
    n_references: int,
    reference_archs: tuple[str, ...],
    reference_epochs: float,
    seed: int,
    key_out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    as_json: bool,
) -> None:
    """Fingerprint MODEL for ownership without changing it: write the signed key (the examples, MODEL's
    labels on them, and the null calibrated on held-out references). No model is written;
    ``watermark verify KEY SUSPECT`` decides whether a suspect was derived from MODEL.

    Conferrable Adversarial Examples (Lukas et al., ICLR 2021): adversarial examples of MODEL whose
    labels transfer to surrogates derived from it (trained here) but not to independently trained
    references (trained here too).
    """

    from nnseal.data import load_dataset
    from nnseal.methods import OWNERSHIP_METHODS
    from nnseal.models import load_model
    from nnseal.watermark import calibrate_key

    keys = signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    train = load_dataset(dataset, root, "train")
    if subset is not None:
        train = train.sample(subset, seed)
    archs = reference_archs or REFERENCE_ARCHITECTURES
    extra: dict[str, Any] = {}
    if surrogate_epochs is not None:
        extra["epochs"] = surrogate_epochs
    if surrogate_budget is not None:
        extra["budget"] = surrogate_budget
    cls = OWNERSHIP_METHODS[method]
    maker = cls(
        n_examples=examples, epsilon=epsilon, steps=steps, pool_factor=pool_factor, surrogates=surrogates,
        surrogate_params=extra,
        references=gen_references, reference_architectures=archs, reference_epochs=reference_epochs,
        seed=seed, progress=not as_json,
    )  # fmt: skip
    t = time.perf_counter()
    key = maker.fingerprint(m, train)
    generation_s = time.perf_counter() - t
    null = None
    t = time.perf_counter()
    if n_references:
        key, null = calibrate_key(
            key, train, count=n_references, architectures=archs, epochs=reference_epochs,
            seed=REFERENCE_SEED, progress=not as_json,
        )  # fmt: skip
    calibration_s = time.perf_counter() - t
    key.save(key_out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    scores = key.provenance["conferrability"]
    info: dict[str, Any] = {
        "key": str(key_out),
        "signed": keys.schemes,
        "method": method,
        "model_id": key.model_id,
        "examples": len(key),
        "epsilon": epsilon,
        "conferrability_mean": sum(scores) / len(scores),
        "conferrability_min": min(scores),
        "generation_seconds": generation_s,
        "seconds": key.provenance["seconds"],
    }
    text = (
        f"wrote {key_out} (signed: {', '.join(keys.schemes) or 'no'}): {len(key)} {method} examples at "
        f"epsilon {epsilon:g} ({generation_s:.0f} s); conferrability mean {info['conferrability_mean']:.2f}, "
        f"min {info['conferrability_min']:.2f}"
    )
    text += _null_summary(key, null, calibration_s, info, "agreement", "more examples")
    emit(info, as_json, text)


def _null_summary(
    key: Any, null: Any, calibration_s: float, info: dict[str, Any], score: str, remedy: str
) -> str:
    """What the key's null allows (added to ``info``), as text: the claim threshold at the default α,
    or a warning when there is no null or no score can reach α."""
    from nnseal.watermark import claim_rule

    if null is None:
        info["null"] = None
        return (
            "\nwarning: no reference models, so the key has no calibrated null: `watermark verify` will be "
            "inconclusive unless it calibrates (--calibrate) or is given --paper-null"
        )
    rule = claim_rule(len(key), DEFAULT_ALPHA, null, DEFAULT_MARGIN)
    acc = null.key_accuracies
    info.update(
        null=null.to_dict(),
        references=key.provenance["null"]["references"],
        calibration_seconds=calibration_s,
        claim_key_accuracy=rule.claim_accuracy,
        claim_alpha=DEFAULT_ALPHA,
    )
    text = (
        f"\nnull calibrated on {len(acc)} reference models ({calibration_s:.0f} s): {score} mean "
        f"{sum(acc) / len(acc):.2f} [{min(acc):.2f}, {max(acc):.2f}], {null.kind} p={null.p:.3f}"
    )
    if rule.claim_accuracy is None:
        return text + (
            f"\nwarning: under this null no {score} reaches alpha={DEFAULT_ALPHA:g}: the key cannot "
            f"prove ownership (use {remedy})"
        )
    return text + f"; a claim at alpha={DEFAULT_ALPHA:g} needs {score} >= {rule.claim_accuracy:.0%}"
