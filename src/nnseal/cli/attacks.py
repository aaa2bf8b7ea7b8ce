"""The ``attack`` command: apply a registered tampering attack to a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nnseal.cli.app import main
from nnseal.cli.options import LiveHelp, emit, human, json_option, params_help, params_option, root_option
from nnseal.errors import NnsealError


def _attack_help() -> str:
    from nnseal.attacks import ATTACKS

    def describe(a: Any) -> tuple[str, dict[str, Any]]:
        flags = ", ".join(
            f for f, on in (("needs data", a.needs_data), ("ONNX output", a.produces == "onnx")) if on
        )
        return (f"[{flags}] " if flags else "") + a.description, a.defaults()

    return params_help(
        "Apply attack KIND to MODEL and save the attacked copy with its lineage.", ATTACKS, describe
    )


@main.command(cls=LiveHelp, live_help=_attack_help, short_help="Apply a tampering attack to a model.")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("kind")
@params_option
@click.option(
    "--data", "dataset", default="digits", show_default=True, help="Data for training and accuracy."
)
@root_option
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Attacked model (.safetensors/.onnx)."
)
@json_option
def attack(
    model: Path, kind: str, params: tuple[str, ...], dataset: str, root: Path | None, seed: int, out: Path,
    as_json: bool,
) -> None:  # fmt: skip
    from nnseal._params import parse_pairs
    from nnseal.attacks import ATTACKS, run_attack
    from nnseal.data import load_dataset
    from nnseal.models import load_model

    if kind not in ATTACKS:
        raise NnsealError(f"unknown attack {kind!r}; known: {', '.join(sorted(ATTACKS))}")
    spec = ATTACKS[kind]
    parsed = spec.parse_params(parse_pairs(params))
    if (out.suffix.lower() == ".onnx") != (spec.produces == "onnx"):
        want = ".onnx" if spec.produces == "onnx" else "an nnseal model file (.safetensors)"
        raise NnsealError(f"attack {kind} writes {spec.produces} models: --out must be {want}")
    m = load_model(model)
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    result = run_attack(kind, m, parsed, train=train, test=test, seed=seed, progress=not as_json)
    result.save(out)
    metrics = result.record["metrics"]
    text = f"wrote {out}: {result.lineage_str}\n" + "\n".join(
        f"  {k}: {human(v, k)}" for k, v in metrics.items()
    )
    info = {"out": str(out), "lineage": result.lineage, "lineage_str": result.lineage_str, "metrics": metrics}
    emit(info, as_json, text)
