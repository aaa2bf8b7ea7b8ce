"""Benchmark: verifying a 100-query fingerprint over HTTP against a local MLServer (V2 protocol).

Measured in one run against one server, so the ratios are comparable (median wall seconds of a few
repeats after a warm-up; the setups take turns so a change in machine load hits them alike):

1. batched: every query in one V2 request (``max_batch_size=100``);
2. batched, 10 per request: ``max_batch_size=10``;
3. one request per query, sequential (``max_batch_size=1``);
4. one request per query, 4 in flight (``max_batch_size=1, concurrency=4``).

The model is the digits LeNet (bundled data, trained here), the fingerprint 100 Sensitive Samples
(MANC selection), the server MLServer 1.7.1 from ``.venv-mlserver`` (``scripts/setup-mlserver.sh``)
serving the ONNX export through nnseal's ONNX Runtime runtime on 127.0.0.1. Every run must verify
*intact*; the script fails otherwise. Also reported: server start-up time and the verdict of the
int8 copy.

Run from the repository root::

    .venv/bin/python benchmarks/bench_http.py [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the MLServer test rig

import torch
from _machine import machine_info
from mlserver_rig import MLServer, mlserver_executable

from nnseal._io import atomic_write_text
from nnseal.attacks import run_attack
from nnseal.data import load_dataset
from nnseal.methods import SensitiveSampleFingerprinter
from nnseal.models import export_onnx, train_model
from nnseal.targets import HttpTarget, V2Protocol
from nnseal.verification import Status, verify

REPO = Path(__file__).resolve().parents[1]
SPEC = "top1-p4"
SETUPS = {
    "batched (100 per request)": {"max_batch_size": 100},
    "batched (10 per request)": {"max_batch_size": 10},
    "one request per query": {"max_batch_size": 1},
    "one per query, 4 in flight": {"max_batch_size": 1, "concurrency": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-queries", type=int, default=100)
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_http.json")
    args = ap.parse_args()
    if mlserver_executable() is None:
        raise SystemExit("error: MLServer venv missing; run scripts/setup-mlserver.sh")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()  # other work on the machine skews timings; recorded in the JSON

    t = time.perf_counter()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = train_model(train, "lenet", epochs=args.epochs, seed=args.seed, progress=False)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    method = SensitiveSampleFingerprinter(
        n_queries=args.n_queries,
        pool_size=2 * args.n_queries,
        steps=300,
        seed=args.seed,
        specs=["top1", SPEC],
    )
    fp = method.fingerprint(model, test)
    fingerprint_s = time.perf_counter() - t
    print(f"trained in {train_s:.0f} s, {len(fp)}-query fingerprint in {fingerprint_s:.0f} s", flush=True)

    rows: dict[str, list[float]] = {name: [] for name in SETUPS}
    requests: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as work:
        intact = export_onnx(model, Path(work) / "intact.onnx", model.config.input_shape)
        attacked = run_attack("onnx-quantize", model)
        int8 = attacked.save(Path(work) / "int8.onnx")
        with MLServer({"intact": intact, "int8": int8}, Path(work) / "server") as server:
            print(f"MLServer ready in {server.startup_s:.1f} s at {server.url}", flush=True)
            int8_verdict = verify(fp, HttpTarget(server.url, V2Protocol("int8"), returns="logits"), SPEC)
            for repeat in range(args.repeats + 1):  # the first round is the warm-up
                for name, kw in SETUPS.items():
                    with HttpTarget(server.url, V2Protocol("intact"), returns="logits", **kw) as target:
                        start = time.perf_counter()
                        v = verify(fp, target, SPEC, batch_size=len(fp))
                        seconds = time.perf_counter() - start
                    if v.status is not Status.INTACT:
                        raise SystemExit(f"error: {name}: expected intact, got {v.status.value}: {v.reason}")
                    requests[name] = v.target_stats["requests"]
                    if repeat:
                        rows[name].append(seconds)
            startup_s = server.startup_s

    medians = {name: statistics.median(times) for name, times in rows.items()}
    base = medians["batched (100 per request)"]
    print(f"\n{'setup':<30}{'requests':>9}{'median s':>10}{'ms/query':>10}{'x batched':>11}")
    for name, s in medians.items():
        print(f"{name:<30}{requests[name]:>9}{s:>10.3f}{s / len(fp) * 1e3:>10.2f}{s / base:>11.1f}")
    print(f"int8 copy served: {int8_verdict.status.value} ({int8_verdict.reason})")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")

    result = {
        "config": vars(args) | {"out": str(args.out), "spec": SPEC, "server": "MLServer 1.7.1, V2 REST"},
        "fingerprint": {"n_queries": len(fp), "seconds": fingerprint_s, "train_seconds": train_s},
        "server_startup_s": startup_s,
        "rows": {
            name: {
                "requests": requests[name],
                "median_s": medians[name],
                "times_s": rows[name],
                "ratio_to_batched": medians[name] / base,
            }
            for name in SETUPS
        },
        "int8_verdict": int8_verdict.to_dict(),
        "machine": machine_info(load_start),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
