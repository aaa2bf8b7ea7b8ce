"""Commands about model and fingerprint files: ``train``, ``export``, ``inspect``, ``keygen``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click

from nnseal.cli.app import main
from nnseal.cli.options import emit, human, json_option, root_option
from nnseal.errors import FingerprintError, NnsealError


@main.command()
@click.option("--data", "dataset", default="digits", show_default=True, help="Dataset name.")
@root_option
@click.option("--arch", type=click.Choice(["mlp", "lenet", "vgg"]), default="lenet", show_default=True)
@click.option("--epochs", default=20.0, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model file (.safetensors).")
@click.option("--onnx", type=click.Path(path_type=Path), help="Also export to this ONNX file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def train(
    dataset: str,
    root: Path | None,
    arch: str,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    out: Path,
    onnx: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a reference model (seeded) and save it as safetensors + JSON config."""
    from nnseal.data import load_dataset
    from nnseal.models import evaluate_accuracy, export_onnx, model_id, save_model, train_model

    tr, te = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    model = train_model(
        tr, arch, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=not (quiet or as_json)
    )
    acc = evaluate_accuracy(model, te)
    save_model(model, out)
    if onnx:
        export_onnx(model, onnx, tr.input_shape)
    info = {
        "model": str(out),
        "onnx": str(onnx) if onnx else None,
        "arch": arch,
        "dataset": dataset,
        "test_accuracy": acc,
        "model_id": model_id(model),
        "seed": seed,
    }
    emit(
        info,
        as_json,
        f"{arch} on {dataset}: test accuracy {acc:.2%}; saved {out}" + (f" and {onnx}" if onnx else ""),
    )


@main.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export_cmd(model: Path, out: Path) -> None:
    """Export an nnseal model file to ONNX."""
    from nnseal.models import export_onnx, load_model

    m = load_model(model)
    export_onnx(m, out, m.config.input_shape)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("private", type=click.Path(path_type=Path), required=False)
@click.argument("public", type=click.Path(path_type=Path), required=False)
def keygen(private: Path | None, public: Path | None) -> None:
    """Write a new Ed25519 key pair (PEM) for signing fingerprints.

    Without arguments: your own key in the key folder (what `nnseal fingerprint` signs with and
    `nnseal verify` trusts by default). Put other owners' public keys in its trusted/ folder.
    """
    from nnseal.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_keypair, key_dir

    if (private is None) != (public is None):
        raise NnsealError("give both PRIVATE and PUBLIC, or neither (for your own key in the key folder)")
    if private is None or public is None:
        key_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public = key_dir() / PRIVATE_KEY_FILE, key_dir() / PUBLIC_KEY_FILE
    if private.exists():
        raise NnsealError(f"{private} exists; refusing to overwrite a private key")
    kid = generate_keypair(private, public)
    click.echo(f"wrote {private} (keep secret) and {public} (share it); key id {kid}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def inspect(path: Path, as_json: bool) -> None:
    """Describe a fingerprint or watermark key (header, signature status), an nnseal model file
    (config, id, lineage) or an ONNX model (inputs, outputs, opset, lineage)."""
    from nnseal.cli.options import is_model_file
    from nnseal.fingerprint import Fingerprint

    if path.suffix.lower() == ".onnx":
        info = _onnx_info(path)
        emit(info, as_json, _text(info))
        return
    try:
        fp = Fingerprint.load(path, allow_unsigned=True)
    except FingerprintError as e:
        if not is_model_file(path):
            raise NnsealError(
                f"{path} is neither a fingerprint, a watermark key nor a model file ({e})"
            ) from None
    else:
        info = {"kind": "watermark key" if fp.labels is not None else "fingerprint", **fp.header()}
        info["signature"] = fp.signature.to_dict()
        emit(info, as_json, _text({**info, "signature": str(fp.signature)}))
        return
    from nnseal.attacks import lineage_str
    from nnseal.models import load_model, model_id

    m = load_model(path)
    lineage = getattr(m, "lineage", [])
    info = {
        "kind": "nnseal model",
        "model_id": model_id(m),
        "config": m.config.to_dict(),
        "lineage": lineage,
        "lineage_str": lineage_str(lineage),
    }
    emit(info, as_json, _text(info))


def _onnx_info(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises its own untyped errors
        raise NnsealError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:160]})") from None

    def shape(v: Any) -> list[int | str]:
        return [d.dim_value or d.dim_param or "?" for d in v.type.tensor_type.shape.dim]

    meta = {p.key: p.value for p in proto.metadata_props}
    from nnseal._io import parse_json
    from nnseal.attacks import lineage_str

    try:
        lineage = parse_json(meta.get("nnseal.lineage", "[]"), max_bytes=1 << 20, what="nnseal.lineage")
        described = lineage_str(lineage)
    except (ValueError, TypeError, KeyError, AttributeError, NnsealError):
        lineage, described = None, "unreadable"
    return {
        "kind": "ONNX model",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "inputs": {v.name: shape(v) for v in proto.graph.input},
        "outputs": {v.name: shape(v) for v in proto.graph.output},
        "lineage": lineage,
        "lineage_str": described,
    }


def _text(info: dict[str, Any]) -> str:
    """``key: value`` lines, nested dicts indented, for reading in a terminal."""
    lines: list[str] = []

    def walk(d: dict[str, Any], indent: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                lines.append(f"{indent}{k}:")
                walk(v, indent + "  ")
            else:
                lines.append(f"{indent}{k}: {human(v, str(k))}")

    walk({k: v for k, v in info.items() if k != "lineage"}, "")  # lineage_str says it in one line
    return "\n".join(lines)
