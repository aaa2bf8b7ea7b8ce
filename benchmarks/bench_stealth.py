"""Benchmark: do the answers survive the channels images travel through?

For every registered tamper-detection method, a pool of on-grid candidates on the owner's model; each
query is sent (a) as numbers, (b) as a PNG of its integer pixels (``--send png``) and (c) as an 8-bit
JPEG at quality 95 (a lossy channel nnseal does not support: an API that re-encodes images), and the
share of answers unchanged under top1 and top1-p4 is reported. PNG must keep every answer; JPEG shows
why lossy channels are outside the guarantee.

Prints the table and writes ``benchmarks/results/bench_stealth.json``::

    .venv/bin/python benchmarks/bench_stealth.py                 # digits, about a minute on 2 cores
    .venv/bin/python benchmarks/bench_stealth.py --data mnist --root ../shared/data/mnist --train-subset 10000
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info, write_report
from PIL import Image

from nnseal.data import load_dataset
from nnseal.grid import from_pixels, pixels
from nnseal.methods import METHODS
from nnseal.models.inference import probabilities
from nnseal.models.train import evaluate_accuracy, train_model
from nnseal.outputs import OutputSpec
from nnseal.targets.protocols import png_base64

REPO = Path(__file__).resolve().parents[1]
SPECS = ("top1", "top1-p4")
FAST = {"sensitive-sample": {"steps": 300}, "tampernn-markers": {"strategy": "flip-rate"}}


def jpeg(x: np.ndarray, quality: int = 95) -> np.ndarray:
    """``x`` through an 8-bit JPEG at ``quality`` (pixels k/255 in, decoded /255 out)."""
    out = []
    for img in pixels(x, 255):
        buf = io.BytesIO()
        Image.fromarray(img[0] if len(img) == 1 else img.transpose(1, 2, 0)).save(
            buf, "JPEG", quality=quality
        )
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1))
    return from_pixels(np.stack(out), 255)


def png(x: np.ndarray, levels: int) -> np.ndarray:
    """``x`` as the server decodes the PNGs ``--send png`` sends."""
    imgs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in png_base64(x, levels)]
    return from_pixels(np.stack([i[None] if i.ndim == 2 else i.transpose(2, 0, 1) for i in imgs]), levels)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--root", type=Path)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--pool-size", type=int, default=200)
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_stealth.json")
    args = p.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()
    train = load_dataset(args.data, args.root, "train")
    test = load_dataset(args.data, args.root, "test")
    if args.train_subset:
        train = train.sample(args.train_subset, args.seed)
    arch = "lenet" if train.input_shape[0] == 1 else "vgg"
    model = train_model(train, arch, epochs=args.epochs, seed=args.seed, progress=False)
    rows = []
    for name, method_cls in METHODS.items():
        t = time.perf_counter()
        pool = method_cls(n_queries=1, pool_size=args.pool_size, specs=SPECS, seed=args.seed,
                          **FAST.get(name, {})).pool(model, test)  # fmt: skip
        ref = pool.probs
        row = {"method": name, "queries": len(pool), "generation_s": time.perf_counter() - t}
        for channel, x in (
            ("png", png(pool.x, test.levels)),
            (f"jpeg-q{args.quality}", jpeg(pool.x, args.quality)),
        ):
            got = probabilities(model, x)
            row[f"{channel}_identical_inputs"] = float(np.mean(np.all(x == pool.x, axis=(1, 2, 3))))
            for spec in SPECS:
                s = OutputSpec.parse(spec)
                row[f"{channel}_{spec}"] = float(np.mean(np.all(s.encode(got) == s.encode(ref), axis=1)))
        rows.append(row)
    header = ["method", "queries", *[f"{c} {s}" for c in ("png", f"jpeg-q{args.quality}") for s in SPECS]]
    print(f"{args.data} {arch}: test accuracy {evaluate_accuracy(model, test):.2%}; answers unchanged:")
    print("  ".join(f"{h:>18}" for h in header))
    for r in rows:
        cells = [r["method"], str(r["queries"])]
        cells += [f"{r[f'{c}_{s}']:.1%}" for c in ("png", f"jpeg-q{args.quality}") for s in SPECS]
        print("  ".join(f"{c:>18}" for c in cells))
    write_report(args.out, {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "arch": arch,
                   "specs": SPECS, "method_params": FAST, "levels": test.levels,
                   "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   "machine": machine_info(load0), "torch": torch.__version__},
        "rows": rows,
        "total_s": time.perf_counter() - t0,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
