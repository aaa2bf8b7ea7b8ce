"""``nnseal demo``: the whole tamper-detection loop on scikit-learn's bundled digits, offline.

Train a LeNet → fingerprint it with Sensitive-Sample + MANC → make tampered copies → verify the
intact model (torch and ONNX Runtime) and every copy → table, JSON and a Markdown report with the
fingerprint images beside their seeds.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseal import __version__
from nnseal._io import atomic_write_text
from nnseal.attacks import run_attack
from nnseal.data import load_dataset
from nnseal.fingerprint import Fingerprint
from nnseal.methods.ssf import SensitiveSampleFingerprinter
from nnseal.models.io import export_onnx, save_model
from nnseal.models.train import evaluate_accuracy, train_model
from nnseal.report import image_grid, markdown_table, save_png
from nnseal.signing import default_signing_key, key_dir
from nnseal.targets.base import Target
from nnseal.targets.local import OnnxTarget, TorchTarget
from nnseal.verification import IntegrityVerdict, verify

SPECS = ("top1", "top1-p2", "top1-p4")


@dataclass
class DemoRow:
    """One verified copy: a verdict per output spec; tampered if any spec shows a mismatch."""

    copy: str
    expected: str
    verdicts: dict[str, IntegrityVerdict]
    accuracy: float | None

    @property
    def status(self) -> str:
        statuses = {v.status.value for v in self.verdicts.values()}
        return next(s for s in ("tampered", "inconclusive", "intact") if s in statuses)

    @property
    def ok(self) -> bool:
        return self.status == self.expected


def run_demo(
    out_dir: str | os.PathLike[str] = "nnseal-demo",
    *,
    seed: int = 0,
    n_queries: int = 20,
    pool_size: int = 200,
    steps: int = 500,
    epochs: int = 20,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[DemoRow]:
    """Run the demo, write its artifacts to ``out_dir``, and return one row per verified copy."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    echo(f"[1/4] training LeNet on digits ({len(train)} train / {len(test)} test images)")
    model = train_model(train, "lenet", epochs=epochs, seed=seed, progress=progress)
    acc = evaluate_accuracy(model, test)
    save_model(model, out / "model.safetensors")
    export_onnx(model, out / "model.onnx", train.input_shape)
    echo(f"      test accuracy {acc:.2%}; saved model.safetensors and model.onnx")

    echo(f"[2/4] Sensitive-Sample fingerprint: pool of {pool_size}, {steps} steps, MANC picks {n_queries}")
    method = SensitiveSampleFingerprinter(
        n_queries=n_queries, pool_size=pool_size, steps=steps, seed=seed, specs=SPECS, progress=progress
    )
    fp = method.fingerprint(model, test)
    key, created = default_signing_key()
    fp.save(out / "fingerprint.nnseal", ed25519_key=key)
    fp = Fingerprint.load(out / "fingerprint.nnseal")  # as a verifier does: the signature is checked first
    echo(f"      {fp.signature}; key folder {key_dir()}" + (" (key created now)" if created else ""))
    grid = image_grid([fp.seeds, fp.queries], scale=6, labels=["seeds", "sensitive samples"])  # type: ignore[list-item]
    save_png(grid, out / "fingerprint.png")

    echo("[3/4] tampering copies")
    attacks = [
        ("one head weight +1% (largest |w|)", "modify-weights", {"relative": 0.01, "index": -2}),
        ("int8 dynamic quantization (torch.ao)", "quantize-int8", {}),
        ("8-bit weight precision reduction", "quantize-bits", {"bits": 8}),
        ("int8 ONNX Runtime dynamic quantization", "onnx-quantize", {"mode": "dynamic"}),
        ("fine-tune 20 steps, lr 1e-3", "finetune", {"steps": 20}),
        ("prune 20% (global L1)", "prune", {"amount": 0.2}),
        ("BadNets trojan (target 0)", "trojan", {"epochs": 1.0}),
    ]
    copies: list[tuple[str, Target, str, float | None]] = [
        ("original (torch)", TorchTarget(model), "intact", acc),
        ("exported ONNX in ONNX Runtime", OnnxTarget(out / "model.onnx"), "intact", None),
    ]
    for name, kind, params in attacks:
        result = run_attack(kind, model, params, train=train, test=test, seed=seed)
        copies.append((name, result.target(), "tampered", result.record["metrics"]["accuracy_after"]))

    echo(f"[4/4] verifying under each output spec ({', '.join(SPECS)})")
    rows = [
        DemoRow(name, expected, {spec: verify(fp, target, spec) for spec in SPECS}, accuracy)
        for name, target, expected, accuracy in copies
    ]
    elapsed = time.perf_counter() - t0
    _write_report(out, rows, fp, acc, method.get_params(), seed, elapsed)
    echo("")
    echo(_text_table(rows))
    n_ok = sum(r.ok for r in rows)
    echo(f"\n{n_ok}/{len(rows)} verdicts as expected in {elapsed:.0f} s; report: {out / 'report.md'}")
    return rows


def _cells(r: DemoRow) -> list[Any]:
    acc = "—" if r.accuracy is None else f"{r.accuracy:.2%}"
    per_spec = [f"{v.status.value} ({len(v.mismatches)}/{v.answered})" for v in r.verdicts.values()]
    return [r.copy, acc, *per_spec, r.status, r.expected, "yes" if r.ok else "NO"]


_HEADER = ["copy", "test acc.", *SPECS, "verdict", "expected", "as expected"]


def _text_table(rows: list[DemoRow]) -> str:
    cells = [_HEADER, *[[str(c) for c in _cells(r)] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def _write_report(
    out: Path, rows: list[DemoRow], fp: Any, acc: float, config: dict, seed: int, elapsed: float
) -> None:
    sens, sens0 = np.array(fp.provenance["sensitivity"]), np.array(fp.provenance["seed_sensitivity"])
    md = [
        "# nnseal demo report",
        "",
        f"LeNet on scikit-learn digits, test accuracy {acc:.2%}. Fingerprint: {len(fp)} Sensitive-Sample "
        f"queries chosen by MANC from a pool (the paper's bag) of {config['pool_size']}. Each copy is "
        "verified under three output specifications: the top-1 label alone (the hardest case), and the "
        "top-1 label with its probability rounded to 2 and to 4 decimals (what an API returning "
        "probabilities gives). Cells show the verdict and mismatching/answered queries; the verdict "
        "is *tampered* when any "
        f"specification finds a mismatch. Model id `{fp.model_id[:16]}…`.",
        "",
        markdown_table(_HEADER, [_cells(r) for r in rows]),
        "",
        "## Fingerprint",
        "",
        "Top row: the natural seeds; bottom row: the sensitive samples generated from them "
        f"(L∞ ε = {config['epsilon']}).",
        "",
        "![fingerprint](fingerprint.png)",
        "",
        f"Median sensitivity ‖∂f/∂W‖²: seeds {np.median(sens0):.3g} → samples {np.median(sens):.3g}.",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps({"seed": seed, "method": config}, indent=2),
        "```",
        "",
        f"nnseal {__version__}, torch {torch.__version__}, Python {platform.python_version()}; "
        f"{elapsed:.0f} s.",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(md))
    results = {
        "seed": seed,
        "accuracy": acc,
        "method": config,
        "elapsed_s": elapsed,
        "rows": [
            {
                "copy": r.copy,
                "expected": r.expected,
                "accuracy": r.accuracy,
                "status": r.status,
                "verdicts": {k: v.to_dict() for k, v in r.verdicts.items()},
            }
            for r in rows
        ],
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
